"""The core W8A8 GEMM against float32 math on the dequantized operands, under the Triton interpreter on CPU (CI).

Natively on a GPU. int8 products are exact in the int32 accumulator and fp8 products exact in float32 (on Hopper
the fp8 dot's running sum keeps ~14 bits: see ``_tol``), so the error is the float32 epilogue plus one output
rounding: the bounds below would catch a wrong scale, a missed bias, a misread tile or a K tail summed twice.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton not installed")
from fastvideo_quant.kernels import w8a8_gemm as mod  # noqa: E402
from fastvideo_quant.kernels.w8a8_gemm import w8a8_gemm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
FP8 = torch.float8_e4m3fn
QMAX = {torch.int8: 127.0, FP8: 448.0}
#: One output rounding: 2^-8 relative for bf16 (2^-7 where the interpreter truncates), 2^-11 for fp16.
TOL = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-5}


def _quant(t, qdt):
    """Per-row symmetric quantization: (q [R, C], float32 scale [R])."""
    s = t.abs().amax(1).clamp_min(1e-12) / QMAX[qdt]
    y = t / s[:, None]
    q = y.round().clamp(-127, 127).to(torch.int8) if qdt == torch.int8 else y.to(qdt)
    return q, s.float()


def _case(m, k, n, qdt, seed=0):
    g = torch.Generator().manual_seed(seed)
    xq, xs = _quant(torch.randn(m, k, generator=g), qdt)
    wq, ws = _quant(torch.randn(n, k, generator=g), qdt)
    return xq, xs, wq, ws, torch.randn(n, generator=g)


def _ref(xq, xs, wq, ws, bias):
    out = (xq.float() * xs.reshape(-1, 1)) @ (wq.float() * ws.reshape(-1, 1)).T
    return out if bias is None else out + bias.float()


def _rel(a, b):
    return float((a.float().cpu() - b).norm() / b.norm())


def _dev(*ts):
    return [None if t is None else t.to(DEV) for t in ts]


@pytest.mark.parametrize("qdt", [torch.int8, FP8], ids=["int8", "fp8"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
# M, N not multiples of the tile (16 x 32 interpreted), K not a multiple of BLOCK_K (32), one exact fit
@pytest.mark.parametrize("m,k,n,bias", [(5, 40, 48, True), (33, 96, 64, False), (16, 64, 32, True)])
def test_matches_float32_math(qdt, out_dtype, m, k, n, bias):
    xq, xs, wq, ws, b = _case(m, k, n, qdt, seed=m + k)
    b = b.to(out_dtype) if bias else None
    out = w8a8_gemm(*_dev(xq, xs, wq, ws, b), out_dtype)
    assert out.dtype == out_dtype and out.shape == (m, n)
    assert _rel(out, _ref(xq, xs, wq, ws, b)) < _tol(out_dtype, qdt)


def _tol(out_dtype, qdt):
    """fp8 on a GPU: Hopper's fp8 tensor-core dot keeps ~14 bits of the running sum (fast accumulation, which the
    fp8 plugin chooses like ``use_fast_accum=True``), so float32/fp16 outputs are not exact to one rounding. Which
    BLOCK_K the autotuner picks (how many products one imprecise sum holds) varies with timing: an H200 suite run
    under load failed the 1e-5 float32 bound at K=96 once. 2e-3 still catches a wrong scale, bias or tile (O(1))."""
    if qdt == FP8 and DEV == "cuda":
        return max(TOL[out_dtype], 2e-3)
    return TOL[out_dtype]


@pytest.mark.parametrize("qdt", [torch.int8, FP8], ids=["int8", "fp8"])
def test_scale_shapes_are_accepted(qdt):
    """``x_scale`` [M] or [M, 1], ``w_scale`` [N] or [1, N]: the same result."""
    xq, xs, wq, ws, b = _case(7, 64, 40, qdt)
    ref = w8a8_gemm(*_dev(xq, xs, wq, ws, b), torch.float32)
    for sx, sw in ((xs.reshape(-1, 1), ws), (xs, ws.reshape(1, -1)), (xs.reshape(-1, 1), ws.reshape(1, -1))):
        assert torch.equal(w8a8_gemm(*_dev(xq, sx, wq, sw, b), torch.float32), ref)


@pytest.mark.parametrize("qdt", [torch.int8, FP8], ids=["int8", "fp8"])
def test_strided_operands(qdt):
    """A ``[K, N]`` weight's ``.t()`` view, a column slice of a wider weight and a sliced ``xq`` read by strides."""
    xq, xs, wq, ws, _ = _case(9, 72, 48, qdt)
    ref = _ref(xq, xs, wq, ws, None)
    wide_x = torch.zeros(9, 150, dtype=torch.int8).to(qdt)
    wide_x[:, 50:122] = xq
    wide_w = torch.zeros(48, 100, dtype=torch.int8).to(qdt)
    wide_w[:, 10:82] = wq
    views = {"transposed": wq.t().contiguous().t(), "column slice": wide_w[:, 10:82]}
    for name, w in views.items():
        assert not w.is_contiguous(), name
        out = w8a8_gemm(*_dev(xq, xs, w, ws), None, torch.float32)
        assert _rel(out, ref) < _tol(torch.float32, qdt), name
    out = w8a8_gemm(*_dev(wide_x[:, 50:122], xs, wq, ws), None, torch.float32)
    assert _rel(out, ref) < _tol(torch.float32, qdt)


