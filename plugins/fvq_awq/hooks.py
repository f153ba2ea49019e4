"""Entry point of the AWQ plugin (``awq = "fvq_awq.hooks"``)."""

from fastvideo_quant.plugins import hookimpl
from fvq_awq.config import AWQConfig
from fvq_awq.method import AWQLinearMethod


@hookimpl
def register_quantization_methods(register) -> None:
    register(AWQConfig, AWQLinearMethod, weight_loader_v2=True)
