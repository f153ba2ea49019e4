"""Example third-party plugin: int8 weight-only quantization (per-output-channel scales)."""

from fvq_example_int8wo.method import Int8WeightOnlyConfig, Int8WeightOnlyLinearMethod

__all__ = ["Int8WeightOnlyConfig", "Int8WeightOnlyLinearMethod"]
