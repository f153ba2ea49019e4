"""Launch a Triton kernel without the JIT's per-call Python work once it is compiled.

``kernel[grid](*args, **meta)`` (``JITFunction.run``) binds the arguments, computes the
specialization key, looks the kernel up and checks globals on *every* call: tens of µs of
host time on the device machine, more than the whole GEMV at M=1. The first call for a
key goes through the JIT (it compiles and returns the ``CompiledKernel``); later calls
launch that ``CompiledKernel`` directly (``compiled[grid](*all_args)``, the Triton >= 3.3
launcher convention: every signature argument in order, constexprs included).

The direct launch calls the compiled kernel's C launcher itself (``CompiledKernel.run`` with the
current device's raw stream), skipping ``CompiledKernel.__getitem__``'s per-call closure, device and
stream queries and launch-metadata hook checks; while a launch hook is installed (profilers) it
goes through ``__getitem__`` instead, so hooks still see every launch.

The caller owns the key: it must contain everything the JIT would specialize on for the
arguments it passes (constexpr values, dtypes, pointer alignment, ints == 1 or % 16 and their i32/i64 type).
Kernels launched here mark their varying ints ``do_not_specialize`` so the key stays small.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from triton import knobs

#: Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET``, read through Triton's own knob so the
#: rule is Triton's), fixed at import like Triton's own choice: kernels that round by hand or take fp32 dot
#: operands under the interpreter branch on this one value.
INTERPRETED: bool = bool(getattr(knobs.runtime, "interpret", os.environ.get("TRITON_INTERPRET", "0") == "1"))

#: ``FVQ_TRITON_DIRECT_LAUNCH=0`` turns the direct launch off (every call through the JIT), for A/B timing.
DIRECT = os.environ.get("FVQ_TRITON_DIRECT_LAUNCH", "1") != "0"


class LaunchCache:
    """Per-kernel cache: key → the compiled kernel, launched directly after its first (JIT) call."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self._compiled: dict[Hashable, Any] = {}

    def launch(self, key: Hashable, grid: tuple[int, ...], args: Sequence[Any], meta: dict[str, Any],
               launch_opts: dict[str, Any]) -> None:
        """Run the kernel on ``grid``: positional ``args`` then constexpr ``meta``, in signature order.

        ``key`` must also cover ``launch_opts`` (num_warps, num_stages): they are compiled in.
        """
        compiled = self._compiled.get(key) if DIRECT else None
        if compiled is not None:
            _run(compiled, grid + (1,) * (3 - len(grid)), None, (*args, *meta.values()))
            return
        # First call for this key: the direct launch passes meta by position, so its order must be the kernel's
        # (checked here once per key, against the kernel's own signature).
        names = list(getattr(self.kernel, "arg_names", ()))
        if names and names[len(args):] != list(meta):
            raise ValueError(f"LaunchCache({getattr(self.kernel, '__name__', self.kernel)}): constexprs must follow "
                             f"the signature after {len(args)} positional args: expected {names[len(args):]}, "
                             f"found {list(meta)}")
        compiled = self.kernel[grid](*args, **meta, **launch_opts)
        if DIRECT and _launchable(compiled):
            self._compiled[key] = compiled

    def bind(self, key: Hashable, grid: tuple[int, ...], meta: dict[str, Any],
             launch_opts: dict[str, Any]) -> BoundLaunch:
        """A launch with everything but the positional arguments fixed (see :meth:`launch` for ``key``)."""
        return BoundLaunch(self, key, grid, meta, launch_opts)


class PlanCache(dict):
    """Launch plans by call key for the hot paths that keep them (``w8a8_linear``, ``small_m``, ``per_token_quant``,
    the AWQ plugin's dispatcher):
    a dict (lookups are ``dict.get``), emptied when it holds ``limit`` plans and another is put — a guard against
    unbounded growth with ever-new shapes or pointers."""

    def __init__(self, limit: int = 4096) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Hashable, plan: Any) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = plan


