"""Entry point of the built-in unquantized plugin."""

from fastvideo_quant.plugins import hookimpl
from fvq_unquantized.method import UnquantizedConfig, UnquantizedLinearMethod


@hookimpl
def register_quantization_methods(register) -> None:
    register(UnquantizedConfig, UnquantizedLinearMethod, weight_loader_v2=True)
