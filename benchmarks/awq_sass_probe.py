"""Compile the AWQ GEMV / ``gemm_t`` kernels for sm_90 on a machine without a GPU and summarize the SASS.

    python benchmarks/awq_sass_probe.py gemv 16 4 4        # block_n, r, num_warps
    python benchmarks/awq_sass_probe.py gemm_t 16 64 4 3   # block_m, block_n, num_warps, num_stages
    python benchmarks/awq_sass_probe.py gemm_t 128 128 8 3 CHAINS=1 SPLIT_K=3   # constexprs overridden by name

Prints registers, stack (spills) and the count of each memory / matrix instruction per kernel. What
to look for: ``LDG.E.128`` for the words (16-byte loads), no ``STS``/``LDSM``/``STSM`` in a GEMV
(a shared-memory layout conversion per step), ``HGMMA`` or ``HMMA`` in ``gemm_t``. Costs no device
time: Triton compiles for a named target (``GPUTarget("cuda", 90, 32)``) and ships ``cuobjdump``.
Shapes: K=5120, N=5120, group 128 (bk8 16); the ints are marked divisible by 16 like the JIT does.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_OPS = r"\b(LDG\.E[\.\w]*|LDGSTS[\.\w]*|STG\.E[\.\w]*|LDS[\.\w]*|STS[\.\w]*|LDSM[\.\w]*|STSM[\.\w]*|HMMA[\.\w]*|HGMMA[\.\w]*)"
_PTRS = {"x_ptr": "*bf16", "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*u8", "bias_ptr": "*bf16", "out_ptr": "*bf16"}


def summarize(kernel) -> str:
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([f"{tools}/cuobjdump", "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([f"{tools}/cuobjdump", "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    res = re.search(r"REG:\d+ STACK:\d+ SHARED:\d+", usage)
    return f"{res.group(0) if res else '?'} {dict(collections.Counter(re.findall(_OPS, sass)))}"


def compile_sm90(fn, ints: list[str], consts: dict, warps: int, stages: int, ptrs: dict | None = None):
    ptrs = _PTRS if ptrs is None else ptrs
    sig = {**ptrs, **{name: "i32" for name in ints}, **{name: "constexpr" for name in consts}}
    div16 = {(i,): [["tt.divisibility", 16]] for i in range(len(ptrs) + len(ints))}
    src = ASTSource(fn, signature=sig, constexprs=consts, attrs=div16)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def main() -> None:
    kind, *vals = sys.argv[1:]
    v = [int(a) for a in vals if "=" not in a]
    overrides = {k: int(x) for k, x in (a.split("=") for a in vals if "=" in a)}
    if kind == "gemv":
        from fvq_awq.kernels.gemv import _awq_gemv_kernel

        bn, r, w = v[:3]
        consts = {"GROUP": 128, "BK8": 16, "R": r, "BLOCK_N": bn, "SPLIT_K": 1, "HAS_BIAS": False, "EVEN_N": True}
        consts.update(overrides)
        k = compile_sm90(_awq_gemv_kernel, ["N", "K", "K8", "G", "stride_xm", "stride_om"], consts,
                         w, v[3] if len(v) > 3 else 3, {**_PTRS, "ws_ptr": "*fp32", "lock_ptr": "*i32"})
    else:
        from fvq_awq.kernels.gemm import _awq_gemm_t_kernel

        bm, bn, w, s = v[:4]
        consts = {"GROUP": 128, "BK8": 16, "R": 1, "BLOCK_M": bm, "BLOCK_N": bn, "SPLIT_K": 1, "HAS_BIAS": False,
                  "SCALE_AFTER": True, "PREFETCH_SZ": False, "PACKED": True, "CHAINS": 2, "SCALE_IN": False, "GPS": 1}
        consts.update(overrides)
        if consts["SCALE_IN"]:
            consts["SCALE_AFTER"] = False  # (the plan makes them exclusive)
        k = compile_sm90(_awq_gemm_t_kernel, ["M", "N", "K", "K8", "G", "stride_xm", "stride_om"], consts, w, s,
                         {**_PTRS, "ws_ptr": "*fp32", "lock_ptr": "*i32"})
    print(kind, vals, summarize(k))


if __name__ == "__main__":
    main()
