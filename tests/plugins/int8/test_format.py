"""The bitsandbytes int8 format: quantization equal to bitsandbytes, its state dicts load, bad tensors are named."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch
from fvq_int8 import Int8Config
from fvq_int8 import format as fmt
from int8_helpers import bnb_state_dict, config, load, rel_err

from fastvideo_quant.errors import WeightLoadError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import process_weights_after_loading

K, N = 96, 48


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantize_weight_equals_bitsandbytes_vectorwise_quant(dtype):
    w = torch.randn(N, K).to(dtype)
    ours = Int8Config().quantize_weight(w)
    cb, scb, _ = bnbf.int8_vectorwise_quant(w.clone(), threshold=0.0)
    assert torch.equal(ours["weight"], cb)
    assert torch.equal(ours["SCB"], scb)
    assert ours["weight_format"].dtype == torch.uint8 and ours["weight_format"].dim() == 0
    assert ours["weight_format"].item() == 0  # "row"


def test_zero_row_quantizes_to_zero_scale():
    w = torch.randn(4, K)
    w[2] = 0
    q, scb = fmt.quantize_rows(w)
    assert scb[2] == 0 and not q[2].any() and torch.isfinite(fmt.dequantize_rows(q, scb)).all()


def test_bitsandbytes_state_dict_loads_and_matches_bitsandbytes():
    w, b = torch.randn(N, K) * 0.1, torch.randn(N)
    sd = bnb_state_dict(w, b)
    assert sd["weight"].dtype == torch.int8 and sd["weight_format"].item() == 0
    layer = ReplicatedLinear(K, N, bias=True, params_dtype=torch.float32, quant_config=config(), prefix="l")
    load(layer, sd)
    process_weights_after_loading(layer)
    assert torch.equal(layer.weight, sd["weight"]) and torch.equal(layer.SCB, sd["SCB"])
    assert torch.allclose(layer.quant_method.dequantize_weight(layer), w, atol=w.abs().max() / 127)
    x = torch.randn(5, K)
    ref = x @ layer.quant_method.dequantize_weight(layer).T + b
    assert rel_err(layer(x)[0], ref) < 2e-2


def test_online_quantization_happens_after_loading():
    w = torch.randn(N, K, dtype=torch.bfloat16)
    layer = ReplicatedLinear(K, N, bias=False, params_dtype=torch.bfloat16, quant_config=Int8Config(), prefix="l")
    assert layer.weight.dtype == torch.bfloat16  # float until process_weights_after_loading
    load(layer, {"weight": w})
    process_weights_after_loading(layer)
    cb, scb, _ = bnbf.int8_vectorwise_quant(w.clone())
    assert torch.equal(layer.weight, cb) and torch.equal(layer.SCB, scb)


def test_scb_of_wrong_shape_names_tensor_and_shapes():
    layer = ReplicatedLinear(K, N, bias=False, quant_config=config(), prefix="blocks.3.ff")
    with pytest.raises(WeightLoadError, match=r"blocks\.3\.ff\.SCB.*\(48,\).*\(40,\)"):
        load(layer, {"SCB": torch.rand(40)})


def test_check_pair_names_scb():
    with pytest.raises(WeightLoadError, match=r"'SCB' must be float32 \[out\] = \[8\].*found shape \(7,\)"):
        fmt.check_pair(torch.zeros(8, 4, dtype=torch.int8), torch.ones(7))


def test_old_tiled_weight_format_is_refused():
    layer = ReplicatedLinear(K, N, bias=False, quant_config=config(), prefix="l")
    with pytest.raises(WeightLoadError, match=r"l\.weight_format.*'col32'.*only 'row'"):
        load(layer, {"weight_format": torch.tensor(1, dtype=torch.uint8)})
    with pytest.raises(WeightLoadError, match="unknown code 9"):
        load(layer, {"weight_format": torch.tensor(9, dtype=torch.uint8)})


def test_float_weight_into_prequantized_layer_is_refused():
    layer = ReplicatedLinear(K, N, bias=False, quant_config=config(), prefix="l")
    with pytest.raises(WeightLoadError, match=r"l\.weight: expected an int8 bitsandbytes weight, found torch.float32"):
        load(layer, {"weight": torch.randn(N, K)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32, torch.uint8])
def test_a_non_int8_weight_into_prequantized_layer_gets_the_hint_for_its_kind(dtype):
    """Only a float weight means a float checkpoint (quantize it on load, naming the call); an int32 or uint8 one is
    another format (it used to be told to "select quantization 'int8'", which the user had done)."""
    layer = ReplicatedLinear(K, N, bias=False, quant_config=config(), prefix="l")
    with pytest.raises(WeightLoadError) as err:
        load(layer, {"weight": torch.zeros(N, K, dtype=dtype)})
    msg = str(err.value)
    assert msg.startswith(f"l.weight: expected an int8 bitsandbytes weight, found {dtype}. "), msg
    assert "select quantization 'int8'" not in msg
    if dtype.is_floating_point:
        assert "this is a float weight" in msg and 'resolve_quant_config("int8")' in msg, msg
        assert "fvq quantize SRC --method int8 --out DST" in msg
    else:
        assert "another format" in msg and "float weight" not in msg and "resolve_quant_config" not in msg, msg


def test_int8_weight_into_online_layer_is_refused():
    layer = ReplicatedLinear(K, N, bias=False, quant_config=Int8Config(), prefix="l")
    with pytest.raises(WeightLoadError, match="quant_method 'bitsandbytes'"):
        load(layer, {"weight": torch.zeros(N, K, dtype=torch.int8)})


def test_apply_before_processing_is_an_error():
    layer = ReplicatedLinear(K, N, bias=False, quant_config=Int8Config(), prefix="l")
    with pytest.raises(Exception, match="process_weights_after_loading"):
        layer(torch.randn(2, K))


def _shards(sizes, serialized):
    ws = [torch.randn(s, K) for s in sizes]
    if not serialized:
        return ws, [{"weight": w} for w in ws]
    return ws, [Int8Config().quantize_weight(w) for w in ws]


@pytest.mark.parametrize("serialized", [True, False])
@pytest.mark.parametrize("kind", ["merged", "qkv"])
def test_fused_on_disk_equals_per_shard_loading(kind, serialized):
    cfg = config() if serialized else Int8Config()

    def make():
        if kind == "merged":
            return MergedColumnParallelLinear(K, [32, 64], bias=False, params_dtype=torch.float32, quant_config=cfg,
                                              prefix="ff")
        return QKVParallelLinear(K, 16, 4, 2, bias=False, params_dtype=torch.float32, quant_config=cfg, prefix="qkv")

    per_shard, fused = make(), make()
    ids = [0, 1] if kind == "merged" else ["q", "k", "v"]
    ws, parts = _shards(per_shard.output_sizes, serialized)
    for sid, part in zip(ids, parts):
        load(per_shard, part, sid)
    cat = {name: torch.cat([p[name] for p in parts]) for name in parts[0] if name != "weight_format"}
    load(fused, cat)
    for layer in (per_shard, fused):
        process_weights_after_loading(layer)
    assert torch.equal(per_shard.weight, fused.weight) and torch.equal(per_shard.SCB, fused.SCB)
    # row-wise statistics: quantizing the fused weight equals quantizing each shard
    q, scb = fmt.quantize_rows(torch.cat(ws))
    assert torch.equal(fused.weight, q) and torch.equal(fused.SCB, scb)

