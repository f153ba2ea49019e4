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
    group.addoption("--fvq-set", action="append", default=[], metavar="ATTR=VALUE",
                    help="set a suite class attribute, value JSON-parsed (repeatable), e.g. output_size=256 or "
                         'act_dtypes=["bfloat16"]')


def pytest_configure(config: pytest.Config) -> None:
    # Triton kernels run under the interpreter without a GPU; the flag must be set before a
    # kernel module is imported. Only when the suite runs, so other sessions do not import torch.
    if config.getoption("--fvq-method", default=None):
        import os

        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        from fastvideo_quant.testing.conformance.fixtures import SETTABLE

        fvq_config_option(config)  # usage errors now, not once per test
        fvq_set_options(config, SETTABLE)


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


def fvq_set_options(config: pytest.Config, allowed: list[str]) -> dict:
    """The ``--fvq-set`` class attributes; a usage error naming the attribute when unknown or malformed."""
    out = {}
    for item in config.getoption("--fvq-set") or []:
        key, sep, raw = item.partition("=")
        if not sep or key not in allowed:
            raise pytest.UsageError(f"--fvq-set {item!r}: expected ATTR=VALUE with ATTR one of {sorted(allowed)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in ("act_dtypes", "cpu_act_dtypes"):
            value = _dtypes(item, value)
        out[key] = value
    return out


def _dtypes(item: str, value) -> tuple:
    import torch

    names = value if isinstance(value, list) else [value]
    dtypes = [getattr(torch, str(n).replace("torch.", ""), None) for n in names]
    if not all(isinstance(d, torch.dtype) for d in dtypes):
        raise pytest.UsageError(f"--fvq-set {item!r}: expected torch dtype names, e.g. [\"bfloat16\", \"float16\"]")
    return tuple(dtypes)
