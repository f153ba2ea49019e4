"""Entry point of the AWQ plugin (``awq = "fvq_awq.hooks"``)."""

from fastvideo_quant.plugins import hookimpl
from fvq_awq.config import AWQConfig
from fvq_awq.ct_method import CompressedTensorsW4A16Method
from fvq_awq.method import AWQLinearMethod


@hookimpl
def register_quantization_methods(register) -> None:
    # (the compressed-tensors method by name too: vLLM- and FastVideo-style layers look methods up by class name in
    # WEIGHT_LOADER_V2_SUPPORTED)
    register(AWQConfig, AWQLinearMethod, CompressedTensorsW4A16Method, weight_loader_v2=True)
