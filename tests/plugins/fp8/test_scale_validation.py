"""fp8 checkpoints with bad values are refused before any layer is processed; partial last blocks load.

Each test writes a real checkpoint (safetensors + config.json) into tmp_path and loads it with ``load_checkpoint``.
"""

from __future__ import annotations

import json

import pytest
import torch
from fvq_fp8 import Fp8Config
from fvq_fp8.format import dequantize
from fvq_fp8.method import _check_block_alignment
from safetensors.torch import save_file

from fastvideo_quant.errors import ShardingError, WeightLoadError
from fastvideo_quant.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from fastvideo_quant.loader import load_checkpoint

TENSOR = {"quant_method": "fp8", "activation_scheme": "dynamic"}


class Block(torch.nn.Module):
    """qkv (fused, 4 heads / 2 KV heads of 64), o_proj (row), gate_up (fused 2 x 160)."""

    def __init__(self, cfg: Fp8Config, hidden: int = 256) -> None:
        super().__init__()
        kw = {"bias": False, "params_dtype": torch.bfloat16, "quant_config": cfg}
        self.attn, self.mlp = torch.nn.Module(), torch.nn.Module()
        self.attn.qkv_proj = QKVParallelLinear(hidden, 64, 4, 2, prefix="attn.qkv_proj", **kw)
        self.attn.o_proj = RowParallelLinear(256, hidden, prefix="attn.o_proj", **kw)
        self.mlp.gate_up_proj = MergedColumnParallelLinear(hidden, [160, 160], prefix="mlp.gate_up_proj", **kw)


SHAPES = {"attn.q_proj": (256, 256), "attn.k_proj": (128, 256), "attn.v_proj": (128, 256), "attn.o_proj": (256, 256),
          "mlp.gate_proj": (160, 256), "mlp.up_proj": (160, 256)}


