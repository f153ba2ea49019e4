"""AWQ config parsing, layer loading and apply on CPU, at TP=1 and on real gloo ranks at TP=2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fvq_awq.config import AWQConfig
from fvq_awq.format import dequantize_awq

from fastvideo_quant.errors import ConfigError, ShardingError
from fastvideo_quant.quantization.selection import resolve_quant_config
from fastvideo_quant.testing.distributed import run_distributed

sys.path.insert(0, str(Path(__file__).parent))  # spawned ranks inherit sys.path and import awq_workers
from awq_workers import build, ensure_registered, tp_worker  # noqa: E402

KINDS = ["column", "row", "merged", "qkv"]


def test_hf_config_round_trips():
    hf = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
          "modules_to_not_convert": ["proj_out"]}
    cfg = AWQConfig.from_config(hf)
    assert (cfg.group_size, cfg.modules_to_not_convert) == (64, ["proj_out"])
    assert cfg.to_dict() == hf


def test_autoawq_quant_config_json(tmp_path):
    ensure_registered()
    (tmp_path / "quant_config.json").write_text(
        json.dumps({"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"}))
    cfg = resolve_quant_config(checkpoint=tmp_path)
    assert isinstance(cfg, AWQConfig) and cfg.group_size == 32


@pytest.mark.parametrize("bad, word", [({"bits": 8}, "bits"), ({"group_size": 96}, "group_size"),
                                      ({"zero_point": False}, "zero_point"), ({"version": "gemv"}, "version"),
                                      # wrong types: were a bare ValueError/TypeError, or "false" read as True
                                      ({"group_size": "abc"}, "group_size must be an int.*found str 'abc'"),
                                      ({"q_group_size": None}, "q_group_size must be an int.*found NoneType"),
                                      ({"w_bit": [4]}, "w_bit must be an int"),
                                      ({"bits": True}, "bits must be an int.*found bool"),
                                      ({"zero_point": "false"}, "zero_point must be a bool.*found str 'false'"),
                                      # both spellings, disagreeing: the first had been taken silently
                                      ({"group_size": 128, "q_group_size": 64},
                                       r"group_size=128, q_group_size=64 are one setting spelled 2 ways"),
                                      ({"bits": 4, "w_bit": 8}, r"bits=4, w_bit=8 are one setting")])
def test_rejects_unsupported_config(bad, word):
    with pytest.raises(ConfigError, match=word):
        AWQConfig.from_config({"quant_method": "awq", **bad})


def test_both_spellings_agreeing_are_read():
    assert AWQConfig.from_config({"quant_method": "awq", "group_size": 64, "q_group_size": 64}).group_size == 64


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("group", [32, -1])
def test_apply_matches_reference_tp1(kind, group):
    layer, tensors, loaded = build(kind, group)
    ref_w = torch.cat([dequantize_awq(**t) for t in tensors], dim=1)  # [in, out]
    assert torch.equal(layer.quant_method.dequantize_weight(layer), ref_w.t())
    for dtype, tol in [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)]:
        x = torch.randn(3, 5, ref_w.shape[0]).to(dtype)
        out, _ = layer(x)
        ref = x.float() @ ref_w
        assert out.dtype == dtype and out.shape == (3, 5, ref_w.shape[1])
        assert ((out.float() - ref).norm() / ref.norm()).item() < tol


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_tp2_shards_gather_to_tp1(kind):
    group = 32
    x = torch.randn(4, 128)
    (loaded1, w1, out1), = run_distributed(tp_worker, 1, kind, group, x, backend="gloo")
    ranks = run_distributed(tp_worker, 2, kind, group, x, backend="gloo")  # CPU sharding check; NCCL: conformance
    if kind == "row":  # input dim 0 of every tensor is sharded, in whole groups
        for name in loaded1:
            assert torch.equal(torch.cat([r[0][name] for r in ranks], dim=0), loaded1[name])
        assert torch.allclose(ranks[0][2], out1, rtol=1e-5, atol=1e-5)
        assert torch.allclose(ranks[1][2], out1, rtol=1e-5, atol=1e-5)
        return
    # Column kinds: each fused shard is split along the output (packed) dim; compare per shard.
    splits = {"column": [64], "merged": [64, 32], "qkv": [64, 32, 32]}[kind]
    w_full = torch.cat([r[1] for r in ranks], dim=0)
    per_rank = [torch.split(r[1], [s // 2 for s in splits], dim=0) for r in ranks]
    expected = torch.cat([torch.cat([pr[i] for pr in per_rank], dim=0) for i in range(len(splits))], dim=0)
    assert torch.equal(expected, w1) and w_full.shape == w1.shape
    out = torch.cat([torch.split(r[2], [s // 2 for s in splits], dim=-1)[i] for i in range(len(splits))
                     for r in ranks], dim=-1)
    assert torch.allclose(out, out1, rtol=1e-5, atol=1e-6)
    for name in ("qweight", "qzeros", "scales"):
        unit = 8 if name != "scales" else 1
        parts = [torch.split(r[0][name], [s // 2 // unit for s in splits], dim=1) for r in ranks]
        gathered = torch.cat([torch.cat([p[i] for p in parts], dim=1) for i in range(len(splits))], dim=1)
        assert torch.equal(gathered, loaded1[name]), name


def test_group_minus_one_row_parallel_replicates_scales():
    x = torch.randn(2, 128)
    (_, w1, out1), = run_distributed(tp_worker, 1, "row", -1, x, backend="gloo")
    ranks = run_distributed(tp_worker, 2, "row", -1, x, backend="gloo")
    assert torch.equal(torch.cat([r[1] for r in ranks], dim=1), w1)
    assert torch.allclose(ranks[0][2], out1, rtol=1e-5, atol=1e-5)


def test_misaligned_shard_names_layer_size_and_working_tp():
    from fvq_awq.method import check_alignment

    from fastvideo_quant.layers.linear import ColumnParallelLinear, RowParallelLinear

    ensure_registered()
    layer = ColumnParallelLinear(128, 40, bias=False, quant_config=None, prefix="blocks.0.attn.to_q")
    layer.tp_size = 2  # as a TP=2 rank would see it: 20 columns per rank
    with pytest.raises(ShardingError, match=r"blocks\.0\.attn\.to_q.*20 columns.*\[1, 5\]"):
        check_alignment(layer, 128, [20], 128, 32)
    row = RowParallelLinear(192, 64, bias=False, quant_config=None, prefix="ff.down")
    row.tp_size = 4
    with pytest.raises(ShardingError, match=r"ff\.down.*input size per rank 48.*group_size 32.*\[1, 2, 3, 6\]"):
        check_alignment(row, 48, [64], 192, 32)


def test_misaligned_shard_also_names_the_group_sizes_that_fit_this_tp_size():
    """Besides other TP sizes, the group sizes that align the layer at the TP size asked for, with the command."""
    from fvq_awq.method import check_alignment

    from fastvideo_quant.layers.linear import ColumnParallelLinear, RowParallelLinear

    ensure_registered()
    row = RowParallelLinear(384, 256, bias=False, quant_config=None, prefix="blocks.0.attn.o_proj")
    row.tp_size = 2
    with pytest.raises(ShardingError) as err:
        check_alignment(row, 192, [256], 384, 128)
    assert str(err.value) == (
        "AWQ layer 'blocks.0.attn.o_proj' (RowParallelLinear, TP size 2): input size per rank 192 is not a multiple of "
        "group_size 128. TP sizes that keep this layer aligned: [1, 3]; or, to keep TP size 2, quantize the checkpoint "
        "with group_size 32, 64 or -1 (one group over the whole input), e.g. fvq quantize SRC --method awq --option "
        "group_size=64 --out DST (an AutoAWQ checkpoint; with llm-compressor: strategy 'group' with that group_size, or "
        "'channel' for -1). Those are this layer's: tp_fit(model) (fastvideo_quant.layers.linear) checks every layer "
        "at once, on the model built at TP size 1 on the meta device")
    col = ColumnParallelLinear(128, 40, bias=False, quant_config=None, prefix="q")
    col.tp_size = 2  # 20 columns per rank: the int4 packing, which no group size changes
    with pytest.raises(ShardingError) as err:
        check_alignment(col, 128, [20], 128, 32)
    assert "group_size" not in str(err.value).split("TP sizes that keep")[1]


def test_method_import_does_not_import_triton():
    code = "import sys, fvq_awq.hooks, fvq_awq.method; assert 'triton' not in sys.modules, 'imported triton'"
    subprocess.run([sys.executable, "-c", code], check=True)
