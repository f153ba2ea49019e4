"""CUDA C++ kernels compiled at run time (NVRTC) and launched through the driver API, no build step.

A kernel here is a ``.cu`` file shipped as package data with an ``extern "C"`` entry point; :func:`compile_kernel`
compiles it once per (source, macros, device architecture) with the NVRTC library that CUDA builds of PyTorch carry
(``nvidia-cuda-nvrtc``), loads the cubin into the device's primary context and returns a :class:`RtcKernel`. Cubins
are also kept on disk (:func:`cache_dir`), so a new process loads them instead of compiling again (~0.1-1 s each). Its
:meth:`RtcKernel.launcher` gives a :class:`Launcher`: the argument buffer is built once, a call only stores the
values and calls ``cuLaunchKernel`` on the given stream (a few µs of host time; captured like any launch when the
stream is capturing a CUDA graph) — or, for a launcher made with ``pdl=True``, ``cuLaunchKernelEx`` with programmatic
dependent launch allowed (:func:`supports_pdl`).

Everything goes through ``ctypes`` (the standard library): no compiler, headers or build of our own on the user's
machine. What can fail — no NVRTC library, a compile error, a load or launch error — raises :class:`CudaRtcError`
naming the kernel, the step and the driver's or compiler's message.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fastvideo_quant.errors import warn_at_caller


class CudaRtcError(RuntimeError):
    """NVRTC or the CUDA driver refused a step (library lookup, compile, load or launch)."""


@functools.cache
def _libcuda() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise CudaRtcError(f"the CUDA driver library libcuda.so.1 could not be loaded: {e}") from None
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuModuleLoadData.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p]
    lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p]
    lib.cuFuncGetAttribute.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_void_p]
    lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 6 + [
        ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    if hasattr(lib, "cuLaunchKernelEx"):  # (drivers of CUDA 12.0 and newer)
        lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_void_p]
    return lib


class LaunchAttribute(ctypes.Structure):
    """``CUlaunchAttribute`` (cuda.h, CUDA 12+): an attribute id, padding to 8 bytes, a 64-byte value union (as 16
    ints: the attributes used here hold one int at its start)."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_int), ("value", ctypes.c_int * 16)]


