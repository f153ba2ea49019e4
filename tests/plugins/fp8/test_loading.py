"""Loading fp8 checkpoints into the TP layers: per-shard vs fused exactness, scale shapes, errors."""

from __future__ import annotations

import pytest
import torch
from fvq_fp8 import Fp8Config
from fvq_fp8.format import quantize_per_channel, quantize_per_tensor

from fastvideo_quant.errors import NotProcessedError, WeightLoadError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, ReplicatedLinear

TENSOR = {"quant_method": "fp8", "activation_scheme": "dynamic"}
CHANNEL = {**TENSOR, "weight_scale_strategy": "channel"}


def _qkv(config, prefix="attn.qkv"):
    return QKVParallelLinear(64, 16, 4, 2, bias=False, params_dtype=torch.bfloat16,
                             quant_config=Fp8Config.from_config(config), prefix=prefix)


def _shards(seed=0):
    g = torch.Generator().manual_seed(seed)
    # Different magnitudes per shard, so per-shard scales really differ.
    return {"q": torch.randn(64, 64, generator=g), "k": 4 * torch.randn(32, 64, generator=g),
            "v": 0.25 * torch.randn(32, 64, generator=g)}


def _finish(layer):
    layer.quant_method.process_weights_after_loading(layer)
    return layer


def test_qkv_per_shard_scales_equal_fused_per_channel_checkpoint():
    shards = {k: quantize_per_tensor(w) for k, w in _shards().items()}
    per_shard = _qkv(TENSOR)
    for sid, (q, s) in shards.items():
        per_shard.weight_loader_v2(per_shard.weight, q, sid)
        per_shard.weight_loader_v2(per_shard.weight_scale, s, sid)
    _finish(per_shard)

    fused = _qkv(CHANNEL)  # the same tensors written fused: per-shard scales expanded to channels
    fused_q = torch.cat([q for q, _ in shards.values()])
    fused_s = torch.cat([s.expand(q.shape[0]) for q, s in shards.values()]).reshape(-1, 1)
    fused.weight_loader_v2(fused.weight, fused_q)
    fused.weight_loader_v2(fused.weight_scale, fused_s)
    _finish(fused)

    assert torch.equal(per_shard.weight.view(torch.uint8), fused.weight.view(torch.uint8))
    assert torch.equal(per_shard.weight_scale, fused.weight_scale)
    assert per_shard.weight_scale_scalar is None  # scales differ: row-wise GEMM
    x = torch.randn(5, 64).bfloat16()
    assert torch.equal(per_shard(x)[0], fused(x)[0])
    # exact to the stored fp8 values: each shard de-quantizes with its own on-disk scale
    expected = torch.cat([q.float() * s for q, s in shards.values()])
    assert torch.equal(per_shard.quant_method.dequantize_weight(per_shard), expected)


def test_qkv_one_fused_scalar_scale_equals_same_scale_per_shard():
    w = torch.cat(list(_shards().values()))
    q, s = quantize_per_tensor(w)
    fused = _qkv(TENSOR)
    fused.weight_loader_v2(fused.weight, q)
    fused.weight_loader_v2(fused.weight_scale, s)
    _finish(fused)
    per_shard = _qkv(TENSOR)
    for sid, rows in zip("qkv", q.split([64, 32, 32])):
        per_shard.weight_loader_v2(per_shard.weight, rows, sid)
        per_shard.weight_loader_v2(per_shard.weight_scale, s, sid)
    _finish(per_shard)
    assert torch.equal(fused.weight_scale, per_shard.weight_scale)
    assert fused.weight_scale_scalar is not None and fused.weight_scale_scalar.item() == s.item()
    x = torch.randn(3, 64).bfloat16()
    assert torch.equal(fused(x)[0], per_shard(x)[0])


def test_merged_gate_up_channel_per_shard_equals_fused():
    g = torch.Generator().manual_seed(1)
    gate, up = quantize_per_channel(torch.randn(48, 32, generator=g)), quantize_per_channel(3 * torch.randn(80, 32, generator=g))
    cfg = Fp8Config.from_config(CHANNEL)
    a = MergedColumnParallelLinear(32, [48, 80], bias=False, params_dtype=torch.bfloat16, quant_config=cfg)
    for i, (q, s) in enumerate([gate, up]):
        a.weight_loader_v2(a.weight, q, i)
        a.weight_loader_v2(a.weight_scale, s, i)
    b = MergedColumnParallelLinear(32, [48, 80], bias=False, params_dtype=torch.bfloat16, quant_config=cfg)
    b.weight_loader_v2(b.weight, torch.cat([gate[0], up[0]]))
    b.weight_loader_v2(b.weight_scale, torch.cat([gate[1], up[1]]))
    _finish(a), _finish(b)
    assert torch.equal(a.weight.view(torch.uint8), b.weight.view(torch.uint8))
    assert torch.equal(a.weight_scale, b.weight_scale)


