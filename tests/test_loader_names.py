"""FastVideo's ``param_names_mapping`` in ``load_checkpoint``: diffusers checkpoint names renamed to the model's, and
parts merged into one tensor (a fused layer's shards, or a concatenation along the parameter's output dim)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError, ConfigError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.loader.names import MergedSlice
from fastvideo_quant.quantization import resolve_quant_config

H = 32

#: WanVideo's entries for one block (FastVideo's configs/models/dits/wanvideo.py), and HunyuanVideo's merged q/k/v.
WAN = {
    r"^blocks\.(\d+)\.attn1\.to_q\.(.*)$": r"blocks.\1.to_q.\2",
    r"^blocks\.(\d+)\.attn1\.to_out\.0\.(.*)$": r"blocks.\1.to_out.\2",
    r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.(.*)$": r"blocks.\1.ffn.fc_in.\2",
}
HUNYUAN = {
    r"^transformer_blocks\.(\d+)\.attn\.to_q\.(.*)$": (r"double_blocks.\1.img_attn_qkv.\2", 0, 3),
    r"^transformer_blocks\.(\d+)\.attn\.to_k\.(.*)$": (r"double_blocks.\1.img_attn_qkv.\2", 1, 3),
    r"^transformer_blocks\.(\d+)\.attn\.to_v\.(.*)$": (r"double_blocks.\1.img_attn_qkv.\2", 2, 3),
}


class Wan(torch.nn.Module):
    param_names_mapping = WAN

    def __init__(self, quant_config=None) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Module()])
        b = self.blocks[0]
        kw = {"params_dtype": torch.float32, "quant_config": quant_config}
        b.to_q = ReplicatedLinear(H, H, prefix="blocks.0.to_q", **kw)
        b.to_out = ReplicatedLinear(H, H, prefix="blocks.0.to_out", **kw)
        b.ffn = torch.nn.Module()
        b.ffn.fc_in = ReplicatedLinear(H, 2 * H, prefix="blocks.0.ffn.fc_in", **kw)


class Hunyuan(torch.nn.Module):
    """``img_attn_qkv`` as FastVideo builds it: one ReplicatedLinear(H, 3H), or (``fused``) a QKVParallelLinear."""

    param_names_mapping = HUNYUAN

    def __init__(self, quant_config=None, fused: bool = False) -> None:
        super().__init__()
        self.double_blocks = torch.nn.ModuleList([torch.nn.Module()])
        kw = {"params_dtype": torch.float32, "quant_config": quant_config, "prefix": "double_blocks.0.img_attn_qkv"}
        self.double_blocks[0].img_attn_qkv = (QKVParallelLinear(H, 8, 4, 4, **kw) if fused
                                              else ReplicatedLinear(H, 3 * H, **kw))


def _save(path, tensors) -> str:
    path.mkdir(exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    return str(path)


def _parts() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"transformer_blocks.0.attn.to_{p}.{leaf}": torch.randn(*shape, generator=g)
            for p in "qkv" for leaf, shape in (("weight", (H, H)), ("bias", (H,)))}


def test_diffusers_names_load_through_the_models_param_names_mapping(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = {"blocks.0.attn1.to_q.weight": torch.randn(H, H, generator=g), "blocks.0.attn1.to_q.bias": torch.randn(H),
               "blocks.0.attn1.to_out.0.weight": torch.randn(H, H), "blocks.0.attn1.to_out.0.bias": torch.randn(H),
               "blocks.0.ffn.net.0.proj.weight": torch.randn(2 * H, H), "blocks.0.ffn.net.0.proj.bias": torch.randn(2 * H)}
    model = Wan()
    load_checkpoint(model, _save(tmp_path, tensors))
    b = model.blocks[0]
    assert torch.equal(b.to_q.weight, tensors["blocks.0.attn1.to_q.weight"])
    assert torch.equal(b.to_out.bias, tensors["blocks.0.attn1.to_out.0.bias"])
    assert torch.equal(b.ffn.fc_in.weight, tensors["blocks.0.ffn.net.0.proj.weight"])
    # the argument overrides the attribute: without the mapping the names are the model's no more
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'blocks.0.attn1.to_q.weight': no parameter"):
        load_checkpoint(Wan(), tmp_path, param_names_mapping={})


def test_parts_merge_into_a_replicated_layer_along_its_output_dim(tmp_path) -> None:
    parts = _parts()
    model = Hunyuan()
    load_checkpoint(model, _save(tmp_path, parts))
    layer = model.double_blocks[0].img_attn_qkv
    for leaf in ("weight", "bias"):
        want = torch.cat([parts[f"transformer_blocks.0.attn.to_{p}.{leaf}"] for p in "qkv"])
        assert torch.equal(getattr(layer, leaf), want), leaf


def test_parts_load_as_a_fused_layers_shards_each_with_its_own_scale(tmp_path) -> None:
    """fp8 per-tensor scales: a concatenation could not hold three scales, the QKV layer's shards do."""
    fp8 = type(resolve_quant_config("fp8")).from_config({"is_checkpoint_fp8_serialized": True})
    floats = {p: torch.randn(H, H) * (i + 1) for i, p in enumerate("qkv")}
    tensors = {}
    biases = {p: torch.randn(H) for p in "qkv"}
    for p, w in floats.items():
        tensors |= {f"transformer_blocks.0.attn.to_{p}.{k}": v for k, v in fp8.quantize_weight(w).items()}
        tensors[f"transformer_blocks.0.attn.to_{p}.bias"] = biases[p]
    model = Hunyuan(fp8, fused=True)
    load_checkpoint(model, _save(tmp_path, tensors))
    x = torch.randn(3, H)
    out, _ = model.double_blocks[0].img_attn_qkv(x)
    ref = F.linear(x, torch.cat(list(floats.values())), torch.cat(list(biases.values())))
    assert (out - ref).norm() / ref.norm() < 0.08