class LaunchConfig(ctypes.Structure):
    """``CUlaunchConfig`` (cuda.h, CUDA 12+), the first argument of ``cuLaunchKernelEx``."""

    _fields_ = [("grid_x", ctypes.c_uint), ("grid_y", ctypes.c_uint), ("grid_z", ctypes.c_uint),
                ("block_x", ctypes.c_uint), ("block_y", ctypes.c_uint), ("block_z", ctypes.c_uint),
                ("shared_mem_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(LaunchAttribute)), ("num_attrs", ctypes.c_uint)]


#: ``CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`` (cuda.h): its value (an int, 1) lets the launched grid
#: start before the previous kernel in the stream has finished — once every block of that kernel has run
#: ``griddepcontrol.launch_dependents`` or exited; the grid's ``griddepcontrol.wait`` then blocks until that kernel
#: has completed and its memory is visible.
PROGRAMMATIC_STREAM_SERIALIZATION = 6


#: ``FVQ_PDL=0`` launches every kernel of the package without programmatic dependent launch (A/B timing, or a driver
#: that misbehaves with it): :func:`supports_pdl` then says False everywhere.
PDL_ENABLED = os.environ.get("FVQ_PDL", "1") != "0"


@functools.cache
def supports_pdl(index: int) -> bool:
    """Whether kernels on CUDA device ``index`` launch with programmatic dependent launch (``griddepcontrol``: compute
    capability 9.0+, a driver with ``cuLaunchKernelEx`` — CUDA 12.0+ — and :data:`PDL_ENABLED`); asked once per
    device. Launch specs that take a ``pdl`` / ``launch_deps`` flag drop it where this is False."""
    if not PDL_ENABLED or torch.cuda.get_device_capability(index) < (9, 0):
        return False
    try:
        return hasattr(_libcuda(), "cuLaunchKernelEx")
    except CudaRtcError:
        return False


def cuda_library_candidates(stem: str) -> list[str]:
    """Where a CUDA library ``stem`` (``"libnvrtc"``) may be, in order: the soname of torch's CUDA major version (a
    copy already loaded by torch is found by it), the bare name, then pip's CUDA wheels
    (``site-packages/nvidia/*/lib``)."""
    major = (torch.version.cuda or "").split(".")[0]
    names = [f"{stem}.so.{major}"] if major else []
    names.append(f"{stem}.so")
    for base in sys.path:
        names += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", f"{stem}.so*")))
    return names


def load_first(names: Sequence[str], what: str, hint: str) -> ctypes.CDLL:
    """The first of ``names`` that loads; else :class:`CudaRtcError` naming ``what``, ``hint`` and every attempt."""
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
    raise CudaRtcError(f"no {what} library found ({hint}); tried " + "; ".join(errors))


def _nvrtc_candidates() -> list[str]:
    return cuda_library_candidates("libnvrtc")


@functools.cache
def _libnvrtc() -> ctypes.CDLL:
    lib = load_first(_nvrtc_candidates(), "NVRTC", "CUDA builds of PyTorch install it as nvidia-cuda-nvrtc")
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p,
                                       ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    for fn in ("nvrtcGetProgramLogSize", "nvrtcGetCUBINSize"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    for fn in ("nvrtcGetProgramLog", "nvrtcGetCUBIN"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    return lib


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library :func:`compile_kernel` uses."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _libnvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _check_cu(rc: int, what: str) -> None:
    if rc != 0:
        msg = ctypes.c_char_p()
        _libcuda().cuGetErrorString(rc, ctypes.byref(msg))
        raise CudaRtcError(f"{what}: CUDA driver error {rc} ({(msg.value or b'?').decode()})")


#: Device helpers the small-M kernels share (``w8_small_m.cu``, ``fvq_awq``'s ``awq_small_m.cu``): their loaders put
#: it in front of their source with :func:`source_with`.
SMALL_M_COMMON = Path(__file__).with_name("small_m_common.cuh")


def source_with(*paths: Path) -> str:
    """The texts of ``paths`` joined in order — a shared header in front of a kernel, so NVRTC needs no include path —
    each after a ``#line`` directive, so compiler messages name the right file and line."""
    return "".join(f'#line 1 "{p.name}"\n{p.read_text()}\n' for p in paths)


def compile_cubin(source: str, name: str, arch: str, defines: Mapping[str, int | str] = (),
                  options: Sequence[str] = ()) -> bytes:
    """NVRTC-compile ``source`` for ``arch`` (``"sm_90"``) with ``-D`` ``defines``; returns the cubin."""
    lib = _libnvrtc()
    opts = [f"--gpu-architecture={arch}", "--std=c++17", *(f"-D{k}={v}" for k, v in dict(defines).items()), *options]
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None)
    if rc:
        raise CudaRtcError(f"NVRTC could not create program {name!r}: {lib.nvrtcGetErrorString(rc).decode()}")
    try:
        arr = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        if rc:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise CudaRtcError(f"NVRTC failed to compile {name!r} with {' '.join(opts)}: "
                               f"{lib.nvrtcGetErrorString(rc).decode()}\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetCUBIN(prog, cubin)
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@dataclass(frozen=True)
class RtcKernel:
    """A loaded kernel: its driver handle, the device it was loaded on, and its resource use."""

    name: str
    device_index: int
    func: int
    registers: int
    max_threads: int

    def launcher(self, signature: str, block: tuple[int, int, int], pdl: bool = False) -> Launcher:
        """A :class:`Launcher` for arguments typed by ``signature``: one letter per argument, ``p`` a device pointer
        (an int address), ``i`` a 32-bit int. ``pdl``: launch with programmatic dependent launch allowed (the kernel
        must ``griddepcontrol.wait`` before it reads anything an earlier kernel of the stream writes, and before it
        writes anything; the caller checks :func:`supports_pdl`). (No dynamic shared memory: no kernel here uses it
        yet.)"""
        if block[0] * block[1] * block[2] > self.max_threads:
            raise CudaRtcError(f"kernel {self.name!r}: a block of {block} threads exceeds its limit of "
                               f"{self.max_threads} ({self.registers} registers a thread)")
        return Launcher(self, signature, block, pdl)


class Launcher:
    """Launches one :class:`RtcKernel` with a fixed argument signature and block shape.

    The parameter buffer (and with ``pdl`` the launch configuration) is built once; a call stores the argument values
    into it and calls ``cuLaunchKernel`` — ``cuLaunchKernelEx`` with the programmatic-serialization attribute for
    ``pdl`` — under a lock: two threads must not interleave their stores."""

    def __init__(self, kernel: RtcKernel, signature: str, block: tuple[int, int, int], pdl: bool = False) -> None:
        bad = set(signature) - {"p", "i"}
        if bad:
            raise ValueError(f"Launcher signature {signature!r}: letters must be 'p' or 'i', found {sorted(bad)}")
        self.kernel = kernel
        self.block = block
        self._values = [ctypes.c_void_p() if c == "p" else ctypes.c_int32() for c in signature]
        self._params = (ctypes.c_void_p * len(signature))(
            *(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in self._values))
        self._lock = threading.Lock()
        self.pdl = pdl
        self._launch = _libcuda().cuLaunchKernel
        if pdl:
            self._attr = LaunchAttribute(id=PROGRAMMATIC_STREAM_SERIALIZATION)
            self._attr.value[0] = 1  # programmaticStreamSerializationAllowed
            self._config = LaunchConfig(block_x=block[0], block_y=block[1], block_z=block[2],
                                        attrs=ctypes.pointer(self._attr), num_attrs=1)
            self._launch_ex = _libcuda().cuLaunchKernelEx

    def __call__(self, grid: tuple[int, int, int], stream: int, *args: int) -> None:
        """Launch on ``grid`` in ``stream`` (a raw ``cudaStream_t``, e.g. ``torch.cuda.current_stream().cuda_stream``)."""
        if len(args) != len(self._values):
            raise TypeError(f"kernel {self.kernel.name!r} takes {len(self._values)} arguments, got {len(args)}")
        with self._lock:
            for slot, value in zip(self._values, args):
                slot.value = value
            if self.pdl:
                cfg = self._config
                cfg.grid_x, cfg.grid_y, cfg.grid_z = grid
                cfg.stream = stream
                rc = self._launch_ex(ctypes.byref(cfg), self.kernel.func, self._params, None)
            else:
                rc = self._launch(self.kernel.func, grid[0], grid[1], grid[2], *self.block, 0, stream, self._params,
                                  None)
        if rc:
            _check_cu(rc, f"launching {self.kernel.name!r} on grid {grid}, block {self.block}"
                      + (" with programmatic dependent launch" if self.pdl else ""))


_LOAD_LOCK = threading.Lock()
_CACHE_FORMAT = 1  # bump when what a cache file holds changes


def cache_dir() -> Path | None:
    """Where compiled cubins are kept across processes: ``$FVQ_CACHE_DIR/nvrtc``, else
    ``$XDG_CACHE_HOME/fastvideo_quant/nvrtc``, else ``~/.cache/fastvideo_quant/nvrtc``; ``FVQ_CACHE_DIR=0`` keeps
    none. A file is named by a hash of everything the cubin depends on (source, kernel name, architecture, macros,
    NVRTC version), so a changed kernel or toolchain never picks up a stale one."""
    root = os.environ.get("FVQ_CACHE_DIR")
    if root == "0":
        return None
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "fastvideo_quant")
    return Path(root) / "nvrtc"


def _cache_file(source: str, name: str, arch: str, defines: tuple) -> Path | None:
    where = cache_dir()
    if where is None:
        return None
    key = repr((_CACHE_FORMAT, source, name, arch, defines, nvrtc_version())).encode()
    return where / f"{name}-{arch}-{hashlib.sha256(key).hexdigest()[:32]}.cubin"


def _read_cached(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data[:4] == b"\x7fELF" else None  # (a cubin is an ELF file; anything else is recompiled)


@functools.cache
def _warn_unwritable(where: str, error: str) -> None:
    warn_at_caller(f"fastvideo_quant: cannot write compiled CUDA kernels to {where} ({error}); they are compiled again "
                  "in each process. Set FVQ_CACHE_DIR to a writable folder, or FVQ_CACHE_DIR=0 to keep none.")


def _write_cached(path: Path, cubin: bytes) -> None:
    """Atomically (a temporary file renamed over the name): concurrent processes never read a half-written cubin."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(cubin)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        _warn_unwritable(str(path.parent), str(e))


#: Keys whose cubin :func:`_compiled` read from the disk cache in this process (the ones a driver refusal may blame on
#: the file), and cubins compiled afresh after such a refusal (they take the key's place; other keys stay cached).
_FROM_DISK: set[tuple] = set()
_REBUILT: dict[tuple, bytes] = {}


@functools.lru_cache(maxsize=256)
def _compiled(source: str, name: str, arch: str, defines: tuple[tuple[str, int | str], ...]) -> bytes:
    path = _cache_file(source, name, arch, defines)
    cubin = _read_cached(path) if path is not None else None
    if cubin is None:
        cubin = compile_cubin(source, name, arch, dict(defines))
        if path is not None:
            _write_cached(path, cubin)
    else:
        _FROM_DISK.add((source, name, arch, defines))
    return cubin


@functools.lru_cache(maxsize=256)
def _loaded(cubin: bytes, name: str, device_index: int) -> RtcKernel:
    with _LOAD_LOCK, torch.cuda.device(device_index):
        torch.cuda.current_stream(device_index)  # the runtime makes the device's primary context current
        module = ctypes.c_void_p()
        _check_cu(_libcuda().cuModuleLoadData(ctypes.byref(module), cubin), f"loading the cubin of {name!r}")
        func = ctypes.c_void_p()
        _check_cu(_libcuda().cuModuleGetFunction(ctypes.byref(func), module, name.encode()),
                  f"finding {name!r} in its module")
        regs, max_threads = ctypes.c_int(), ctypes.c_int()
        _check_cu(_libcuda().cuFuncGetAttribute(ctypes.byref(regs), 4, func), f"reading {name!r}'s registers")
        _check_cu(_libcuda().cuFuncGetAttribute(ctypes.byref(max_threads), 0, func), f"reading {name!r}'s limits")
    return RtcKernel(name, device_index, func.value, regs.value, max_threads.value)


def compile_kernel(source: str, name: str, device_index: int, defines: Mapping[str, int | str] = ()) -> RtcKernel:
    """``extern "C"`` kernel ``name`` of ``source``, compiled for device ``device_index``'s architecture with
    ``defines`` and loaded there (each step cached per process: the compile takes ~0.1-1 s)."""
    major, minor = torch.cuda.get_device_capability(device_index)
    key = (source, name, f"sm_{major}{minor}", tuple(sorted(dict(defines).items())))
    cubin = _REBUILT.get(key) or _compiled(*key)
    try:
        return _loaded(cubin, name, device_index)
    except CudaRtcError:
        if key not in _FROM_DISK or key in _REBUILT:
            raise  # (a cubin compiled in this process: the driver's refusal is the answer)
        # a cubin from the disk cache that the driver refuses (damaged there): compile afresh, replace the file, load
        fresh = compile_cubin(source, name, key[2], dict(key[3]))
        path = _cache_file(*key)
        if path is not None:
            _write_cached(path, fresh)
        _REBUILT[key] = fresh
        return _loaded(fresh, name, device_index)
