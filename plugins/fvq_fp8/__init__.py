"""W8A8 float8 e4m3 quantization: vLLM/HF fp8 and compressed-tensors checkpoints, online quantization."""

from fvq_fp8.config import Fp8Config
from fvq_fp8.method import Fp8LinearMethod

__all__ = ["Fp8Config", "Fp8LinearMethod"]
