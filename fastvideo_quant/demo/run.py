"""``fvq demo``: quantize a seeded demo DiT with every available method, load it back, compare with float32.

For each method: the same code as ``fvq quantize`` writes the checkpoint, the config is
selected from that checkpoint (``resolve_quant_config(checkpoint=...)``), the model is
built with it and loaded with ``load_checkpoint``, and its output on a fixed input is
compared with the float32 model holding the original weights. With ``tp > 1`` the same
checkpoints are loaded on ``tp`` real ranks (gloo on CPU) and compared with TP=1.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, DemoDiT, random_state_dict
from fastvideo_quant.errors import ConfigError
from fastvideo_quant.layers.linear import LinearBase
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.plugins.failures import PluginLoadWarning, capital
from fastvideo_quant.plugins.manager import get_plugin_failures, get_registry
from fastvideo_quant.quantization.base import QuantizationConfig
from fastvideo_quant.quantization.selection import resolve_quant_config
from fastvideo_quant.quantize import builds_unquantized, check_device, quantize_checkpoint, quantizing_options

#: How the error of a method that failed in the TP comparison (after its TP=1 run) begins.
TP_STAGE = "at TP="


@dataclasses.dataclass
class MethodResult:
    """One row of the demo table; ``error`` or ``skipped`` set when there are no numbers."""

    method: str
    act_dtype: str = ""
    linear_bytes: int = 0
    bytes_ratio: float = float("nan")
    rel_err: float = float("nan")
    cosine: float = float("nan")
    quantize_s: float = float("nan")
    forward_ms: float = float("nan")
    tp_rel_diff: float | None = None
    #: rel err vs float32 of the TP=1 output ``tp_rel_diff`` compares with: ``rel_err`` itself, or that of the TP=1
    #: re-run on the ranks' device when they could not run where TP=1 ran (its kernels, hence its error, may differ).
    tp_ref_rel_err: float | None = None
    skipped: str | None = None
    error: str | None = None
    output: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    #: The checkpoint the method loaded: its ``fvq quantize`` output, or the float one for a method that builds
    #: unquantized layers (nothing to quantize).
    checkpoint: str = ""


def available_methods(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """Registered methods that can run on ``device`` (unquantized first), and why the others cannot."""
    runnable, skipped = [], {}
    for name in sorted(get_registry().by_name, key=lambda n: (n != "unquantized", n)):
        reason = why_not_runnable(get_registry().by_name[name].config_cls, device)
        if reason:
            skipped[name] = reason
        else:
            runnable.append(name)
    return runnable, skipped


def why_not_runnable(cls: type[QuantizationConfig], device: torch.device) -> str | None:
    reason = cls.unavailable_reason()
    if reason:
        return reason
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        need = cls.get_min_capability()
        if major * 10 + minor < need:
            return f"needs compute capability {need // 10}.{need % 10}; this GPU has {major}.{minor}"
    elif cls.cpu_support() is None:
        return "needs a CUDA GPU (no CPU path)"
    return None


def activation_dtype(cls: type[QuantizationConfig]) -> torch.dtype:
    """bf16 when the method takes it, else float32, else float16."""
    supported = cls.get_supported_act_dtypes()
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        if dtype in supported:
            return dtype
    raise ValueError(f"method {cls.get_name()!r} supports none of bf16/fp32/fp16 activations: {supported}")


def write_demo_checkpoint(cfg: DemoConfig, directory: Path, seed: int) -> dict[str, torch.Tensor]:
    """The seeded bf16 checkpoint as a Hugging Face-style directory; returns its tensors."""
    directory.mkdir(parents=True, exist_ok=True)
    sd = random_state_dict(cfg, seed)
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return sd


def write_calibration(model: DemoDiT, x: torch.Tensor, path: Path) -> None:
    """Each linear layer's input on ``x``, keyed by checkpoint module name (fused layers under each part)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, LinearBase):
            def hook(mod, args, _name=name):
                captured[_name] = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.bfloat16)
            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    tensors = {}
    for name, acts in captured.items():
        parent, _, leaf = name.rpartition(".")
        for part in model.packed_modules_mapping.get(leaf, [leaf]):
            tensors[f"{parent}.{part}" if parent else part] = acts.clone()
    save_file(tensors, str(path))


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of the model's linear layers."""
    seen: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, LinearBase):
            for t in list(module.parameters()) + list(module.buffers()):
                seen[id(t)] = t
    return sum(t.numel() * t.element_size() for t in seen.values())


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Relative error ``||out - ref|| / ||ref||`` and cosine similarity, in float32."""
    out, ref = out.float().flatten(), ref.float().flatten()
    rel = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=0).item()
    return rel, cos


def load_model(cfg: DemoConfig, ckpt: Path, dtype: torch.dtype, device: torch.device) -> DemoDiT:
    """Select the config from the checkpoint, build the model with it and load the checkpoint."""
    quant_config = resolve_quant_config(checkpoint=ckpt)
    with torch.device(device):
        model = DemoDiT(cfg, dtype, quant_config)
    load_checkpoint(model, ckpt)
    return model.eval()


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> tuple[torch.Tensor, float]:
    """The output and the median forward time in ms (after one warm-up run)."""
    with torch.no_grad():
        out = model(x)
        times = []
        for _ in range(repeats):
            _sync(x.device)
            start = time.perf_counter()
            model(x)
            _sync(x.device)
            times.append((time.perf_counter() - start) * 1000)
    return out, statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_method(name: str, cfg: DemoConfig, src: Path, work: Path, calibration: Path, x: torch.Tensor,
               ref: torch.Tensor, bf16_bytes: int, device: torch.device,
               options: dict[str, Any] | None = None) -> MethodResult:
    """Quantize (with the config keys ``options``, as ``fvq quantize --config`` takes them), load and evaluate one
    method."""
    cls = get_registry().by_name[name].config_cls
    dtype = activation_dtype(cls)
    result = MethodResult(name, act_dtype=str(dtype).removeprefix("torch."))
    start = time.perf_counter()
    options = dict(options or {})
    if builds_unquantized(cls.from_config(dict(options)), "probe"):
        ckpt = src  # the baseline: its layers load the float checkpoint as it is
    else:
        ckpt = work / name
        # fvq quantize refuses calibration for a config that declares it ignores activations (int8, dynamic fp8)
        reads = cls.from_config(quantizing_options(cls, dict(options))).uses_calibration() is not False
        quantize_checkpoint(src, ckpt, name, options=options, calibration=calibration if reads else None, force=True)
    result.quantize_s = time.perf_counter() - start
    result.checkpoint = str(ckpt)
    model = load_model(cfg, ckpt, dtype, device)
    out, result.forward_ms = time_forward(model, x.to(device, dtype))
    result.output = out.float().cpu()
    result.rel_err, result.cosine = compare(result.output, ref)
    result.linear_bytes = linear_bytes(model)
    result.bytes_ratio = result.linear_bytes / bf16_bytes
    return result


def check_sizes(cfg: DemoConfig, flag: str = "--") -> None:
    """Refuse demo model sizes it cannot be built with (before anything is quantized): each a positive int, the
    hidden size a multiple of the heads, the heads of the KV heads. ``flag``: how messages spell a size's name
    (``--hidden-size`` for the command line)."""
    def name(field: str) -> str:
        return flag + field.replace("_", "-") if flag == "--" else field

    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name(field.name)} must be a positive int, found {value!r}")
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"{name('hidden_size')} {cfg.hidden_size} is not a multiple of {name('num_heads')} "
                          f"{cfg.num_heads}: each head takes hidden_size / num_heads features")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ConfigError(f"{name('num_heads')} {cfg.num_heads} is not a multiple of {name('num_kv_heads')} "
                          f"{cfg.num_kv_heads}: each KV head serves num_heads / num_kv_heads query heads")


def check_tp(cfg: DemoConfig, tp: int, what: str = "tp") -> None:
    """Refuse a TP size the demo model's heads or MLP cannot be split over (before anything is quantized)."""

    def splits(t: int) -> bool:
        heads, kv = cfg.num_heads, cfg.num_kv_heads
        return heads % t == 0 and (kv % t == 0 or t % kv == 0) and cfg.intermediate_size % t == 0

    if tp < 1:
        raise ConfigError(f"{what} must be >= 1, found {tp}")
    if not splits(tp):
        works = [t for t in range(1, cfg.num_heads + 1) if splits(t)]
        raise ConfigError(
            f"{what} {tp}: the demo model (num_heads {cfg.num_heads}, num_kv_heads {cfg.num_kv_heads}, "
            f"intermediate_size {cfg.intermediate_size}) cannot be split over {tp} ranks; TP sizes that work: {works}"
        )


