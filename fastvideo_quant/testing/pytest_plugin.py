"""pytest plugin (entry point ``pytest11: fastvideo_quant``): run the conformance suite against a method by name.

    pytest --fvq-method NAME [--fvq-config JSON] --pyargs fastvideo_quant.testing.conformance

``fvq check NAME`` runs exactly that. Run directly, a session that checked no layer of the method (it cannot run on
this machine, or every selected test skipped) ends with a ``NOT checked`` line and fvq check's exit status for it,
:data:`~fastvideo_quant.cli.check.EXIT_NOT_CHECKED`, instead of 0 (``--fvq-allow-not-checked`` keeps 0, for a CI
that is CPU-only on purpose). It also serves a plugin's own suite test classes
(``class TestMine(ConformanceTests): method = "mine"``): a method that cannot build a layer
at all is one failing test per class, not the same failure in every test.
Importing this module is cheap (no torch), since pytest loads it in every session where
fastvideo-quant is installed.
"""

from __future__ import annotations

import argparse
import json

import pytest

#: Set by ``fvq check``: usage errors then name its options (``--set``, ``--config``), which the user typed,
#: instead of the ``--fvq-set`` / ``--fvq-config`` it passes them on as.
CLI_FLAG = "--fvq-cli"
#: Set by ``fvq check``: where to write what the run did (:mod:`fastvideo_quant.testing.run_summary`), for its verdict.
SUMMARY_FLAG = "--fvq-summary"
#: Run directly, a ``--fvq-method`` session that checked no layer of the method still exits 0 (its line is printed).
ALLOW_NOT_CHECKED_FLAG = "--fvq-allow-not-checked"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastvideo_quant", "fastvideo-quant conformance suite")
    group.addoption("--fvq-method", default=None, metavar="NAME",
                    help="quantization method the conformance suite checks (a registered name)")
    group.addoption("--fvq-config", default=None, metavar="JSON",
                    help="JSON dict passed to the method config's from_config (default {})")
    group.addoption("--fvq-set", action="append", default=[], metavar="ATTR=VALUE",
                    help="set a suite class attribute, value JSON-parsed (repeatable), e.g. output_size=256 or "
                         'act_dtypes=["bfloat16"]')
    group.addoption(ALLOW_NOT_CHECKED_FLAG, action="store_true", default=False,
                    help="exit status 0 (not fvq check's 'not checked' status) when the --fvq-method method cannot "
                         "run on this machine or every selected test skipped, for a CI that is CPU-only on purpose; "
                         "the NOT checked line is still printed")
    group.addoption(CLI_FLAG, action="store_true", default=False, help=argparse.SUPPRESS)
    group.addoption(SUMMARY_FLAG, default=None, metavar="PATH", help=argparse.SUPPRESS)


def option_name(config: pytest.Config, name: str) -> str:
    """The option ``name`` (``set``, ``config``) as the user spelled it: ``--set`` under ``fvq check``, else
    ``--fvq-set``."""
    return f"--{name}" if config.getoption(CLI_FLAG, default=False) else f"--fvq-{name}"


