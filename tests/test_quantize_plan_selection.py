"""`fvq quantize`'s choice of tensors: the skip list written as full module names (as vLLM's and transformers'
readers match them), embedding tables and output heads left unquantized by default, --include on a module
without a linear weight refused, and the norm rule matching a module's own name (AdaLN linears are quantized)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, random_state_dict
from fastvideo_quant.demo.run import load_model
from fastvideo_quant.layers.linear import UnquantizedLinearMethod
from fastvideo_quant.quantize import QuantizeError, SelectionRule, quantize_checkpoint
from fastvideo_quant.quantize.plan import default_rule_notes, plan_tensors

CFG12 = DemoConfig(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256, num_layers=12,
                   in_channels=16, num_tokens=8)
FUSED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def write(d: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    d.mkdir()
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config))
    return d


def dtypes(ckpt: Path) -> dict[str, str]:
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as h:
        return {n: h.get_slice(n).get_dtype() for n in h.keys()}


def section(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())["quantization_config"]


def w(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.bfloat16) * 0.05


# --- defect 1: --skip patterns were written into the config as typed ---------------------------------------------

def vllm_fp8_skipped(prefix: str, ignored: list[str]) -> bool:
    """vLLM's fp8 is_layer_skipped: exact names; a fused layer by its shards' names."""
    base, _, leaf = prefix.rpartition(".")
    if leaf in FUSED:
        return all(f"{base}.{p}" in ignored for p in FUSED[leaf])
    return prefix in ignored


def vllm_awq_skipped(prefix: str, not_convert: list[str]) -> bool:
    """vLLM's (and transformers') AWQ rule: any listed name a substring of the layer's name."""
    return any(m in prefix for m in not_convert)


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_skip_is_written_as_full_module_names_that_every_reader_agrees_on(tmp_path: Path, method: str):
    src = write(tmp_path / "src", random_state_dict(CFG12, seed=0), CFG12.to_dict())
    dst = tmp_path / "q"
    options = {"group_size": 64} if method == "awq" else {}
    report = quantize_checkpoint(src, dst, method, options=options, skip=["blocks.1"])
    written = section(dst)["ignored_layers" if method == "fp8" else "modules_to_not_convert"]
    assert "blocks.1" not in written
    assert written == report.modules_to_not_convert
    stored = dtypes(dst)
    model = load_model(CFG12, dst, torch.float32, torch.device("cpu"))  # this package's loader
    layers = {name: m for name, m in model.named_modules() if hasattr(m, "quant_method")}
    assert "blocks.1.attn.qkv_proj" in layers and "blocks.10.attn.qkv_proj" in layers
    for name, layer in layers.items():
        parts = [f"{name.rpartition('.')[0]}.{p}" for p in FUSED.get(name.rpartition(".")[2], [])] or [name]
        stored_float = stored.get(f"{parts[0]}.weight") == "BF16"  # (AWQ stores qweight)
        ours = isinstance(layer.quant_method, UnquantizedLinearMethod)
        theirs = vllm_fp8_skipped(name, written) if method == "fp8" else vllm_awq_skipped(name, written)
        assert ours == theirs == stored_float, (name, ours, theirs, stored_float)
        assert stored_float == (name.startswith("blocks.1.") or name == "patch_embed"), name


# --- defect 2: embedding tables not named *embed* were quantized -------------------------------------------------

def test_embedding_tables_known_by_name_are_left_unquantized(tmp_path: Path):
    src = write(tmp_path / "src", {
        "shared.weight": w(512, 128),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": w(32, 8),
        "transformer.wte.weight": w(512, 128),
        "transformer.wpe.weight": w(64, 128),
        "encoder.block.0.layer.0.SelfAttention.q.weight": w(128, 128),
    }, {"model_type": "t5"})
    report = quantize_checkpoint(src, tmp_path / "q", "fp8")
    got = dtypes(tmp_path / "q")
    for table in ("shared", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias", "transformer.wte",
                  "transformer.wpe"):
        assert got[f"{table}.weight"] == "BF16", table
        assert table in report.modules_to_not_convert
    assert got["encoder.block.0.layer.0.SelfAttention.q.weight"] == "F8_E4M3"
    notes = default_rule_notes(plan_tensors(src, SelectionRule()))
    assert len(notes) == 1 and "embedding table" in notes[0] and "transformer.wte" in notes[0] and "--include" in notes[0]
    assert notes[0] in report.notes  # the summary says it
    quantize_checkpoint(src, tmp_path / "q2", "fp8", include=["shared"])
    assert dtypes(tmp_path / "q2")["shared.weight"] == "F8_E4M3"


def test_embedding_tables_known_by_the_configs_sizes_are_left_unquantized(tmp_path: Path):
    config = {"vocab_size": 300, "n_positions": 96, "relative_attention_num_buckets": 24, "d_model": 128,
              "max_position_embeddings": 128}  # == d_model: proves nothing, not used
    src = write(tmp_path / "src", {
        "enc.tok.weight": w(300, 128),
        "enc.pos.weight": w(96, 128),
        "enc.layer.0.attn.rel.weight": w(24, 8),
        "enc.layer.0.attn.o.weight": w(128, 128),  # out == max_position_embeddings == d_model: a linear
    }, config)
    plan = {t.name: t for t in plan_tensors(src, SelectionRule())}
    assert not plan["enc.tok.weight"].quantize and "vocab_size" in plan["enc.tok.weight"].why
    assert not plan["enc.pos.weight"].quantize and "n_positions" in plan["enc.pos.weight"].why
    assert not plan["enc.layer.0.attn.rel.weight"].quantize
    assert plan["enc.layer.0.attn.o.weight"].quantize
    quantize_checkpoint(src, tmp_path / "q", "fp8")
    got = dtypes(tmp_path / "q")
    assert got["enc.tok.weight"] == got["enc.pos.weight"] == got["enc.layer.0.attn.rel.weight"] == "BF16"
    assert got["enc.layer.0.attn.o.weight"] == "F8_E4M3"