def test_awq_parts_merge_along_the_packed_output_dim(tmp_path) -> None:
    """AWQ stores [in, out/8]: the output dim is 1. Per output column, RTN quantization of the parts is the
    quantization of the merged weight, so the merged load equals loading the merged weight quantized."""
    awq = resolve_quant_config(hf_config={"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32,
                                                                  "zero_point": True, "version": "gemm"}})
    weights = {p: torch.randn(H, H) for p in "qkv"}
    tensors = {}
    biases = {p: torch.randn(H) for p in "qkv"}
    for p, w in weights.items():
        tensors |= {f"transformer_blocks.0.attn.to_{p}.{k}": v for k, v in awq.quantize_weight(w).items()}
        tensors[f"transformer_blocks.0.attn.to_{p}.bias"] = biases[p]
    merged = Hunyuan(awq)
    load_checkpoint(merged, _save(tmp_path / "parts", tensors))
    whole = ReplicatedLinear(H, 3 * H, params_dtype=torch.float32, quant_config=awq, prefix="w")
    one = torch.nn.Module()
    one.w = whole
    quantized = awq.quantize_weight(torch.cat(list(weights.values())))
    load_checkpoint(one, _save(tmp_path / "whole", {**{f"w.{k}": v for k, v in quantized.items()},
                                                   "w.bias": torch.cat(list(biases.values()))}))
    x = torch.randn(2, H)
    assert torch.equal(merged.double_blocks[0].img_attn_qkv(x)[0], whole(x)[0])


def test_a_missing_part_is_named_and_nothing_is_loaded(tmp_path) -> None:
    parts = _parts()
    del parts["transformer_blocks.0.attn.to_k.weight"]
    model = Hunyuan()
    before = model.double_blocks[0].img_attn_qkv.bias.detach().clone()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, _save(tmp_path, parts))
    text = str(err.value)
    assert ("parameter 'double_blocks.0.img_attn_qkv.weight' is merged from 3 checkpoint tensors by "
            "param_names_mapping, but part(s) [1] are missing (found: 'transformer_blocks.0.attn.to_q.weight' (part 0 "
            "of 3), 'transformer_blocks.0.attn.to_v.weight' (part 2 of 3))") in text, text
    assert "nothing was loaded" in text
    assert torch.equal(model.double_blocks[0].img_attn_qkv.bias.detach().view(torch.uint8), before.view(torch.uint8))


def test_parts_of_different_dtypes_are_refused(tmp_path) -> None:
    parts = _parts()
    parts["transformer_blocks.0.attn.to_v.weight"] = parts["transformer_blocks.0.attn.to_v.weight"].half()
    with pytest.raises(CheckpointError, match=r"'double_blocks.0.img_attn_qkv.weight' is merged from checkpoint tensors "
                                              r"of different dtypes: .*to_v.weight' torch.float16"):
        load_checkpoint(Hunyuan(), _save(tmp_path, parts))