def test_int8_and_fp8_with_the_same_shapes_are_both_right():
    """The launch key tells the operand dtypes apart: an fp8 call does not reuse the int8 kernel, and back."""
    g = torch.Generator().manual_seed(4)
    ints = torch.randint(-7, 8, (2, 20, 64), generator=g)  # small integers: exact in int8 and in e4m3
    ws = torch.rand(20, generator=g) + 0.5
    xs = torch.rand(12, generator=g) + 0.5
    for _ in range(2):  # the second round is the direct launch of each cached kernel on a GPU
        for qdt in (torch.int8, FP8, torch.int8):
            xq, wq = ints[0, :12].to(qdt), ints[1].to(qdt)
            out = w8a8_gemm(*_dev(xq, xs, wq, ws), None, torch.float32)
            assert _rel(out, _ref(xq, xs, wq, ws, None)) < TOL[torch.float32], qdt


def test_launch_key_covers_every_tensor_dtype(monkeypatch):
    """The GPU branch's launch key (a fixed pick instead of the autotuner): changing any one tensor's dtype —
    operands, either scale (``module.to(...)`` can), bias or output — must give another key, or a kernel compiled
    for other dtypes would be reused by ``w8a8_gemm_unchecked``."""
    keys = []
    monkeypatch.setattr(mod, "INTERPRETED", False)
    fixed = mod.Pick(16, 32, 32, 2, 4, 2)
    monkeypatch.setattr(mod, "_picked", type("AlwaysPicked", (dict,), {"get": lambda self, key: fixed})())
    monkeypatch.setattr(mod._LAUNCH, "launch", lambda key, *a: keys.append(key))

    def key(qdt=torch.int8, xs_dt=torch.float32, ws_dt=torch.float32, bias_dt=None, out_dt=torch.bfloat16):
        bias = None if bias_dt is None else torch.zeros(8, dtype=bias_dt, device=DEV)
        mod.w8a8_gemm_unchecked(torch.zeros(4, 32, device=DEV).to(qdt), torch.ones(4, dtype=xs_dt, device=DEV),
                                torch.zeros(8, 32, device=DEV).to(qdt), torch.ones(8, dtype=ws_dt, device=DEV), bias,
                                out_dt)
        return keys[-1]

    base = key()
    variants = [key(qdt=FP8), key(xs_dt=torch.float16), key(ws_dt=torch.float16), key(bias_dt=torch.float32),
                key(bias_dt=torch.float16), key(out_dt=torch.float16)]
    assert len({base, *variants}) == 1 + len(variants)


