"""Peak host memory (RSS) of ``fvq quantize`` and ``load_checkpoint`` on a Llama-shaped synthetic checkpoint.

    python benchmarks/memory_peak.py make /tmp/fvq-mem/src            # ~2.5 GB of bf16, 3 shards + index
    python benchmarks/memory_peak.py run /tmp/fvq-mem --out benchmarks/results

``run`` measures each operation in a fresh child process (``child``): the RSS after importing torch and
fastvideo_quant and loading the plugins is the baseline; a thread samples ``/proc/self/status`` every 5 ms
(RssAnon: process memory; RssFile: pages of mmapped files, the safetensors reads) and ``VmHWM`` gives the
peak. Reported: peak RSS above the baseline, with the anonymous and file-backed parts at their own peaks, against
what streaming needs (the output or model size, plus the largest tensor in float32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

MIB = 2**20
HIDDEN, INTER, HEADS, VOCAB = 4096, 11008, 32, 32000
LINEARS = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
           "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
           "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN), "mlp.down_proj": (HIDDEN, INTER)}


def hf_config(layers: int) -> dict:
    return {"model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": INTER, "num_attention_heads": HEADS,
            "num_key_value_heads": HEADS, "num_hidden_layers": layers, "vocab_size": VOCAB}


def make(src: Path, layers: int, files: int, calibration_tokens: int) -> None:
    """The bf16 checkpoint (``files`` shards with an index), config.json, and a calibration file for AWQ."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * shape[-1] ** -0.5).to(torch.bfloat16)

    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes |= {f"{p}.input_layernorm.weight": (HIDDEN,), f"{p}.post_attention_layernorm.weight": (HIDDEN,)}
        shapes |= {f"{p}.{name}.weight": shape for name, shape in LINEARS.items()}
    shapes |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    src.mkdir(parents=True, exist_ok=True)
    weight_map, part, size, index = {}, {}, 0, 0
    for k, (name, shape) in enumerate(shapes.items()):
        part[name] = w(*shape) if len(shape) == 2 else torch.ones(shape, dtype=torch.bfloat16)
        size += part[name].numel() * 2
        if size >= total / files or k == len(shapes) - 1:
            index += 1
            fname = f"model-{index:05d}-of-{files:05d}.safetensors"
            save_file(part, str(src / fname), metadata={"format": "pt"})
            weight_map |= {n: fname for n in part}
            part, size = {}, 0
    assert index == files, f"wrote {index} files, expected {files}"
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}, indent=1))
    (src / "config.json").write_text(json.dumps(hf_config(layers), indent=1))
    calib = {n[: -len(".weight")]: torch.randn(calibration_tokens, shapes[n][1], generator=gen)
             for n in shapes if "layers" in n and len(shapes[n]) == 2}
    save_file(calib, str(src.parent / "calib.safetensors"))
    print(f"wrote {src}: {total / MIB:,.0f} MiB of bf16 in {files} files, and {src.parent / 'calib.safetensors'}")


def build_model(layers: int, quant_config):
    """A Llama-shaped model of our layers whose parameter names are the checkpoint's (q/k/v and gate/up fused)."""
    import torch
    from torch import nn

    from fastvideo_quant.layers.linear import (
        MergedColumnParallelLinear,
        QKVParallelLinear,
        ReplicatedLinear,
        RowParallelLinear,
    )

    dt = torch.bfloat16

    def block(p: str) -> nn.Module:
        b = nn.Module()
        b.input_layernorm = nn.RMSNorm(HIDDEN, dtype=dt)
        b.post_attention_layernorm = nn.RMSNorm(HIDDEN, dtype=dt)
        b.self_attn, b.mlp = nn.Module(), nn.Module()
        b.self_attn.qkv_proj = QKVParallelLinear(HIDDEN, HIDDEN // HEADS, HEADS, HEADS, bias=False, params_dtype=dt,
                                                 quant_config=quant_config, prefix=f"{p}.self_attn.qkv_proj")
        b.self_attn.o_proj = RowParallelLinear(HIDDEN, HIDDEN, bias=False, params_dtype=dt, quant_config=quant_config,
                                               prefix=f"{p}.self_attn.o_proj")
        b.mlp.gate_up_proj = MergedColumnParallelLinear(HIDDEN, [INTER] * 2, bias=False, params_dtype=dt,
                                                        quant_config=quant_config, prefix=f"{p}.mlp.gate_up_proj")
        b.mlp.down_proj = RowParallelLinear(INTER, HIDDEN, bias=False, params_dtype=dt, quant_config=quant_config,
                                            prefix=f"{p}.mlp.down_proj")
        return b

    model = nn.Module()
    model.model = nn.Module()
    model.model.embed_tokens = nn.Embedding(VOCAB, HIDDEN, dtype=dt)
    model.model.layers = nn.ModuleList(block(f"model.layers.{i}") for i in range(layers))
    model.model.norm = nn.RMSNorm(HIDDEN, dtype=dt)
    model.lm_head = ReplicatedLinear(HIDDEN, VOCAB, bias=False, params_dtype=dt, quant_config=quant_config,
                                     prefix="lm_head")
    return model