class BoundLaunch:
    """One kernel with its launch key, grid and constexprs fixed: a call passes only the positional arguments.

    For hot paths that cache a whole launch plan (``fastvideo_quant.kernels.w8a8_linear``): no key is built per
    call. Until the kernel is compiled (and always under the interpreter) a call goes through
    :meth:`LaunchCache.launch`.
    """

    __slots__ = ("_cache", "_compiled", "_grid3", "_key", "_meta", "_opts")

    def __init__(self, cache: LaunchCache, key: Hashable, grid: tuple[int, ...], meta: dict[str, Any],
                 launch_opts: dict[str, Any]) -> None:
        self._cache, self._key, self._meta, self._opts = cache, key, meta, launch_opts
        self._grid3 = grid + (1,) * (3 - len(grid))
        self._compiled = None

    def __call__(self, args: tuple[Any, ...], stream: int | None = None) -> None:
        """Launch on the current stream (``stream``: its raw handle, when the caller has it already)."""
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = self._cache._compiled.get(self._key) if DIRECT else None
            if compiled is None:
                self._cache.launch(self._key, self._grid3, args, self._meta, self._opts)
                return
        _run(compiled, self._grid3, stream, (*args, *self._meta.values()))


def _run(compiled: Any, grid3: tuple[int, ...], stream: int | None, all_args: tuple[Any, ...]) -> None:
    """Launch a compiled kernel: its C launcher directly, or through ``__getitem__`` while a launch hook is set."""
    if _no_launch_hooks():
        compiled.run(grid3[0], grid3[1], grid3[2], _current_stream() if stream is None else stream,
                     compiled.function, compiled.packed_metadata, None, None, None, *all_args)
    else:
        compiled[grid3](*all_args)


def off_current_device(x: torch.Tensor, what: str, name: str = "x") -> str | None:
    """Why a launch of ``what`` on CUDA tensor ``name`` (``x``) cannot run: it is on another GPU than the current one,
    whose stream the launchers use (a launch there would read another GPU's pointers). None when it can."""
    if not x.is_cuda or x.device.index == torch.cuda.current_device():
        return None
    return (f"{what}: {name} is on {x.device} but the current CUDA device is cuda:{torch.cuda.current_device()}; "
            f"launch under torch.cuda.device({x.device})")


def check_current_device(x: torch.Tensor, what: str, name: str = "x") -> None:
    """ValueError with :func:`off_current_device`'s message when ``x`` is on another GPU than the current one."""
    problem = off_current_device(x, what, name)
    if problem is not None:
        raise ValueError(problem)


def _current_stream() -> int:
    """The current device's current CUDA stream, as the raw handle Triton's launcher takes."""
    return torch._C._cuda_getCurrentRawStream(torch.cuda.current_device())


def _no_launch_hooks() -> bool:
    """No launch enter/exit hook is installed (Triton >= 3.5 keeps them in an empty ``HookChain``, older: None)."""
    for hook in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return False
    return True


def _launchable(compiled: Any) -> bool:
    # Triton < 3.3 launched only non-constexpr args; the interpreter returns no CompiledKernel.
    return callable(getattr(compiled, "__getitem__", None)) and hasattr(compiled, "packed_metadata")


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for launch grids. Not ``triton.cdiv``: since Triton 3.5 that is a ``constexpr_function``
    costing ~1.5 µs of host time per call, on paths where the whole GPU call is tens of µs."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1); ``triton.next_power_of_2`` without its per-call cost."""
    return 1 << max(n - 1, 0).bit_length()


def aligned(*ptrs: Any) -> tuple[bool, ...]:
    """Whether each tensor's data pointer is 16-byte aligned (the JIT specializes pointers on it)."""
    return tuple(p is not None and p.data_ptr() % 16 == 0 for p in ptrs)


def int_spec(*values: int) -> tuple[tuple[bool, bool, bool], ...]:
    """What the JIT specializes an int argument on: ``== 1``, ``% 16 == 0``, and i32 vs i64 (by its value)."""
    return tuple((v == 1, v % 16 == 0, -(2**31) <= v < 2**31) for v in values)
