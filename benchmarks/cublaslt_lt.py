"""(benchmarks: used by lt_algo_probe.py) cuBLASLt's row-wise fp8 GEMM run with any algorithm its heuristic lists.

``torch._scaled_mm`` with row-wise scales runs cuBLASLt (outer-vector scale mode) with the first algorithm that
``cublasLtMatmulAlgoGetHeuristic`` returns. The heuristic returns a ranked list; at some shapes a later entry is
faster (other tile shapes, cluster shapes or split-K schemes). :class:`RowwiseFp8Plan` describes one problem
(M, N, K, output dtype), asks the heuristic for up to ``count`` algorithms and runs any of them by rank — the same
library torch already loaded, called through ``ctypes`` (the standard library), no build step.

The product is torch's: ``out[M, N] = (xq[M, K] @ w[N, K]^T) * x_scale[M, 1] * w_scale[1, N]``, float32
accumulation, fast accumulation, output in bf16 or fp16. In cuBLAS's column-major terms: A = w (transposed), B = xq,
D = out^T (N x M, leading dimension N, i.e. ``out`` row-major).

What can fail (no cuBLASLt library, a refused descriptor, no algorithm, a failed launch) raises :class:`CublasLtError`
naming the step and cuBLAS's status.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass

import torch

from fastvideo_quant.kernels.cuda_rtc import CudaRtcError, cuda_library_candidates, load_first

# cublasLt.h / library_types.h / cublas_api.h (CUDA 12.9 and 13; ABI-stable enum values)
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF, _CUDA_R_8F_E4M3 = 0, 2, 14, 28
_COMPUTE_32F = 68
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB = 3, 4
_DESC_A_SCALE_POINTER, _DESC_B_SCALE_POINTER = 17, 18
_DESC_FAST_ACCUM = 25
_DESC_A_SCALE_MODE, _DESC_B_SCALE_MODE = 31, 32
_SCALE_OUTER_VEC_32F = 3
_PREF_MAX_WORKSPACE_BYTES = 1
# cublasLtMatmulAlgoConfigAttributes_t: what an algorithm is (reported, and compared across runs)
_ALGO_CONFIG = {"id": 0, "tile": 1, "splitk": 2, "reduction": 3, "swizzle": 4, "custom": 5, "stages": 6,
                "inner_shape": 7, "cluster_shape": 8}
_STATUS = {0: "SUCCESS", 1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH",
           11: "MAPPING_ERROR", 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED",
           16: "LICENSE_ERROR"}

WORKSPACE_BYTES = 32 * 1024 * 1024


class CublasLtError(RuntimeError):
    """cuBLASLt could not be loaded or refused a step."""


class _Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", _Algo), ("workspaceSize", ctypes.c_size_t), ("state", ctypes.c_int),
                ("wavesCount", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        lib = load_first(cuda_library_candidates("libcublasLt"), "cuBLASLt", "CUDA builds of PyTorch carry it")
    except CudaRtcError as e:
        raise CublasLtError(str(e)) from None
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.cublasLtGetVersion.restype = sz
    lib.cublasLtCreate.argtypes = [ctypes.POINTER(vp)]
    lib.cublasLtMatmulDescCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_int]
    lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatmulDescDestroy.argtypes = [vp]
    lib.cublasLtMatrixLayoutCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                                               ctypes.c_int64]
    lib.cublasLtMatrixLayoutDestroy.argtypes = [vp]
    lib.cublasLtMatmulPreferenceCreate.argtypes = [ctypes.POINTER(vp)]
    lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatmulPreferenceDestroy.argtypes = [vp]
    lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, ctypes.c_int,
                                                   ctypes.POINTER(_HeuristicResult), ctypes.POINTER(ctypes.c_int)]
    lib.cublasLtMatmulAlgoConfigGetAttribute.argtypes = [ctypes.POINTER(_Algo), ctypes.c_int, vp, sz,
                                                         ctypes.POINTER(sz)]
    lib.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, ctypes.POINTER(_Algo), vp, sz, vp]
    return lib


def _check(status: int, step: str) -> None:
    if status != 0:
        raise CublasLtError(f"cuBLASLt: {step} failed with CUBLAS_STATUS_{_STATUS.get(status, status)}")


def version() -> int:
    """cuBLASLt's version number (e.g. 130000 for 13.0)."""
    return int(_lib().cublasLtGetVersion())


