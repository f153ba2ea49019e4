"""A skip-list entry naming no module while spelled almost like one (a typo) is warned after the load: it kept
nothing unquantized, silently (vLLM ignores such an entry the same way). Entries naming no module and close to none
(a pipeline-wide list, another model's ``lm_head``) are left alone."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointWarning
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import resolve_quant_config


def _load(tmp_path, skip: list[str], key: str = "ignored_layers") -> tuple[torch.nn.Module, list[str]]:
    config = resolve_quant_config("fp8", hf_config={"quantization_config": {
        "quant_method": "fp8", "activation_scheme": "dynamic", key: skip,
        "is_checkpoint_fp8_serialized": False}})
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Module()])
    model.blocks[0].proj_out = ReplicatedLinear(32, 16, bias=False, quant_config=config, prefix="blocks.0.proj_out")
    model.proj_in = ReplicatedLinear(32, 32, bias=False, quant_config=config, prefix="proj_in")
    save_file({"blocks.0.proj_out.weight": torch.randn(16, 32), "proj_in.weight": torch.randn(32, 32)},
              str(tmp_path / "model.safetensors"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(model, tmp_path)
    return model, [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]


def test_a_misspelled_entry_is_named_with_the_module_it_is_close_to(tmp_path) -> None:
    model, texts = _load(tmp_path, ["proj_ot"])
    assert any("Fp8Config ignored_layers entry 'proj_ot' names no module of the model, so it keeps nothing "
               "unquantized; did you mean 'proj_out'?" in t for t in texts), texts
    assert model.blocks[0].proj_out.weight.dtype == torch.float8_e4m3fn  # (quantized: what the warning says)


def test_the_warning_names_the_key_the_entry_was_given_under(tmp_path) -> None:
    """An fp8 entry given under Hugging Face's modules_to_not_convert was called an "ignored_layers entry", sending
    the user to a key their config does not have."""
    _, texts = _load(tmp_path, ["proj_ot"], key="modules_to_not_convert")
    assert any("Fp8Config modules_to_not_convert entry 'proj_ot' names no module" in t for t in texts), texts


@pytest.mark.parametrize("skip", [["proj_out"], ["lm_head", "text_encoder.encoder.layer"], []])
def test_entries_that_match_or_are_far_from_every_module_are_not_warned(tmp_path, skip) -> None:
    _, texts = _load(tmp_path, skip)
    assert not any("names no module of the model" in t for t in texts), texts
