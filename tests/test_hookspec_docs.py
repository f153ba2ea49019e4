"""Every hook has a heading in docs/plugins.md equal to its signature, and a test (datasette's rule)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from fastvideo_quant import plugins
from fastvideo_quant.errors import PluginError
from fastvideo_quant.plugins import hookimpl, hookspecs

ROOT = Path(__file__).resolve().parents[1]


def hook_specs() -> dict[str, str]:
    """name → ``name(param, ...)`` for each hookspec."""
    out = {}
    for name, fn in vars(hookspecs).items():
        if inspect.isfunction(fn) and hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec"):
            out[name] = f"{name}({', '.join(inspect.signature(fn).parameters)})"
    return out


def test_there_are_hooks() -> None:
    assert "register_quantization_methods" in hook_specs()


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_has_a_doc_heading(name: str) -> None:
    headings = re.findall(r"^## (.+)$", (ROOT / "docs" / "plugins.md").read_text(), flags=re.M)
    assert hook_specs()[name] in headings, f"docs/plugins.md needs the heading '## {hook_specs()[name]}'"


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_has_a_test(name: str) -> None:
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert f"def test_hook_{name}(" in tests, f"add a test named test_hook_{name} exercising the hook"


def test_hook_register_quantization_methods() -> None:
    """The hook receives the callback; what it registers is selectable by name; a bad registration names the plugin."""
    from fvq_unquantized import UnquantizedConfig, UnquantizedLinearMethod

    class HookConfig(UnquantizedConfig):
        @classmethod
        def get_name(cls) -> str:
            return "hook_doc_m"

    class Good:
        @hookimpl
        def register_quantization_methods(self, register) -> None:
            register(HookConfig, UnquantizedLinearMethod, weight_loader_v2=True)

    class Bad:
        @hookimpl
        def register_quantization_methods(self, register) -> None:
            register(object)

    try:
        plugins.register_plugin(Good(), "hook_doc_good")
        reg = plugins.get_registry().by_name["hook_doc_m"]
        assert reg.plugin == "hook_doc_good" and reg.config_cls is HookConfig and reg.weight_loader_v2
        with pytest.raises(PluginError, match="plugin 'hook_doc_bad'.*not a subclass"):
            plugins.register_plugin(Bad(), "hook_doc_bad")
    finally:
        plugins.unregister_plugin("hook_doc_good")
        plugins.unregister_plugin("hook_doc_bad")
