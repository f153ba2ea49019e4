"""LaunchCache: the JIT compiles once per key; later calls launch the compiled kernel directly."""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="triton not installed")
from fastvideo_quant.kernels import triton_launch  # noqa: E402
from fastvideo_quant.kernels.triton_launch import LaunchCache  # noqa: E402


class FakeCompiled:
    """Records launches the way Triton's CompiledKernel receives them (both entry points)."""

    packed_metadata = "meta"
    function = "fn"

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args: self.launches.append(("getitem", grid, args))

    def run(self, g0, g1, g2, stream, function, packed, launch_meta, enter, exit_, *args):
        assert (function, packed, stream) == ("fn", "meta", 7)
        self.launches.append(("run", (g0, g1, g2), args))


class FakeJit:
    def __init__(self):
        self.runs = 0
        self.compiled = FakeCompiled()

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.runs += 1
            return self.compiled
        return run


@pytest.mark.parametrize("hooks", [False, True])
def test_reuses_the_compiled_kernel_only_for_its_key(monkeypatch, hooks):
    monkeypatch.setattr(triton_launch, "_current_stream", lambda: 7)
    monkeypatch.setattr(triton_launch, "_no_launch_hooks", lambda: not hooks)
    jit = FakeJit()
    cache = LaunchCache(jit)
    cache.launch("k1", (2,), (1,), {"B": 4}, {"num_warps": 4})
    cache.launch("k1", (3,), (5,), {"B": 4}, {"num_warps": 4})
    cache.launch("k2", (3,), (5,), {"B": 8}, {"num_warps": 4})
    # with a launch hook installed (a profiler), the direct launch goes through __getitem__ so the hook fires
    assert jit.runs == 2 and jit.compiled.launches == [("getitem" if hooks else "run", (3, 1, 1), (5, 4))]


def test_direct_launch_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(triton_launch, "DIRECT", False)
    jit = FakeJit()
    cache = LaunchCache(jit)
    for _ in range(3):
        cache.launch("k", (1,), (1,), {}, {})
    assert jit.runs == 3 and jit.compiled.launches == []


def test_constexprs_out_of_signature_order_are_refused_on_the_first_call():
    """The direct launch passes constexprs by position: an order that differs from the kernel's signature would
    feed one constexpr's value to another, so the first (JIT) call of a key checks it."""
    jit = FakeJit()
    jit.arg_names = ["a", "B", "C"]
    cache = LaunchCache(jit)
    cache.launch("k", (1,), (1,), {"B": 4, "C": 2}, {})
    with pytest.raises(ValueError, match=r"expected \['B', 'C'\], found \['C', 'B'\]"):
        cache.launch("k2", (1,), (1,), {"C": 2, "B": 4}, {})
    assert jit.runs == 1
