"""The Python snippets of docs/plugins.md compile, and its ``get_quant_method`` snippets run as written.

A snippet is copied into a plugin as is: ``linear_method_or_skip(layer, prefix, lambda: MyLinearMethod(self))``
with a method class written like the example plugin's (no ``__init__``) was ``TypeError: MyLinearMethod() takes no
arguments``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.quantization import LinearMethodBase, QuantizationConfig

ROOT = Path(__file__).resolve().parents[1]
PLUGINS_MD = ROOT / "docs" / "plugins.md"


def snippets() -> list[str]:
    """The ``python`` blocks, those inside a list item dedented."""
    return [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", PLUGINS_MD.read_text(), re.S)]


@pytest.mark.parametrize("index", range(len(snippets())))
def test_snippet_compiles(index: int) -> None:
    compile(snippets()[index], f"{PLUGINS_MD}: python block {index}", "exec")


class _Method(LinearMethodBase):
    """What a snippet leaves out of a method class (``...``): create_weights and apply."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs: Any) -> None:
        pass

    def apply(self, layer, x, bias=None):
        return x


class _Config(QuantizationConfig):
    """What a snippet leaves out of a config class: the abstract methods it does not show."""

    @classmethod
    def get_name(cls) -> str:
        return "my_method"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _Config:
        cfg = cls()
        cfg.modules_to_not_convert = cls.skip_list_from(config)
        return cfg


@pytest.mark.parametrize("index", [i for i, s in enumerate(snippets()) if "def get_quant_method" in s])
def test_get_quant_method_snippet_builds_the_method(index: int) -> None:
    """The snippet's config, with the snippet's method class or else one written as the example plugin's (no
    ``__init__``), gives a linear layer that method and a skipped layer the unquantized one."""
    from fvq_unquantized import UnquantizedLinearMethod

    namespace: dict[str, Any] = {"QuantizationConfig": _Config, "LinearMethodBase": _Method, "__name__": "snippet"}
    exec(compile(snippets()[index], f"{PLUGINS_MD}: python block {index}", "exec"), namespace)  # noqa: S102
    namespace.setdefault("MyLinearMethod", type("MyLinearMethod", (_Method,), {}))
    namespace["MyLinearMethod"].__module__ = "snippet"
    config = namespace["MyConfig"].from_config({"modules_to_not_convert": ["skipped"]})
    layer = ReplicatedLinear(8, 8, bias=False, quant_config=None, prefix="proj")
    assert type(config.get_quant_method(layer, "proj")) is namespace["MyLinearMethod"]
    assert type(config.get_quant_method(layer, "skipped")) is UnquantizedLinearMethod
    assert config.get_quant_method(torch.nn.Linear(8, 8), "proj") is None