def pytest_configure(config: pytest.Config) -> None:
    # (the conformance suite's CUDA check carries it; registered here for projects that do not declare it)
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    # Triton kernels run under the interpreter without a GPU; the flag must be set before a
    # kernel module is imported. Only when the suite runs, so other sessions do not import torch.
    if config.getoption("--fvq-method", default=None):
        import os

        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
        if config.getoption(CLI_FLAG, default=False):  # fvq check printed them, as one line each, before the run
            import warnings

            from fastvideo_quant.plugins.failures import PluginLoadWarning, PluginSelectionWarning

            warnings.filterwarnings("ignore", category=PluginLoadWarning)
            warnings.filterwarnings("ignore", category=PluginSelectionWarning)
        from fastvideo_quant.testing.conformance.fixtures import SETTABLE

        cfg = fvq_config_option(config)  # usage errors now, not once per test
        settings = fvq_set_options(config, SETTABLE)
        failure, not_runnable = check_subject(
            config.getoption("--fvq-method"), cfg, settings,
            set_option=option_name(config, "set"), config_option=option_name(config, "config"))
        config.stash[SUBJECT_FAILURE], config.stash[NOT_RUNNABLE] = failure, not_runnable
        # (not on an xdist worker: the controller, which sees every test's report, decides the exit status)
        if not config.getoption(CLI_FLAG, default=False) and not hasattr(config, "workerinput"):
            from fastvideo_quant.testing.run_summary import TestCounts

            config.stash[OUTCOMES] = TestCounts()
            config.pluginmanager.register(config.stash[OUTCOMES], "fvq-outcomes")
        if config.getoption(SUMMARY_FLAG, default=None):
            from fastvideo_quant.testing.run_summary import RunSummary

            config.pluginmanager.register(RunSummary(config.getoption(SUMMARY_FLAG), not_runnable), "fvq-run-summary")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Run by pytest directly, a ``--fvq-method`` session that checked no layer of the method ends with fvq check's
    exit status for it (:data:`~fastvideo_quant.cli.check.EXIT_NOT_CHECKED`), not 0: a CI must not show green for a
    method never checked. ``fvq check`` (``--fvq-cli``) reads pytest's own exit status for its verdict."""
    session.exitstatus = _exit_status(session.config, exitstatus)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """Run by pytest directly (``fvq check`` says it in its verdict): a method that cannot run here was not checked,
    whatever the count of passed tests says; nor was one whose selected tests all skipped."""
    why = _not_checked(config, exitstatus)
    if why is not None:
        status = _exit_status(config, exitstatus)
        terminalreporter.write_sep("=", f"{why}. Exit status {int(status)}{_status_note(exitstatus, status)}",
                                   yellow=True)


def _not_checked(config: pytest.Config, exitstatus: int) -> str | None:
    """Why a ``--fvq-method`` session run by pytest directly checked no layer of the method: the ``NOT checked``
    line, or None (also under ``fvq check`` and without ``--fvq-method``: a plugin's own suite test classes)."""
    outcomes = config.stash.get(OUTCOMES, None)  # (set only for --fvq-method without --fvq-cli)
    if outcomes is None or config.getoption("collectonly", default=False):
        return None
    found = config.stash.get(NOT_RUNNABLE, None)
    if found is not None:
        return f"NOT checked on this machine: {found.reason}; run it {found.remedy}"
    if exitstatus == 0 and outcomes.counts["skipped"] and not outcomes.counts["passed"]:
        return "NOT checked: every selected test skipped (-rs lists why)"
    return None


def _exit_status(config: pytest.Config, exitstatus: int) -> int:
    """The session's exit status: fvq check's not-checked one in place of a 0 that checked nothing, unless
    ``--fvq-allow-not-checked``."""
    if exitstatus != 0 or config.getoption(ALLOW_NOT_CHECKED_FLAG, default=False) or \
            _not_checked(config, exitstatus) is None:
        return exitstatus
    from fastvideo_quant.cli.check import EXIT_NOT_CHECKED

    return EXIT_NOT_CHECKED


def _status_note(exitstatus: int, status: int) -> str:
    if status != exitstatus:
        return f", not 0: the method was not checked ({ALLOW_NOT_CHECKED_FLAG} makes it 0)"
    return f": {ALLOW_NOT_CHECKED_FLAG}" if status == 0 else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A suite test failing with a ConformanceFailure reports its message (``[contract: ...]``, where, what was
    found, how to fix) without the suite's frames, which say nothing about the plugin: ~40 lines a failure otherwise.
    ``--tb=long`` (or any ``--tb`` given) keeps pytest's own report."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and report.outcome == "failed":
        _record_raised_in(item, report, call.excinfo.value)
    if (call.excinfo is None or report.outcome != "failed" or item.config.option.tbstyle != "auto"
            or isinstance(item, SubjectBuildItem)):  # (reports its own way: where the failure was found)
        return
    import sys

    failure = sys.modules.get("fastvideo_quant.testing.conformance.report")
    if failure is not None and isinstance(call.excinfo.value, failure.ConformanceFailure):
        report.longrepr = f"{call.excinfo.value}\n  (--tb=long shows the suite's frames)"


