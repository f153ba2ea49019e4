"""Benchmark harness: any registered method's ``apply`` against bf16 ``F.linear`` in the same run.

For each shape K×N (input × output) and each M, on a CUDA GPU:

* correctness first: relative error of the method vs float32 math of the original
  weight and vs its own de-quantized weight, on fresh random inputs;
* the median of CUDA-event-timed runs after warm-up (``triton.testing.do_bench``,
  which also flushes L2 between runs — by writing 256 MB; ``FVQ_BENCH_FLUSH=read`` reads it
  instead, see :data:`FLUSH`), for bf16 and for the method, then the ratio;
* weight bytes of the method's parameters vs bf16;
* the same two timings with each call captured in a CUDA graph and replayed (``do_bench`` on
  ``graph.replay``): the GPU time alone. Where eager and graph ratios differ, the eager call is
  bound by its host time (Python and launches), not by the GPU;
* at M=1, host overhead: eager ``layer(x)`` minus a CUDA-graph replay of the same call.

With ``rounds`` > 1 each point is timed in that many rounds, bf16 and the method back to back in each (eager and
graph): the table gives the median ratio and its range over the rounds. bf16's own time at large M drifts by ~10%
within a process under sustained GEMMs (``benchmarks/spread_probe.py``), so a single pair of timings can land a
ratio anywhere in that range.

Results go to ``<out>/<method>_<gpu>_<date>.json`` and ``.md``.

:func:`bench_chain` (``fvq bench --chain``) is the model-like measurement beside it: ``L`` layers of distinct weights
(one pass over the method's weights several times L2) called back to back in one CUDA graph, no flush, timed by graph
replays — closer to a diffusion or decode step, where each layer's weight comes from memory but no per-call flush or
launch gap is paid. Results go to ``<out>/<method>-chain_<gpu>_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fastvideo_quant.errors import AccuracyError, PluginError

DIT_SHAPES: list[tuple[int, int]] = [(5120, 5120), (5120, 13824), (13824, 5120), (3072, 12288)]
DIT_MS: list[int] = [1, 16, 128, 1024, 4096, 32768]


@dataclasses.dataclass
class Row:
    method: str
    K: int
    N: int
    M: int
    bf16_ms: float
    method_ms: float
    speedup: float
    rel_err_vs_fp32: float
    rel_err_vs_dequant: float
    weight_bytes_ratio: float
    host_overhead_us: float | None = None
    bf16_graph_ms: float | None = None
    method_graph_ms: float | None = None
    #: Per-round ratios when the point was timed in several alternating rounds (``rounds`` > 1); ``speedup`` is
    #: then their median, and the times are the medians of the rounds' times.
    speedups: list[float] | None = None
    graph_speedups: list[float] | None = None
    #: The dict the method's layers were built from (``from_config``), as ``bench_method`` was given it.
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def speedup_graph(self) -> float | None:
        if self.graph_speedups:
            return statistics.median(self.graph_speedups)
        if self.bf16_graph_ms is None or self.method_graph_ms is None:
            return None
        return self.bf16_graph_ms / self.method_graph_ms


#: Calibration tokens :func:`build_layer` draws for a config that requires them, and their generator's seed.
CALIBRATION_TOKENS = 1024
CALIBRATION_SEED = 1234


def build_layer(method: str, weight: torch.Tensor, config: dict[str, Any] | None = None,
                activations: torch.Tensor | None = None) -> torch.nn.Module:
    """A ReplicatedLinear of ``method`` holding ``weight`` ([N, K]) loaded from the method's own checkpoint format.

    A config that cannot be written without calibration activations (``requires_calibration()``: fp8 with
    ``activation_scheme`` static) and no ``activations`` given gets :data:`CALIBRATION_TOKENS` tokens drawn from
    N(0, 1) — the distribution of the harness's timed inputs — so a static scale fits what is timed."""
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.loader import process_weights_after_loading
    from fastvideo_quant.quantization import get_quantization_config

    cls = get_quantization_config(method)
    quantizer = cls.from_config(dict(config or {}))
    if activations is None and quantizer.requires_calibration() is True:
        gen = torch.Generator(device=weight.device).manual_seed(CALIBRATION_SEED)
        activations = torch.randn(CALIBRATION_TOKENS, weight.shape[1], device=weight.device, dtype=weight.dtype,
                                  generator=gen)
    tensors = quantizer.quantize_weight(weight, prefix="bench", activations=activations)
    serialized = cls.from_config(quantizer.to_dict())
    N, K = weight.shape
    with torch.device(weight.device):
        layer = ReplicatedLinear(K, N, bias=False, params_dtype=weight.dtype, quant_config=serialized, prefix="bench")
    params = dict(layer.named_parameters())
    for suffix, tensor in tensors.items():
        if suffix not in params:
            raise PluginError(f"{method}: quantize_weight produced {suffix!r}, but the layer its config builds has "
                              f"only {sorted(params)}: the method's quantize_weight and create_weights disagree")
        params[suffix].weight_loader(params[suffix], tensor.to(weight.device))
    process_weights_after_loading(layer)
    return layer