_handles: dict[int, ctypes.c_void_p] = {}
_workspaces: dict[tuple[int, int], torch.Tensor] = {}
_lock = threading.Lock()


def _handle(device: int) -> ctypes.c_void_p:
    with _lock:
        h = _handles.get(device)
        if h is None:
            h = ctypes.c_void_p()
            with torch.cuda.device(device):
                _check(_lib().cublasLtCreate(ctypes.byref(h)), "cublasLtCreate")
            _handles[device] = h
        return h


def _workspace(device: int, stream: int) -> torch.Tensor:
    """One workspace per (device, stream): two streams never share one. Under CUDA-graph capture a fresh one from the
    graph's private pool (never a cached one, which replays outside the graph would share); once freed, later work
    captured on the same stream may reuse its memory, which is safe: the GEMM that used it has finished by then."""
    if torch.cuda.is_current_stream_capturing():
        return torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=torch.device("cuda", device))
    with _lock:
        ws = _workspaces.get((device, stream))
        if ws is None:
            ws = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=torch.device("cuda", device))
            _workspaces[(device, stream)] = ws
        return ws


@dataclass(frozen=True)
class AlgoInfo:
    """One entry of the heuristic's list: its rank, what it is, the workspace it needs, its estimated waves."""

    rank: int
    config: dict
    workspace: int
    waves: float

    def describe(self) -> str:
        return " ".join(f"{k}{v}" for k, v in self.config.items())


