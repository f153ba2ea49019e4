"""The planned W8A8 linear (``fastvideo_quant.kernels.w8a8_linear``): per-token quantization + GEMM with a launch plan
cached per shape, against the two checked calls it stands for — bit for bit, on the first call and on every call that
reuses a plan. Under the Triton interpreter on CPU (CI), compiled on a GPU."""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("triton", reason="triton not installed")
from fastvideo_quant.kernels import per_token_quant as ptq  # noqa: E402
from fastvideo_quant.kernels import w8a8_linear as mod  # noqa: E402
from fastvideo_quant.kernels.per_token_quant import per_token_quant  # noqa: E402
from fastvideo_quant.kernels.w8a8_gemm import w8a8_gemm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
FP8 = torch.float8_e4m3fn


@pytest.fixture(autouse=True)
def _fresh_plans():
    mod._PLANS.clear()
    ptq._WORKSPACES.clear()
    yield
    mod._PLANS.clear()
    ptq._WORKSPACES.clear()


def _weight(n, k, qdt, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    s = w.abs().amax(1) / (127.0 if qdt == torch.int8 else 448.0)
    y = w / s[:, None]
    q = y.round().clamp(-127, 127).to(torch.int8) if qdt == torch.int8 else y.to(qdt)
    return q.to(DEV), s.float().to(DEV), torch.randn(n, generator=g).to(DEV)


def _expected(x, qdt, w, ws, bias, out_dtype):
    xq, xs = per_token_quant(x, qdt, flat_scale=True)
    return w8a8_gemm(xq, xs, w, ws, bias, out_dtype)


@pytest.mark.parametrize("qdt", [torch.int8, FP8], ids=["int8", "fp8"])
@pytest.mark.parametrize("m,k,n,x_dtype,bias", [(5, 64, 48, torch.bfloat16, True), (40, 96, 32, torch.float16, False),
                                                  (3, 32, 16, torch.float32, True)])
def test_every_call_equals_quantize_then_gemm(qdt, m, k, n, x_dtype, bias):
    w, ws, b = _weight(n, k, qdt, seed=m)
    b = b.to(x_dtype) if bias else None
    for call in range(3):  # the first call builds the plan, the others launch it
        x = torch.randn(m, k, device=DEV).to(x_dtype)  # fresh inputs: a stale workspace would show
        out = mod.w8a8_linear(x, qdt, w, ws, b, x_dtype)
        assert out.dtype == x_dtype and out.shape == (m, n)
        assert torch.equal(out, _expected(x, qdt, w, ws, b, x_dtype)), f"call {call}"
    assert len(mod._PLANS) == 1


def test_plans_reuse_one_workspace_and_differ_by_what_the_kernels_specialize_on():
    w, ws, b = _weight(32, 64, torch.int8)
    x = torch.randn(8, 64, device=DEV, dtype=torch.bfloat16)
    mod.w8a8_linear(x, torch.int8, w, ws, b, torch.bfloat16)
    (plan,) = mod._PLANS.values()
    mod.w8a8_linear(x, torch.int8, w, ws, b, torch.bfloat16)
    assert len(mod._PLANS) == 1
    # another M is another plan, over the same workspace (one per stream and thread)
    mod.w8a8_linear(x[:5], torch.int8, w, ws, b, torch.bfloat16)
    assert len(mod._PLANS) == 2 and len(ptq._WORKSPACES) == 1
    other = next(p for p in mod._PLANS.values() if p is not plan)
    assert other.q.untyped_storage().data_ptr() == plan.q.untyped_storage().data_ptr()
    # a misaligned input (the JIT specializes pointers on 16-byte alignment) gets its own plan, and the right answer
    flat = torch.randn(8 * 64 + 1, device=DEV, dtype=torch.bfloat16)
    shifted = flat[1:].view(8, 64)
    assert shifted.data_ptr() % 16 != 0
    out = mod.w8a8_linear(shifted, torch.int8, w, ws, b, torch.bfloat16)
    assert torch.equal(out, _expected(shifted, torch.int8, w, ws, b, torch.bfloat16)) and len(mod._PLANS) == 3
    # no bias, another output dtype: other plans
    mod.w8a8_linear(x, torch.int8, w, ws, None, torch.bfloat16)
    mod.w8a8_linear(x, torch.int8, w, ws, b, torch.float32)
    assert len(mod._PLANS) == 5


def test_rows_beyond_the_workspace_are_allocated_per_call(monkeypatch):
    monkeypatch.setattr(mod, "WORKSPACE_MAX_M", 4)
    w, ws, b = _weight(16, 32, FP8)
    for _ in range(2):
        x = torch.randn(6, 32, device=DEV, dtype=torch.bfloat16)
        assert torch.equal(mod.w8a8_linear(x, FP8, w, ws, b, torch.bfloat16),
                           _expected(x, FP8, w, ws, b, torch.bfloat16))
    (plan,) = mod._PLANS.values()
    assert plan.q is None and not ptq._WORKSPACES


def test_each_thread_gets_its_own_plan_and_workspace():
    w, ws, _ = _weight(16, 32, torch.int8)
    x = torch.randn(4, 32, device=DEV, dtype=torch.bfloat16)
    mine = mod.w8a8_linear(x, torch.int8, w, ws, None, torch.bfloat16)
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(mod.w8a8_linear(x, torch.int8, w, ws, None, torch.bfloat16)))
    t.start()
    t.join()
    assert torch.equal(theirs[0], mine)
    assert len(mod._PLANS) == 2 and len(ptq._WORKSPACES) == 2