def check_workdir(workdir: str | Path | None, what: str = "workdir") -> None:
    """Refuse a workdir that is a file, or a non-empty directory that a previous demo did not write."""
    if workdir is None:
        return
    work = Path(workdir)
    if work.exists() and not work.is_dir():
        raise ConfigError(f"{what} {str(work)!r} exists and is not a directory; choose a new or empty directory")
    if work.is_dir() and any(work.iterdir()) and not _is_demo_workdir(work):
        raise ConfigError(
            f"{what} {str(work)!r} is not empty and is not a previous fvq demo's workdir (no bf16/config.json of "
            "the demo model); the demo writes bf16/, calibration.safetensors and one checkpoint per method there. "
            "Choose a new or empty directory"
        )


def _is_demo_workdir(work: Path) -> bool:
    try:
        return json.loads((work / "bf16" / "config.json").read_text()).get("model_type") == "fvq-demo-dit"
    except (OSError, ValueError, AttributeError):
        return False


def run_demo(cfg: DemoConfig | None = None, methods: list[str] | None = None, tp: int = 1, seed: int = 0,
             device: str | None = None, workdir: str | Path | None = None,
             log: Callable[[str], None] = print, options: dict[str, Any] | None = None) -> list[MethodResult]:
    """Run the demo; returns one result per method (errors and skips included), printing progress to ``log``.
    ``options``: the config keys of the one method in ``methods`` (``fvq demo --config``)."""
    if options is not None and len(methods or []) != 1:
        raise ConfigError(f"options give one method's config keys: pass exactly one method, found {methods!r}")
    cfg = cfg or DemoConfig()
    check_sizes(cfg, "")
    dev = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_tp(cfg, tp)
    check_workdir(workdir)
    with tempfile.TemporaryDirectory(prefix="fvq-demo-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        src = work / "bf16"
        write_demo_checkpoint(cfg, src, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(1, cfg.num_tokens, cfg.in_channels, generator=gen)
        calib_x = torch.randn(1, cfg.num_tokens, cfg.in_channels, generator=gen)
        reference = load_model(cfg, src, torch.float32, torch.device("cpu"))
        calibration = work / "calibration.safetensors"
        write_calibration(reference, calib_x, calibration)
        with torch.no_grad():
            ref = reference(x)
        with torch.device("meta"):
            bf16_bytes = linear_bytes(DemoDiT(cfg, torch.bfloat16))
        runnable, skipped = available_methods(dev)
        wanted = methods or runnable + sorted(skipped) + sorted(get_registry().conflicts)
        results = []
        for name in wanted:
            if name in skipped:
                results.append(MethodResult(name, skipped=skipped[name]))
                continue
            if name not in runnable:  # unknown, two plugins register it, or its plugin failed to load: say which
                results.append(MethodResult(name, error=_not_registered(name)))
                continue
            log(f"  {name}: quantizing, loading, running on {dev} ...")
            try:
                results.append(run_method(name, cfg, src, work, calibration, x, ref, bf16_bytes, dev, options))
            except Exception as exc:  # noqa: BLE001 - one failing method is reported, the rest still run
                results.append(MethodResult(name, error=f"{type(exc).__name__}: {exc}"))
        if tp > 1:
            _run_tp(results, cfg, work, x, ref, tp, log, dev)
    return results


def _not_registered(name: str) -> str:
    """Why ``name`` is not a registered method: the selection's own message (the available names, a plugin that
    failed to load, two plugins registering it)."""
    from fastvideo_quant.quantization.selection import method_problem

    # (not reached without a problem: run_demo asks only for names neither runnable nor skipped)
    return method_problem(name) or "registered, but not listed as runnable or skipped"


def tp_device_type(tp: int) -> str:
    """Where the TP ranks run: one GPU each if there are enough (NCCL), else all on the CPU (gloo)."""
    from fastvideo_quant.testing.distributed import default_backend

    return "cuda" if default_backend(tp) == "nccl" else "cpu"


def _run_tp(results: list[MethodResult], cfg: DemoConfig, work: Path, x: torch.Tensor, ref32: torch.Tensor, tp: int,
            log: Callable[[str], None], run_device: torch.device) -> None:
    from fastvideo_quant.testing.distributed import run_distributed

    todo = {r.method: (r.act_dtype, r.checkpoint) for r in results if r.output is not None}
    if not todo:
        return
    kind = tp_device_type(tp)
    log(f"  tensor parallel: loading {len(todo)} checkpoint(s) on {tp} ranks ({kind}) ...")
    backend = "nccl" if kind == "cuda" else "gloo"  # the ranks' tensors live where the backend can reduce them
    outputs = run_distributed(tp_worker, tp, dataclasses.asdict(cfg), todo, x, kind, backend=backend)[0]
    # Compare like with like: a method's kernels differ by device (e.g. fp8 W8A16 on GPU at small M, W8A8 on
    # CPU), so when the ranks cannot run where TP=1 ran, TP=1 is re-run here on their device for the comparison.
    reference = {r.method: r.output for r in results}
    if kind != run_device.type:
        log(f"  tensor parallel: fewer GPUs than ranks; TP=1 re-run on {kind} for the comparison")
        reference = tp_worker(0, 1, dataclasses.asdict(cfg), todo, x, kind)
    for r in results:
        if r.method in outputs:
            out, ref = outputs[r.method], reference.get(r.method)
            if isinstance(out, str):
                r.error = f"{TP_STAGE}{tp}: {out}"
            elif isinstance(ref, str):
                r.error = f"{TP_STAGE}1 on {kind}: {ref}"
            else:
                r.tp_rel_diff = compare(out, ref)[0]
                r.tp_ref_rel_err = r.rel_err if kind == run_device.type else compare(ref, ref32)[0]


def tp_worker(rank: int, world_size: int, cfg_dict: dict[str, Any], methods: dict[str, tuple[str, str]], x: torch.Tensor,
              device_type: str = "cpu") -> dict[str, torch.Tensor | str]:
    """One TP rank: load each method's checkpoint (``methods``: name → (activation dtype, checkpoint); this rank's
    shards) and run ``x``; errors as strings.

    ``device_type`` "cuda" puts rank ``r`` on ``cuda:r``; "cpu" keeps it on the CPU.
    """
    cfg = DemoConfig(**cfg_dict)
    device = torch.device(f"cuda:{rank}") if device_type == "cuda" else torch.device("cpu")
    outputs: dict[str, torch.Tensor | str] = {}
    for name, (dtype_name, checkpoint) in methods.items():
        dtype = getattr(torch, dtype_name)
        try:
            model = load_model(cfg, Path(checkpoint), dtype, device)
            with torch.no_grad():
                outputs[name] = model(x.to(device, dtype)).float().cpu()
        except Exception as exc:  # noqa: BLE001 - reported in the table
            outputs[name] = f"{type(exc).__name__}: {exc}"
    return outputs


def _whose(method: str) -> str:
    """`` in plugin 'p' (distribution 'd')`` for a registered method: whom a failure is to be reported to."""
    from fastvideo_quant.plugins import get_registry

    reg = get_registry().by_name.get(method)
    return f" in {reg.origin}" if reg is not None else ""


def format_table(results: list[MethodResult], tp: int = 1) -> str:
    """The demo's result table as aligned text."""
    header = ["method", "act", "linear KiB", "vs bf16", "rel err", "cosine", "quantize s", "forward ms"]
    if tp > 1:
        header.append(f"TP={tp} vs TP=1")
    rows = [header]
    notes = []
    for r in results:
        # (a method that ran at TP=1 and failed only at its TP comparison keeps its TP=1 numbers, a NaN output its
        # nan; the TP column says FAILED)
        ran = not r.skipped and (r.error is None or r.error.startswith(TP_STAGE))
        if r.skipped or r.error:
            notes.append(f"{r.method}: skipped: {r.skipped}" if r.skipped else f"{r.method}: FAILED{_whose(r.method)}: {r.error}")
        if not ran:
            rows.append([r.method, "-", "-", "-", "-", "-", "-", "-"] + (["-"] if tp > 1 else []))
            continue
        row = [r.method, r.act_dtype, f"{r.linear_bytes / 1024:,.0f}", f"{r.bytes_ratio:.3f}", f"{r.rel_err:.2e}",
               f"{r.cosine:.6f}", f"{r.quantize_s:.2f}", f"{r.forward_ms:.1f}"]
        if tp > 1:
            row.append(f"{r.tp_rel_diff:.1e}" if r.tp_rel_diff is not None else "FAILED" if r.error else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


def main(cfg: DemoConfig | None = None, methods: list[str] | None = None, tp: int = 1, seed: int = 0,
         device: str | None = None, workdir: str | None = None, options: dict[str, Any] | None = None) -> int:
    """Run the demo and print the table; exit status 1 if a method failed."""
    cfg = cfg or DemoConfig()
    check_sizes(cfg, "")  # (the command line checked them already, under their flags' names)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"fvq demo: {cfg.num_layers}-block DiT (hidden {cfg.hidden_size}, heads {cfg.num_heads}/{cfg.num_kv_heads} "
          f"kv, mlp {cfg.intermediate_size}, {cfg.num_tokens} tokens) on {dev}, TP={tp}; "
          "reference: float32 with the original bf16 weights")
    start = time.perf_counter()
    broken = []
    if not methods:  # every method: a plugin that failed to load is a failure of the demo, reported below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginLoadWarning)
            broken = get_plugin_failures()
    results = run_demo(cfg, methods, tp, seed, device, workdir, options=options)
    print()
    print(format_table(results, tp))
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    for failure in broken:
        print(f"fvq demo: error: {failure.problem}; its methods did not run. {capital(failure.fix)}", file=sys.stderr)
    failed = [r.method for r in results if r.error]
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed or broken else 0