def _record_raised_in(item: pytest.Item, report: pytest.TestReport, exc: BaseException) -> None:
    """For a suite test failing with an exception that names no contract, record whether a frame of the plugin's
    code is in its traceback (:func:`~fastvideo_quant.testing.run_summary.raised_in`), so that the verdict blames
    the plugin's code only then."""
    import sys

    from fastvideo_quant.testing import run_summary

    fixtures, report_module = sys.modules.get(FIXTURES_MODULE), sys.modules.get(
        "fastvideo_quant.testing.conformance.report")
    cls = getattr(item, "cls", None) or getattr(item.parent, "cls", None)  # (a SubjectBuildItem: its class's)
    if fixtures is None or report_module is None or not (isinstance(cls, type) and issubclass(
            cls, fixtures.MethodFixtures)) or isinstance(exc, (report_module.ConformanceFailure, ClassAttributeError)):
        return
    method = (getattr(item, "funcargs", None) or {}).get("fvq_method") or getattr(cls, "method", None) or \
        item.config.getoption("--fvq-method", default=None)
    try:
        where = run_summary.raised_in(exc, run_summary.plugin_packages(method))
    except Exception:  # noqa: BLE001 - the plugins could not be asked (they failed to load): say nothing
        return
    report.user_properties.append((run_summary.RAISED_IN, where))


#: The contract failure (or plugin exception) building the ``--fvq-method`` subject raised in pytest_configure.
SUBJECT_FAILURE = pytest.StashKey["BaseException | None"]()
#: Why the ``--fvq-method`` subject's layers cannot be built on this machine (a NotRunnable), or None.
NOT_RUNNABLE = pytest.StashKey["object | None"]()
#: A ``--fvq-method`` session run by pytest directly: its tests' outcomes (every selected test skipped is not checked).
OUTCOMES = pytest.StashKey["object"]()
#: Name of the one test reporting it (the suite's own tests are then deselected).
SUBJECT_TEST = "test_method_builds_a_layer"
#: Imported once a suite test class is collected; until then no hook here imports torch.
FIXTURES_MODULE = "fastvideo_quant.testing.conformance.fixtures"
#: What is built before any test runs (for the report).
BUILT = "its config, a first layer and a first checkpoint"


def check_subject(method: str, cfg: dict | None, settings: dict, *, set_option: str = "--fvq-set",
                  config_option: str = "--fvq-config") -> tuple[BaseException | None, object | None]:
    """Build the subject, its config and one layer once, up front: a bad ``--fvq-set`` value, a config
    ``from_config`` refuses or a key of it that ``from_config`` does not read is one usage error naming the option (as
    the user spelled it: ``set_option``, ``config_option``), not the same failure in every test.

    A method no plugin can provide here, because two plugins register its name or its plugin failed to load (a
    PluginError, or an unknown method whose entry point of that name failed to load), ends the session with exit
    status 1, as ``fvq check`` does: no option fixes it. A misspelled method name is a usage error, whatever other
    plugin failed.

    Returns what the run reports: a plugin bug found on the way (``get_quant_method`` returning an abstract class,
    ``to_dict`` missing, or any exception from the plugin's code) is not a usage error: it is reported as one failing
    test (:func:`pytest_collection_modifyitems`), not as a pytest INTERNALERROR; and why the method cannot run on
    this machine (a :class:`~fastvideo_quant.testing.conformance.subject.NotRunnable`; its tests skip), or None.
    """
    import dataclasses

    from fastvideo_quant.errors import ConfigError, FastVideoQuantError, MethodUnavailableError
    from fastvideo_quant.quantize.options import check_config_keys
    from fastvideo_quant.testing.conformance.subject import Subject

    _check_settings(settings, set_option)
    fields = {f.name for f in dataclasses.fields(Subject)}
    subject = Subject(method, config=cfg, **{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in settings.items() if k in fields})
    step, exc = build_first_layer(subject) or (None, None)
    if isinstance(exc, MethodUnavailableError):
        exc = None  # a config asking for what is missing here: its tests skip, and the verdict says why
    if step == "config" and _plugin_problem(exc, method):
        pytest.exit(f"--fvq-method {method!r}: a plugin problem, not a usage error (exit status 1, as fvq check's): "
                    f"{exc}", returncode=1)
    if exc is None and cfg:
        try:
            check_config_keys(method, cfg, label=f"{config_option} key")
        except ConfigError as error:
            raise pytest.UsageError(str(error)) from error
    if isinstance(exc, FastVideoQuantError):
        raise pytest.UsageError(_usage_error(method, cfg, settings, step, exc, set_option, config_option)) from exc
    return exc, (subject.not_runnable() if exc is None else None)