def test_dropping_workspaces_empties_the_plans_viewing_them(monkeypatch):
    """When a new workspace exceeds per_token_quant.WORKSPACE_LIMIT, the pair's plans (which hold workspace views)
    are emptied with the dropped workspaces, so none keeps a dropped buffer alive; the next call rebuilds its plan."""
    monkeypatch.setattr(ptq, "WORKSPACE_LIMIT", 1)
    w, ws, _ = _weight(16, 32, torch.int8)
    x = torch.randn(4, 32, device=DEV, dtype=torch.bfloat16)
    mine = mod.w8a8_linear(x, torch.int8, w, ws, None, torch.bfloat16)
    assert len(mod._PLANS) == 1 and len(ptq._WORKSPACES) == 1
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(mod.w8a8_linear(x, torch.int8, w, ws, None, torch.bfloat16)))
    t.start()
    t.join()
    assert torch.equal(theirs[0], mine)
    (key,) = mod._PLANS  # only the worker's plan: the main thread's went with its workspace
    assert key[-1] == t.ident and len(ptq._WORKSPACES) == 1
    again = mod.w8a8_linear(x, torch.int8, w, ws, None, torch.bfloat16)  # the worker has exited: its workspace goes
    assert torch.equal(again, mine)
    assert {k[2] for k in ptq._WORKSPACES} == {threading.get_ident()}


def test_non_contiguous_rows_are_correct_and_get_no_plan():
    w, ws, b = _weight(16, 32, torch.int8)
    x = torch.randn(32, 4, device=DEV, dtype=torch.bfloat16).t()  # [4, 32], column stride 4
    for _ in range(2):
        out = mod.w8a8_linear(x, torch.int8, w, ws, b, torch.bfloat16)
        assert torch.equal(out, _expected(x.contiguous(), torch.int8, w, ws, b, torch.bfloat16))
    assert not mod._PLANS


def test_bad_arguments_fail_on_the_first_call_with_the_checked_message():
    w, ws, _ = _weight(16, 32, torch.int8)
    x = torch.randn(4, 32, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="both int8 or both float8_e4m3fn"):
        mod.w8a8_linear(x, FP8, w, ws, None, torch.bfloat16)
    with pytest.raises(ValueError, match="same K"):
        mod.w8a8_linear(torch.randn(4, 48, device=DEV, dtype=torch.bfloat16), torch.int8, w, ws, None, torch.bfloat16)
    assert not mod._PLANS


