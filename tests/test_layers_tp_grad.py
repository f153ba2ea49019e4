"""Backward through the layers at TP > 1, on real gloo process groups (docs/guide/tensor-parallelism.md, "Gradients").

A column → row pair built at TP=2 (and 4) from the same full weights as at TP=1 must give TP=1's output, input
gradient, and each rank's shard of every weight and bias gradient. Before the layers' collectives had a backward the
input gradient was 0.7 off at TP=2 with no error (a column layer never summed its ranks' parts of it), and a gathered
output or split input left the graph.
"""

from __future__ import annotations

import pytest
import torch
import tp_grad_workers as W

from fastvideo_quant.testing.distributed import run_distributed

pytestmark = pytest.mark.slow  # spawns gloo ranks

REL = 1e-5  # float32


def rel_err(got: torch.Tensor | None, want: torch.Tensor) -> float:
    assert got is not None, "no gradient"
    return float((got - want).norm() / want.norm())


def shard(full: torch.Tensor, layout: tuple, rank: int, world: int) -> torch.Tensor:
    """This rank's part of a TP=1 gradient (``tp_grad_workers._layouts``)."""
    if layout[0] == "whole":
        return full
    if layout[0] == "cols":
        return full.chunk(world, dim=-1)[rank]
    return torch.cat([part.chunk(world, dim=0)[rank] for part in full.split(layout[1], dim=0)], dim=0)


def check_against_tp1(ranks: list[dict], single: dict, what: str) -> None:
    world = len(ranks)
    for rank, res in enumerate(ranks):
        where = f"{what}, TP={world} rank {rank}"
        assert rel_err(res["out"], single["out"]) < REL, f"{where}: output"
        if single["x"] is not None:
            assert rel_err(res["x"], single["x"]) < REL, f"{where}: x.grad {rel_err(res['x'], single['x']):.3g}"
        for name, full in single["grads"].items():
            if full is None:
                assert res["grads"][name] is None, f"{where}: {name} got a gradient TP=1 has not"
                continue
            want = shard(full, single["layouts"][name], rank, world)
            assert rel_err(res["grads"][name], want) < REL, f"{where}: {name}.grad"


@pytest.mark.parametrize("world", [2, 4])
def test_every_gradient_matches_tp1(world: int) -> None:
    """Every case of ``tp_grad_workers.CASES`` (column → row with input_is_parallel; gathered column, merged and QKV
    outputs into a row layer that splits them; skip_bias_add with gathered and sharded biases; return_bias=False) in
    one spawn per TP size."""
    ranks = run_distributed(_all_cases, world)
    for case in W.CASES:
        check_against_tp1([r[case] for r in ranks], W.pair_backward(0, 1, case), case)


def _all_cases(rank: int, world: int) -> dict:
    return {case: W.pair_backward(rank, world, case) for case in W.CASES}


def test_a_row_bias_added_on_rank_0_gets_its_gradient_on_every_rank() -> None:
    """Rank 0 adds the row layer's bias before the all-reduce; every rank's copy must get the gradient (rank 1's was
    None: its copy would drift from rank 0's under an optimizer), also where nothing else on it requires grad."""
    case = "column→row, input_is_parallel"
    ranks = run_distributed(W.pair_backward, 2, case, "down.bias")
    single = W.pair_backward(0, 1, case, "down.bias")
    check_against_tp1(ranks, single, f"{case}, only down.bias trained")
    assert all(r["grads"]["down.bias"] is not None for r in ranks)


def test_awq_input_gradient_matches_tp1() -> None:
    """A quantized method (AWQ int4, frozen weights) at TP=2: the input gradient goes through each rank's de-quantized
    shard and is summed as at TP=1; no tensor of the layers gets a gradient."""
    pytest.importorskip("fvq_awq")
    ranks = run_distributed(W.awq_pair_backward, 2)
    single = W.awq_pair_backward(0, 1)
    for rank, res in enumerate(ranks):
        assert rel_err(res["out"], single["out"]) < REL, f"rank {rank}: output"
        assert rel_err(res["x"], single["x"]) < REL, f"rank {rank}: x.grad {rel_err(res['x'], single['x']):.3g}"
        assert res["frozen"], f"rank {rank}: a quantized layer's tensor got a gradient"