def test_a_name_the_mapping_sends_nowhere_says_where_it_was_sent(tmp_path) -> None:
    tensors = {"blocks.0.attn1.to_q.weight": torch.randn(H, H), "blocks.0.attn1.to_q.bias": torch.randn(H),
               "blocks.0.attn1.to_out.0.weight": torch.randn(H, H), "blocks.0.attn1.to_out.0.bias": torch.randn(H),
               "blocks.0.ffn.net.0.proj.weight": torch.randn(2 * H, H), "blocks.0.ffn.net.0.proj.bias": torch.randn(2 * H)}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Wan(), _save(tmp_path, tensors), param_names_mapping={**WAN, r"^blocks\.(\d+)\.attn1\.to_q\.(.*)$":
                                                                             r"blocks.\1.query.\2"})
    assert ("unexpected tensor 'blocks.0.attn1.to_q.weight' (param_names_mapping: → 'blocks.0.query.weight'): no "
            "parameter of the model takes it") in str(err.value)


@pytest.mark.parametrize("entry, found", [
    ({"(": "x"}, "the pattern is not a regular expression"),
    ({"^a$": ("b", 3, 3)}, "a merged part is (replacement, index, count) with 0 <= index < count, found ('b', 3, 3)"),
    ({"^a$": ("b", 0)}, "found ('b', 0)"),
    ({"^a$": 5}, "the replacement must be a string or (replacement, index, count), found int"),
])
def test_a_malformed_mapping_entry_is_a_config_error_naming_it(tmp_path, entry, found) -> None:
    with pytest.raises(ConfigError) as err:
        load_checkpoint(Wan(), _save(tmp_path, {"x": torch.zeros(1)}), param_names_mapping=entry)
    assert f"the param_names_mapping argument entry {next(iter(entry))!r}" in str(err.value)
    assert found in str(err.value)


@pytest.mark.parametrize("rows", [(0, 96), (0, 32), (10, 70), (32, 64), (31, 33), (95, 96)])
def test_a_merged_slice_reads_only_the_parts_a_row_range_covers(tmp_path, rows) -> None:
    """What a tensor-parallel rank reads: its rows of the concatenation, across part boundaries."""
    from safetensors import safe_open

    parts = {f"p{i}": torch.arange(32 * 4, dtype=torch.float32).reshape(32, 4) + 1000 * i for i in range(3)}
    save_file(parts, str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as handle:
        merged = MergedSlice([handle.get_slice(f"p{i}") for i in range(3)], 0)
        assert merged.get_shape() == [96, 4]
        got = merged[(slice(*rows), slice(1, 3))]
    assert torch.equal(got, torch.cat(list(parts.values()))[rows[0]:rows[1], 1:3])


def test_each_rank_reads_its_rows_of_the_merged_parts(tmp_path) -> None:
    """A ColumnParallelLinear(32, 96) at TP=2 over three 32-row parts: rank 0 takes rows 0-47 (q and half of k),
    rank 1 rows 48-95 (the rest of k, and v), on real gloo ranks."""
    import names_workers as W

    from fastvideo_quant.testing.distributed import run_distributed

    parts = _parts()
    mapping = {rf"^transformer_blocks\.0\.attn\.to_{p}\.(.*)$": (r"qkv.\1", i, 3) for i, p in enumerate("qkv")}
    path = _save(tmp_path, parts)
    results = run_distributed(W.load_merged_column, 2, path, mapping, backend="gloo", timeout=120)
    for leaf in ("weight", "bias"):
        whole = torch.cat([parts[f"transformer_blocks.0.attn.to_{p}.{leaf}"] for p in "qkv"])
        assert torch.equal(torch.cat([r[leaf] for r in results]), whole), leaf


def test_a_module_left_float_is_named_by_the_models_name(tmp_path) -> None:
    """The skip-list hint names the layer as modules_to_not_convert matches it: the model's name
    ('blocks.0.to_out'), not the checkpoint's ('blocks.0.attn1.to_out.0')."""
    fp8 = type(resolve_quant_config("fp8")).from_config({"is_checkpoint_fp8_serialized": True})
    tensors = {}
    for name, out in (("blocks.0.attn1.to_q", H), ("blocks.0.ffn.net.0.proj", 2 * H)):
        tensors |= {f"{name}.{k}": v for k, v in fp8.quantize_weight(torch.randn(out, H)).items()}
        tensors[f"{name}.bias"] = torch.randn(out)
    tensors |= {"blocks.0.attn1.to_out.0.weight": torch.randn(H, H).bfloat16(), "blocks.0.attn1.to_out.0.bias":
                torch.randn(H).bfloat16()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Wan(fp8), _save(tmp_path, tensors))
    assert ("module 'blocks.0.to_out' is stored unquantized ('blocks.0.attn1.to_out.0.weight'), but the model built it "
            "as a quantized 'fp8' layer: add 'blocks.0.to_out' to the quantization config's skip list (ignored_layers;") \
        in str(err.value), str(err.value)
