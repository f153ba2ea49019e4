import os
import re
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels run under the interpreter on machines without a GPU; the flag is
# read when a kernel module is imported, so it is set before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: Oldest Triton whose interpreter runs our kernels on CPU (3.9.0 verified; 3.5.1 and 3.6.0 fail with numpy 2:
#: their interpreter converts a one-element array to a loop bound with int()).
MIN_INTERPRETER_TRITON = (3, 9)


def pytest_configure(config) -> None:
    """One clear error instead of a hundred interpreter failures when the installed Triton is too old for it."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import triton
    except ImportError:
        return  # the Triton tests skip themselves
    found = tuple(int(p) for p in triton.__version__.split(".")[:2] if p.isdigit())
    if found < MIN_INTERPRETER_TRITON:
        raise pytest.UsageError(
            f"the CPU test run executes the Triton kernels under Triton's interpreter, which needs triton >= "
            f"{'.'.join(map(str, MIN_INTERPRETER_TRITON))}; found {triton.__version__}. Install a newer one "
            f"(pip install -U 'triton>={'.'.join(map(str, MIN_INTERPRETER_TRITON))}') or run the suite on a GPU "
            "(compiled kernels)"
        )

#: A skip reason that says the test needs a GPU (``--cuda-only``).
_GPU_REASON = re.compile(r"needs a CUDA GPU|needs? compute capability")


def pytest_addoption(parser) -> None:
    parser.addoption("--cuda-only", action="store_true",
                     help="collect only the tests that need a GPU (marked cuda, or a skipif whose reason says it needs a "
                          "CUDA GPU or a compute capability): what CPU CI skips for want of one, for a short device run "
                          "(pytest --cuda-only -n 14). Not a full GPU run: tests that run on CPU and take the GPU when "
                          "there is one (the conformance suites, the kernels' DEV tests) are left out")
    parser.addoption("--no-cuda-only", action="store_true",
                     help="the complement of --cuda-only: every test that also runs without a GPU (on a GPU machine, "
                          "the conformance suites and the kernels' DEV tests take the GPU), so that the two runs together "
                          "are the whole suite on the device")


def pytest_collection_modifyitems(config, items) -> None:
    only, without = config.getoption("--cuda-only"), config.getoption("--no-cuda-only")
    if only and without:
        raise pytest.UsageError("--cuda-only and --no-cuda-only select complementary halves of the suite; give one")
    if not (only or without):
        return
    keep, drop = [], []
    for item in items:
        gpu = item.get_closest_marker("cuda") is not None or any(
            _GPU_REASON.search(str(m.kwargs.get("reason", ""))) for m in item.iter_markers("skipif"))
        (keep if gpu == only else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


# Worker functions for spawned torch.distributed ranks must be importable by the
# child processes (multiprocessing passes sys.path on), so tests/ goes on the path.
sys.path.insert(0, str(Path(__file__).parent))


#: The environment variables that choose which plugins load.
PLUGIN_VARS = ("FVQ_PLUGINS", "FVQ_DISABLE_PLUGINS", "FVQ_DISABLE_PLUGIN_AUTOLOAD")


@pytest.fixture
def fresh_plugins(monkeypatch):
    """The registry rebuilt from the installed entry points, with no FVQ_* plugin variable set; the in-process
    plugins a test appends to the returned list are unregistered after it."""
    from fastvideo_quant import plugins

    for var in PLUGIN_VARS:
        monkeypatch.delenv(var, raising=False)
    plugins.reset()
    registered: list[str] = []
    yield registered
    for name in registered:
        plugins.unregister_plugin(name)
    plugins.reset()
