"""The built-in unquantized method, packaged as a plugin like any other."""

from fvq_unquantized.method import UnquantizedConfig, UnquantizedLinearMethod

__all__ = ["UnquantizedConfig", "UnquantizedLinearMethod"]