def test_compressed_tensors_scale_shapes_load():
    ct = {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {
        "weights": {"num_bits": 8, "type": "float", "strategy": "tensor"},
        "input_activations": {"num_bits": 8, "type": "float", "dynamic": False}}}}
    cfg = Fp8Config.from_config(ct)
    w, x = torch.randn(32, 64), torch.randn(10, 64)
    tensors = cfg.quantize_weight(w, activations=x)
    assert tensors["weight_scale"].shape == (1,) and tensors["input_scale"].shape == (1,)
    layer = ReplicatedLinear(64, 32, bias=False, params_dtype=torch.bfloat16, quant_config=cfg, prefix="p")
    params = dict(layer.named_parameters())
    for name, t in tensors.items():
        params[name].weight_loader(params[name], t)
    _finish(layer)
    assert layer.input_scale.item() == pytest.approx(x.abs().max().item() / 448)


def test_static_input_scale_takes_largest_shard():
    cfg = Fp8Config.from_config({**TENSOR, "activation_scheme": "static"})
    layer = _qkv(cfg.to_dict())
    for sid, w in _shards().items():
        t = cfg.quantize_weight(w, activations=torch.full((2, 64), {"q": 1.0, "k": 5.0, "v": 2.0}[sid]))
        for name in ("weight", "weight_scale", "input_scale"):
            layer.weight_loader_v2(getattr(layer, name), t[name], sid)
    _finish(layer)
    assert layer.input_scale.item() == pytest.approx(5.0 / 448)


def test_missing_shard_scale_is_named():
    layer = _qkv(TENSOR)
    for sid, w in _shards().items():
        q, s = quantize_per_tensor(w)
        layer.weight_loader_v2(layer.weight, q, sid)
        if sid != "v":
            layer.weight_loader_v2(layer.weight_scale, s, sid)
    with pytest.raises(WeightLoadError, match=r"attn\.qkv.*weight_scale.*never loaded"):
        _finish(layer)


def test_wrong_scale_shape_is_rejected():
    layer = ReplicatedLinear(64, 32, bias=False, params_dtype=torch.bfloat16,
                             quant_config=Fp8Config.from_config(CHANNEL), prefix="p")
    with pytest.raises(WeightLoadError, match=r"expected shape \(32, 1\), found \(16, 1\)"):
        layer.weight_loader(layer.weight_scale, torch.ones(16, 1))
    qkv = _qkv(TENSOR)
    with pytest.raises(WeightLoadError, match="expected a scalar"):
        qkv.weight_loader_v2(qkv.weight_scale, torch.ones(4), "q")


def test_apply_before_processing_is_an_error():
    layer = _qkv(TENSOR)
    with pytest.raises(NotProcessedError, match="process_weights_after_loading"):
        layer(torch.randn(2, 64).bfloat16())


@pytest.mark.parametrize("config", [TENSOR, CHANNEL, {**TENSOR, "activation_scheme": "static"},
                                    {**TENSOR, "weight_block_size": [32, 32]}],
                         ids=["tensor", "channel", "static", "block"])
def test_layer_to_moves_every_tensor_it_holds(config):
    """``layer.to(...)``/``.cuda()`` must carry every tensor apply reads: none may be a plain attribute."""
    from fp8_helpers import fp8_layer

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) / 96**0.5
    layer = fp8_layer(w, config, activations=torch.randn(8, 96, generator=g))
    layer.to("meta")
    stray = [k for k, v in vars(layer).items() if isinstance(v, torch.Tensor)]
    assert stray == [], f"tensors held as plain attributes (not moved by .to): {stray}"
    tensors = dict(layer.named_parameters()) | {k: v for k, v in layer.named_buffers()}
    assert tensors and all(t.device.type == "meta" for t in tensors.values()), {
        k: t.device for k, t in tensors.items()}