def _plugin_problem(exc: BaseException | None, method: str | None) -> bool:
    """Whether the config step's ``exc`` (for ``--fvq-method`` ``method``) is the plugins' problem, not the
    options': a PluginError (two plugins register the name), or an unknown method whose own plugin — the entry
    point of that name — failed to load, or a name in conflict. A misspelled name stays a usage error even where an
    unrelated plugin failed (was: any failed plugin made it one)."""
    from fastvideo_quant.errors import PluginError, UnknownMethodError
    from fastvideo_quant.plugins.manager import failure_named, get_registry

    if isinstance(exc, PluginError):
        return True
    return isinstance(exc, UnknownMethodError) and (failure_named(method) is not None or method in get_registry().conflicts)


#: The types of the settable attributes whose default is None (unset: the config class's declaration).
_UNSET_TYPES = {"weight_rel_error": float, "supports_torch_compile": bool}


def _check_settings(settings: dict, set_option: str) -> None:
    """A usage error naming the ``--fvq-set`` value whose type does not fit the attribute's default."""
    from fastvideo_quant.testing.conformance.fixtures import MethodFixtures

    for key, value in settings.items():
        default = getattr(MethodFixtures, key, None)
        want = type(default) if isinstance(default, (bool, int, float, tuple)) else _UNSET_TYPES.get(key)
        ok = want is None or isinstance(value, want) or (want is float and isinstance(value, int)) or (
            want is tuple and isinstance(value, list)) or (value is None and key in _UNSET_TYPES)  # null: unset
        if not ok or (want in (int, float) and isinstance(value, bool)) or (want is int and value <= 0 and
                                                                            key not in ("seed",)):
            like = (f"like the default {default!r}" if default is not None else
                    "(unset by default: the config class's declaration)")
            raise pytest.UsageError(f"{set_option} {key}={value!r}: expected a {'positive ' if want is int else ''}"
                                    f"{want.__name__ if want else 'value'} {like}, found {type(value).__name__} "
                                    f"{value!r}")


def _usage_error(method: str, cfg: dict | None, settings: dict, step: str, exc: BaseException, set_option: str,
                 config_option: str) -> str:
    """What to fix when the subject's config or first layer fails on the options given (or on none)."""
    from fastvideo_quant.errors import UnknownMethodError
    from fastvideo_quant.plugins.manager import describe_method

    if isinstance(exc, UnknownMethodError):
        return f"--fvq-method {method!r}: {exc}"
    where = f"{config_option} {json.dumps(cfg)}" if cfg else "the default config ({})"
    if step == "config":
        fix = (f"fix {config_option}" if cfg else
               f"pass the keys its from_config needs with {config_option} '{{\"key\": value}}'")
    else:
        fix = f"change {set_option} (sizes) or {config_option}" if cfg or settings else \
            f"pass sizes its layers accept with {set_option} (e.g. {set_option} input_size=512) or a config with " \
            f"{config_option}"
    return (f"{describe_method(method)} with {where} and {settings or 'the default sizes'}: {exc}; {fix} (every test "
            "would fail the same way)")


