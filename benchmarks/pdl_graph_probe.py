"""Does programmatic dependent launch (PDL) survive CUDA-graph capture here? A yes/no probe for the W8A8 pair.

    python benchmarks/pdl_graph_probe.py --out-dir DIR

Why: the seventh session's PDL in the W8A8 pair (quantization kernel lets the GEMM start early) gained eager time
at fp8 5120² M=128 but nothing as CUDA graphs; whether torch's stream capture kept the programmatic dependency was
never checked. Kernel A (one program an SM, one warp) calls ``gdc_launch_dependents`` and spins ``--spin-us`` on the
global timer, recording its latest end; kernel B records its earliest start on the global timer, then
``gdc_wait``. B launched with ``launch_pdl`` may start while A runs: ``overlap = A's end - B's start`` > 0. Timed
eager and inside a captured graph, with and without ``launch_pdl`` (the control: no overlap expected). Writes
``pdl-graph-probe_<gpu>_<date>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastvideo_quant.bench import write_json  # noqa: E402


@triton.jit
def _now():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def spin_a(t_ptr, ns):
    gdc_launch_dependents()
    t0 = _now()
    t = t0
    while t - t0 < ns:
        t = _now()
    tl.atomic_max(t_ptr, t)


@triton.jit
def start_b(t_ptr, y_ptr):
    tl.atomic_min(t_ptr + 1, _now())
    gdc_wait()
    tl.store(y_ptr + tl.program_id(0), 1.0)


def run_pair(times: torch.Tensor, y: torch.Tensor, sms: int, ns: int, pdl: bool) -> None:
    spin_a[(sms,)](times, ns, num_warps=1)
    start_b[(sms,)](times, y, num_warps=1, launch_pdl=pdl)


def reset(times: torch.Tensor) -> None:
    times[0] = 0
    times[1] = torch.iinfo(torch.int64).max


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--spin-us", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ns = int(args.spin_us * 1000)
    times = torch.zeros(2, dtype=torch.int64, device="cuda")
    y = torch.zeros(sms, device="cuda")
    res: dict = {"spin_us": args.spin_us, "sms": sms, "triton": triton.__version__, "overlap_us": {}}
    for pdl in (False, True):
        eager = []
        for _ in range(args.repeats):
            reset(times)
            run_pair(times, y, sms, ns, pdl)
            torch.cuda.synchronize()
            eager.append((times[0] - times[1]).item() / 1e3)
        g = torch.cuda.CUDAGraph()
        run_pair(times, y, sms, ns, pdl)  # (compiled before capture)
        torch.cuda.synchronize()
        with torch.cuda.graph(g):
            run_pair(times, y, sms, ns, pdl)
        graph = []
        for _ in range(args.repeats):
            reset(times)
            g.replay()
            torch.cuda.synchronize()
            graph.append((times[0] - times[1]).item() / 1e3)
        res["overlap_us"][f"pdl={pdl}"] = {"eager": eager, "graph": graph}
        print(f"launch_pdl={pdl}: overlap (A end - B start, us) eager {[round(v, 1) for v in eager]}, "
              f"graph {[round(v, 1) for v in graph]}", flush=True)
    print(write_json(args.out_dir, "pdl-graph-probe", res))


if __name__ == "__main__":
    main()
