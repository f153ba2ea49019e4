"""Every quantization config has a useful repr: its method name and its ``to_dict()`` (checkpoint section)."""

from __future__ import annotations

import pytest

from fastvideo_quant.quantization.selection import get_quantization_config


@pytest.mark.parametrize("method, config, mode", [
    ("fp8", {}, "checkpoint='float, quantized on load', "),
    ("fp8", {"is_checkpoint_fp8_serialized": True}, "checkpoint='pre-quantized', "),
    ("int8", {}, "checkpoint='float, quantized on load', "),
    ("int8", {"quant_method": "bitsandbytes", "load_in_8bit": True}, "checkpoint='pre-quantized', "),
    ("unquantized", {}, ""),
])
def test_repr_shows_method_mode_and_to_dict(method: str, config: dict, mode: str) -> None:
    """A config with both modes (quantized_checkpoint_keys) says which it reads: its to_dict() is the checkpoint
    section quantize_weight writes, the same for both (it used to be all its repr showed)."""
    cfg = get_quantization_config(method).from_config(config)
    text = repr(cfg)
    assert text == f"{type(cfg).__name__}(method={method!r}, {mode}config={cfg.to_dict()!r})"
    assert "object at 0x" not in text


@pytest.mark.parametrize("method, online, prequantized", [
    ("fp8", {}, {"is_checkpoint_fp8_serialized": True}),
    ("int8", {}, {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 0.0}),
])
def test_online_and_prequantized_reprs_differ_while_to_dict_is_the_checkpoint_format(method, online, prequantized):
    cls = get_quantization_config(method)
    a, b = cls.from_config(online), cls.from_config(prequantized)
    assert a.to_dict() == b.to_dict()  # what quantize_weight writes: the pre-quantized checkpoint's section
    assert cls.from_config(a.to_dict()).reads_quantized_checkpoint()  # which round-trips as one
    assert repr(a) != repr(b)


def test_repr_of_a_config_without_to_dict_does_not_raise() -> None:
    """A plugin's config missing to_dict (a plugin bug) still has a repr, naming the problem."""
    from fvq_unquantized.method import UnquantizedConfig

    class NoToDict(UnquantizedConfig):
        def to_dict(self):
            raise NotImplementedError("NoToDict.to_dict is not implemented")

    assert repr(NoToDict()) == ("NoToDict(method='unquantized', "
                                "config=<to_dict() raised NotImplementedError: NoToDict.to_dict is not implemented>)")
