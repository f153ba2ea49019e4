"""Entry point: registers the method with fastvideo-quant."""

from fastvideo_quant.plugins import hookimpl
from fvq_example_int8wo.method import Int8WeightOnlyConfig, Int8WeightOnlyLinearMethod


@hookimpl
def register_quantization_methods(register) -> None:
    register(Int8WeightOnlyConfig, Int8WeightOnlyLinearMethod, weight_loader_v2=True)
