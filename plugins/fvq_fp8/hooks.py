"""Entry point of the fp8 plugin (``fp8 = "fvq_fp8.hooks"`` in the ``fastvideo_quant`` group)."""

from fastvideo_quant.plugins import hookimpl
from fvq_fp8.config import Fp8Config
from fvq_fp8.method import Fp8LinearMethod


@hookimpl
def register_quantization_methods(register) -> None:
    register(Fp8Config, Fp8LinearMethod, weight_loader_v2=True)
