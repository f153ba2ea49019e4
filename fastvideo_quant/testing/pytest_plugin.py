"""pytest plugin (entry point ``pytest11: fastvideo_quant``): run the conformance suite against a method by name.

    pytest --fvq-method NAME [--fvq-config JSON] --pyargs fastvideo_quant.testing.conformance

``fvq check NAME`` runs exactly that. Importing this module is cheap (no torch),
since pytest loads it in every session where fastvideo-quant is installed.
"""

from __future__ import annotations

import argparse
import json

import pytest

#: Set by ``fvq check``: usage errors then name its options (``--set``, ``--config``), which the user typed,
#: instead of the ``--fvq-set`` / ``--fvq-config`` it passes them on as.
CLI_FLAG = "--fvq-cli"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastvideo_quant", "fastvideo-quant conformance suite")
    group.addoption("--fvq-method", default=None, metavar="NAME",
                    help="quantization method the conformance suite checks (a registered name)")
    group.addoption("--fvq-config", default=None, metavar="JSON",
                    help="JSON dict passed to the method config's from_config (default {})")
    group.addoption("--fvq-set", action="append", default=[], metavar="ATTR=VALUE",
                    help="set a suite class attribute, value JSON-parsed (repeatable), e.g. output_size=256 or "
                         'act_dtypes=["bfloat16"]')
    group.addoption(CLI_FLAG, action="store_true", default=False, help=argparse.SUPPRESS)


def option_name(config: pytest.Config, name: str) -> str:
    """The option ``name`` (``set``, ``config``) as the user spelled it: ``--set`` under ``fvq check``, else
    ``--fvq-set``."""
    return f"--{name}" if config.getoption(CLI_FLAG, default=False) else f"--fvq-{name}"


def pytest_configure(config: pytest.Config) -> None:
    # Triton kernels run under the interpreter without a GPU; the flag must be set before a
    # kernel module is imported. Only when the suite runs, so other sessions do not import torch.
    if config.getoption("--fvq-method", default=None):
        import os

        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        from fastvideo_quant.testing.conformance.fixtures import SETTABLE

        cfg = fvq_config_option(config)  # usage errors now, not once per test
        settings = fvq_set_options(config, SETTABLE)
        config.stash[SUBJECT_FAILURE] = check_subject(
            config.getoption("--fvq-method"), cfg, settings,
            set_option=option_name(config, "set"), config_option=option_name(config, "config"))


#: The contract failure (or plugin exception) building the ``--fvq-method`` subject raised in pytest_configure.
SUBJECT_FAILURE = pytest.StashKey["BaseException | None"]()
#: Name of the one test reporting it (the suite's own tests are then skipped).
SUBJECT_TEST = "test_method_builds_a_layer"