class RowwiseFp8Plan:
    """Descriptors and the heuristic's algorithms for one (M, N, K, out dtype) on one device."""

    def __init__(self, M: int, N: int, K: int, out_dtype: torch.dtype, device: int, count: int = 16) -> None:
        if out_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"RowwiseFp8Plan: out_dtype must be bfloat16 or float16, found {out_dtype}")
        if K % 16 or N % 16:
            raise ValueError(f"RowwiseFp8Plan: K and N must be multiples of 16 for fp8 cuBLASLt, found K={K} N={N}")
        lib = _lib()
        self.M, self.N, self.K, self.out_dtype, self.device = M, N, K, out_dtype, device
        self._handle = _handle(device)
        vp = ctypes.c_void_p
        self._desc, self._a, self._b, self._d, self._pref = vp(), vp(), vp(), vp(), vp()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(self._desc), _COMPUTE_32F, _CUDA_R_32F), "MatmulDescCreate")
        self._set(_DESC_TRANSA, ctypes.c_int32(_OP_T), "TRANSA")
        self._set(_DESC_TRANSB, ctypes.c_int32(_OP_N), "TRANSB")
        self._set(_DESC_FAST_ACCUM, ctypes.c_int8(1), "FAST_ACCUM")
        self._set(_DESC_A_SCALE_MODE, ctypes.c_int32(_SCALE_OUTER_VEC_32F), "A_SCALE_MODE (outer vector)")
        self._set(_DESC_B_SCALE_MODE, ctypes.c_int32(_SCALE_OUTER_VEC_32F), "B_SCALE_MODE (outer vector)")
        # the heuristic refuses outer-vector modes while the scale pointers are unset; it does not read them
        self._a_scale, self._b_scale = ctypes.c_void_p(256), ctypes.c_void_p(256)
        self._set(_DESC_A_SCALE_POINTER, self._a_scale, "A_SCALE_POINTER")
        self._set(_DESC_B_SCALE_POINTER, self._b_scale, "B_SCALE_POINTER")
        dt = _CUDA_R_16BF if out_dtype == torch.bfloat16 else _CUDA_R_16F
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(self._a), _CUDA_R_8F_E4M3, K, N, K), "layout A (weight)")
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(self._b), _CUDA_R_8F_E4M3, K, M, K), "layout B (x)")
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(self._d), dt, N, M, N), "layout D (out)")
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(self._pref)), "PreferenceCreate")
        wsb = ctypes.c_uint64(WORKSPACE_BYTES)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(self._pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(wsb),
                                                        ctypes.sizeof(wsb)), "preference MAX_WORKSPACE_BYTES")
        results = (_HeuristicResult * count)()
        returned = ctypes.c_int(0)
        _check(lib.cublasLtMatmulAlgoGetHeuristic(self._handle, self._desc, self._a, self._b, self._d, self._d,
                                                  self._pref, count, results, ctypes.byref(returned)),
               f"AlgoGetHeuristic (M={M} N={N} K={K})")
        self._algos = [results[i].algo for i in range(returned.value) if results[i].state == 0]
        if not self._algos:
            raise CublasLtError(f"cuBLASLt: no algorithm for the row-wise fp8 GEMM M={M} N={N} K={K}")
        self.algos = [AlgoInfo(i, _config(a), int(results[i].workspaceSize), float(results[i].wavesCount))
                      for i, a in enumerate(self._algos)]
        self._alpha, self._beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def _set(self, attr: int, value: ctypes._SimpleCData, name: str) -> None:
        _check(_lib().cublasLtMatmulDescSetAttribute(self._desc, attr, ctypes.byref(value), ctypes.sizeof(value)),
               f"MatmulDescSetAttribute {name}")

    def run(self, rank: int, xq: torch.Tensor, w: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
            out: torch.Tensor) -> torch.Tensor:
        """``out = (xq @ w.T) * x_scale * w_scale`` with the heuristic's algorithm ``rank``; no checks (the caller
        gives contiguous ``xq [M, K]``, ``w [N, K]`` fp8 e4m3, float32 ``x_scale`` (M values) and ``w_scale``
        (N values), ``out [M, N]`` of the plan's dtype, all on the plan's device)."""
        lib = _lib()
        stream = torch._C._cuda_getCurrentRawStream(self.device)
        ws = _workspace(self.device, stream)
        self._a_scale.value, self._b_scale.value = w_scale.data_ptr(), x_scale.data_ptr()
        self._set(_DESC_A_SCALE_POINTER, self._a_scale, "A_SCALE_POINTER")
        self._set(_DESC_B_SCALE_POINTER, self._b_scale, "B_SCALE_POINTER")
        _check(lib.cublasLtMatmul(self._handle, self._desc, ctypes.byref(self._alpha), w.data_ptr(), self._a,
                                  xq.data_ptr(), self._b, ctypes.byref(self._beta), out.data_ptr(), self._d,
                                  out.data_ptr(), self._d, ctypes.byref(self._algos[rank]), ws.data_ptr(),
                                  WORKSPACE_BYTES, stream), f"cublasLtMatmul (algorithm {rank})")
        return out

    def __del__(self) -> None:
        try:
            lib = _lib()
            lib.cublasLtMatmulPreferenceDestroy(self._pref)
            for layout in (self._a, self._b, self._d):
                lib.cublasLtMatrixLayoutDestroy(layout)
            lib.cublasLtMatmulDescDestroy(self._desc)
        except Exception:  # noqa: BLE001  (interpreter shutdown: nothing to report to)
            pass


def _config(algo: _Algo) -> dict:
    out = {}
    for name, attr in _ALGO_CONFIG.items():
        buf = ctypes.c_uint64(0)
        written = ctypes.c_size_t(0)
        st = _lib().cublasLtMatmulAlgoConfigGetAttribute(ctypes.byref(algo), attr, ctypes.byref(buf),
                                                         ctypes.sizeof(buf), ctypes.byref(written))
        if st == 0:
            out[name] = int(buf.value)
    return out
