"""Contract: at TP=2 (real gloo/NCCL ranks) loading shards correctly and outputs match TP=1.

One spawn per method runs everything on the ranks (every parallel layer class,
per-shard and fused-on-disk loading, shapes, a column→row pair) and the results
are cached, so each test below only compares.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import traceback
from typing import Any

import pytest
import torch

from fastvideo_quant.distributed import get_tensor_model_parallel_rank
from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.apply import reference, tolerance_bound, within_tolerance
from fastvideo_quant.testing.conformance.create_weights import check_param_shapes
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.loading import dequantized
from fastvideo_quant.testing.conformance.report import ConformanceFailure, max_abs_diff, rel_error
from fastvideo_quant.testing.conformance.subject import FUSED_KINDS, PARALLEL_KINDS, Subject, random_input

_CACHE: dict[str, dict[str, Any]] = {}


# --- what the ranks run ----------------------------------------------------------------------
def inprocess_plugins() -> list[tuple[str, Any, str]]:
    """In-process plugins (``register_plugin``) as (how, what, name) that a spawned rank can re-register."""
    from fastvideo_quant.plugins import manager

    specs = []
    for plugin, name in list(manager._extra):
        if isinstance(plugin, type(importlib)):
            specs.append(("module", plugin.__name__, name))
            continue
        try:
            specs.append(("pickle", pickle.dumps(plugin), name))
        except Exception as exc:  # noqa: BLE001 - reported when the rank needs it
            specs.append(("error", f"{type(exc).__name__}: {exc}", name))
    return specs


def _register_inprocess(specs: list[tuple[str, Any, str]]) -> None:
    from fastvideo_quant.plugins import register_plugin

    for how, what, name in specs:
        if how == "error":
            raise RuntimeError(f"in-process plugin {name!r} cannot be sent to spawned ranks ({what}); "
                               "register an importable module with register_plugin instead")
        register_plugin(importlib.import_module(what) if how == "module" else pickle.loads(what), name)


def pair_subjects(subject: Subject) -> tuple[Subject, Subject]:
    """The column layer (in → in) and the row layer (in → out) of the column→row pair.

    The row layer is the per-layer row layer's shape and the hidden size is ``input_size``,
    so the pair needs no size the per-layer checks do not already need (a method with
    alignment constraints on a row layer's per-rank input, AWQ's group_size, takes it
    whenever it takes ``input_size``).
    """
    return dataclasses.replace(subject, output_size=subject.input_size), subject


def _rank_layer(subject: Subject, kind: str, ckpt: ck.LayerCheckpoint, x: torch.Tensor, tp: int) -> dict[str, Any]:
    dtype = subject.main_dtype()
    check_param_shapes(subject, kind, subject.build_layer(kind, bias=True, dtype=dtype), ckpt, tp)
    layer = ck.build_loaded(subject, kind, ckpt, bias=True, dtype=dtype, process=False, tp=tp)
    mismatch = []
    if kind in FUSED_KINDS:
        fused = ck.build_loaded(subject, kind, ckpt, bias=True, dtype=dtype, fused_on_disk=True, process=False, tp=tp)
        a, b = ck.param_snapshot(layer), ck.param_snapshot(fused)
        mismatch = [n for n in a if not torch.equal(a[n], b[n])]
    ck.process_weights(layer, subject, kind, tp=tp)
    if kind == "row":  # the row layer's input is parallel: this rank's slice of the features
        x = x.chunk(tp, dim=-1)[get_tensor_model_parallel_rank()]
    # On a copy: the reference is computed from x, so an apply modifying its input in place would read as a
    # sharding failure here ([contract: apply: input unchanged] is test_apply's).
    out, _ = layer(x.to(subject.device(), copy=True))
    return {"out": out.detach().cpu(), "dequant": dequantized(subject, layer, kind, tp),
            "partitions": list(layer.output_partition_sizes), "mismatch": mismatch}


def _rank_pair(subject: Subject, ckpts: tuple[ck.LayerCheckpoint, ck.LayerCheckpoint], x: torch.Tensor,
               tp: int) -> torch.Tensor:
    col_s, row_s = pair_subjects(subject)
    dtype = subject.main_dtype()
    col = ck.build_loaded(col_s, "column", ckpts[0], bias=True, dtype=dtype, tp=tp)
    row = ck.build_loaded(row_s, "row", ckpts[1], bias=True, dtype=dtype, tp=tp)
    h, _ = col(x.to(subject.device(), copy=True))  # (a copy, as in _rank_layer)
    y, _ = row(h)
    return y.detach().cpu()


def _guarded(fn, *args) -> Any:
    try:
        return fn(*args)
    except ConformanceFailure as exc:  # (kept apart, so the parent reports its contract and fix, not one inside another)
        return {"error": str(exc), "failure": (exc.contract, exc.where, exc.problem, exc.fix)}
    except Exception as exc:  # noqa: BLE001 - reported by the parent with the layer it belongs to
        # (the innermost frames: where the plugin raised, not the suite's and torch's outer calls)
        return {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-6)}"}


#: What a rank's error says when its peer failed first and left the collective: the peer's error is the one to read.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def first_failure(errors: list[str | None]) -> tuple[int, str, str]:
    """``(rank, its error, a note on the other ranks' errors)`` for the error to report of ranks' ``errors`` (None:
    that rank had none): the first that is not a rank's collective failing because its peer had already failed
    (:data:`PEER_GONE`: gloo's "Connection closed by peer"), else the first. (The first rank's was reported, and a
    plugin raising on rank 1 only read as rank 0's network error, the exception never shown.)"""
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    own = [(rank, e) for rank, e in failed if not any(p in e for p in PEER_GONE)]
    rank, error = (own or failed)[0]
    others = [r for r, _ in failed if r != rank]
    note = (f" (rank(s) {others} failed too" + (", in the collective this rank left" if own and len(own) < len(failed)
                                               else "") + ")") if others else ""
    return rank, error, note


#: The results key of the QKV layer with fewer KV heads than ranks (each KV head replicated over several ranks).
REPLICATED_KV = "qkv_replicated_kv"


def replicated_kv_subject(subject: Subject) -> Subject:
    """The subject with ``tp_size // 2`` KV heads (at least 1), so each KV head is replicated over two ranks: the
    QKV loading path (``num_heads`` replicas of a k/v shard) the default sizes never take."""
    return dataclasses.replace(subject, num_kv_heads=max(1, subject.tp_size // 2))


def _layers(subject: Subject, inputs: dict[str, Any], world: int) -> dict[str, Any]:
    results = {kind: _guarded(_rank_layer, subject, kind, *inputs[kind], world) for kind in PARALLEL_KINDS}
    results[REPLICATED_KV] = _guarded(_rank_layer, replicated_kv_subject(subject), "qkv", *inputs[REPLICATED_KV],
                                      world)
    results["pair"] = _guarded(_rank_pair, subject, *inputs["pair"], world)
    return results


def rank_main(rank: int, world: int, subject: Subject, plugins: list, inputs: dict[str, Any]) -> dict[str, Any]:
    """Everything the TP checks need from one rank (module-level so ``run_distributed`` can spawn it)."""
    _register_inprocess(plugins)
    return _layers(subject, inputs, world)


# --- the parent ------------------------------------------------------------------------------
def _inputs(subject: Subject) -> dict[str, Any]:
    dtype = subject.main_dtype()
    inputs: dict[str, Any] = {}
    for kind in PARALLEL_KINDS:
        x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind).cpu()
        inputs[kind] = (ck.make_checkpoint(subject, kind), x)
    gqa = replicated_kv_subject(subject)
    x = random_input(gqa, (gqa.tokens, gqa.input_size), dtype, REPLICATED_KV).cpu()
    inputs[REPLICATED_KV] = (ck.make_checkpoint(gqa, "qkv"), x)
    col_s, row_s = pair_subjects(subject)
    x = random_input(subject, (subject.tokens, subject.input_size), dtype, "pair").cpu()
    inputs["pair"] = ((ck.make_checkpoint(col_s, "column"), ck.make_checkpoint(row_s, "row")), x)
    return inputs


def tp_results(subject: Subject) -> dict[str, Any]:
    """Rank results and the TP=1 results for the same inputs, computed once per subject."""
    from fastvideo_quant.testing.distributed import DistributedError, run_distributed

    key = repr(subject)
    if key not in _CACHE:
        inputs = _inputs(subject)
        try:
            ranks = run_distributed(rank_main, subject.tp_size, subject, inprocess_plugins(), inputs)
        except Exception as exc:  # noqa: BLE001 - a rank raised (DistributedError) or died
            what = str(exc) if isinstance(exc, DistributedError) else f"the ranks crashed: {type(exc).__name__}: {exc}"
            ranks = [{k: {"error": what} for k in (*PARALLEL_KINDS, REPLICATED_KV, "pair")}] * subject.tp_size
        single = _layers(subject, inputs, 1)
        _CACHE[key] = {"ranks": ranks, "single": single, "inputs": inputs}
    return _CACHE[key]


def _gather_columns(parts: list[torch.Tensor], partitions: list[int], dim: int, kv_replicas: int = 1) -> torch.Tensor:
    """Concatenate rank shards of a fused layer back in TP=1 order: [q0 q1 | k0 k1 | v0 v1]. With ``kv_replicas``
    > 1 (a QKV layer with fewer KV heads than ranks) k and v are taken from one rank of each group of replicas."""
    split = [p.split(partitions, dim=dim) for p in parts]
    step = [1 if i == 0 else kv_replicas for i in range(len(partitions))]
    return torch.cat([torch.cat([s[i] for s in split[::step[i]]], dim=dim) for i in range(len(partitions))], dim=dim)


def _kv_replicas(subject: Subject, kind: str) -> int:
    return max(1, subject.tp_size // subject.num_kv_heads) if kind == "qkv" else 1


def check_tp_layer(subject: Subject, kind: str) -> None:
    """At TP=2: loading works, per-shard = fused, gathered weights = TP=1 weights, outputs within tolerance."""
    _check_tp_layer(subject, kind, tp_results(subject), kind)


def check_tp_replicated_kv(subject: Subject) -> None:
    """:func:`check_tp_layer` for a QKV layer with fewer KV heads than ranks (``tp_size // 2``), whose ranks each
    load a whole KV head that other ranks load too."""
    _check_tp_layer(replicated_kv_subject(subject), "qkv", tp_results(subject), REPLICATED_KV)


def _failed(subject: Subject, result: dict[str, Any], contract: str, where: str, fix: str,
            rank: str = "", which: bool = False) -> ConformanceFailure:
    """The failure to raise for a layer's ``result`` holding an error, at ``where`` and ``rank``: a contract failure
    the suite raised on the rank (a per-rank shape) as itself; an exception as ``contract``'s, with ``fix``. (The
    rank's failure was quoted inside the parent's: two contracts, two "how to fix" lines.) ``which``: ``where`` holds
    several layers (the column→row pair), so the failure's own place says which one."""
    if "failure" in result:
        inner, at, problem, own_fix = result["failure"]  # (``at``: the layer, described without the TP size)
        return subject.fail(inner, f"{where}{rank}" + (f", in {at}" if which else ""), problem, own_fix)
    return subject.fail(contract, f"{where}{rank}", result["error"], fix)


def _check_tp_layer(subject: Subject, kind: str, res: dict[str, Any], key: str) -> None:
    tp, where = subject.tp_size, subject.describe(kind, tp=subject.tp_size, dtype=subject.main_dtype())
    single = res["single"][key]
    if "error" in single:
        raise _failed(subject, single, "loading (TP=1)", subject.describe(kind), "see the TP=1 tests")
    ranks = [r[key] for r in res["ranks"]]
    if any("error" in r for r in ranks):
        rank, _, note = first_failure([r.get("error") for r in ranks])
        raise _failed(subject, ranks[rank], "loading at TP=2", where,
                      "fix the exception where its traceback (innermost frames) says it was raised; if it is "
                      "a size or shape error, shard parameters by tp_rank/tp_size (narrow along output_dim in "
                      "column layers, input_dim in the row layer) and size them per rank", f" rank {rank}{note}")
    for rank, r in enumerate(ranks):
        if r["mismatch"]:
            raise subject.fail("loading: per-shard vs fused-on-disk", f"{where} rank {rank}",
                               f"per-shard and fused loading give different {r['mismatch']}",
                               "each shard must land at its per-rank offset whether loaded alone or fused")
    _check_gathered_weights(subject, kind, ranks, single, where, res["inputs"][key][0])
    x, w1 = res["inputs"][key][1], single["dequant"]
    b = torch.cat([p.bias for p in res["inputs"][key][0].parts])
    if kind == "row":
        outs = [r["out"] for r in ranks]
        if not all(torch.equal(outs[0], o) for o in outs[1:]):
            raise subject.fail("tensor parallel: all-reduce", where, "ranks disagree after the all-reduce",
                               "apply must be deterministic and add the bias only when it is passed")
        out = outs[0]
    else:
        out = _gather_columns([r["out"] for r in ranks], ranks[0]["partitions"], dim=-1,
                              kv_replicas=_kv_replicas(subject, kind))
    missed = within_tolerance(subject, out, reference(x, w1, b), dtype=x.dtype)
    single_missed = within_tolerance(subject, single["out"], reference(x, w1, b), dtype=x.dtype) if missed else None
    if single_missed:  # (a bias dropped: every TP check missed too, and its message pointed at the sharding)
        raise subject.fail("tensor parallel: output", where,
                           f"outputs gathered over {tp} ranks vs the float32 reference of the TP=1 weights: {missed}; "
                           f"the same layer at TP=1 misses that reference too: {single_missed}",
                           "not a sharding problem: fix the layer at TP=1 first (test_apply's failure for this layer "
                           "class says what its output gets wrong)")
    if missed:
        raise subject.fail("tensor parallel: output", where,
                           f"outputs gathered over {tp} ranks vs the float32 reference of the TP=1 weights: {missed}"
                           f"{ck.calibration_spread_note(subject, res['inputs'][key][0])}",
                           "each rank must compute its own shard (narrowed weights, its bias shard; row layers "
                           "add bias on one rank only)")


def _check_gathered_weights(subject: Subject, kind: str, ranks, single, where: str, ckpt: ck.LayerCheckpoint) -> None:
    """The ranks' weights gathered are the TP=1 weight (to 1e-5): each rank loaded its own slice. For a method that
    quantizes float checkpoint weights on load, each rank's scales come from what it holds (a row-parallel rank's
    span half the inputs), so its gathered weight need only be within the weight bar of the float weight."""
    if kind == "row":
        w2 = torch.cat([r["dequant"] for r in ranks], dim=1)
    else:
        w2 = _gather_columns([r["dequant"] for r in ranks], ranks[0]["partitions"], dim=0,
                             kv_replicas=_kv_replicas(subject, kind))
    _check_kv_replicas(subject, kind, ranks, where, ckpt)
    w1 = single["dequant"]
    err = rel_error(w2, w1) if w2.shape == w1.shape else float("inf")
    if err <= 1e-5:
        return
    found = (f"the ranks' dequantize_weight gathered ({list(w2.shape)}) differs from the TP=1 weight "
             f"({list(w1.shape)}) by relative error {err:.3g}")
    if w2.shape == w1.shape and _stores_float_weights(ckpt):
        to_float = rel_error(w2, ckpt.float_weight())
        if to_float <= subject.weight_bar:
            return
        found += (f", and from the float weight by {to_float:.3g}, over the weight bar {subject.weight_bar:g} (the "
                  "checkpoint holds float weights, quantized on load: each rank's scales may differ from TP=1's)")
    raise subject.fail("loading at TP=2", where, found,
                       "each rank must load its own slice of the checkpoint tensor: narrow by tp_rank along "
                       "output_dim (column layers) or input_dim (row layer)")


def _stores_float_weights(ckpt: ck.LayerCheckpoint) -> bool:
    """Whether ``quantize_weight`` stored each part's float weight as it is (a method quantizing on load)."""
    wide = (torch.float32, torch.float16, torch.bfloat16)
    return all("weight" in p.tensors and p.tensors["weight"].dtype in wide
               and torch.equal(p.tensors["weight"], p.weight.to(p.tensors["weight"].dtype)) for p in ckpt.parts)


def _check_kv_replicas(subject: Subject, kind: str, ranks, where: str, ckpt: ck.LayerCheckpoint) -> None:
    """Ranks sharing a KV head (fewer KV heads than ranks) hold the same k and v rows. A method quantizing float
    checkpoint weights on load may compute a scale over all a rank holds (one per fused qkv weight, as vLLM's fp8
    online quantization does): the q rows differ between replicas, so their scales and k/v rows differ slightly. For
    it each replica's k and v rows need only be within the weight bar of the float rows of its KV head."""
    replicas = _kv_replicas(subject, kind)
    if replicas == 1:
        return
    partitions = ranks[0]["partitions"]
    split = [r["dequant"].split(partitions, dim=0) for r in ranks]
    on_load = _stores_float_weights(ckpt)
    for rank in range(len(ranks)):
        first, head = rank - rank % replicas, rank // replicas
        for i, part in ((1, "k"), (2, "v")):
            mine = split[rank][i]
            if on_load:
                want = ckpt.parts[i].weight[head * partitions[i]:(head + 1) * partitions[i]]
                err = rel_error(mine, want) if mine.shape == want.shape else float("inf")
                if err <= subject.weight_bar:
                    continue
                found = (f"rank {rank} holds KV head {head} ({subject.num_kv_heads} KV heads over {subject.tp_size} "
                         f"ranks, each loaded by {replicas} ranks), but its dequantized {part} rows differ from that "
                         f"head's float {part} rows by relative error {err:.3g}, over the weight bar "
                         f"{subject.weight_bar:g} (the checkpoint holds float weights, quantized on load)")
            elif torch.equal(mine, split[first][i]):
                continue
            else:
                found = (f"ranks {first} and {rank} share KV head {head} ({subject.num_kv_heads} KV heads over "
                         f"{subject.tp_size} ranks), but their dequantized {part} rows differ (max abs diff "
                         f"{max_abs_diff(mine, split[first][i]):.3g})")
            raise subject.fail("loading at TP=2", where, found,
                               "in load_qkv_weight, a k/v shard is replicated over num_heads ranks: every one of them "
                               "loads it, narrowing the checkpoint tensor at (tp_rank // num_heads) * shard_size")


def check_tp_pair(subject: Subject) -> None:
    """A column→row pair at TP=2 equals the same pair at TP=1 (within twice the tolerance)."""
    res = tp_results(subject)
    col_s, row_s = pair_subjects(subject)
    where = f"{col_s.describe('column', tp=subject.tp_size)} → {row_s.describe('row', tp=subject.tp_size)}"
    one = res["single"]["pair"]
    outs = [r["pair"] for r in res["ranks"]]
    if isinstance(one, dict):
        raise _failed(subject, one, "tensor parallel: column→row pair", where, _pair_hint(subject, res), " TP=1",
                      which=True)
    if any(isinstance(o, dict) for o in outs):
        rank, _, note = first_failure([o["error"] if isinstance(o, dict) else None for o in outs])
        raise _failed(subject, outs[rank], "tensor parallel: column→row pair", where, _pair_hint(subject, res),
                      f" rank {rank}{note}", which=True)
    err = rel_error(outs[0], one)
    # (the pair runs in the main dtype; twice the bound apply is held to there: the tighter of the two measures)
    bound = 2 * tolerance_bound(subject.tolerance().for_dtype(subject.main_dtype()))
    if not err <= bound:
        raise subject.fail("tensor parallel: column→row pair", where,
                           f"TP={subject.tp_size} output differs from TP=1 by relative error {err:.3g} > {bound:.3g}",
                           "row-parallel layers must add the bias once (rank 0) and all-reduce partial sums; "
                           "column layers must narrow their weights and bias per rank")


def _pair_hint(subject: Subject, res: dict[str, Any]) -> str:
    """How to fix a pair that could not be built or run: the per-layer failures when there are any, else sizes."""
    failed = [kind for kind in ("column", "row")
              if "error" in res["single"][kind] or any("error" in r[kind] for r in res["ranks"])]
    if failed:
        return f"fix the test_tp_layer[{failed[0]}] failure first: the pair is built from the same layer classes"
    return (f"the per-layer column and row checks passed, so the error is specific to chaining them: the row layer "
            f"must take the column layer's output sharded over {subject.tp_size} ranks (input_size/tp_size "
            f"features per rank); if the error is a size your method cannot take, set the suite's input_size / "
            f"output_size class attributes (or `fvq check --set input_size=...`) to sizes it supports")


class TensorParallelTests(MethodFixtures):
    """Loading and apply across real tensor-parallel ranks (one spawn per method)."""

    @pytest.fixture
    def fvq_tp_subject(self, fvq_runnable: Subject) -> Subject:
        if fvq_runnable.tp_size < 2:
            pytest.skip("tp_size < 2")
        return fvq_runnable

    @pytest.mark.parametrize("kind", PARALLEL_KINDS)
    def test_tp_layer(self, fvq_tp_subject: Subject, kind: str) -> None:
        check_tp_layer(fvq_tp_subject, kind)

    def test_tp_replicated_kv_heads(self, fvq_tp_subject: Subject) -> None:
        check_tp_replicated_kv(fvq_tp_subject)

    def test_tp_column_row_pair(self, fvq_tp_subject: Subject) -> None:
        check_tp_pair(fvq_tp_subject)
