"""The base of every conformance mixin: class attributes configure the suite, fixtures build the subject.

A plugin's test module subclasses the mixins and sets at least ``method``::

    class TestMyMethod(ConformanceTests):
        method = "my_method"
        config = {"group_size": 64}      # optional: from_config(config)

Required fixtures raise ``NotImplementedError("must be overridden")`` when not
configured; checks a method cannot run here skip with the reason. The pytest plugin
builds each class's subject once before its tests run (:func:`subject_of`), so a
missing ``method`` or a method that cannot build a layer is one failing test of the class.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, ClassVar

import pytest
import torch

from fastvideo_quant.testing.conformance.subject import DEFAULT_MAX_GAIN_ERROR, DEFAULT_MAX_ROW_OFFSET, Subject

_SUBJECT_FIELDS = [f.name for f in dataclasses.fields(Subject) if f.name != "method"]
#: Class attributes ``--fvq-set`` may change.
SETTABLE = [f for f in _SUBJECT_FIELDS if f != "config"] + ["supports_torch_compile"]
#: The package of the suite's own classes (their attributes and tests are no misspellings).
_SUITE_PACKAGE = "fastvideo_quant.testing.conformance"


class MethodFixtures:
    """Class attributes (see :class:`Subject` for their meaning) and the fixtures built from them."""

    #: The registered method name under test (required).
    method: ClassVar[str | None] = None
    #: The dict passed to ``from_config`` (default ``{}``).
    config: ClassVar[dict[str, Any] | None] = None
    #: Activation dtypes to check (default: the config's ``get_supported_act_dtypes()``).
    act_dtypes: ClassVar[tuple[torch.dtype, ...] | None] = None
    #: On CPU, only these dtypes run; others skip with a reason (default: all).
    cpu_act_dtypes: ClassVar[tuple[torch.dtype, ...] | None] = None
    #: Whether ``apply`` must trace with ``torch.compile(fullgraph=True)``; None: the config class's
    #: ``supports_torch_compile`` (declare it there, so ``fvq check`` checks it too).
    supports_torch_compile: ClassVar[bool | None] = None
    input_size: ClassVar[int] = 256
    output_size: ClassVar[int] = 128
    merged_output_sizes: ClassVar[tuple[int, ...]] = (128, 64)
    num_heads: ClassVar[int] = 4
    num_kv_heads: ClassVar[int] = 2
    head_size: ClassVar[int] = 16
    tokens: ClassVar[int] = 8
    seed: ClassVar[int] = 0
    tp_size: ClassVar[int] = 2
    #: Bound on ``||dequantize_weight - float weight|| / ||float weight||`` (the weight rounding); None: the config
    #: class's ``weight_rel_error``, else the suite's loose default (reported as a skip).
    weight_rel_error: ClassVar[float | None] = None
    #: Bound on ``|g - 1|``, ``g`` the least-squares gain of ``dequantize_weight`` on each checkpoint part's float
    #: weight and of ``apply``'s output (less the bias) on ``x @ dequantize_weight.T`` (a scale off by a constant
    #: factor); raise it only for a method that clips weights or activations on purpose.
    max_gain_error: ClassVar[float] = DEFAULT_MAX_GAIN_ERROR
    #: Bound on the median over rows of ``|mean(dequantize_weight - float weight)| / RMS of that error`` (a constant
    #: offset added to each row: a zero point off by one); rounding to nearest reads ~0.8 / sqrt(input_size). Raise it
    #: only for a method that rounds one way on purpose.
    max_row_offset: ClassVar[float] = DEFAULT_MAX_ROW_OFFSET
    #: Parameters ``process_weights_after_loading`` fills, so no checkpoint tensor loads them.
    params_not_in_checkpoint: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture(scope="class")
    @classmethod
    def fvq_method(cls, request: pytest.FixtureRequest) -> str:
        """The method name; override the ``method`` class attribute (or this fixture)."""
        return method_of(request.cls)

    @pytest.fixture(scope="class")
    @classmethod
    def fvq_subject(cls, request: pytest.FixtureRequest, fvq_method: str) -> Subject:
        return subject_of(request.cls, fvq_method)

    @pytest.fixture
    def fvq_runnable(self, fvq_subject: Subject) -> Subject:
        """The subject, after skipping when its layers cannot be built on this machine."""
        reason = fvq_subject.why_not_runnable()
        if reason:
            pytest.skip(reason)
        return fvq_subject


def misspelled_attributes(cls: type) -> dict[str, str]:
    """``{attribute: the suite attribute it is close to}`` for each data attribute a suite test class (or a base of
    it outside the suite) sets that the suite does not read but is spelled close to one it does
    (``weight_rel_err``, ``input_sise``): ``--fvq-set`` refuses such names, and a class must not ignore them."""
    known = sorted(set(SETTABLE) | {"method", "config"})
    suite: set[str] = set()
    own: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass.__module__.startswith(_SUITE_PACKAGE) or klass is object:
            suite.update(vars(klass))
        else:
            for name, value in vars(klass).items():
                own.setdefault(name, value)
    out = {}
    for name, value in own.items():
        if name in known or name in suite or name.startswith("_") or callable(value) or \
                isinstance(value, (classmethod, staticmethod, property)):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            out[name] = close[0]
    return out


def method_of(cls: type) -> str:
    """The ``method`` class attribute of a suite test class; ``NotImplementedError("must be overridden ...")`` when
    it is not set."""
    name = getattr(cls, "method", None)
    if not name:
        raise NotImplementedError(
            f"must be overridden: set the class attribute method = '<registered method name>' on {cls.__name__}"
        )
    return name


def subject_of(cls: type, method: str | None = None) -> Subject:
    """The :class:`Subject` a suite test class's attributes describe (``method`` defaults to its ``method``).

    What its ``fvq_subject`` fixture returns, and what the pytest plugin builds once before the class's tests run,
    so that a method which cannot build a layer is one failure rather than one per test.
    """
    values = {name: getattr(cls, name) for name in _SUBJECT_FIELDS}
    for name in ("act_dtypes", "cpu_act_dtypes", "merged_output_sizes", "params_not_in_checkpoint"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    return Subject(method=method or method_of(cls), **values)
