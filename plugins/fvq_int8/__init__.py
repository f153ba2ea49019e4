"""LLM.int8() through bitsandbytes' checkpoint format, with a Triton W8A8 fast path on GPU."""

from fvq_int8.config import Int8Config
from fvq_int8.method import Int8LinearMethod

__all__ = ["Int8Config", "Int8LinearMethod"]
