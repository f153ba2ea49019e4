"""An unknown method name that is a registered one spelled with other case, '-', '_' or spaces gets a did-you-mean."""

from __future__ import annotations

import pytest

from fastvideo_quant.errors import UnknownMethodError
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config


@pytest.mark.parametrize(("given", "meant"), [
    ("FP8", "fp8"), ("fp-8", "fp8"), ("Fp_8", "fp8"), ("AWQ ", "awq"), ("int-8", "int8"), ("INT_8", "int8"),
])
def test_a_registered_name_spelled_otherwise_is_suggested(given, meant) -> None:
    with pytest.raises(UnknownMethodError, match=rf"unknown quantization method {given!r}.*did you mean {meant!r}\?"):
        get_quantization_config(given)


def test_a_checkpoint_quant_method_spelled_otherwise_is_suggested() -> None:
    with pytest.raises(UnknownMethodError, match=r"declares quantization method 'fp-8'.*did you mean 'fp8'\?"):
        resolve_quant_config(hf_config={"quantization_config": {"quant_method": "fp-8"}})


def test_an_unrelated_name_gets_no_suggestion() -> None:
    with pytest.raises(UnknownMethodError) as info:
        get_quantization_config("gptq")
    assert "did you mean" not in str(info.value)


def test_the_suggestion_ends_its_sentence_without_a_stray_full_stop() -> None:
    """It read "did you mean 'fp8'?. Install ..."."""
    with pytest.raises(UnknownMethodError) as info:
        get_quantization_config("FP8")
    msg = str(info.value)
    assert "did you mean 'fp8'? Install the plugin that provides it" in msg and "?." not in msg, msg
    with pytest.raises(UnknownMethodError) as info:
        get_quantization_config("gptq")  # no suggestion: the sentences are joined as before
    assert "available: ['awq', 'fp8', 'int8', 'unquantized']. Install the plugin" in str(info.value), str(info.value)


@pytest.mark.parametrize(("given", "meant"), [("fp9", "'fp8'"), ("int7", "'int8'"), ("awq4", "'awq'")])
def test_a_near_miss_gets_the_close_names(given, meant) -> None:
    """Only case/'-'/'_' spellings were suggested: fp9 got the list and an install hint."""
    with pytest.raises(UnknownMethodError, match=rf"unknown quantization method {given!r}.*Did you mean {meant}"):
        get_quantization_config(given)


def test_a_path_given_as_the_method_says_to_pass_it_as_checkpoint(tmp_path) -> None:
    with pytest.raises(UnknownMethodError) as info:
        resolve_quant_config(str(tmp_path))
    assert f"{str(tmp_path)!r} is a path, not a method name: a checkpoint's method is read from its directory, " \
           f"resolve_quant_config(checkpoint={str(tmp_path)!r})" in str(info.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnknownMethodError) as info:  # a file: its directory, which checkpoint= takes
        resolve_quant_config(str(tmp_path / "config.json"))
    assert f"resolve_quant_config(checkpoint={str(tmp_path)!r})" in str(info.value)


def test_a_method_whose_plugin_the_variables_left_out_is_named_so(fresh_plugins, monkeypatch) -> None:
    """FVQ_DISABLE_PLUGINS=fp8 then --method fp8 said only 'unknown', as if it were not installed."""
    from fastvideo_quant import plugins

    monkeypatch.setenv("FVQ_DISABLE_PLUGINS", "fp8")
    plugins.reset()
    with pytest.raises(UnknownMethodError) as info:
        resolve_quant_config("fp8")
    assert ("1 installed plugin(s) were not loaded, and one may register it: 'fp8' (distribution 'fastvideo-quant'): "
            "listed in FVQ_DISABLE_PLUGINS=fp8") in str(info.value), str(info.value)


def test_a_folder_named_like_the_method_is_no_path_hint_unless_it_is_a_checkpoint(tmp_path, monkeypatch) -> None:
    """A folder of the method's name in the working directory made every unknown-method error say "'x' is a path,
    not a method name", even when checkpoint= was passed or the name came from the checkpoint's config.json."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymethod").mkdir()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"quantization_config": {"quant_method": "mymethod"}}')
    for call in (lambda: resolve_quant_config("mymethod"),  # a folder, but no checkpoint
                 lambda: resolve_quant_config("mymethod", checkpoint=str(ckpt)),
                 lambda: resolve_quant_config(checkpoint=str(ckpt))):  # the name is the checkpoint's
        with pytest.raises(UnknownMethodError) as info:
            call()
        assert "is a path" not in str(info.value), str(info.value)
    (tmp_path / "mymethod" / "config.json").write_text("{}")  # now a checkpoint, given as the method
    with pytest.raises(UnknownMethodError) as info:
        resolve_quant_config("mymethod")
    assert "'mymethod' is a path, not a method name" in str(info.value), str(info.value)
    with pytest.raises(UnknownMethodError) as info:
        resolve_quant_config("mymethod", checkpoint=str(ckpt))
    assert "is a path" not in str(info.value), str(info.value)