def write(path, config: dict, edit=None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Quantize seeded float weights with ``config`` into ``path``; ``edit(tensors)`` spoils them first."""
    cfg = Fp8Config.from_config(config)
    g = torch.Generator().manual_seed(0)
    floats = {name: torch.randn(*shape, generator=g) / 16 for name, shape in SHAPES.items()}
    acts = torch.randn(8, 256, generator=g)
    tensors = {f"{name}.{k}": v for name, w in floats.items()
               for k, v in cfg.quantize_weight(w, prefix=name, activations=acts).items()}
    if edit is not None:
        edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"quantization_config": cfg.to_dict()}))
    return tensors, floats


def load(path, config: dict) -> Block:
    model = Block(Fp8Config.from_config(Fp8Config.from_config(config).to_dict()))
    load_checkpoint(model, path)
    return model


def processed(model: torch.nn.Module) -> list[bool]:
    return [getattr(m, "_fvq_weights_processed", False) for m in model.modules() if hasattr(m, "quant_method")]


def set_value(name: str, value: float, index=None):
    def edit(tensors):
        t = tensors[name].clone()
        if index is None:
            t.fill_(value)
        else:
            t[index] = value
        tensors[name] = t
    return edit


def test_nan_scale_is_reported_as_nan_not_as_never_loaded(tmp_path):
    write(tmp_path, TENSOR, set_value("attn.o_proj.weight_scale", float("nan")))
    model = Block(Fp8Config.from_config(TENSOR))
    with pytest.raises(WeightLoadError, match=r"attn\.o_proj\.weight_scale'.*finite and > 0.*= nan") as err:
        load_checkpoint(model, tmp_path)
    assert "never loaded" not in str(err.value)
    assert not any(processed(model))


class Replicated(torch.nn.Module):
    """One ReplicatedLinear (the usual layer of a DiT), named as the checkpoint's o_proj."""

    def __init__(self, cfg: Fp8Config) -> None:
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.o_proj = ReplicatedLinear(256, 256, bias=False, params_dtype=torch.bfloat16, quant_config=cfg,
                                            prefix="attn.o_proj")


def _only_o_proj(edit=None):
    def keep(tensors):
        if edit is not None:
            edit(tensors)
        for name in [n for n in tensors if not n.startswith("attn.o_proj.")]:
            del tensors[name]
    return keep


@pytest.mark.parametrize(("config", "tensor", "index"), [
    (TENSOR, "attn.o_proj.weight_scale", None),
    ({**TENSOR, "weight_scale_strategy": "channel"}, "attn.o_proj.weight_scale", (5, 0)),
    ({**TENSOR, "activation_scheme": "static"}, "attn.o_proj.input_scale", None),
])
def test_nan_scale_of_a_replicated_layer_is_reported_as_nan(tmp_path, config, tensor, index):
    """ReplicatedLinear copied its tensors past the scale parameters' load methods, so their record of what was loaded
    stayed empty and a stored NaN read "never loaded ... the checkpoint lacks it"."""
    write(tmp_path, config, _only_o_proj(set_value(tensor, float("nan"), index)))
    model = Replicated(Fp8Config.from_config(config))
    with pytest.raises(WeightLoadError, match=rf"{tensor.replace('.', '[.]')}'.*finite and > 0.*= nan") as err:
        load_checkpoint(model, tmp_path)
    assert "never loaded" not in str(err.value)
    assert not any(processed(model))
    good = tmp_path / "good"
    good.mkdir()
    write(good, config, _only_o_proj())
    model = Replicated(Fp8Config.from_config(config))
    load_checkpoint(model, good)
    assert all(processed(model))


BAD = [
    ("inf weight_scale", TENSOR, "attn.o_proj.weight_scale", float("inf"), None,
     r"attn\.o_proj\.weight_scale'.*1 of 1 entries.*= inf"),
    ("negative weight_scale", TENSOR, "attn.o_proj.weight_scale", -1.0, None, r"attn\.o_proj\.weight_scale'.*= -1\.0"),
    ("zero k-shard scale", TENSOR, "attn.k_proj.weight_scale", 0.0, None,
     r"qkv_proj\.weight_scale'.*at \[1\]"
     r" \(checkpoint tensor 'attn\.k_proj\.weight_scale'\) = 0\.0"),
    ("inf input_scale of up", {**TENSOR, "activation_scheme": "static"}, "mlp.up_proj.input_scale", float("inf"), None,
     r"gate_up_proj\.input_scale'.*at \[1\] \(checkpoint tensor 'mlp\.up_proj\.input_scale'\) = inf"),
    ("NaN channel scale of v", {**TENSOR, "weight_scale_strategy": "channel"}, "attn.v_proj.weight_scale", float("nan"),
     (5, 0), r"qkv_proj\.weight_scale'.*1 of 512 entries.*\[389, 0\]"
             r" \(checkpoint tensor 'attn\.v_proj\.weight_scale' \[5, 0\]\) = nan"),
    ("inf block scale", {**TENSOR, "weight_block_size": [128, 128]}, "attn.o_proj.weight_scale_inv", float("inf"),
     (1, 0), r"attn\.o_proj\.weight_scale_inv'.*1 of 4 entries.*at \[1, 0\] = inf"),
    # a denormal input scale: loaded before, and the static path's x * (1 / scale) gave NaN wherever x was 0
    ("denormal input_scale of gate", {**TENSOR, "activation_scheme": "static"}, "mlp.gate_proj.input_scale", 1e-39,
     None, r"gate_up_proj\.input_scale'.*expected every entry at least 2\.939e-39 \(the activations are multiplied "
           r"by 1 / scale in float32, which is inf below it\), found 1 of 2 entries below it.*at \[0\]"),
    # finite but absurd (a flipped exponent bit): loaded before, and the output was inf
    ("huge weight_scale", TENSOR, "attn.o_proj.weight_scale", 3e38, None,
     r"attn\.o_proj\.weight_scale'.*expected every entry at most 7\.566e\+35 \(448 x scale, the largest de-quantized "
     r"weight, must fit the layer's torch.bfloat16\), found 1 of 1 entries above it"),
    ("huge block scale", {**TENSOR, "weight_block_size": [128, 128]}, "attn.o_proj.weight_scale_inv", 1e37,
     (0, 1), r"attn\.o_proj\.weight_scale_inv'.*at most 7\.566e\+35.*at \[0, 1\] = 9\.99"),
]


@pytest.mark.parametrize(("config", "tensor", "value", "index", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_scale_is_named_and_nothing_is_processed(tmp_path, config, tensor, value, index, match):
    write(tmp_path, config, set_value(tensor, value, index))
    model = Block(Fp8Config.from_config(Fp8Config.from_config(config).to_dict()))
    with pytest.raises(WeightLoadError, match=match):
        load_checkpoint(model, tmp_path)
    assert not any(processed(model))


def test_nan_fp8_weight_is_named(tmp_path):
    def edit(tensors):
        w = tensors["mlp.gate_proj.weight"].clone()
        w.view(torch.uint8)[3, 7] = 0x7F  # e4m3fn NaN
        tensors["mlp.gate_proj.weight"] = w

    write(tmp_path, TENSOR, edit)
    model = Block(Fp8Config.from_config(TENSOR))
    with pytest.raises(WeightLoadError, match=r"mlp\.gate_up_proj\.weight'.*1 of 81920 that are NaN or inf.*"
                                               r"\[3, 7\] \(checkpoint tensor 'mlp\.gate_proj\.weight' \[3, 7\]\) = nan"):
        load_checkpoint(model, tmp_path)
    assert not any(processed(model))


def test_good_checkpoint_loads_and_every_layer_is_processed(tmp_path):
    write(tmp_path, TENSOR)
    assert all(processed(load(tmp_path, TENSOR)))


# --- partial last blocks -----------------------------------------------------------------------------------
def _rel(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()


def test_partial_last_block_loads_and_computes_at_tp1(tmp_path):
    """out=256, in=200 at block [100, 100]: grid [3, 2] with partial last blocks, loaded and run at TP=1."""
    cfg = Fp8Config.from_config({**TENSOR, "weight_block_size": [100, 100]})
    w = torch.randn(256, 200, generator=torch.Generator().manual_seed(1)) / 14
    tensors = {f"proj.{k}": v for k, v in cfg.quantize_weight(w).items()}
    assert tensors["proj.weight_scale_inv"].shape == (3, 2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(200, 256, bias=False, params_dtype=torch.bfloat16,
                                  quant_config=Fp8Config.from_config(cfg.to_dict()), prefix="proj")
    load_checkpoint(model, tmp_path)
    deq = model.proj.quant_method.dequantize_weight(model.proj)
    assert torch.equal(deq, dequantize(tensors["proj.weight"], tensors["proj.weight_scale_inv"], (100, 100)))
    x = torch.randn(5, 200, generator=torch.Generator().manual_seed(2))
    out = model.proj(x.bfloat16())[0]
    assert _rel(out, x @ deq.T) < Fp8Config.tolerance.max_rel_error
    assert _rel(out, x @ w.T) < 2 * Fp8Config.tolerance.max_rel_error  # and close to the float weights


@pytest.mark.parametrize("block", [[100, 100], [96, 64]])
def test_fused_shards_with_partial_blocks_load_at_tp1(tmp_path, block):
    """q/k/v (256/128/128) and gate/up (160) are not multiples of bn: each shard keeps its own grid."""
    config = {**TENSOR, "weight_block_size": block}
    tensors, floats = write(tmp_path, config)
    model = load(tmp_path, config)
    for layer, parts in ((model.attn.qkv_proj, ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
                         (model.mlp.gate_up_proj, ("mlp.gate_proj", "mlp.up_proj"))):
        want = torch.cat([dequantize(tensors[f"{p}.weight"], tensors[f"{p}.weight_scale_inv"], tuple(block))
                          for p in parts])
        assert torch.equal(layer.quant_method.dequantize_weight(layer), want)
        x = torch.randn(4, 256, generator=torch.Generator().manual_seed(3))
        assert _rel(layer(x.bfloat16())[0], x @ want.T) < Fp8Config.tolerance.max_rel_error


def test_online_block_quantization_of_fused_shards_matches_the_checkpoint(tmp_path):
    """Online (float checkpoint) block quantization of a fused layer writes each shard's own tiles."""
    block = [100, 100]
    tensors, floats = write(tmp_path, {**TENSOR, "weight_block_size": block})
    online = QKVParallelLinear(256, 64, 4, 2, bias=False, params_dtype=torch.float32, prefix="qkv",
                               quant_config=Fp8Config.from_config({"weight_block_size": block}))
    for sid, name in zip("qkv", ("attn.q_proj", "attn.k_proj", "attn.v_proj"), strict=True):
        online.weight_loader_v2(online.weight, floats[name], sid)
    online.quant_method.process_weights_after_loading(online)
    want = torch.cat([dequantize(tensors[f"{p}.weight"], tensors[f"{p}.weight_scale_inv"], (100, 100))
                      for p in ("attn.q_proj", "attn.k_proj", "attn.v_proj")])
    assert torch.equal(online.quant_method.dequantize_weight(online), want)


def _unquantized(cls, *args, tp: int, **kw):
    layer = cls(*args, bias=False, quant_config=None, prefix="blk", **kw)
    layer.tp_size = tp  # as a rank at this TP size sees it; the sizes the check reads are the whole layer's
    return layer


@pytest.mark.parametrize(("layer", "block", "match"), [
    (lambda: _unquantized(MergedColumnParallelLinear, 128, [64, 96], tp=2), (64, 64),
     r"output shard 0 has 32 rows per rank \(of 64\).*bn=64.*TP sizes that work for this layer: \[1\]$"),
    (lambda: _unquantized(ColumnParallelLinear, 256, 512, tp=8), (128, 128),
     r"64 rows per rank \(of 512\).*TP sizes that work for this layer: \[1, 2, 4\]$"),
    (lambda: _unquantized(RowParallelLinear, 200, 64, tp=4), (100, 100),
     r"input size per rank 50 \(of 200\).*bk=100.*TP sizes that work for this layer: \[1, 2\]$"),
    (lambda: _unquantized(QKVParallelLinear, 256, 64, 4, 2, tp=4), (128, 128),
     r"output shard 1 has 64 rows per rank \(of 128\).*TP sizes that work for this layer: \[1\]$"),
], ids=["merged", "column", "row", "qkv"])
def test_block_split_error_lists_only_tp_sizes_that_work(layer, block, match):
    with pytest.raises(ShardingError, match=match):
        _check_block_alignment(layer(), block)



class BiasedOProj(torch.nn.Module):
    def __init__(self, cfg: Fp8Config) -> None:
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.o_proj = RowParallelLinear(256, 256, bias=True, params_dtype=torch.bfloat16, quant_config=cfg,
                                             prefix="attn.o_proj")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_bias_is_refused_before_processing(tmp_path, bad):
    cfg = Fp8Config.from_config(TENSOR)
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) / 16
    tensors = {f"attn.o_proj.{k}": v for k, v in cfg.quantize_weight(w, prefix="attn.o_proj").items()}
    bias = torch.randn(256).to(torch.bfloat16)
    save_file({**tensors, "attn.o_proj.bias": bias}, str(tmp_path / "model.safetensors"))
    load_checkpoint(BiasedOProj(cfg), tmp_path)  # a finite bias loads
    bias[7] = bad
    save_file({**tensors, "attn.o_proj.bias": bias}, str(tmp_path / "model.safetensors"))
    model = BiasedOProj(cfg)
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(model, tmp_path)
    msg = str(info.value)
    assert "fp8 layer 'attn.o_proj': tensor 'attn.o_proj.bias'" in msg
    assert f"found 1 of 256 that are NaN or inf, the first at [7] = {bad}" in msg and "re-export" in msg
    assert processed(model) == [False]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_a_model_loaded_on_cpu_then_moved_to_the_gpu_is_processed_there(tmp_path, strategy):
    """The scales' loaded_mask is a plain attribute that .to("cuda") does not move; the checks must not mix devices."""
    from fastvideo_quant.loader import process_weights_after_loading

    config = {**TENSOR, "weight_scale_strategy": strategy}
    _, floats = write(tmp_path, config)
    model = Block(Fp8Config.from_config(config))
    load_checkpoint(model, tmp_path, process_weights=False)
    model.to("cuda")
    process_weights_after_loading(model)
    assert all(processed(model))
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    out = model.attn.o_proj(x)
    out = out[0] if isinstance(out, tuple) else out
    ref = x.float() @ floats["attn.o_proj"].cuda().T
    assert (out.float() - ref).norm() / ref.norm() < 0.05