@pytest.mark.parametrize("qdt", [torch.int8, FP8], ids=["int8", "fp8"])
def test_out_rows_of_a_larger_output_are_written_in_place(qdt):
    """``out=`` a row slice: those rows hold the product, the rows around them are untouched (``head_tail_probe``
    writes two GEMMs' rows into one output this way)."""
    xq, xs, wq, ws, b = _case(21, 64, 48, qdt, seed=5)
    xq, xs, wq, ws, b = _dev(xq, xs, wq, ws, b.to(torch.bfloat16))
    full = torch.full((30, 48), 7.0, dtype=torch.bfloat16, device=DEV)
    got = mod.w8a8_gemm_unchecked(xq, xs, wq, ws, b, torch.bfloat16, out=full[4:25])
    assert got.data_ptr() == full[4:25].data_ptr()
    assert _rel(full[4:25], _ref(*[t.cpu() for t in (xq, xs, wq, ws, b)])) < TOL[torch.bfloat16]
    assert bool((full[:4] == 7).all()) and bool((full[25:] == 7).all())


def test_empty_m():
    out = w8a8_gemm(*_dev(torch.zeros(0, 32, dtype=torch.int8), torch.ones(0), torch.zeros(8, 32, dtype=torch.int8),
                          torch.ones(8)), None, torch.bfloat16)
    assert out.shape == (0, 8) and out.dtype == torch.bfloat16


def test_bad_inputs_name_what_was_expected():
    i8 = lambda *s: torch.zeros(*s, dtype=torch.int8)
    xq, xs, wq, ws = i8(4, 32), torch.ones(4), i8(8, 32), torch.ones(8)
    bad = [
        (r"2-D xq \[M, K\].*found xq \(1, 4, 32\)", (i8(1, 4, 32), xs, wq, ws, None, torch.bfloat16)),
        (r"both int8 or both float8_e4m3fn; found xq torch.int8, weight torch.float8_e4m3fn",
         (xq, xs, wq.to(FP8), ws, None, torch.bfloat16)),
        (r"both int8.*found xq torch.bfloat16", (xq.bfloat16(), xs, wq.bfloat16(), ws, None, torch.bfloat16)),
        (r"same K; found xq \(4, 32\), weight \(8, 16\)", (xq, xs, i8(8, 16), ws, None, torch.bfloat16)),
        (r"out_dtype must be.*found torch.int32", (xq, xs, wq, ws, None, torch.int32)),
        (r"x_scale float32 of shape \(4,\) or \(4, 1\).*found torch.float32 \(5,\)",
         (xq, torch.ones(5), wq, ws, None, torch.bfloat16)),
        (r"x_scale float32.*found torch.bfloat16 \(4,\)", (xq, xs.bfloat16(), wq, ws, None, torch.bfloat16)),
        (r"x_scale.*contiguous; found torch.float32 \(4,\) with strides \(2,\)",
         (xq, torch.ones(8)[::2], wq, ws, None, torch.bfloat16)),
        (r"w_scale float32 of shape \(8,\) or \(1, 8\).*found torch.float32 \(8, 1\)",
         (xq, xs, wq, ws.reshape(8, 1), None, torch.bfloat16)),
        (r"bias \[8\] contiguous; found \(4,\)", (xq, xs, wq, ws, torch.ones(4), torch.bfloat16)),
        (r"one device; found .*'w_scale': device\(type='meta'\)", (xq, xs, wq, ws.to("meta"), None, torch.bfloat16)),
    ]
    for pattern, args in bad:
        with pytest.raises(ValueError, match=pattern):
            w8a8_gemm(*args)


