"""The quantization contract and method selection."""

from fastvideo_quant.quantization.base import (
    LinearMethodBase,
    QuantizationConfig,
    QuantizeMethodBase,
    Tolerance,
)
from fastvideo_quant.quantization.selection import (
    QUANTIZATION_METHODS,
    check_layer_supported,
    get_quantization_config,
    resolve_quant_config,
)


def __getattr__(name: str):
    # The unquantized method ships as a built-in plugin; imported lazily so the
    # plugin can itself import this package.
    if name in ("UnquantizedLinearMethod", "UnquantizedConfig"):
        import fvq_unquantized

        return getattr(fvq_unquantized, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "QUANTIZATION_METHODS",
    "LinearMethodBase",
    "QuantizationConfig",
    "QuantizeMethodBase",
    "Tolerance",
    "UnquantizedConfig",
    "UnquantizedLinearMethod",
    "check_layer_supported",
    "get_quantization_config",
    "resolve_quant_config",
]
