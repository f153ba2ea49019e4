"""What bounds the weight-streaming kernels at small M? One launch each, profiled by Nsight Compute.

    ncu --clock-control none --profile-from-start off --set full -o OUT/probe python benchmarks/ncu_probe.py

Every kernel is warmed up (compiled, autotuned, launch plans cached) and checked against float32 math first; then
each runs once between ``cudaProfilerStart`` and ``cudaProfilerStop`` so ncu sees exactly these launches:
bf16 ``F.linear`` (cuBLAS, the baseline), the AWQ dispatcher at M=1 (GEMV) and M=16 (``gemm_t``), the round-4 D2
GEMV's best H100 config, and the shared 8-bit small-M kernel (fp8 weights) at M=1 and M=16. K = N = 5120.

``--gemv "bn4 r4 w4 s3" "bn8 r8 w4 s3" ...`` profiles only the AWQ GEMV at M=1 with those tiles (awq_sweep's names).
``--awq K N M "gemm_t bm16 bn64 sk4 r1 w2 s3 pf1" "gemv bn4 r4 w4 s3" ...`` profiles any AWQ kernel configurations
(awq_sweep's full names) at one shape and M.
``--awq-cuda K N M "rowt4 u1 split_k8" "rowt8 u2 split_k2" ...`` profiles the CUDA C++ small-M kernel's tiles
(awq_cuda_probe's names).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from fastvideo_quant.bench import build_layer, rel_err  # noqa: E402

K = N = 5120


def awq_cases(names: list[str], k: int = K, n: int = N, m: int = 1) -> list:
    """AWQ kernel configurations (awq_sweep's names, e.g. ``"gemv bn4 r4 w4 s3"``) on a random group-128 layer."""
    from awq_sweep import make_layer, runner

    wk, zk, sk, lay, W = make_layer(k, n)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    fns = [runner(name, wk, zk, sk, lay) for name in names]
    return [(f"{name} {k}x{n} M={m}", lambda f=f: f(x), x.float() @ W.t()) for name, f in zip(names, fns, strict=True)]


def awq_cuda_cases(names: list[str], k: int, n: int, m: int) -> list:
    """CUDA C++ small-M tiles (``"rowt4 u1 split_k8"``: keyword + value words) on a random group-128 layer."""
    from awq_cuda_probe import parse_tile
    from awq_sweep import make_layer
    from fvq_awq.kernels.small_m_cuda import awq_small_m_cuda

    wk, zk, sk, lay, W = make_layer(k, n)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    cases = []
    for name in names:
        kw = parse_tile(name)
        cases.append((f"cuda {name} {k}x{n} M={m}", lambda kw=kw: awq_small_m_cuda(x, wk, zk, sk, lay, **kw),
                      x.float() @ W.t()))
    return cases


def main() -> None:
    torch.manual_seed(0)
    if "--gemv" in sys.argv:
        return profile(awq_cases([f"gemv {n}" for n in sys.argv[sys.argv.index("--gemv") + 1:]]))
    if "--awq-cuda" in sys.argv:
        k, n, m, *names = sys.argv[sys.argv.index("--awq-cuda") + 1:]
        return profile(awq_cuda_cases(names, int(k), int(n), int(m)))
    if "--awq" in sys.argv:
        k, n, m, *names = sys.argv[sys.argv.index("--awq") + 1:]
        return profile(awq_cases(names, int(k), int(n), int(m)))
    w = (torch.randn(N, K, device="cuda") * K**-0.5).to(torch.bfloat16)
    layers = {m: build_layer(m, w) for m in ("awq", "fp8")}
    cases = []
    for M in (1, 16):
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ w.float().t()
        cases.append((f"bf16 M={M}", lambda x=x: F.linear(x, w), ref))
        for name, layer in layers.items():
            cases.append((f"{name} M={M}", lambda x=x, layer=layer: layer(x)[0], ref))
    import awq_gemv_r4 as r4

    L = r4.Layer(K, N, "cuda")
    d2 = r4.d2(L, bn=64, r=2, w=4, mode=2, red=3, split=5)
    x1 = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    cases.append(("awq-d2 M=1", lambda: d2(x1), x1.float() @ L.W.t()))
    profile(cases)


def profile(cases: list) -> None:
    for name, fn, ref in cases:  # warm up and check
        for _ in range(3):
            out = fn()
        torch.cuda.synchronize()
        err = rel_err(out, ref)
        print(f"{name}: rel err {err:.2e}", flush=True)
        assert err < 0.15, name
    torch.cuda.cudart().cudaProfilerStart()
    for name, fn, _ in cases:
        torch.cuda.nvtx.range_push(name)
        fn()
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled:", ", ".join(c[0] for c in cases))


if __name__ == "__main__":
    main()