def weight_bytes(layer: torch.nn.Module) -> int:
    seen = {id(t): t for t in list(layer.parameters()) + list(layer.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


#: How L2 is emptied before each timed run: ``write`` (``triton.testing.do_bench``'s ``zero_()`` of 256 MB: L2 left
#: full of dirty lines, which the timed call then writes back) or ``read`` (the same buffer summed: L2 full of clean
#: lines, as a decode step finds it after the previous layers' weight reads). ``FVQ_BENCH_FLUSH``; see
#: ``benchmarks/flush_probe.py`` for what the choice costs at small M.
FLUSH = os.environ.get("FVQ_BENCH_FLUSH", "write")
_FLUSH_BYTES = 256 * 1024 * 1024


def median_ms(fn: Callable[[], Any], warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median CUDA-event time of ``fn`` in ms, L2 emptied before each run (:data:`FLUSH`): ``triton.testing.do_bench``
    for ``write``; for ``read`` the same procedure (runs sized from a 5-run estimate) with a read flush."""
    if FLUSH == "write":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    if FLUSH != "read":
        raise ValueError(f"FVQ_BENCH_FLUSH must be 'write' or 'read', found {FLUSH!r}")
    return _median_ms_read_flush(fn, warmup_ms, rep_ms)


def _median_ms_read_flush(fn: Callable[[], Any], warmup_ms: int, rep_ms: int) -> float:
    buf = torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    return median_ms_after(fn, buf.sum, warmup_ms, rep_ms)


def median_ms_after(fn: Callable[[], Any], flush: Callable[[], Any], warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median CUDA-event time of ``fn`` alone in ms, ``flush`` run before each timed call; as many runs as fit
    ``rep_ms`` by a 5-run estimate (``do_bench``'s procedure with a caller-chosen flush)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    reps = max(1, int(rep_ms / estimate))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends, strict=True):
        flush()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def capture_graph(fn: Callable[[], Any]) -> torch.cuda.CUDAGraph:
    """``fn`` captured in a CUDA graph after warm-up on a side stream (autotuners and JITs run there)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_median_ms(fn: Callable[[], Any], warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """:func:`median_ms` of replaying ``fn``'s CUDA graph: the GPU time alone, no host launch cost."""
    return median_ms(capture_graph(fn).replay, warmup_ms, rep_ms)


def host_us(fn: Callable[[], Any], calls: int = 300, warmup: int = 20) -> float:
    """Wall time per call of ``fn`` in µs over back-to-back calls (host time where the GPU is not the limit)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def _captured(fn: Callable[[], Any]) -> torch.cuda.CUDAGraph | None:
    try:
        return capture_graph(fn)
    except Exception:  # noqa: BLE001 - a method that cannot be captured reports no graph time
        return None


def _host_overhead_us(layer: torch.nn.Module, x: torch.Tensor, iters: int = 200) -> float | None:
    """Eager ``layer(x)`` per call minus a CUDA-graph replay of the same call (the GPU work alone)."""
    graph = _captured(lambda: layer(x))
    if graph is None:
        return None

    def per_call(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1000 / iters)
        return statistics.median(times)

    return per_call(lambda: layer(x)) - per_call(graph.replay)


def bench_method(method: str, shapes: Sequence[tuple[int, int]] = DIT_SHAPES, ms: Sequence[int] = DIT_MS,
                 config: dict[str, Any] | None = None, seed: int = 0,
                 log: Callable[[str], None] = print, rounds: int = 1) -> list[Row]:
    """Time ``method`` vs bf16 at every shape and M (``rounds`` alternating rounds each); checks correctness before
    timing."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"bench_method: rounds must be an int >= 1, found {rounds!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("the benchmark needs a CUDA GPU; none is visible")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rows: list[Row] = []
    for K, N in shapes:
        w = (torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16)
        layer = build_layer(method, w, config)
        wb = weight_bytes(layer) / (N * K * 2)
        dq = layer.quant_method.dequantize_weight(layer)
        for M in ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            out = layer.quant_method.apply(layer, x, None)
            ref32 = x.float() @ w.float().T
            ref_dq = x.float() @ dq.T
            e32, edq = rel_err(out, ref32), rel_err(out, ref_dq)
            if not torch.isfinite(out).all():
                raise AccuracyError(f"{method} produced non-finite output at M={M} K={K} N={N}")
            bf16_fn = lambda x=x, w=w: F.linear(x, w)
            method_fn = lambda x=x, layer=layer: layer.quant_method.apply(layer, x, None)
            over = _host_overhead_us(layer, x) if M == 1 else None
            graphs = _captured(bf16_fn), _captured(method_fn)
            times = [_timed_round(bf16_fn, method_fn, graphs) for _ in range(rounds)]
            row = dataclasses.replace(_row(method, K, N, M, times, e32, edq, wb, over), config=dict(config or {}))
            rows.append(row)
            graph = f", graph {row.speedup_graph:.2f}x" if row.speedup_graph is not None else ""
            spread = (f" (rounds: {min(row.speedups):.2f}-{max(row.speedups):.2f}x"
                      + (f", graph {min(row.graph_speedups):.2f}-{max(row.graph_speedups):.2f}x" if row.graph_speedups
                         else "") + ")") if row.speedups else ""
            log(f"{method} K={K} N={N} M={M}: bf16 {row.bf16_ms:.4f} ms, {method} {row.method_ms:.4f} ms, "
                f"{row.speedup:.2f}x{graph}{spread}, rel err {e32:.2e} (vs dequant {edq:.2e})")
        del layer, w, dq
        torch.cuda.empty_cache()
    return rows


def _timed_round(bf16_fn: Callable[[], Any], method_fn: Callable[[], Any],
                 graphs: tuple[torch.cuda.CUDAGraph | None, torch.cuda.CUDAGraph | None]) -> tuple:
    """One round: (bf16 ms, method ms, bf16 graph ms, method graph ms), the graph times None without graphs."""
    g_bf16, g_m = graphs
    return (median_ms(bf16_fn), median_ms(method_fn), None if g_bf16 is None else median_ms(g_bf16.replay),
            None if g_m is None else median_ms(g_m.replay))


def _row(method: str, K: int, N: int, M: int, times: Sequence[tuple], e32: float, edq: float, wb: float,
         over: float | None) -> Row:
    """A table row from one or more rounds' times: medians of the times; with several rounds, the per-round
    ratios too (``speedup`` their median)."""
    def med(i: int) -> float | None:
        vals = [t[i] for t in times if t[i] is not None]
        return statistics.median(vals) if len(vals) == len(times) else None

    t_bf16, t_m, g_bf16, g_m = med(0), med(1), med(2), med(3)
    if len(times) == 1:
        return Row(method, K, N, M, t_bf16, t_m, t_bf16 / t_m, e32, edq, wb, over, g_bf16, g_m)
    speedups = [t[0] / t[1] for t in times]
    graph_speedups = [t[2] / t[3] for t in times] if g_bf16 is not None and g_m is not None else None
    return Row(method, K, N, M, t_bf16, t_m, statistics.median(speedups), e32, edq, wb, over, g_bf16, g_m,
               speedups, graph_speedups)


def best_of_rounds(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[tuple[int, int, int], dict[str, Any]]:
    """Probe rows (``K``, ``N``, ``M``, ``bf16`` and a time per path, one row a round) → per ``(K, N, M)``, for
    ``bf16`` and each of ``names`` a row has, ``(the fastest round's time, bf16's time in that round)``, ordered by M,
    then K, then N."""
    best: dict[tuple[int, int, int], dict[str, Any]] = {}
    for r in rows:
        b = best.setdefault((r["K"], r["N"], r["M"]), {})
        for n in ("bf16", *names):
            if n in r and (n not in b or r[n] < b[n][0]):
                b[n] = (r[n], r["bf16"])
    return dict(sorted(best.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])))


def ratio_cell(best: dict[str, Any], name: str) -> str:
    """``"12.3 (1.45x)"``: a :func:`best_of_rounds` entry's time in µs and bf16's time over it ("" if absent)."""
    if name not in best:
        return ""
    t, bf16 = best[name]
    return f"{t * 1e3:.1f} ({bf16 / t:.2f}x)"


def require_cuda(what: str) -> None:
    """SystemExit with one line when no CUDA GPU is visible: a timing script's first step (it would fail later in
    its own words, or name ``None`` as the GPU of its results file)."""
    if not torch.cuda.is_available():
        raise SystemExit(f"{what}: needs a CUDA GPU (it times kernels on one); none is visible here")


def environment() -> dict[str, Any]:
    return {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": _dt.date.today().isoformat(),
        "l2_flush": FLUSH,
    }


def rows_config(rows: Sequence[Row | ChainRow]) -> dict[str, Any] | list[dict[str, Any]]:
    """The config the rows' layers were built from; a list of the distinct ones where they differ."""
    distinct = list({json.dumps(r.config, sort_keys=True): r.config for r in rows}.values())
    return distinct[0] if len(distinct) == 1 else distinct if distinct else {}


def config_line(rows: Sequence[Row | ChainRow]) -> str:
    """The results' line saying which config the method's layers were built from."""
    config = rows_config(rows)
    if isinstance(config, list):
        return "Configs (per row in the JSON): " + "; ".join(f"`{json.dumps(c, sort_keys=True)}`" for c in config) + "."
    if not config:
        return "Config: the method's default (`from_config({})`)."
    return f"Config: `{json.dumps(config, sort_keys=True)}` (`from_config`)."


def markdown(rows: Sequence[Row], env: dict[str, Any]) -> str:
    lines = [
        f"# {rows[0].method if rows else ''} vs bf16 `F.linear`",
        "",
        f"GPU: {env['gpu']} · torch {env['torch']} (CUDA {env['cuda']}) · {env['date']}",
        "",
        config_line(rows),
        "",
        "Median of CUDA-event-timed runs, bf16 measured in the same run; L2 emptied before each run by "
        + ("writing 256 MB (triton do_bench: L2 left dirty, the timed call writes back what it evicts)."
           if env.get("l2_flush", "write") == "write" else
           "reading 256 MB (L2 left holding clean lines, as after other layers' weight reads)."),
        "Speedup > 1 means faster than bf16. Relative error vs float32 math on the original weight.",
        "Graph: both calls captured in CUDA graphs and replayed the same way — the GPU time alone; where it",
        "differs from the eager speedup, the eager call is bound by its host time on this machine.",
        "",
        "| K | N | M | bf16 ms | method ms | speedup | speedup (graph) | rel err | weight bytes / bf16 | host overhead µs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rounds = max((len(r.speedups) for r in rows if r.speedups), default=1)
    if rounds > 1:
        lines[6:6] = [f"Each point timed in {rounds} rounds, bf16 and the method back to back in each: times are the "
                      "rounds' medians, speedups the median per-round ratio (min–max over the rounds).", ""]
    for r in rows:
        over = f"{r.host_overhead_us:.1f}" if r.host_overhead_us is not None else ""
        graph = f"{r.speedup_graph:.2f}×" if r.speedup_graph is not None else ""
        speedup = f"{r.speedup:.2f}×"
        if r.speedups:
            speedup += f" ({min(r.speedups):.2f}–{max(r.speedups):.2f})"
        if r.graph_speedups:
            graph += f" ({min(r.graph_speedups):.2f}–{max(r.graph_speedups):.2f})"
        lines.append(f"| {r.K} | {r.N} | {r.M} | {r.bf16_ms:.4f} | {r.method_ms:.4f} | {speedup} | {graph} | "
                     f"{r.rel_err_vs_fp32:.2e} | {r.weight_bytes_ratio:.3f} | {over} |")
    return "\n".join(lines) + "\n"


def result_stem(name: str, env: dict[str, Any], tag: str | None = None) -> str:
    """``<name>_<gpu>_<date>[_<tag>]``: how result files under ``benchmarks/results/`` are named."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"] or "cpu").strip("-").lower()
    return f"{name}_{gpu}_{env['date']}" + (f"_{tag}" if tag else "")


def unused_stem(out_dir: Path, stem: str, suffixes: Sequence[str]) -> str:
    """``stem``, or ``<stem>_2``, ``<stem>_3``, … : the first for which no ``<out_dir>/<stem><suffix>`` exists, so a
    second run on the same day and card never overwrites the first's results."""
    candidate, n = stem, 1
    while any((out_dir / f"{candidate}{suffix}").exists() for suffix in suffixes):
        n += 1
        candidate = f"{stem}_{n}"
    return candidate


def write_json(out_dir: str | Path, name: str, payload: dict[str, Any], tag: str | None = None) -> Path:
    """``payload`` with this machine's :func:`environment` as ``env``, to ``<out_dir>/<result_stem>.json`` (probes;
    :func:`unused_stem`: never over an earlier file)."""
    env = environment()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{unused_stem(out_dir, result_stem(name, env, tag), ('.json',))}.json"
    path.write_text(json.dumps({"env": env, **payload}, indent=1))
    return path


def write_results(rows: Sequence[Row], out_dir: str | Path, tag: str | None = None,
                  suffix: str | None = None) -> tuple[Path, Path]:
    """The harness rows as ``<out_dir>/<tag or method>_<gpu>_<date>[_<suffix>].{json,md}`` (:func:`unused_stem`: never
    over an earlier run's files); both say the config the rows' layers were built from (:attr:`Row.config`)."""
    env = environment()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = unused_stem(out_dir, result_stem(tag or rows[0].method, env, suffix), (".json", ".md"))
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    records = [dataclasses.asdict(r) | {"speedup_graph": r.speedup_graph} for r in rows]
    json_path.write_text(json.dumps({"environment": env, "config": rows_config(rows), "rows": records}, indent=1))
    md_path.write_text(markdown(rows, env))
    return json_path, md_path


#: The L2 size assumed where torch does not report the device's (an H100's 50 MB; an H200 reports 60 MiB).
L2_FALLBACK_BYTES = 50 * 1024 * 1024


def l2_bytes(device: int | None = None) -> int:
    """The GPU's L2 cache in bytes (from the device's properties; :data:`L2_FALLBACK_BYTES` where torch has none)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device() if device is None else device)
    return int(getattr(props, "L2_cache_size", 0) or L2_FALLBACK_BYTES)


def capture_chain(fns: Sequence[Callable[[], Any]]) -> torch.cuda.CUDAGraph:
    """One CUDA graph calling every function of ``fns`` in order (:func:`capture_graph` of their sequence)."""
    def run_all() -> None:
        for fn in fns:
            fn()

    return capture_graph(run_all)


def chain_ms_per_layer(graph: torch.cuda.CUDAGraph, layers: int, replays: int) -> float:
    """Per-layer ms of ``graph`` (``layers`` calls) over ``replays`` back-to-back replays, after 3 warm-up ones."""
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (replays * layers)


def chain_rounds_us(graphs: dict[str, tuple[torch.cuda.CUDAGraph, int]], rounds: int,
                    replays: int) -> dict[str, list[float]]:
    """µs per layer of each named ``(graph, layers)`` in each of ``rounds`` rounds, the graphs alternating within a
    round (:func:`chain_ms_per_layer`) — for probes that time several chains side by side."""
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, (graph, layers) in graphs.items():
            times[name].append(chain_ms_per_layer(graph, layers, replays) * 1e3)
    return times


@dataclasses.dataclass
class ChainRow:
    """One point of :func:`bench_chain`: per-layer µs (medians over the rounds) and the per-round ratios."""

    method: str
    K: int
    N: int
    M: int
    layers: int
    weight_bytes_per_layer: int
    bf16_us: float
    method_us: float
    ratio: float
    ratio_min: float
    ratio_max: float
    rel_err_max: float  # vs float32 math of each layer's own de-quantized weight
    rel_err_vs_bf16_weight_max: float  # vs the bf16 weight it was made from: the quantization's own error
    rounds_us: list[list[float]]
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # (as in :class:`Row`)


def bench_chain(method: str, shapes: Sequence[tuple[int, int]] = DIT_SHAPES, ms: Sequence[int] = (1, 16, 128),
                config: dict[str, Any] | None = None, l2_multiple: float = 3.0, replays: int = 20,
                rounds: int = 3, seed: int = 0, log: Callable[[str], None] = print) -> list[ChainRow]:
    """Per shape, ``L`` layers of ``method`` made from distinct random bf16 weights (enough that one pass over the
    method's weights is ``l2_multiple`` times the GPU's L2, at least 4), all called on the same ``x`` in one CUDA
    graph; the bf16 layers likewise; the two graphs timed alternately in ``rounds`` rounds of ``replays`` replays.
    Every layer is checked first on fresh random inputs against float32 math of its own de-quantized weight, within
    the stated tolerance of the method's config (``QuantizationConfig.tolerance``, of the config built from
    ``config``): a non-finite output or a larger error raises :class:`~fastvideo_quant.errors.AccuracyError` before
    anything is timed."""
    from fastvideo_quant.quantization import get_quantization_config

    for name, value, ok, expected in (
            ("rounds", rounds, isinstance(rounds, int) and rounds >= 1, "an int >= 1"),
            ("replays", replays, isinstance(replays, int) and replays >= 1, "an int >= 1"),
            ("l2_multiple", l2_multiple, isinstance(l2_multiple, (int, float)) and l2_multiple > 0, "a number > 0")):
        if not ok:
            raise ValueError(f"bench_chain: {name} must be {expected}, found {value!r}")
    # (the config's own tolerance: a setting may change what apply promises, e.g. AWQ's fp8_compute)
    tol = get_quantization_config(method).from_config(dict(config or {})).tolerance.for_dtype(torch.bfloat16).max_rel_error
    if not torch.cuda.is_available():
        raise RuntimeError("the benchmark needs a CUDA GPU; none is visible")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    l2 = l2_bytes()
    rows: list[ChainRow] = []
    for K, N in shapes:
        weights = [(torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16)]
        layers = [build_layer(method, weights[0], config)]
        per_layer = weight_bytes(layers[0])
        count = max(4, -(-int(l2_multiple * l2) // per_layer))
        for _ in range(count - 1):
            weights.append((torch.randn(N, K, device="cuda", generator=gen) * K**-0.5).to(torch.bfloat16))
            layers.append(build_layer(method, weights[-1], config))
        deq = [layer.quant_method.dequantize_weight(layer) for layer in layers]
        for M in ms:
            errs, errs_bf16 = [], []
            for layer, w, dq in zip(layers, weights, deq, strict=True):  # every layer, fresh inputs each
                xc = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
                out = layer.quant_method.apply(layer, xc, None)
                if not torch.isfinite(out).all():
                    raise AccuracyError(f"{method} produced non-finite output at M={M} K={K} N={N}")
                errs.append(rel_err(out, xc.float() @ dq.float().T))
                errs_bf16.append(rel_err(out, xc.float() @ w.float().T))
            if tol is not None and max(errs) > tol:
                raise AccuracyError(f"{method} at M={M} K={K} N={N}: relative error {max(errs):.3g} against float32 "
                                   f"math of its de-quantized weight, over the method's tolerance {tol}")
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            g_bf16 = capture_chain([lambda w=w, x=x: F.linear(x, w) for w in weights])
            g_m = capture_chain([lambda layer=layer, x=x: layer.quant_method.apply(layer, x, None) for layer in layers])
            rounds_us = chain_rounds_us({"bf16": (g_bf16, count), "method": (g_m, count)}, rounds, replays)
            times = list(zip(rounds_us["bf16"], rounds_us["method"], strict=True))
            ratios = [b / m for b, m in times]
            row = ChainRow(method, K, N, M, count, per_layer, statistics.median(b for b, _ in times),
                           statistics.median(m for _, m in times), statistics.median(ratios), min(ratios),
                           max(ratios), max(errs), max(errs_bf16), [list(t) for t in times], dict(config or {}))
            rows.append(row)
            log(f"{method} K={K} N={N} M={M} ({count} layers): bf16 {row.bf16_us:.1f} us/layer, {method} "
                f"{row.method_us:.1f} -> {row.ratio:.2f}x ({row.ratio_min:.2f}-{row.ratio_max:.2f}), rel err <= "
                f"{row.rel_err_max:.2e} (vs the bf16 weight {row.rel_err_vs_bf16_weight_max:.2e})")
            del g_bf16, g_m
        del layers, weights, deq
        torch.cuda.empty_cache()
    return rows


def chain_markdown(rows: Sequence[ChainRow], env: dict[str, Any], l2: int, l2_multiple: float, replays: int) -> str:
    rounds = max((len(r.rounds_us) for r in rows), default=1)
    methods = sorted({r.method for r in rows})
    lines = [f"# {', '.join(methods)} vs bf16 `F.linear`: layers back to back in one CUDA graph", "",
             f"GPU: {env['gpu']} · torch {env['torch']} (CUDA {env['cuda']}) · {env['date']}", "",
             config_line(rows), "",
             f"Per shape, layers of distinct weights (one pass over the method's weights ≥ {l2_multiple:g} × L2 = "
             f"{l2_multiple * l2 / 2**20:.0f} MiB, at least 4 layers) called on the same input in one CUDA graph, no "
             f"L2 flush; {rounds} round(s) of {replays} replays, bf16 and the method alternating. µs per layer "
             "(medians of the rounds); ratio = bf16 / method (median, min–max over the rounds). Error: the largest "
             "relative error of any layer against float32 math of its own de-quantized weight, on fresh inputs.", "",
             "| method | K | N | M | layers | bf16 µs | method µs | × bf16 | range | max rel err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.K} | {r.N} | {r.M} | {r.layers} | {r.bf16_us:.1f} | {r.method_us:.1f} | "
                     f"{r.ratio:.2f} | {r.ratio_min:.2f}–{r.ratio_max:.2f} | {r.rel_err_max:.1e} |")
    return "\n".join(lines) + "\n"


def write_chain_results(rows: Sequence[ChainRow], out_dir: str | Path, name: str | None = None,
                        l2_multiple: float = 3.0, replays: int = 20, tag: str | None = None) -> tuple[Path, Path]:
    """``rows`` to ``<out_dir>/<name>_<gpu>_<date>[_<tag>].{json,md}`` (``name``: ``<method>-chain`` by default;
    :func:`unused_stem`: never over an earlier run's files; both say the rows' config, :attr:`ChainRow.config`)."""
    env = environment()
    l2 = l2_bytes() if torch.cuda.is_available() else L2_FALLBACK_BYTES
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = unused_stem(out_dir, result_stem(name or f"{rows[0].method}-chain", env, tag), (".json", ".md"))
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps({"environment": env, "config": rows_config(rows), "l2_bytes": l2,
                                     "l2_multiple": l2_multiple, "replays": replays,
                                     "points": [dataclasses.asdict(r) for r in rows]}, indent=1))
    md_path.write_text(chain_markdown(rows, env, l2, l2_multiple, replays))
    return json_path, md_path
