"""fp8 compute: activation quantization (torch reference, Triton on CUDA) and the scaled GEMM dispatch.

Triton is imported only when a CUDA tensor needs it (``act_quant_triton`` is never imported on CPU paths).
"""
