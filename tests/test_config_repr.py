"""Every quantization config has a useful repr: its method name and its ``to_dict()`` (checkpoint section)."""

from __future__ import annotations

import pytest

from fastvideo_quant.quantization.selection import get_quantization_config


@pytest.mark.parametrize("method, config", [
    ("fp8", {}),
    ("int8", {}),
    ("unquantized", {}),
])
def test_repr_shows_method_and_to_dict(method: str, config: dict) -> None:
    cfg = get_quantization_config(method).from_config(config)
    text = repr(cfg)
    assert text == f"{type(cfg).__name__}(method={method!r}, config={cfg.to_dict()!r})"
    assert "object at 0x" not in text


def test_repr_of_a_config_without_to_dict_does_not_raise() -> None:
    """A plugin's config missing to_dict (a plugin bug) still has a repr, naming the problem."""
    from fvq_unquantized.method import UnquantizedConfig

    class NoToDict(UnquantizedConfig):
        def to_dict(self):
            raise NotImplementedError("NoToDict.to_dict is not implemented")

    assert repr(NoToDict()) == ("NoToDict(method='unquantized', "
                                "config=<to_dict() raised NotImplementedError: NoToDict.to_dict is not implemented>)")