def build_first_layer(subject) -> tuple[str, Exception] | None:
    """Build what every test of the suite builds first: the method's config (``from_config``) and, where the
    method can run here, one layer, and check that the config writes checkpoints at all (a ``quantize_weight``
    raising NotImplementedError, as the base class's does, would fail every test that loads a layer the same way).
    None when that works (or the method cannot run here: its tests skip), else the step that failed (``"config"``,
    ``"layer"`` or ``"checkpoint"``) and its exception."""
    from fastvideo_quant.testing.conformance.checkpoint import check_writes_checkpoints

    try:
        subject.quant_config()
    except Exception as exc:
        return "config", exc
    try:
        if subject.why_not_runnable() is not None:
            return None
        subject.build_layer("replicated", bias=False, dtype=subject.main_dtype())
    except Exception as exc:
        return "layer", exc
    try:
        check_writes_checkpoints(subject)
    except Exception as exc:
        return "checkpoint", exc
    return None


class ClassAttributeError(Exception):
    """A suite test class whose attributes no test of it can run with (no ``method``, an unknown one, a ``config``
    the method refuses, sizes its layers refuse) or that it would ignore (a misspelled attribute, a ``config`` key
    ``from_config`` does not read): reported as this message, without the suite's frames."""


def check_class_subject(cls: type) -> BaseException | None:
    """Build a plugin's suite test class's subject (from its class attributes, as its ``fvq_subject`` fixture
    does), its config and one layer, once, before its tests run. What would fail every test of the class the same
    way is returned, to be reported once (:func:`pytest_collection_modifyitems`): a :class:`ClassAttributeError`
    naming the attribute to fix, or the plugin's bug (a ConformanceFailure or the plugin's own exception).

    Unlike ``--fvq-method``, a refused ``config`` is no usage error: other classes of the session may be fine.
    """
    from fastvideo_quant.errors import FastVideoQuantError, MethodUnavailableError, UnknownMethodError
    from fastvideo_quant.plugins.manager import describe_method
    from fastvideo_quant.testing.conformance.fixtures import subject_of

    name = cls.__name__
    misspelled = _misspelled_attributes(cls)
    if misspelled is not None:
        return misspelled
    try:
        subject = subject_of(cls)
    except NotImplementedError as exc:  # no method set
        return ClassAttributeError(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a malformed attribute (the fixture would raise the same in every test)
        return exc
    step, exc = build_first_layer(subject) or (None, None)
    if exc is None or isinstance(exc, MethodUnavailableError):  # (one that cannot run here: its tests skip)
        return _unread_config_key(name, subject)
    if not isinstance(exc, FastVideoQuantError):
        return exc  # a plugin bug
    if isinstance(exc, UnknownMethodError):
        error = ClassAttributeError(f"{name}.method = {subject.method!r}: {exc}")
    elif step == "config":
        given = f"{name}.config = {subject.config!r}" if subject.config else f"{name}.config (unset: from_config({{}}))"
        error = ClassAttributeError(
            f"{given}: {describe_method(subject.method)} refuses it: {exc}\n  how to fix: set {name}.config to a "
            "dict its from_config accepts (every test of the class would fail the same way)")
    else:
        layer = subject.describe("replicated", bias=False, dtype=subject.main_dtype())
        error = ClassAttributeError(
            f"{name}: {describe_method(subject.method)} cannot build {layer} with config {subject.config or {}}: "
            f"{exc}\n  how to fix: change {name}'s class attributes (sizes, config), or the plugin if they are right "
            "(every test of the class would fail the same way)")
    error.__cause__ = exc
    return error


def _misspelled_attributes(cls: type) -> ClassAttributeError | None:
    """The class attributes spelled close to one the suite reads (which it would ignore), or None."""
    from fastvideo_quant.testing.conformance.fixtures import misspelled_attributes

    typos = misspelled_attributes(cls)
    if not typos:
        return None
    return ClassAttributeError("\n".join(
        f"{cls.__name__}.{typo} = {getattr(cls, typo)!r}: not an attribute the conformance suite reads, so it would "
        f"be ignored and the suite would run with {_as_run(cls, meant)} (did you mean {meant!r}?)\n"
        f"  how to fix: rename it to {meant}; or, if it is your own attribute, which the suite need not read, give it "
        f"a leading underscore (_{typo})" for typo, meant in typos.items()))


def _as_run(cls: type, name: str) -> str:
    """``name = value`` as the suite would run it; an unset bound (None) is the config class's, else the default."""
    value = getattr(cls, name)
    if value is None and name == "weight_rel_error":
        return "weight_rel_error unset (the config class's weight_rel_error, else the suite's default 0.25)"
    if value is None and name == "supports_torch_compile":
        return "supports_torch_compile unset (the config class's supports_torch_compile)"
    return f"{name} = {value!r}"


def _unread_config_key(name: str, subject) -> ClassAttributeError | None:
    """A key of the class's ``config`` that ``from_config`` does not read (so the suite checks its default), or None."""
    from fastvideo_quant.errors import ConfigError
    from fastvideo_quant.quantize.options import check_config_keys

    try:
        if subject.config:
            check_config_keys(subject.method, subject.config, label=f"{name}.config key")
    except ConfigError as error:
        return ClassAttributeError(f"{error}\n  how to fix: correct or drop the key in {name}.config (a key "
                                   "from_config does not read leaves the suite checking its default)")
    return None


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A suite test class whose subject could not be built reports that once: one test failing with the
    ``[contract: ...]`` message in place of the class's selected tests, which are deselected (each would fail the
    same way). The ``--fvq-method`` subject was built in pytest_configure; a plugin's own test class (method,
    config and sizes as class attributes) is built here, once per class with selected tests."""
    import sys

    if FIXTURES_MODULE not in sys.modules:
        return  # no suite class was collected (and torch stays unimported)
    _check_method_given(config, items)
    for cls, tests in _suite_classes(items).items():
        found = _subject_failure(config, cls)
        if found is not None:
            _report_once(config, items, tests, *found)


#: The shipped suite class (module, name) that takes its method from ``--fvq-method``.
SHIPPED_SUITE = ("fastvideo_quant.testing.conformance.test_suite", "TestConformance")


def _check_method_given(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A usage error when tests of the shipped suite (``TestConformance``) are selected without ``--fvq-method``:
    they would all skip, and the session pass green, without checking any method. Listing them (``--collect-only``)
    is fine. On an xdist worker (where a usage error is an INTERNALERROR) it is one failing test instead."""
    if config.getoption("--fvq-method", default=None) or config.getoption("collectonly", default=False):
        return
    shipped = [item for item in items if _is_shipped_suite(getattr(item, "cls", None))]
    if not shipped:
        return
    if not hasattr(config, "workerinput"):
        raise pytest.UsageError(missing_method_message(len(shipped)))
    for tests in _by_class(shipped).values():
        _report_once(config, items, tests, ClassAttributeError(missing_method_message(len(shipped))),
                     "collecting it without --fvq-method")


