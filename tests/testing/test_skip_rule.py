"""The suite's skip-list check under each matching rule: a config on the default (whole dotted components) that
matches substrings anyway fails it, naming the layer it skipped by mistake; a config that declares substring matching
(overrides ``skip_entry_matches``, as AWQ's format requires) passes it, and its unrelated layers stay quantized."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fastvideo_quant.testing import conformance as C

sys.path.insert(0, str(Path(__file__).parent))  # (--import-mode=importlib does not put this folder on sys.path)
import broken_plugins  # noqa: E402
from broken_plugins import Plugin, QuantizedLookingMethod, SkipListConfig, failure  # noqa: E402


class SubstringByAccidentConfig(SkipListConfig):
    """Bug: keeps the default rule's name but matches substrings, so `proj_out` also skips `proj_out_gate`."""

    @classmethod
    def get_name(cls) -> str:
        return "toy_substring_by_accident"

    def to_dict(self):
        return {**super().to_dict(), "quant_method": self.get_name()}

    def is_layer_skipped(self, prefix: str) -> bool:
        return any(entry in prefix for entry in self.modules_to_not_convert)


class DeclaredSubstringConfig(SkipListConfig):
    """Right for a substring format: the rule is declared through skip_entry_matches."""

    @classmethod
    def get_name(cls) -> str:
        return "toy_declared_substring"

    def to_dict(self):
        return {**super().to_dict(), "quant_method": self.get_name()}

    def skip_entry_matches(self, prefix: str) -> bool:
        return any(entry in prefix for entry in self.modules_to_not_convert)


class SkipsEverythingConfig(DeclaredSubstringConfig):
    """Bug even under a declared rule: every layer is skipped."""

    @classmethod
    def get_name(cls) -> str:
        return "toy_skips_everything"

    def skip_entry_matches(self, prefix: str) -> bool:
        return bool(self.modules_to_not_convert)


@pytest.fixture(scope="module")
def toys():
    plugins = {cls.get_name(): Plugin(cls, QuantizedLookingMethod, True)
               for cls in (SubstringByAccidentConfig, DeclaredSubstringConfig, SkipsEverythingConfig)}
    with broken_plugins.registered(plugins):
        yield


def test_accidental_substring_match_fails(toys) -> None:
    msg = failure(C.check_skip_list, C.Subject("toy_substring_by_accident"))
    assert "layer 'blocks.0.proj_out_gate', which the skip list ['blocks.0.proj_out'] does not name, is skipped" in msg
    assert "skip_entry_matches" in msg


def test_declared_substring_rule_passes(toys) -> None:
    C.check_skip_list(C.Subject("toy_declared_substring"))


def test_declared_rule_still_checks_an_unrelated_layer(toys) -> None:
    msg = failure(C.check_skip_list, C.Subject("toy_skips_everything"))
    assert "layer 'blocks.1.proj_in', which the skip list ['blocks.0.proj_out'] does not name, is skipped" in msg