def test_autotuned_pick_is_launched_directly(monkeypatch):
    """The GPU branch: the first call goes through the autotuner, later calls launch its pick (faked on CPU)."""
    import triton

    calls = []

    class FakeTuner:
        best_config = None

        def __getitem__(self, grid):
            def run(*args, **meta):
                cfg = triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4)
                mod._w8a8_gemm_kernel[grid(cfg.kwargs)](*args, **meta, EVEN_K=args[8] % 32 == 0, num_warps=4,
                                                        **cfg.kwargs)
                self.best_config = cfg
                calls.append(meta)
            return run

    monkeypatch.setattr(mod, "_tuned", FakeTuner())
    monkeypatch.setattr(mod, "INTERPRETED", False)
    monkeypatch.setattr(mod, "_picked", {})
    xq, xs, wq, ws, b = _case(20, 96, 40, torch.int8)
    ref = _ref(xq, xs, wq, ws, b)
    for _ in range(2):
        out = w8a8_gemm(*_dev(xq, xs, wq, ws, b), torch.float32)
        assert _rel(out, ref) < TOL[torch.float32]
    assert calls == [{"HAS_BIAS": True, "IS_INT": True, "FP32_DOT": False}] and len(mod._picked) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the autotuned compiled kernel)")
@pytest.mark.parametrize("m", [1, 48, 128, 300])
def test_dit_width_on_gpu(m):
    """Autotuned at a DiT width: int8 against exact float32 math, fp8 against row-wise ``torch._scaled_mm``."""
    k, n = 5120, 3072
    for qdt in (torch.int8, FP8):
        xq, xs, wq, ws, b = _dev(*_case(m, k, n, qdt, seed=m))
        b = b.bfloat16()
        for _ in range(2):  # autotuner, then the direct launch
            out = w8a8_gemm(xq, xs, wq, ws, b, torch.bfloat16)
            ref = _ref(xq.cpu(), xs.cpu(), wq.cpu(), ws.cpu(), b.cpu())
            assert _rel(out, ref) < 8e-3
        if qdt == FP8 and torch.cuda.get_device_capability() >= (8, 9):
            scaled = torch._scaled_mm(xq, wq.t(), scale_a=xs.reshape(-1, 1), scale_b=ws.reshape(1, -1), bias=b,
                                      out_dtype=torch.bfloat16, use_fast_accum=True)
            assert _rel(out, scaled.float().cpu()) < 8e-3


@pytest.mark.parametrize("qdt", [torch.int8, FP8], ids=["int8", "fp8"])
def test_a_given_pick_is_launched_with_its_tiles(qdt, monkeypatch):
    """A caller's pick (a measured route table's config) replaces the autotuner: no tuning call, the launch has its
    tile sizes, and the result is right — including a K that the pick's BLOCK_K does not divide, and a tile taller than
    M (the 64-row tiles the fp8 routes pick at M=17-32: rows past M wrap onto real ones and are not stored)."""
    monkeypatch.setattr(mod, "_tuned", None)  # (would raise if the autotuner were reached)
    launched = []
    real = mod._LAUNCH.launch
    monkeypatch.setattr(mod._LAUNCH, "launch", lambda key, grid, args, meta, opts: launched.append((grid, meta, opts))
                        or real(key, grid, args, meta, opts))
    xq, xs, wq, ws, b = _case(37, 80, 72, qdt, seed=3)
    ref = _ref(xq, xs, wq, ws, b)
    for pick in ((16, 64, 64, 1, 4, 1), [32, 32, 32, 2, 2, 1], (64, 32, 32, 8, 4, 1)):
        out = w8a8_gemm(*_dev(xq, xs, wq, ws, b), torch.float32, pick=pick)
        assert _rel(out, ref) < _tol(torch.float32, qdt)  # (the 64-row fp8 tile is wgmma: fast accumulation)
        grid, meta, opts = launched[-1]
        assert (meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"], meta["GROUP_M"]) == tuple(pick[:4])
        assert opts == {"num_warps": pick[4], "num_stages": pick[5]}
        assert grid == (-(-37 // pick[0]) * -(-72 // pick[1]),) and meta["EVEN_K"] == (80 % pick[2] == 0)


def test_a_malformed_pick_is_refused_naming_it():
    xq, xs, wq, ws, _ = _case(4, 32, 16, torch.int8)
    for bad in ((16, 32, 32, 1, 4), (16, 32, 0, 1, 4, 1), (16.0, 32, 32, 1, 4, 1)):
        with pytest.raises(ValueError, match=r"pick must be six positive ints .* found"):
            w8a8_gemm(*_dev(xq, xs, wq, ws), None, torch.bfloat16, pick=bad)