def _is_shipped_suite(cls: object) -> bool:
    """Whether ``cls`` takes its method from ``--fvq-method`` (the shipped ``TestConformance``, or a subclass that
    keeps its ``fvq_method`` fixture)."""
    if not isinstance(cls, type):
        return False
    owner = _defined_in(cls, "fvq_method")
    return owner is not None and (owner.__module__, owner.__qualname__) == SHIPPED_SUITE


def missing_method_message(selected: int) -> str:
    """What to pass when the shipped suite runs with no ``--fvq-method``: the option and the registered methods."""
    try:
        from fastvideo_quant.plugins.manager import get_registry

        methods = f"one of {sorted(get_registry().by_name)}"
    except Exception as exc:  # noqa: BLE001 - the plugins could not be asked; the advice still stands
        methods = f"a registered method name (the plugins could not be listed: {type(exc).__name__}: {exc})"
    tests = "test" if selected == 1 else "tests"
    return (f"{SHIPPED_SUITE[0]}.{SHIPPED_SUITE[1]} ({selected} selected {tests}) checks the method named by "
            f"--fvq-method, and none was given, so it would check nothing; pass --fvq-method NAME, {methods} (`fvq "
            "plugins` lists them), or run `fvq check NAME`. To check a method from your own tests, subclass "
            "ConformanceTests with method = NAME instead")