def check_subject(method: str, cfg: dict | None, settings: dict, *, set_option: str = "--fvq-set",
                  config_option: str = "--fvq-config") -> BaseException | None:
    """Build the subject, its config and one layer once, up front: a bad ``--fvq-set`` value or a config
    ``from_config`` refuses is one usage error naming the option (as the user spelled it: ``set_option``,
    ``config_option``), not the same failure in every test.

    A plugin bug found on the way (``get_quant_method`` returning an abstract class, ``to_dict`` missing, or
    any exception from the plugin's code) is not a usage error: it is returned, and reported as one failing
    test (:func:`pytest_collection_modifyitems`), not as a pytest INTERNALERROR.
    """
    import dataclasses

    from fastvideo_quant.errors import FastVideoQuantError
    from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
    from fastvideo_quant.testing.conformance.subject import Subject

    for key, value in settings.items():
        default = getattr(MethodFixtures, key, None)
        want = type(default) if isinstance(default, (bool, int, float, tuple)) else None
        ok = want is None or isinstance(value, want) or (want is float and isinstance(value, int)) or (
            want is tuple and isinstance(value, list))
        if not ok or (want in (int, float) and isinstance(value, bool)) or (want is int and value <= 0 and
                                                                            key not in ("seed",)):
            raise pytest.UsageError(f"{set_option} {key}={value!r}: expected a {'positive ' if want is int else ''}"
                                    f"{want.__name__ if want else 'value'} like the default {default!r}, "
                                    f"found {type(value).__name__} {value!r}")
    fields = {f.name for f in dataclasses.fields(Subject)}
    subject = Subject(method, config=cfg, **{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in settings.items() if k in fields})
    where = f"{config_option} {json.dumps(cfg)}" if cfg else "the default config ({})"
    try:
        subject.quant_config()
        if subject.why_not_runnable() is None:
            subject.build_layer("replicated", bias=False, dtype=subject.main_dtype())
    except FastVideoQuantError as exc:
        raise pytest.UsageError(f"method {method!r} with {where} and {settings or 'the default sizes'}: {exc}; "
                                "fix the option (every test would fail the same way)") from exc
    except Exception as exc:  # a ConformanceFailure, or a plugin bug: a test failure, reported once
        return exc
    return None


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """When the ``--fvq-method`` subject could not be built, report that once: one test failing with the
    ``[contract: ...]`` message in place of the suite's tests, which are deselected (each would fail the same way)."""
    failure = config.stash.get(SUBJECT_FAILURE, None)
    if failure is None:
        return
    from fastvideo_quant.testing.conformance.test_suite import TestConformance

    suite = [item for item in items if isinstance(getattr(item, "cls", None), type)
             and issubclass(item.cls, TestConformance)]
    if not suite:
        return
    at = items.index(suite[0])
    items[:] = [item for item in items if item not in suite]
    config.hook.pytest_deselected(items=suite)
    items.insert(at, SubjectBuildItem.from_parent(suite[0].parent, name=SUBJECT_TEST, failure=failure,
                                                  not_run=len(suite)))


class SubjectBuildItem(pytest.Item):
    """The test that reports why the suite's subject could not be built (the failure found in pytest_configure)."""

    def __init__(self, *, failure: BaseException, not_run: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.failure, self.not_run = failure, not_run

    def runtest(self) -> None:
        raise self.failure

    def repr_failure(self, excinfo, style=None):
        from fastvideo_quant.testing.conformance.report import ConformanceFailure

        tests = "test was" if self.not_run == 1 else f"{self.not_run} tests were"
        note = (f"\n  (found building the method's config and a first layer before any test ran; the suite's "
                f"selected {tests} deselected: each would fail the same way)")
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value) + note  # the message is the report; the suite's frames would only hide it
        return f"{super().repr_failure(excinfo, style=style)}{note}"

    def reportinfo(self):
        return self.path, None, self.name


def fvq_config_option(config: pytest.Config) -> dict | None:
    """The ``--fvq-config`` dict, or None; a usage error naming the option if it is not a JSON object."""
    raw = config.getoption("--fvq-config")
    if raw is None:
        return None
    option = option_name(config, "config")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise pytest.UsageError(f"{option} is not valid JSON: {exc}; pass e.g. '{{\"group_size\": 64}}'") from exc
    if not isinstance(value, dict):
        raise pytest.UsageError(f"{option} must be a JSON object, found {type(value).__name__}")
    return value


def fvq_set_options(config: pytest.Config, allowed: list[str]) -> dict:
    """The ``--fvq-set`` class attributes; a usage error naming the attribute when unknown or malformed."""
    out = {}
    option = option_name(config, "set")
    for item in config.getoption("--fvq-set") or []:
        key, sep, raw = item.partition("=")
        if not sep or key not in allowed:
            raise pytest.UsageError(f"{option} {item!r}: expected ATTR=VALUE with ATTR one of {sorted(allowed)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in ("act_dtypes", "cpu_act_dtypes"):
            value = _dtypes(f"{option} {item!r}", value)
        out[key] = value
    return out


def _dtypes(where: str, value) -> tuple:
    import torch

    names = value if isinstance(value, list) else [value]
    dtypes = [getattr(torch, str(n).replace("torch.", ""), None) for n in names]
    if not all(isinstance(d, torch.dtype) for d in dtypes):
        raise pytest.UsageError(f"{where}: expected torch dtype names, e.g. [\"bfloat16\", \"float16\"]")
    return tuple(dtypes)
