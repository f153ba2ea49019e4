"""How long AWQ's load-time repack (AutoAWQ words -> the kernel layout, ``fvq_awq.layout.repack_to_kernel``) takes on
the GPU, chunked by ``fvq_awq.format.PACK_CHUNK_NUMEL`` as shipped and in one chunk (the layout before the chunking),
with each result checked bit for bit against the CPU repack first.

    python benchmarks/awq_repack_time.py --out DIR     # writes DIR/awq-repack-time.json and prints a table

It runs once per layer per load; this says what the chunking (which bounds the temporaries: 1.5 GiB -> ~120 MiB for a
fused 22016x4096 layer on the CPU) costs in time where the weights are loaded straight onto a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

SHAPES = [(4096, 22016), (4096, 8192), (5120, 13824), (13824, 5120)]  # (in, out): fused gate_up, and DiT widths
GROUP = 128


def awq_tensors(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random AutoAWQ-layout ``qweight [k, n/8]``, ``qzeros [k/g, n/8]`` int32 and ``scales [k/g, n]`` fp16."""
    g = torch.Generator().manual_seed(seed)
    qweight = torch.randint(-2**31, 2**31 - 1, (k, n // 8), generator=g, dtype=torch.int64).to(torch.int32)
    qzeros = torch.randint(-2**31, 2**31 - 1, (k // GROUP, n // 8), generator=g, dtype=torch.int64).to(torch.int32)
    scales = (torch.rand(k // GROUP, n, generator=g) * 0.01 + 1e-3).to(torch.float16)
    return qweight, qzeros, scales


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from fvq_awq import format as awq_format
    from fvq_awq.layout import repack_to_kernel

    shipped = awq_format.PACK_CHUNK_NUMEL
    rows = []
    for i, (k, n) in enumerate(SHAPES):
        cpu = awq_tensors(k, n, seed=i)
        ref = repack_to_kernel(*cpu, GROUP)
        gpu = [t.cuda() for t in cpu]
        row = {"in": k, "out": n}
        for label, chunk in (("chunked", shipped), ("one_chunk", 1 << 40)):
            awq_format.PACK_CHUNK_NUMEL = chunk
            try:
                got = repack_to_kernel(*gpu, GROUP)
                for a, b, name in zip(got[:3], ref[:3], ("qweight_k", "zeros_k", "scales_k"), strict=True):
                    if not torch.equal(a.cpu(), b):
                        raise SystemExit(f"{label} {k}x{n}: {name} differs from the CPU repack")
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                ms = timed(lambda tensors=gpu: repack_to_kernel(*tensors, GROUP), args.reps)
                row[f"{label}_ms"] = statistics.median(ms)
                row[f"{label}_peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            finally:
                awq_format.PACK_CHUNK_NUMEL = shipped
        rows.append(row)
        print(f"{k}x{n}: chunked {row['chunked_ms']:.2f} ms (+{row['chunked_peak_extra_mib']:.0f} MiB), one chunk "
              f"{row['one_chunk_ms']:.2f} ms (+{row['one_chunk_peak_extra_mib']:.0f} MiB)", flush=True)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "group": GROUP, "reps": args.reps,
            "pack_chunk_numel": shipped, "checked": "bit for bit against the CPU repack, each shape and mode"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "awq-repack-time.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
