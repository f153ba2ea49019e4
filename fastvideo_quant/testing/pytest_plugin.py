"""pytest plugin (entry point ``pytest11: fastvideo_quant``): run the conformance suite against a method by name.

    pytest --fvq-method NAME [--fvq-config JSON] --pyargs fastvideo_quant.testing.conformance

``fvq check NAME`` runs exactly that. Importing this module is cheap (no torch),
since pytest loads it in every session where fastvideo-quant is installed.
"""

from __future__ import annotations

import json

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastvideo_quant", "fastvideo-quant conformance suite")
    group.addoption("--fvq-method", default=None, metavar="NAME",
                    help="quantization method the conformance suite checks (a registered name)")
    group.addoption("--fvq-config", default=None, metavar="JSON",
                    help="JSON dict passed to the method config's from_config (default {})")


def fvq_config_option(config: pytest.Config) -> dict | None:
    """The ``--fvq-config`` dict, or None; a usage error naming the option if it is not a JSON object."""
    raw = config.getoption("--fvq-config")
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise pytest.UsageError(f"--fvq-config is not valid JSON: {exc}; pass e.g. '{{\"group_size\": 64}}'") from exc
    if not isinstance(value, dict):
        raise pytest.UsageError(f"--fvq-config must be a JSON object, found {type(value).__name__}")
    return value