def test_the_no_grad_path_calls_no_autograd_function_and_is_unchanged() -> None:
    """Under torch.no_grad / inference_mode, and in grad mode with nothing requiring grad, the layers run the plain
    collectives (no Function: torch.compile and CUDA graphs see what they saw before); the output is bit-identical to
    the plain collectives' and to the grad-mode output, which does go through the Functions."""
    for res in run_distributed(W.no_grad_path, 2):
        by_hand = res.pop("by hand")
        for mode, got in res.items():
            assert torch.equal(got["out"], by_hand), f"{mode}: output differs from the plain collectives'"
            recording = mode == "grad mode, x requiring grad"
            assert got["grad_fn"] == recording, f"{mode}: grad_fn {got['grad_fn']}"
            expected = {"_CopyToRegion": 1, "_GatherFromRegion": 1, "_ScatterToRegion": 1,
                        "_ReduceFromRegion": 1} if recording else {}
            assert got["calls"] == expected, f"{mode}: {got['calls']}"


def test_drawn_shapes_match_float64_autograd() -> None:
    """Hypothesis: widths, leading dims (one token: the collectives' views), bias, skip_bias_add, gather or not."""
    pytest.importorskip("hypothesis")
    assert run_distributed(W.drawn_shapes, 2, 25) == [25, 25]


def test_compiled_fullgraph_in_grad_mode_matches_eager() -> None:
    """torch.compile(fullgraph=True) traces the Functions (AOTAutograd their backward) at TP=2; under no_grad the
    compiled output is eager's bit for bit."""
    for rank, res in enumerate(run_distributed(W.compiled_backward, 2)):
        assert res["no_grad_equal"], f"rank {rank}: compiled no-grad output differs from eager"
        assert all(err < REL for err in res["errors"].values()), f"rank {rank}: {res['errors']}"


#: cases that take every one of the four Functions: copy + reduce (input_is_parallel), gather + scatter (gathered output
#: split again), and a bias the row layer's rank 0 adds (reduce's bias gradient)
FUNC_CASES = ["column→row, input_is_parallel", "column gather→row split", "skip_bias_add, sharded bias"]


@pytest.mark.parametrize("case", FUNC_CASES)
def test_torch_func_grad_and_vjp_match_autograd_at_tp2(case: str) -> None:
    """torch.func.grad and vjp with respect to the input, and grad over the weights through functional_call (per-sample
    gradients, functional training), equal autograd's backward on every rank at TP=2: the collectives' Functions take
    torch.func's form (setup_context)."""
    for rank, res in enumerate(run_distributed(W.func_transforms, 2, case)):
        auto = res["autograd"]
        assert rel_err(res["grad_x"], auto["x"]) < REL, f"rank {rank}: func.grad x"
        assert rel_err(res["vjp_x"], auto["x"]) < REL, f"rank {rank}: func.vjp x"
        for name, got in res["grad_params"].items():
            assert rel_err(got, auto[name]) < REL, f"rank {rank}: func.grad {name}"


def test_the_public_all_gather_carries_the_gradient_back() -> None:
    """fastvideo_quant.distributed.tensor_model_parallel_all_gather, which a model's own code calls, on a tensor that
    requires grad: the gathered tensor left the graph (torch's collective has no derivative), so nothing before it
    got a gradient. Now each rank's input gets its slice of the gradient, along any dim; the output is the plain
    gather's."""
    for rank, res in enumerate(run_distributed(W.public_all_gather_backward, 2)):
        for dim, got in res.items():
            assert got["in_graph"] and got["gathered_equal"], f"rank {rank}, dim {dim}"
            want = got["weights"].chunk(2, dim=dim)[rank]
            assert got["grad"] is not None and torch.equal(got["grad"], want), f"rank {rank}, dim {dim}: x.grad"


@pytest.mark.parametrize("dim", [3, -4, 5])
def test_an_out_of_range_all_gather_dim_is_an_index_error(dim: int) -> None:
    """dim % x.dim() gathered a 3-d tensor's dim 3 along 0 and dim 5 along 2, silently (with or without grad)."""
    from fastvideo_quant.distributed import tensor_model_parallel_all_gather

    with pytest.raises(IndexError, match=rf"dim {dim} is out of range for a 3-d tensor of shape \(2, 3, 4\)"):
        tensor_model_parallel_all_gather(torch.zeros(2, 3, 4), dim=dim)


def test_forward_mode_tangent_matches_reverse_mode_at_tp2() -> None:
    """torch.func.jvp (forward_ad, jacfwd) through column/row pairs at TP=2: the layers ran the plain collectives on
    the dual tensors, which carry no tangent — a row layer's partial tangents were never summed, a gathered output's
    tangent was this rank's alone — so the tangent was wrong (off by about half its size), with no error."""
    for rank, res in enumerate(run_distributed(W.forward_mode, 2)):
        for case, got in res.items():
            assert rel_err(got["jvp"], got["reverse"]) < REL, f"{case}, rank {rank}: jvp tangent"