def _suite_classes(items: list[pytest.Item]) -> dict[type, list[pytest.Item]]:
    """The selected tests of each suite test class (a MethodFixtures subclass) that use its subject."""
    import sys

    base = sys.modules[FIXTURES_MODULE].MethodFixtures
    return _by_class([item for item in items if isinstance(cls := getattr(item, "cls", None), type) and
                      issubclass(cls, base) and "fvq_method" in getattr(item, "fixturenames", ())])


def _by_class(items: list[pytest.Item]) -> dict[type, list[pytest.Item]]:
    """``items`` grouped by their test class, in order."""
    out: dict[type, list[pytest.Item]] = {}
    for item in items:
        out.setdefault(item.cls, []).append(item)
    return out


def _subject_failure(config: pytest.Config, cls: type) -> tuple[BaseException, str] | None:
    """Why ``cls``'s subject cannot be built and where that was found (for the report), or None; None too for a
    class that builds its subject its own way (its fixtures overridden)."""
    import sys

    from fastvideo_quant.plugins.manager import describe_method

    fixtures = sys.modules[FIXTURES_MODULE]
    method_from = _defined_in(cls, "fvq_method")
    if method_from is fixtures.MethodFixtures and _defined_in(cls, "fvq_subject") is fixtures.MethodFixtures:
        failure = check_class_subject(cls)
        method = getattr(cls, "method", None)
        found = f"in {cls.__name__}" + (f", building its {describe_method(method)}: {BUILT}" if method else "")
    else:
        suite = sys.modules.get("fastvideo_quant.testing.conformance.test_suite")
        if suite is None or method_from is not suite.TestConformance:
            return None
        failure = config.stash.get(SUBJECT_FAILURE, None)
        found = f"building {describe_method(config.getoption('--fvq-method'))}: {BUILT}"
    return None if failure is None else (failure, found)


def _defined_in(cls: type, name: str) -> type | None:
    """The class of ``cls``'s MRO that defines ``name``."""
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def _report_once(config: pytest.Config, items: list[pytest.Item], tests: list[pytest.Item],
                 failure: BaseException, found: str) -> None:
    """Replace ``tests`` (one class's) by one test failing with ``failure``; the others are deselected."""
    at = items.index(tests[0])
    gone = set(tests)
    items[:] = [item for item in items if item not in gone]
    config.hook.pytest_deselected(items=tests)
    items.insert(at, SubjectBuildItem.from_parent(tests[0].parent, name=SUBJECT_TEST, failure=failure,
                                                  not_run=len(tests), found=found))


class SubjectBuildItem(pytest.Item):
    """The test that reports why a suite class's subject could not be built (found before any test ran)."""

    def __init__(self, *, failure: BaseException, not_run: int, found: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.failure, self.not_run, self.found = failure, not_run, found
        self.origin = failure.__traceback__  # where it was raised: the build's frames down to the plugin's code

    def runtest(self) -> None:
        raise self.failure

    def repr_failure(self, excinfo, style=None):
        from fastvideo_quant.testing.conformance.report import ConformanceFailure

        tests = "test was" if self.not_run == 1 else f"{self.not_run} tests were"
        note = (f"\n  (found {self.found}, before any test ran; the suite's selected {tests} deselected: each would "
                "fail the same way)")
        if isinstance(excinfo.value, (ConformanceFailure, ClassAttributeError)):
            return str(excinfo.value) + note  # the message is the report; the suite's frames would only hide it
        # Its traceback where it was found, not pytest's frames running this item (runtest only re-raises it).
        found = pytest.ExceptionInfo.from_exc_info((type(self.failure), self.failure, self.origin))
        style = style if style in ("long", "short", "line", "no", "native", "value") else "long"
        report = found.getrepr(style=style, chain=True)  # its last line (the exception) is the summary's
        report.addsection("the suite's other tests", note.strip())
        return report

    def reportinfo(self):
        cls = getattr(self.parent, "cls", None)  # TestMine.test_method_builds_a_layer, as pytest names a method
        return self.path, None, f"{cls.__name__}.{self.name}" if cls else self.name


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
