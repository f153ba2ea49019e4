"""``pytest --cuda-only`` (tests/conftest.py) collects what CPU CI skips for want of a GPU, and nothing else: the
device runs it (``pytest --cuda-only -n 14``) instead of the whole suite."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache  # (each collection is a fresh interpreter importing torch: seconds)
def _collected(*args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *args],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if "::" in line and not line.startswith(" ")}


def test_cuda_only_keeps_the_gpu_tests_and_drops_the_rest_and_no_cuda_only_is_the_complement():
    _cuda_only_keeps_the_gpu_tests_and_drops_the_rest()
    _no_cuda_only_is_the_complement()


def _cuda_only_keeps_the_gpu_tests_and_drops_the_rest():
    ids = _collected("--cuda-only", "tests/test_module_state.py", "tests/test_cli_bench.py",
                     "tests/plugins/unquantized/test_conformance.py")
    names = {i.split("::")[-1] for i in ids}
    # skipif "needs a CUDA GPU" (parametrized), a whole test, and the conformance suite's runtime-skipped CUDA check
    assert {f"test_cast_to_another_device_and_dtype_moves_every_tensor[{m}-cuda]" for m in ("unquantized", "awq")} <= names
    assert "test_chain_on_the_gpu" in names
    assert "test_cuda_apply" in names
    # the CPU parameter of the same test, a test without any skip, and one that runs only *without* a GPU: collected
    # without the option, dropped with it
    everything = {i.split("::")[-1] for i in _collected("tests/test_module_state.py", "tests/test_cli_bench.py",
                                                        "tests/plugins/unquantized/test_conformance.py")}
    for name in ("test_cast_to_another_device_and_dtype_moves_every_tensor[unquantized-meta]",
                 "test_deepcopy_of_a_loaded_model_is_identical_and_independent[unquantized]",
                 "test_no_cuda_exits_nonzero_with_message"):
        assert name in everything and name not in names, name


def _no_cuda_only_is_the_complement():
    """``--no-cuda-only`` collects the rest, so a device can run the whole suite in two calls that each fit its
    time limit; giving both options is a usage error, not an empty run."""
    paths = ("tests/test_module_state.py", "tests/test_cli_bench.py", "tests/plugins/unquantized/test_conformance.py")
    only, rest, everything = _collected("--cuda-only", *paths), _collected("--no-cuda-only", *paths), _collected(*paths)
    assert only and rest and not only & rest and only | rest == everything
    both = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                           "--cuda-only", "--no-cuda-only", paths[1]], cwd=ROOT, capture_output=True, text=True)
    assert both.returncode == 4 and "--cuda-only and --no-cuda-only select complementary halves" in both.stderr, both
