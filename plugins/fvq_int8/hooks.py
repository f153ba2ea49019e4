"""Entry point of the int8 plugin (``int8 = "fvq_int8.hooks"``); imports no bitsandbytes."""

from fastvideo_quant.plugins import hookimpl
from fvq_int8.config import Int8Config
from fvq_int8.method import Int8LinearMethod


@hookimpl
def register_quantization_methods(register) -> None:
    register(Int8Config, Int8LinearMethod, weight_loader_v2=True)
