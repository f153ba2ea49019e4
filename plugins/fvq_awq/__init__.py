"""AWQ int4 (AutoAWQ GEMM and compressed-tensors W4A16 checkpoints) as a fastvideo_quant plugin."""

from fvq_awq.config import AWQConfig
from fvq_awq.ct_method import CompressedTensorsW4A16Method
from fvq_awq.method import AWQLinearMethod

__all__ = ["AWQConfig", "AWQLinearMethod", "CompressedTensorsW4A16Method"]