# --- defect 3: lm_head was quantized by default -------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_lm_head_is_left_unquantized_unless_included(tmp_path: Path, tied: bool):
    emb = w(300, 128)
    src = write(tmp_path / "src", {
        "model.embed_tokens.weight": emb, "lm_head.weight": emb.clone(), "model.layers.0.mlp.down_proj.weight": w(128, 128),
    }, {"hidden_size": 128, "tie_word_embeddings": tied})  # no vocab_size: the name alone decides
    report = quantize_checkpoint(src, tmp_path / "q", "fp8")
    assert dtypes(tmp_path / "q")["lm_head.weight"] == "BF16"
    assert "lm_head" in section(tmp_path / "q")["ignored_layers"] and "lm_head" in report.modules_to_not_convert
    notes = default_rule_notes(plan_tensors(src, SelectionRule()))
    assert any("lm_head" in n and "--include lm_head" in n for n in notes), notes
    quantize_checkpoint(src, tmp_path / "q2", "fp8", include=["lm_head"])
    assert dtypes(tmp_path / "q2")["lm_head.weight"] == "F8_E4M3"


def test_vocab_sized_output_head_under_another_name_is_left_unquantized(tmp_path: Path):
    src = write(tmp_path / "src", {"decoder.embed_out.weight": w(300, 128), "proj_out.weight": w(300, 128),
                                   "blocks.0.ff.weight": w(128, 128)}, {"vocab_size": 300, "hidden_size": 128})
    quantize_checkpoint(src, tmp_path / "q", "fp8")
    got = dtypes(tmp_path / "q")
    assert got["proj_out.weight"] == got["decoder.embed_out.weight"] == "BF16"
    assert got["blocks.0.ff.weight"] == "F8_E4M3"


# --- defect 4: --include on a module without a 2-D weight was accepted and did nothing ---------------------------

@pytest.mark.parametrize("pattern, module, shape", [("patch_conv", "model.patch_conv", "[128, 4, 2, 2]"),
                                                    ("norm1", "blocks.0.norm1", "[128]")])
def test_include_of_a_module_without_a_linear_weight_is_refused(tmp_path: Path, pattern, module, shape):
    src = write(tmp_path / "src", {"model.patch_conv.weight": w(128, 4, 2, 2), "model.patch_conv.bias": w(128),
                                   "blocks.0.norm1.weight": w(128), "blocks.0.ff.weight": w(128, 128)}, {})
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(src, tmp_path / "q", "fp8", include=[pattern])
    msg = str(info.value)
    assert f"--include pattern {pattern!r}" in msg and repr(module) in msg and shape in msg, msg
    assert "2-D" in msg
    assert not (tmp_path / "q").exists()
    # A pattern matching a linear weight among others does something: accepted.
    quantize_checkpoint(src, tmp_path / "q", "fp8", include=["blocks.0"])
    assert dtypes(tmp_path / "q")["blocks.0.ff.weight"] == "F8_E4M3"


# --- defect 5: the norm rule matched any component, leaving AdaLN modulation linears in bf16 ---------------------

def test_norm_rule_matches_the_modules_own_name_only(tmp_path: Path):
    src = write(tmp_path / "src", {
        "transformer_blocks.0.norm1.linear.weight": w(768, 128),          # AdaLN modulation (Flux, SD3, CogVideoX)
        "transformer_blocks.0.norm1_context.linear.weight": w(768, 128),
        "norm_out.linear.weight": w(256, 128),
        "norm_out.weight": w(128),                                      # a norm's vector: 1-D anyway
        "transformer_blocks.0.norm.weight": w(128, 128),                 # a 2-D weight of a module named norm
        "transformer_blocks.0.attn.k_norm.weight": w(128),
    }, {})
    rule = SelectionRule()
    assert rule.decide("transformer_blocks.0.norm1.linear.weight", (768, 128), torch.bfloat16)[0]
    assert not rule.decide("transformer_blocks.0.norm.weight", (128, 128), torch.bfloat16)[0]
    assert not rule.decide("blocks.0.q_norm.weight", (128, 128), torch.bfloat16)[0]
    report = quantize_checkpoint(src, tmp_path / "q", "fp8")
    got = dtypes(tmp_path / "q")
    for linear in ("transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear", "norm_out.linear"):
        assert got[f"{linear}.weight"] == "F8_E4M3", linear
    assert got["transformer_blocks.0.norm.weight"] == got["norm_out.weight"] == "BF16"
    assert report.modules_to_not_convert == ["transformer_blocks.0.norm"]
    # Block scales also write modules_to_not_convert for transformers, which matches its entries as substrings:
    # 'transformer_blocks.0.norm' would then skip the quantized norm1.linear, so that checkpoint is refused.
    with pytest.raises(QuantizeError, match=r"modules_to_not_convert.*'transformer_blocks\.0\.norm' \(left unquantized\)"):
        quantize_checkpoint(src, tmp_path / "qb", "fp8", options={"weight_block_size": [128, 128]})
    assert not (tmp_path / "qb").exists()
