"""The suite's defaults fit real methods: the built-in methods pass it with their default config."""

from __future__ import annotations

import torch

from fastvideo_quant.testing import conformance as C
from fastvideo_quant.testing.conformance.tensor_parallel import pair_subjects


def test_pair_needs_no_size_the_per_layer_checks_do_not() -> None:
    col, row = pair_subjects(C.Subject("awq", input_size=512, output_size=384))
    assert (col.input_size, col.output_size) == (512, 512)
    assert (row.input_size, row.output_size) == (512, 384)


def test_awq_default_group_size_passes_the_tp_pair() -> None:
    """AWQ's default group_size is 128: at TP=2 the pair's row layer must get >= 128 inputs per rank."""
    s = C.Subject("awq")
    C.check_tp_pair(s)
    C.check_tp_layer(s, "row")


def test_builtin_methods_quantize_on_load_as_they_declare() -> None:
    """int8, fp8 and unquantized load a float checkpoint with from_config({}) (online_quantization True); AWQ declares
    False, so the check skips."""
    import pytest

    for method in ("unquantized", "int8", "fp8"):
        for kind in ("replicated", "qkv"):
            C.check_online_quantization(C.Subject(method), kind)
    with pytest.raises(pytest.skip.Exception, match="AWQConfig.online_quantization is False"):
        C.check_online_quantization(C.Subject("awq"), "column")


def test_builtin_methods_declare_whether_they_read_calibration() -> None:
    """awq reads activations, fp8 only for static scales, int8 never: each declaration agrees with quantize_weight."""
    declared = {"awq": True, "int8": False, "fp8": False, "fp8-static": True, "unquantized": None}
    static = {"activation_scheme": "static", "is_checkpoint_fp8_serialized": True}
    for name, want in declared.items():
        s = C.Subject(name.removesuffix("-static"), config=static if name == "fp8-static" else None)
        assert s.quant_config().uses_calibration() is want, name
        C.check_calibration_declared(s)


def test_suite_fixtures_raise_no_pytest_deprecation(tmp_path) -> None:
    """Class-scoped fixtures as instance methods are deprecated (PytestRemovedIn10Warning on every `fvq check`)."""
    import subprocess
    import sys

    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_it.py").write_text("from fastvideo_quant.testing.conformance import RegistrationTests\n\n"
                                         "class TestIt(RegistrationTests):\n    method = 'unquantized'\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "reachable",
                           "-W", "error::pytest.PytestDeprecationWarning", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "warning" not in proc.stdout.lower()


def test_tp_pair_bound_is_twice_the_tighter_of_both_measures(monkeypatch) -> None:
    """fp8 states max_rel_error 4e-2 and min_sqnr_db 28 (a relative error of 0.0398): the pair is held to twice the
    tighter, as apply is held to the tighter (it took max_rel_error whenever that was set)."""
    import pytest

    from fastvideo_quant.testing.conformance import tensor_parallel as T
    from fastvideo_quant.testing.conformance.apply import tolerance_bound

    s = C.Subject("fp8")
    bound = 2 * tolerance_bound(s.tolerance().for_dtype(s.main_dtype()))
    assert bound < 2 * s.tolerance().max_rel_error
    one = torch.ones(4, 64, dtype=torch.float64)
    noise = torch.zeros_like(one)
    noise[0, 0] = 1.0  # (relative error = scale / ||one|| = scale / 16)

    def results(err: float) -> dict:
        off = one + noise * err * one.norm()
        return {"single": {"pair": one}, "ranks": [{"pair": off}, {"pair": off}], "inputs": None}

    midway = (bound + 2 * s.tolerance().max_rel_error) / 2
    monkeypatch.setattr(T, "tp_results", lambda subject: results(midway))
    with pytest.raises(C.ConformanceFailure, match=r"TP=2 output differs from TP=1 by relative error 0\.079\d* > 0\.079"):
        T.check_tp_pair(s)
    monkeypatch.setattr(T, "tp_results", lambda subject: results(bound * 0.99))
    T.check_tp_pair(s)
