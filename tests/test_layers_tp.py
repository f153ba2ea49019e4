"""Every layer class against a float64 reference at TP=1, 2 and 4, on real gloo process groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import tp_workers as W

from fastvideo_quant.testing.distributed import run_distributed


def reference(world: int, kv: int) -> dict:
    K, N = 16, 24
    x = W.seeded(2, 5, K, seed=1)
    w, b = W.seeded(N, K, seed=2), W.seeded(N, seed=3)
    ref = {"full": F.linear(x, w, b), "nobias": F.linear(x, w), "b": b}
    sizes = [8 * world, 16 * world]
    wg, wu = W.seeded(sizes[0], K, seed=4), W.seeded(sizes[1], K, seed=5)
    bg, bu = W.seeded(sizes[0], seed=6), W.seeded(sizes[1], seed=7)
    ref["gate"], ref["up"] = F.linear(x, wg, bg), F.linear(x, wu, bu)
    head, heads = 4, 8
    wq, wk, wv = W.seeded(heads * head, K, seed=8), W.seeded(kv * head, K, seed=9), W.seeded(kv * head, K, seed=10)
    ref["q"], ref["k"], ref["v"] = F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)
    wr, br = W.seeded(K, N, seed=11), W.seeded(K, seed=12)
    xr = W.seeded(3, N, seed=13)
    ref["row"], ref["row_nobias"], ref["br"] = F.linear(xr, wr, br), F.linear(xr, wr), br
    return ref


def check_rank(res: dict, ref: dict, rank: int, world: int, kv: int) -> torch.Tensor:
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # noqa: E731
    close(res["replicated"], ref["full"])
    shard = lambda t: t.chunk(world, dim=-1)[rank]  # noqa: E731
    for skip in (0, 1):
        expect = ref["nobias"] if skip else ref["full"]
        out, ob = res[f"column_g0_s{skip}"]
        close(out, shard(expect))
        assert (ob is not None) == bool(skip), "output_bias must be the bias exactly when skip_bias_add"
        if skip:
            close(ob, shard(ref["b"]))
        close(res[f"column_g1_s{skip}"][0], expect)
    close(res["merged"], torch.cat([shard(ref["gate"]), shard(ref["up"])], dim=-1))
    nh, nkv, replicas = res["qkv_meta"]
    head = 4
    q = ref["q"][..., rank * nh * head:(rank + 1) * nh * head]
    kv_rank = rank // replicas
    k = ref["k"][..., kv_rank * nkv * head:(kv_rank + 1) * nkv * head]
    v = ref["v"][..., kv_rank * nkv * head:(kv_rank + 1) * nkv * head]
    close(res["qkv"], torch.cat([q, k, v], dim=-1))
    assert replicas == max(1, world // kv)
    close(res["row_p1"], ref["row"])  # bias added once, not once per rank
    close(res["row_p0"], ref["row"])
    out, ob = res["row_noreduce"]
    close(ob, ref["br"])
    return out


@pytest.mark.parametrize("world,kv", [(1, 2), (2, 2), (4, 2)])
def test_layers_match_reference(world: int, kv: int) -> None:
    results = run_distributed(W.layer_outputs, world, kv) if world > 1 else [W.layer_outputs(0, 1, kv)]
    ref = reference(world, kv)
    partials = [check_rank(res, ref, rank, world, kv) for rank, res in enumerate(results)]
    if world > 1:
        col, row, qkv = results[0]["sharding_errors"]
        n = 4 * world + 1
        assert col and f"'blk.col' output size {n} is not divisible by the tensor-parallel size {world}" in col, col
        assert row and "'blk.row' input size" in row, row
        assert qkv and "'blk.qkv' total_num_heads" in qkv, qkv
    # reduce_results=False returns partial sums; the caller's reduction gives the full product.
    torch.testing.assert_close(sum(partials), ref["row_nobias"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("world", [1, 2])
def test_v1_v2_and_fused_loading_agree(world: int) -> None:
    results = run_distributed(W.loader_agreement, world) if world > 1 else [W.loader_agreement(0, 1)]
    for rank, res in enumerate(results):
        for kind in ("merged", "qkv"):
            assert res[(kind, "RefV1Config", "v2")] is False and res[(kind, "RefV2Config", "v2")] is True
            base = res[(kind, "RefV1Config", False)]
            sizes = [16 * world, 32 * world] if kind == "merged" else [32, 16, 16]
            weights = [W.seeded(s, 8, seed=20 + i) for i, s in enumerate(sizes)]
            packed = [torch.randint(-2**31, 2**31 - 1, (s // 8, 8), generator=torch.Generator().manual_seed(30 + i),
                                    dtype=torch.int32) for i, s in enumerate(sizes)]
            for name, parts in (("weight", weights), ("packed", packed)):
                expect = torch.cat([t.chunk(world, dim=0)[rank] for t in parts], dim=0)
                assert torch.equal(base[name], expect), f"{kind} {name}: wrong per-rank slot at rank {rank}"
            for key in [(kind, "RefV1Config", True), (kind, "RefV2Config", False), (kind, "RefV2Config", True)]:
                for name in ("weight", "packed"):
                    assert torch.equal(res[key][name], base[name]), f"{kind} {key} {name} differs at rank {rank}"
            # Per-shard scalars: one slot per fused shard, each its own value.
            n = 2 if kind == "merged" else 3
            expect = torch.tensor([(i + 1) / 7 for i in range(n)], dtype=torch.float32)
            for cfg in ("RefV1Config", "RefV2Config"):
                torch.testing.assert_close(res[(kind, cfg, False)]["scale"], expect)


def test_ranks_use_nccl_and_their_own_gpu_when_there_are_enough_gpus() -> None:
    """With >= 2 GPUs the TP tests above run over NCCL, each rank on its own GPU; else gloo on CPUs."""
    ranks = run_distributed(W.backend_and_device, 2)
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        assert ranks == [("nccl", "cuda:0"), ("nccl", "cuda:1")]
    else:
        assert ranks == [("gloo", "cpu"), ("gloo", "cpu")]


def test_a_plain_column_layer_with_output_sizes_gathers_the_tp1_layout() -> None:
    """ColumnParallelLinear(output_sizes=[128, 128], gather_output=True) loads a contiguous block of rows per rank (as
    vLLM's); its gather reordered them as fused parts, scrambling the output at TP=2 (relative error 1.0; a porting
    author's review)."""
    for got in run_distributed(W.column_output_sizes_gather, 2):
        assert got[False]["err"] < 1e-12 and got[False]["bias"] is None, got
        assert got[True]["err"] < 1e-12 and got[True]["bias"] == 0.0, got
