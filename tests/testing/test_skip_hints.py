"""torch.compile support is declared on the config class (``supports_torch_compile``), where ``fvq check`` and every
suite class read it; a suite class (or ``--set``) may still turn the check off. A method that does not declare it has
the check skipped with a reason naming its config class and what to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastvideo_quant.testing.conformance.fixtures import MethodFixtures

PLUGIN_TESTS = '''
from fastvideo_quant.plugins import hookimpl, register_plugin
from fastvideo_quant.testing.conformance import ConformanceTests
from fvq_unquantized import UnquantizedConfig, UnquantizedLinearMethod


class PlainTorchMethod(UnquantizedLinearMethod):
    pass


class PlainTorchConfig(UnquantizedConfig):
    supports_torch_compile = False  # (the base declares True)

    @classmethod
    def get_name(cls):
        return "toy_undeclared_compile"

    def get_quant_method(self, layer, prefix):
        return PlainTorchMethod()


class _Plugin:
    @hookimpl
    def register_quantization_methods(self, register):
        register(PlainTorchConfig, PlainTorchMethod, weight_loader_v2=True)


register_plugin(_Plugin(), "toy_undeclared_compile")


class TestUndeclared(ConformanceTests):
    method = "toy_undeclared_compile"


class TestDeclaredByTheConfig(ConformanceTests):
    method = "unquantized"


class TestTurnedOff(ConformanceTests):
    method = "unquantized"
    supports_torch_compile = False


class TestTurnedOn(ConformanceTests):
    method = "toy_undeclared_compile"
    supports_torch_compile = True
'''


def test_the_suite_follows_the_config_class_unless_the_suite_class_says_otherwise(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_mine.py").write_text(PLUGIN_TESTS)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), "-rs", "-v", "-k", "torch_compile", str(tmp_path / "test_mine.py")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, COLUMNS="400"))  # (short-summary lines whole)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "TestDeclaredByTheConfig::test_torch_compile_fullgraph PASSED" in out, out
    assert "TestTurnedOn::test_torch_compile_fullgraph PASSED" in out, out
    assert ("method does not declare torch.compile support (PlainTorchConfig.supports_torch_compile is False: set it "
            "True on the config class when apply traces with torch.compile(fullgraph=True))") in out, out
    assert "torch.compile not checked: supports_torch_compile was set False for this run" in out, out


@pytest.mark.parametrize("method", ["unquantized", "int8", "fp8", "awq"])
def test_the_built_in_methods_declare_it(method: str) -> None:
    from fastvideo_quant.quantization.selection import get_quantization_config

    assert get_quantization_config(method).supports_torch_compile is True
    assert MethodFixtures.supports_torch_compile is None  # (so the suite reads the declaration)
