"""`fvq quantize`'s planning stage, before anything is quantized or written: the source's config.json read once, and
every weight the method cannot quantize (AWQ's shape rules) reported in one error, and a skip list whose entries
would make a reader skip a quantized module (a substring of its name) refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.cli import main
from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantize import QuantizeError, quantize_checkpoint


def write(d: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    d.mkdir()
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config))
    return d


def w(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.bfloat16) * 0.05


# --- the source's config.json was read three times (its check, the method-file check, the table sizes) ----------

def test_source_config_is_read_once_and_its_table_sizes_still_apply(tmp_path: Path, monkeypatch):
    src = write(tmp_path / "src", {"embed_like.weight": w(1000, 64), "blocks.0.fc.weight": w(64, 64)},
                {"vocab_size": 1000, "hidden_size": 64})
    reads: list[Path] = []
    read_text = Path.read_text

    def counting(self: Path, *args, **kwargs):
        if self.name == "config.json" and self.parent == src:
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    report = quantize_checkpoint(src, tmp_path / "q", "int8")
    assert len(reads) == 1, reads
    assert report.modules_to_not_convert == ["embed_like"]  # the vocab-sized table, by config.json's vocab_size


# --- AWQ shape problems surfaced one tensor per run, after earlier tensors were quantized and written -----------

AWQ_MISFITS = {
    "blocks.0.a.weight": (128, 100),  # in_features not a multiple of 8
    "blocks.0.b.weight": (100, 128),  # out_features not a multiple of 8
    "blocks.1.c.weight": (64, 96),  # in_features not a multiple of group_size 128 (32 fits)
    "blocks.1.attn.q_proj.weight": (64, 96),  # a part of a fused group: skipped by its fused name
    "blocks.1.attn.k_proj.weight": (64, 128),
    "blocks.1.attn.v_proj.weight": (64, 128),
}


@pytest.fixture
def misfit_src(tmp_path: Path) -> Path:
    tensors = {"blocks.0.fc.weight": w(128, 128), **{n: w(*shape) for n, shape in AWQ_MISFITS.items()}}
    return write(tmp_path / "src", tensors, {"hidden_size": 128})


def test_awq_shape_problems_are_all_reported_in_one_line_before_anything_is_quantized(misfit_src, tmp_path, capsys,
                                                                                      monkeypatch):
    from fvq_awq import quantizer

    calls = []
    monkeypatch.setattr(quantizer, "quantize_weight", lambda *a, **k: calls.append(a) or {})
    dst = tmp_path / "q"
    assert main(["quantize", str(misfit_src), "--method", "awq", "--out", str(dst), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fvq quantize: error: method 'awq' cannot quantize 4 module(s)") and "\n" not in err, err
    assert "'blocks.0.a' [out=128, in=100]: in_features 100 is not a multiple of 8" in err
    assert "'blocks.0.b' [out=100, in=128]: out_features 100 is not a multiple of 8" in err
    assert "'blocks.1.c' [out=64, in=96]: in_features 96 is not a multiple of group_size 128 (group_size 32 " in err
    assert "'blocks.1.attn.q_proj' [out=64, in=96]" in err
    assert "--skip (each of blocks.0.a, blocks.0.b, blocks.1.attn.qkv_proj, blocks.1.c," in err, err
    assert calls == [] and not dst.exists()
    monkeypatch.undo()
    # The advice works: skipping the modules it names (the fused name for q_proj) quantizes the rest.
    skip = err.split("--skip (each of ")[1].split(", or a pattern")[0].split(", ")
    report = quantize_checkpoint(misfit_src, dst, "awq", skip=skip)
    assert report.tensors_quantized == 1  # blocks.0.fc


def test_awq_group_of_all_inputs_still_needs_inputs_in_words_of_8():
    # group_size -1 wrote [out, 12] weights the loader then refused (its kernel layout reads inputs 8 at a time).
    from fvq_awq.quantizer import quantize_weight

    with pytest.raises(ConfigError, match=r"in_features 12 is not a multiple of 8"):
        quantize_weight(torch.randn(8, 12), group_size=-1)


# --- a skipped module's full name inside a quantized module's name: substring readers skip both ------------------

def test_root_module_skipped_whose_name_ends_a_quantized_ones_is_refused_for_substring_and_component_readers(
        tmp_path: Path, capsys):
    # proj_out is a vocab-sized table (left unquantized by the default rule); blocks.0.proj_out is quantized. For AWQ's
    # substring readers and bitsandbytes' component rule, every entry naming 'proj_out' names 'blocks.0.proj_out'
    # too. fp8's readers (vLLM, compressed-tensors, this package's) match whole names: the checkpoint says it.
    src = write(tmp_path / "src", {"proj_out.weight": w(1000, 128), "blocks.0.proj_out.weight": w(128, 128)},
                {"vocab_size": 1000, "hidden_size": 128})
    assert main(["quantize", str(src), "--method", "fp8", "--out", str(tmp_path / "fp8"), "--no-progress"]) == 0
    capsys.readouterr()
    config = resolve_quant_config(checkpoint=tmp_path / "fp8")
    assert config.is_layer_skipped("proj_out") and not config.is_layer_skipped("blocks.0.proj_out")
    for method, key in [("awq", "modules_to_not_convert"), ("int8", "llm_int8_skip_modules")]:
        dst = tmp_path / method
        assert main(["quantize", str(src), "--method", method, "--out", str(dst), "--no-progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"fvq quantize: error: the skip list written ({key}) would make readers skip modules "
                              "this run quantizes: 'proj_out' (left unquantized) also names quantized "
                              "'blocks.0.proj_out'."), err
        assert "\n" not in err and "--skip blocks.0.proj_out" in err and "--include proj_out" in err, err
        assert "must store modules_to_not_convert" not in err  # (was blamed on the plugin)
        assert not dst.exists()
        # Either fix it names works.
        assert main(["quantize", str(src), "--method", method, "--out", str(dst), "--no-progress",
                     "--include", "proj_out"]) == 0, capsys.readouterr().err
        capsys.readouterr()


FLUX_LIKE = {f"{block}.0.attn.{p}.weight": w(128, 128) for block in ("transformer_blocks", "single_transformer_blocks")
             for p in ("q_proj", "k_proj", "v_proj", "to_out")}


def test_skipped_block_whose_name_is_inside_a_quantized_blocks_is_refused_for_substring_readers(tmp_path: Path):
    # Flux: --skip transformer_blocks.0 leaves single_transformer_blocks.0 quantized (patterns match whole
    # components), but vLLM's AWQ reader would read 'transformer_blocks.0.attn.qkv_proj' as skipping
    # 'single_transformer_blocks.0.attn.qkv_proj' too, and fail on its qweight.
    src = write(tmp_path / "src", dict(FLUX_LIKE), {"hidden_size": 128})
    with pytest.raises(QuantizeError) as refused:
        quantize_checkpoint(src, tmp_path / "awq", "awq", skip=["transformer_blocks.0"])
    message = str(refused.value)
    assert "'transformer_blocks.0.attn.qkv_proj' (left unquantized) also names quantized " \
           "'single_transformer_blocks.0.attn.k_proj', 'single_transformer_blocks.0.attn.q_proj'," in message, message
    assert "--skip single_transformer_blocks.0.attn.qkv_proj, single_transformer_blocks.0.attn.to_out" in message
    assert "narrow or drop --skip transformer_blocks.0" in message
    assert not (tmp_path / "awq").exists()
    # vLLM's fp8 reader matches full names exactly and this package's loader whole components: no clash.
    report = quantize_checkpoint(src, tmp_path / "fp8", "fp8", skip=["transformer_blocks.0"])
    assert report.tensors_quantized == 4
    # (model.layers.1 vs model.layers.10 prefixes do not clash: their full names differ after the number;
    # test_quantize_plan_selection's blocks.1 / blocks.10 test checks every layer against vLLM's AWQ rule.)



def test_the_shadowing_check_follows_the_methods_own_skip_rule(tmp_path: Path):
    """A method declaring substring matching (skip_entry_matches) under a key other readers match whole (fp8's
    ignored_layers) was refused as a plugin bug ("does not round-trip modules_to_not_convert"); it is the same
    shadowing, named as such, and AWQ's message no longer says our loader matches whole components."""
    from fvq_fp8.config import Fp8Config
    from fvq_fp8.method import Fp8LinearMethod

    from fastvideo_quant import plugins

    class SubstringFp8(Fp8Config):
        @classmethod
        def get_name(cls) -> str:
            return "toy_fp8_substring"

        def skip_entry_matches(self, prefix: str) -> bool:
            return any(e in prefix for e in self.modules_to_not_convert if e)

        def to_dict(self):
            return {**super().to_dict(), "quant_method": "toy_fp8_substring"}

    class Plugin:
        @plugins.hookimpl
        def register_quantization_methods(self, register) -> None:
            register(SubstringFp8, Fp8LinearMethod, weight_loader_v2=True)

    src = write(tmp_path / "src", dict(FLUX_LIKE), {"hidden_size": 128})
    plugins.register_plugin(Plugin(), "toy_fp8_substring")
    try:
        with pytest.raises(QuantizeError) as refused:
            quantize_checkpoint(src, tmp_path / "q", "toy_fp8_substring", skip=["transformer_blocks.0"])
    finally:
        plugins.unregister_plugin("toy_fp8_substring")
    message = str(refused.value)
    assert "the skip list written (ignored_layers) would make readers skip modules this run quantizes" in message
    assert "by SubstringFp8's own rule (skip_entry_matches)" in message and "round-trip" not in message, message
    with pytest.raises(QuantizeError, match=r"this package's loader by AWQConfig's own rule \(skip_entry_matches\)"):
        quantize_checkpoint(src, tmp_path / "awq", "awq", skip=["transformer_blocks.0"])


def test_both_planning_refusals_come_in_one_error(tmp_path: Path):
    """A skip list shadowing quantized modules and a weight AWQ cannot quantize: one run names both (the shadowing
    alone was reported, and the shape problem only on the next run)."""
    src = write(tmp_path / "src", {**FLUX_LIKE, "odd.weight": w(60, 128)}, {"hidden_size": 128})
    with pytest.raises(QuantizeError) as refused:
        quantize_checkpoint(src, tmp_path / "awq", "awq", skip=["transformer_blocks.0"])
    message = str(refused.value)
    assert "would make readers skip modules this run quantizes" in message, message
    assert "Also: method 'awq' cannot quantize 1 module(s)" in message and "'odd' [out=60, in=128]" in message, message
