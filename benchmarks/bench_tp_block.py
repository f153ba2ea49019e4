"""Issue 6: the demo's DiT block (bf16 and each method) at TP=1 vs TP=N on one host, one process per GPU (NCCL).

    torchrun --nproc-per-node 1 benchmarks/bench_tp_block.py --methods unquantized fp8 int8 awq
    torchrun --nproc-per-node 2 benchmarks/bench_tp_block.py --methods unquantized fp8 int8 awq

Each run writes ``tp_block_tp<N>_<gpu>_<date>.json`` (time per forward, weight bytes per GPU, output norm
and finiteness — compare the norm with the TP=1 file as a cheap consistency check). Block sizes follow a
Wan-14B-style block (hidden 5120, 40 heads of 128, MLP 13824), so its linears have the benchmark's DiT shapes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from fastvideo_quant.bench import weight_bytes
from fastvideo_quant.demo.model import DemoConfig, DemoDiT, random_state_dict
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config

CFG = DemoConfig(hidden_size=5120, num_heads=40, num_kv_heads=40, intermediate_size=13824, num_layers=1,
                 in_channels=64, num_tokens=4096)


def write_checkpoint(method: str, directory: Path, device: str = "cuda") -> None:
    """The block's checkpoint in ``method``'s own format (rank 0 only)."""
    sd = random_state_dict(CFG, seed=0)
    config: dict = CFG.to_dict()
    if method != "unquantized":
        quantizer = get_quantization_config(method).from_config({})
        out = {}
        for name, t in sd.items():
            module = name.rsplit(".", 1)[0]
            if name.endswith(".weight") and t.dim() == 2 and module.startswith("blocks."):
                out |= {f"{module}.{k}": v.cpu() for k, v in quantizer.quantize_weight(t.to(device), prefix=module).items()}
            else:
                out[name] = t
        sd = out
        config["quantization_config"] = {**quantizer.to_dict(), "modules_to_not_convert": ["patch_embed", "proj_out"]}
    save_file(sd, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))


def weights_only(methods: list[str]) -> dict[str, int]:
    """Per-GPU weight bytes at TP=1 on CPU, no timing (the byte counts do not depend on the device)."""
    out = {}
    for method in methods:
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(method, Path(tmp), device="cpu")
            model = DemoDiT(CFG, torch.bfloat16, resolve_quant_config(checkpoint=tmp))
            load_checkpoint(model, tmp)
        out[method] = weight_bytes(model.blocks[0])  # parameters and buffers (methods may repack into buffers)
        print(f"{method}: {out[method] / 2**20:.1f} MiB")
    return out


def time_ms(fn, iters: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dist.barrier()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="+", default=["unquantized"])
    ap.add_argument("--tokens", nargs="+", type=int, default=[4096, 32768])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--weights-only", action="store_true", help="print per-GPU weight bytes at TP=1 (CPU) and exit")
    args = ap.parse_args()
    if args.weights_only:
        weights_only(args.methods)
        return
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    rows = []
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            shared = [tmp]
            dist.broadcast_object_list(shared, src=0)  # every rank reads rank 0's directory (one host)
            directory = Path(shared[0])
            if rank == 0:
                write_checkpoint(method, directory)
            dist.barrier()
            qc = resolve_quant_config(checkpoint=directory)
            with torch.device("cuda"):
                model = DemoDiT(CFG, torch.bfloat16, qc)
            load_checkpoint(model, directory)
            dist.barrier()
        block = model.blocks[0]
        wbytes = weight_bytes(block)
        for tokens in args.tokens:
            gen = torch.Generator(device="cuda").manual_seed(tokens)
            x = torch.randn(1, tokens, CFG.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)
            with torch.no_grad():
                out = block(x)
                ms = time_ms(lambda x=x, block=block: block(x))
            rows.append({"method": method, "tp": world, "tokens": tokens, "ms": ms, "weight_bytes_per_gpu": wbytes,
                         "out_norm": out.float().norm().item(), "finite": bool(torch.isfinite(out).all())})
            if rank == 0:
                print(f"{method} tp={world} tokens={tokens}: {ms:.2f} ms, weights/GPU {wbytes / 2**20:.0f} MiB")
        del model, block
        torch.cuda.empty_cache()
    if rank == 0:
        env = {"gpu": torch.cuda.get_device_name(), "gpus": world, "torch": torch.__version__,
               "nccl": ".".join(map(str, torch.cuda.nccl.version())), "date": dt.date.today().isoformat()}
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]).strip("-").lower()
        path = Path(args.out) / f"tp_block_tp{world}_{gpu}_{env['date']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
        print(f"wrote {path}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
