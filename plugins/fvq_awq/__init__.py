"""AWQ int4 (AutoAWQ GEMM format) as a fastvideo_quant plugin."""

from fvq_awq.config import AWQConfig
from fvq_awq.method import AWQLinearMethod

__all__ = ["AWQConfig", "AWQLinearMethod"]