def test_the_plan_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(mod._PLANS, "limit", 2)
    w, ws, _ = _weight(16, 32, torch.int8)
    for m in (1, 2, 3):
        mod.w8a8_linear(torch.randn(m, 32, device=DEV, dtype=torch.bfloat16), torch.int8, w, ws, None, torch.bfloat16)
    assert len(mod._PLANS) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_capture_correct_replays_and_build_no_plan():
    """Captured on a stream that has an eager plan (its plan path) and on a fresh one (the first-call path): both
    graphs and eager calls in between stay right when replayed with new inputs; capture adds no plan."""
    w, ws, b = _weight(256, 512, torch.int8)
    xs = [torch.randn(64, 512, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        mod.w8a8_linear(xs[0], torch.int8, w, ws, b, torch.bfloat16)  # an eager plan on the side stream
        mod.w8a8_linear(xs[0], torch.int8, w, ws, b, torch.bfloat16)
    torch.cuda.current_stream().wait_stream(side)
    assert len(mod._PLANS) == 1
    graphs, outs = [], []
    for x, stream in zip(xs, (side, None), strict=True):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            outs.append(mod.w8a8_linear(x, torch.int8, w, ws, b, torch.bfloat16))
        graphs.append(g)
    assert len(mod._PLANS) == 1
    for x in xs:
        x.copy_(torch.randn_like(x))
    eager = mod.w8a8_linear(xs[1] * 2, torch.int8, w, ws, b, torch.bfloat16)
    for g in graphs:
        g.replay()
    torch.cuda.synchronize()
    for x, out in zip(xs, outs, strict=True):
        assert torch.equal(out, _expected(x, torch.int8, w, ws, b, torch.bfloat16))
    assert torch.equal(eager, _expected(xs[1] * 2, torch.int8, w, ws, b, torch.bfloat16))


def test_a_pick_is_part_of_the_plan_key_and_gives_the_same_numbers_as_the_gemm_with_it():
    """The fp8 plugin's routes pass a launch config; a plan made with one pick is never reused for another."""
    w, ws, b = _weight(48, 80, FP8)
    x = torch.randn(20, 80, device=DEV, dtype=torch.bfloat16)
    picks = [(16, 32, 32, 1, 4, 1), (32, 16, 64, 1, 4, 1)]
    for pick in picks * 2:
        out = mod.w8a8_linear(x, FP8, w, ws, b.bfloat16(), torch.bfloat16, pick)
        xq, xs = per_token_quant(x, FP8, flat_scale=True)
        assert torch.equal(out, w8a8_gemm(xq, xs, w, ws, b.bfloat16(), torch.bfloat16, pick=pick))
    assert len(mod._PLANS) == 2


def test_pdl_is_part_of_the_plan_key_and_ignored_where_it_cannot_run():
    """``pdl`` keys its own plan; under the interpreter (and on CPU) both kernels launch as without it."""
    from fastvideo_quant.kernels import w8a8_gemm as gemm

    w, ws, b = _weight(48, 256, FP8)
    x = torch.randn(20, 256, device=DEV, dtype=torch.bfloat16)
    pick = (16, 64, 128, 1, 4, 1)
    outs = [mod.w8a8_linear(x, FP8, w, ws, b.bfloat16(), torch.bfloat16, pick, pdl=pdl) for pdl in (False, True, True)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2]) and len(mod._PLANS) == 2
    if DEV == "cpu":
        xq, xs = per_token_quant(x, FP8, flat_scale=True)
        out = torch.empty(20, 48, dtype=torch.bfloat16)
        *_, meta, opts = gemm.launch_spec(xq, xs, w, ws, None, out, gemm.as_pick(pick), pdl=True)
        assert meta["GDC"] is False and meta["PF"] == 0 and "launch_pdl" not in opts
        assert ptq.launch_spec(x, FP8, ptq.pick_config(20, 256), launch_deps=True)[3]["LAUNCH_DEPS"] is False


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="programmatic dependent launch needs compute capability 9.0")
@pytest.mark.parametrize("qdt", [torch.int8, FP8], ids=["int8", "fp8"])
@pytest.mark.parametrize("pick", [(64, 64, 256, 8, 4, 4), (64, 128, 128, 8, 4, 4), (16, 32, 64, 1, 4, 2)],
                         ids=["prefetch4", "no-prefetch", "short-k-steps"])
def test_pdl_pair_equals_the_pair_without_it_bit_for_bit(qdt, pick):
    """The GEMM launched early (it prefetches its weight, then waits for the quantization kernel) computes exactly
    what it computes launched after it: first calls, planned calls and a CUDA graph replayed on fresh inputs. K=2304:
    more K steps than the prefetch takes, and not a multiple of every tile's BLOCK_K."""
    from fastvideo_quant.kernels import w8a8_gemm as gemm

    k = 2304
    w, ws, b = _weight(320, k, qdt)
    bias = b.bfloat16()
    *_, meta, opts = gemm.launch_spec(*per_token_quant(torch.randn(17, k, device="cuda"), qdt, flat_scale=True), w, ws,
                                      None, torch.empty(17, 320, device="cuda", dtype=torch.bfloat16),
                                      gemm.as_pick(pick), pdl=True)
    assert meta["GDC"] is True and opts["launch_pdl"] is True
    assert meta["PF"] == (4 if pick[1] == 64 and pick[2] % 128 == 0 else 0)
    for m in (1, 17, 64):
        for _ in range(3):  # the first call (checked path), then the plans
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = mod.w8a8_linear(x, qdt, w, ws, bias, torch.bfloat16, pick)
            assert torch.equal(mod.w8a8_linear(x, qdt, w, ws, bias, torch.bfloat16, pick, pdl=True), ref)
    x = torch.randn(64, k, device="cuda", dtype=torch.bfloat16)
    mod.w8a8_linear(x, qdt, w, ws, bias, torch.bfloat16, pick, pdl=True)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = mod.w8a8_linear(x, qdt, w, ws, bias, torch.bfloat16, pick, pdl=True)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, mod.w8a8_linear(x, qdt, w, ws, bias, torch.bfloat16, pick))


def test_pdl_is_asked_of_the_device_once(monkeypatch):
    """Programmatic dependent launch needs compute capability 9.0; the launch specs drop the flag below it."""
    import types

    from fastvideo_quant.kernels import cuda_rtc

    monkeypatch.setattr(cuda_rtc, "_libcuda", lambda: types.SimpleNamespace(cuLaunchKernelEx=None))  # (a CUDA 12 driver)
    asked = []
    cuda_rtc.supports_pdl.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: asked.append(i) or ((8, 0) if i == 0 else (9, 0)))
    try:
        assert [cuda_rtc.supports_pdl(i) for i in (0, 1, 0, 1)] == [False, True, False, True]
        assert asked == [0, 1]
    finally:
        cuda_rtc.supports_pdl.cache_clear()  # (the real device's answer next time)