# --- measuring, in the child ----------------------------------------------------------------------------------

def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Max of RssAnon and RssFile, and the phase (``self.phase``) at the peak of their sum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.phase, self.peaks, self.at_peak, self.running = "start", {"RssAnon": 0, "RssFile": 0, "sum": 0}, "", True

    def run(self) -> None:
        while self.running:
            s = _status()
            for k in ("RssAnon", "RssFile"):
                self.peaks[k] = max(self.peaks[k], s[k])
            if s["RssAnon"] + s["RssFile"] > self.peaks["sum"]:
                self.peaks["sum"], self.at_peak = s["RssAnon"] + s["RssFile"], self.phase
            time.sleep(0.005)


def child(args: argparse.Namespace) -> None:
    import torch

    import fastvideo_quant.quantize  # noqa: F401 - the baseline includes the package
    from fastvideo_quant.quantization import resolve_quant_config

    for name in ("int8", "fp8"):  # and the plugins, loaded on first use
        resolve_quant_config(name)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    base = _status()
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    result: dict = {}
    if args.op == "quantize":
        from fastvideo_quant.quantize import quantize_checkpoint

        def progress(done: int, total: int, name: str) -> None:
            sampler.phase = name

        from fastvideo_quant.checkpoint_writer import DEFAULT_MAX_SHARD_BYTES, parse_size

        shard = parse_size(args.max_shard_size) if args.max_shard_size else DEFAULT_MAX_SHARD_BYTES
        report = quantize_checkpoint(args.src, args.dst, args.method, calibration=args.calibration, force=True,
                                     progress=progress, max_shard_bytes=shard)
        result["output_bytes"] = report.bytes_out
    else:
        from fastvideo_quant.loader import load_checkpoint

        qc = resolve_quant_config(checkpoint=args.src)
        layers = json.loads((Path(args.src) / "config.json").read_text())["num_hidden_layers"]
        sampler.phase = "build"
        model = build_model(layers, qc)
        sampler.phase = "load"
        load_checkpoint(model, args.src)
        tensors = list(model.parameters()) + list(model.buffers())
        result["model_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
    sampler.running = False
    sampler.join()
    end = _status()
    print(json.dumps({**result, "seconds": time.perf_counter() - t0, "baseline": base["VmRSS"],
                      "peak": end["VmHWM"], "peak_anon": sampler.peaks["RssAnon"], "peak_file": sampler.peaks["RssFile"],
                      "base_anon": base["RssAnon"], "base_file": base["RssFile"], "at_peak": sampler.at_peak,
                      "end": end["VmRSS"]}))


# --- the driver -------------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def largest_f32(path: Path) -> int:
    """Bytes of the largest tensor of the checkpoint, in float32."""
    from safetensors import safe_open

    best = 0
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            for n in h.keys():
                shape = h.get_slice(n).get_shape()
                best = max(best, 4 * math.prod(shape))
    return best


def measure(*argv: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "child", *argv], check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> None:
    import torch

    root = Path(args.root)
    src = root / "src"
    rows = []
    jobs = [(m, [], "") for m in args.methods]
    if args.awq_calibration:
        jobs.append(("awq", ["--calibration", str(root / "calib.safetensors")], "-calib"))
    if args.small_shards:
        jobs.append((args.methods[0], ["--max-shard-size", args.small_shards], "-shards"))
    for method, extra, tag in jobs:
        r = measure("quantize", str(src), "--dst", str(root / (method + tag)), "--method", method, *extra)
        bound = r["output_bytes"] + 2 * largest_f32(src)
        shown = " ".join(a if a.startswith("--") else a.rsplit("/", 1)[-1] for a in extra)
        rows.append({"op": f"fvq quantize --method {method} {shown}".strip(),
                     "size": checkpoint_bytes(src), "out": r["output_bytes"], "bound": bound, **r})
        print(rows[-1], flush=True)
    for name in ["src", *[m for m in args.methods]]:
        ckpt = root / name
        r = measure("load", str(ckpt))
        bound = r["model_bytes"] + 2 * largest_f32(ckpt)
        rows.append({"op": f"load_checkpoint({name if name != 'src' else 'bf16'})", "size": checkpoint_bytes(ckpt),
                     "out": r["model_bytes"], "bound": bound, **r})
        print(rows[-1], flush=True)
    stamp = time.strftime("%Y-%m-%d")
    host = f"cpu-{platform.machine()}-{os.cpu_count()}core"
    lines = [f"# Peak host memory: fvq quantize and load_checkpoint ({stamp})", "",
             f"Machine: {_cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, "
             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, no GPU, Linux "
             f"{platform.release()}; torch {torch.__version__}, "
             f"Python {platform.python_version()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}. "
             f"`python benchmarks/memory_peak.py run {' '.join(sys.argv[2:])}` (checkpoint from `make`: Llama-shaped, "
             "hidden 4096, MLP 11008, vocab 32000, 5 layers, bf16, 3 shards with an index; fvq quantize writes "
             "--max-shard-size 5GB unless given). Peak = VmHWM minus the RSS after importing torch "
             "and fastvideo_quant and loading the plugins; anon/file = RssAnon/RssFile peaks above their baseline "
             "(file: mmapped safetensors pages). Bound = output (quantize) or model (load) bytes + 2x the largest "
             "tensor in float32.", "",
             "| operation | checkpoint | output / model | peak above baseline | anon | file | bound | peak at | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['size'] / MIB:,.0f} MiB | {r['out'] / MIB:,.0f} MiB | "
                     f"{(r['peak'] - r['baseline']) / MIB:,.0f} MiB | {(r['peak_anon'] - r['base_anon']) / MIB:,.0f} | "
                     f"{(r['peak_file'] - r['base_file']) / MIB:,.0f} | {r['bound'] / MIB:,.0f} MiB | "
                     f"{r['at_peak']} | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        tag = f"_{args.tag.lstrip('_')}" if args.tag else ""
        path = Path(args.out) / f"memory-peak_{host}_{stamp}{tag}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("src")
    m.add_argument("--layers", type=int, default=5)
    m.add_argument("--files", type=int, default=3)
    m.add_argument("--calibration-tokens", type=int, default=32)
    r = sub.add_parser("run")
    r.add_argument("root", help="the folder holding src/ (and calib.safetensors) from make")
    r.add_argument("--methods", nargs="+", default=["int8", "fp8", "awq"])
    r.add_argument("--awq-calibration", action="store_true", help="also awq with make's calib.safetensors")
    r.add_argument("--small-shards", metavar="SIZE", help="also the first method with --max-shard-size SIZE")
    r.add_argument("--out", default=None)
    r.add_argument("--tag", default="")
    c = sub.add_parser("child")
    c.add_argument("op", choices=["quantize", "load"])
    c.add_argument("src")
    c.add_argument("--dst")
    c.add_argument("--method")
    c.add_argument("--calibration")
    c.add_argument("--max-shard-size")
    args = ap.parse_args()
    if args.cmd == "make":
        make(Path(args.src), args.layers, args.files, args.calibration_tokens)
    elif args.cmd == "run":
        run(args)
    else:
        child(args)


if __name__ == "__main__":
    main()
