"""The shared per-token activation quantization kernel (int8 and fp8 out) against torch, bit for bit.

Under the Triton interpreter on CPU (CI) and natively on a GPU: every launch shape (rows per program, one pass or
chunked two-pass) must give the reference's codes and scales exactly — int8 ``round(x * (127 / amax))`` (ties
to even, like ``torch.round``, on the GPU and under the interpreter) and
fp8 the plugin reference's ``fp8(clamp(x * (1 / scale)))``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton not installed")
from fastvideo_quant.kernels.per_token_quant import (  # noqa: E402
    FP8_DTYPE,
    ONE_PASS_MAX_K,
    QuantConfig,
    per_token_quant,
    pick_config,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = [None, QuantConfig(2, 1024, True, 4), QuantConfig(4, 128, False, 4), QuantConfig(1, 64, False, 2),
           QuantConfig(4, 1024, True, 8)]


def _int8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.float().abs().amax(1)
    # tensor / tensor: IEEE division (torch computes ``127 / t`` as ``t.reciprocal() * 127``, and on CUDA ``t / 127``
    # as ``t * (1 / 127)``: an ulp off at times; the kernel divides exactly)
    inv = torch.where(amax > 0, torch.full_like(amax, 127) / torch.where(amax > 0, amax, 1), 0)
    return torch.round(x.float() * inv[:, None]).to(torch.int8), amax / torch.full_like(amax, 127)


def _assert_int8_codes_equal(q: torch.Tensor, rq: torch.Tensor, x: torch.Tensor) -> None:
    """Equal, ties included (to even, on the GPU and under the interpreter)."""
    diff = q.int() != rq.int()
    assert not diff.any(), f"{int(diff.sum())} codes differ, at x={x[diff][:4]}"


def test_int8_codes_round_exact_ties_to_even():
    # amax 127: the scale is 1, so x itself is what gets rounded
    row = torch.tensor([127.0, 0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 126.5, -126.5, 0.49999997])
    x = torch.stack([row, row * 0.5]).to(DEV)  # the second row: amax 63.5, scale 2, ties again at k + 0.5
    q, s = per_token_quant(x, torch.int8, flat_scale=True)
    rq, rs = _int8_ref(x)
    assert torch.equal(s, rs)
    _assert_int8_codes_equal(q, rq, x)
    assert q[0, 1:9].tolist() == [0, 2, 2, 4, 0, -2, -2, -4]


def _fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.float().abs().amax(1, keepdim=True).clamp(min=1e-12)
    scale = amax / torch.full_like(amax, 448.0)  # IEEE on CUDA too (``t / 448.0`` is ``t * (1 / 448)`` there)
    return (x.float() * scale.reciprocal()).clamp(-448, 448).to(FP8_DTYPE), scale


def _x(m: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.logspace(-4, 2, k)  # fp8 subnormals up to the top of the range
    if m > 2:
        x[1] = 0  # an all-zero row: int8 scale 0 and codes 0; fp8 the eps scale
    x[0, 0] = -0.0
    return x.to(dtype).to(DEV)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("m,k", [(1, 64), (5, 300), (7, 1000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_int8_and_fp8_codes_and_scales_equal_torch(cfg, m, k, dtype):
    if cfg is not None and cfg.one_pass and cfg.block_k < k:
        pytest.skip("a one-pass block must cover the row")
    x = _x(m, k, dtype, m * k)
    q, s = per_token_quant(x, torch.int8, flat_scale=True, config=cfg)
    rq, rs = _int8_ref(x)
    assert s.shape == (m,) and torch.equal(s, rs)
    _assert_int8_codes_equal(q, rq, x)
    q8, s8 = per_token_quant(x, FP8_DTYPE, config=cfg)
    rq8, rs8 = _fp8_ref(x)
    assert s8.shape == (m, 1) and torch.equal(s8, rs8)
    assert torch.equal(q8.view(torch.uint8), rq8.view(torch.uint8))


def test_strided_rows_and_empty_input():
    base = _x(6, 256, torch.bfloat16, 1)
    x = base[:, :200]  # row stride 256, not the row length
    q, s = per_token_quant(x, torch.int8, flat_scale=True)
    rq, rs = _int8_ref(x)
    assert torch.equal(s, rs)
    _assert_int8_codes_equal(q, rq, x)
    q, s = per_token_quant(base[:0], FP8_DTYPE)
    assert q.shape == (0, 256) and s.shape == (0, 1)


def test_pick_config_reads_each_row_once_up_to_the_one_pass_limit():
    for k in (1, 64, 3072, 5120, 13824, ONE_PASS_MAX_K):
        cfg = pick_config(4096, k)
        assert cfg.one_pass and cfg.rows == 1 and cfg.block_k >= k and cfg.block_k & (cfg.block_k - 1) == 0
    assert not pick_config(4096, ONE_PASS_MAX_K + 1).one_pass


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="qdtype must be torch.int8 or torch.float8_e4m3fn, found torch.float16"):
        per_token_quant(torch.zeros(2, 8, device=DEV), torch.float16)
    with pytest.raises(ValueError, match=r"2-D bfloat16/float16/float32 activation .* found torch.float32 \(2, 2, 8\)"):
        per_token_quant(torch.zeros(2, 2, 8, device=DEV), torch.int8)
    with pytest.raises(ValueError, match="found torch.int32"):
        per_token_quant(torch.zeros(2, 8, dtype=torch.int32, device=DEV), torch.int8)


def test_planned_launch_matches_the_checked_one_bit_for_bit():
    """The cached launch (second and later calls per key) gives the checked function's codes and scales; a new
    shape, a misaligned view and a strided view each get their own key; bad input still raises on every call."""
    from fastvideo_quant.kernels import per_token_quant as ptq

    ptq._PLANS.clear()
    flat = torch.empty(5 * 384 + 1, dtype=torch.bfloat16, device=DEV)
    cases = [_x(5, 384, torch.bfloat16, 3), _x(3, 384, torch.bfloat16, 4), flat[1:].view(5, 384),
             _x(4, 512, torch.float16, 5)[:, :384]]
    cases[2].copy_(_x(5, 384, torch.bfloat16, 6))
    for x in cases:
        ref_q, ref_s = _fp8_ref(x)
        for _ in range(3):  # checked call, then two planned calls
            q, s = ptq.per_token_quant_planned(x, FP8_DTYPE)
            assert s.shape == (x.shape[0], 1) and q.shape == x.shape
            assert torch.equal(s, ref_s) and torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))
        x.copy_(x.flip(0))  # new values under the same key: the plan holds no data
        q, s = ptq.per_token_quant_planned(x, FP8_DTYPE)
        ref_q, ref_s = _fp8_ref(x)
        assert torch.equal(s, ref_s) and torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))
    assert len(ptq._PLANS) == 4  # one per key: M, alignment and row stride each make a new one
    for _ in range(2):
        with pytest.raises(ValueError, match=r"2-D bfloat16/float16/float32 activation .* found torch.float32 \(2, 2, 8\)"):
            ptq.per_token_quant_planned(torch.zeros(2, 2, 8, device=DEV), FP8_DTYPE)
    assert len(ptq._PLANS) == 4


@pytest.mark.parametrize("qdtype", [torch.int8, FP8_DTYPE])
def test_out_rows_writes_the_first_m_rows_of_a_larger_buffer(qdtype):
    """``out_rows`` (the fp8 plugin's padded GEMM): q and the scales get that many rows, the first M equal to the
    unpadded call's bit for bit (the rest is left unwritten); the planned launch keys on it; fewer rows than x has is
    an error naming both."""
    from fastvideo_quant.kernels import per_token_quant as ptq

    x = _x(5, 384, torch.bfloat16, 7)
    ref_q, ref_s = per_token_quant(x, qdtype)
    for fn in (lambda: per_token_quant(x, qdtype, out_rows=12),
               lambda: ptq.per_token_quant_planned(x, qdtype, 12), lambda: ptq.per_token_quant_planned(x, qdtype, 12)):
        q, s = fn()
        assert q.shape == (12, 384) and s.shape == (12, 1) and q.dtype == qdtype
        assert torch.equal(q[:5].view(torch.uint8), ref_q.view(torch.uint8)) and torch.equal(s[:5], ref_s)
    q, s = ptq.per_token_quant_planned(x, qdtype)  # (another key: M rows)
    assert q.shape == (5, 384) and torch.equal(s, ref_s)
    for rows in (4, 2.5):
        with pytest.raises(ValueError, match=rf"out_rows must be an int >= the 5 rows of x, found {rows}"):
            per_token_quant(x, qdtype, out_rows=rows)


def test_scratch_quantization_reuses_one_workspace_per_stream_and_thread(monkeypatch):
    """``per_token_quant_scratch``: the planned launch's codes and scales bit for bit, written into the workspace of
    (device, stream, thread) — later calls return the same storage, so a call overwrites the previous result (what
    its one consumer, a GEMM launched right after, allows); ``out_rows`` gives the padded views; another thread gets
    its own workspace; above WORKSPACE_MAX_ROWS each call gets fresh tensors."""
    import threading

    from fastvideo_quant.kernels import per_token_quant as ptq

    ptq._SCRATCH_PLANS.clear()
    ptq._WORKSPACES.clear()
    a, b = _x(6, 256, torch.bfloat16, 8), _x(6, 256, torch.bfloat16, 9)
    ref_a, ref_b = _fp8_ref(a), _fp8_ref(b)
    for x, (rq, rs) in ((a, ref_a), (a, ref_a), (b, ref_b)):
        q, s = ptq.per_token_quant_scratch(x, FP8_DTYPE)
        assert q.shape == (6, 256) and s.shape == (6, 1)
        assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)
    first, _ = ptq.per_token_quant_scratch(a, FP8_DTYPE)
    second, _ = ptq.per_token_quant_scratch(b, FP8_DTYPE)
    assert first.data_ptr() == second.data_ptr()  # the workspace: a's codes are gone
    assert torch.equal(first.view(torch.uint8), ref_b[0].view(torch.uint8))
    q, s = ptq.per_token_quant_scratch(a, FP8_DTYPE, 16)
    q, s = ptq.per_token_quant_scratch(a, FP8_DTYPE, 16)
    assert q.shape == (16, 256) and s.shape == (16, 1) and q.data_ptr() == first.data_ptr()
    assert torch.equal(q[:6].view(torch.uint8), ref_a[0].view(torch.uint8)) and torch.equal(s[:6], ref_a[1])
    assert len(ptq._WORKSPACES) == 1

    other = {}
    worker = threading.Thread(target=lambda: [other.update(q=ptq.per_token_quant_scratch(a, FP8_DTYPE)[0])
                                              for _ in range(2)])
    worker.start()
    worker.join()
    assert other["q"].data_ptr() != first.data_ptr() and len(ptq._WORKSPACES) == 2
    assert torch.equal(other["q"].view(torch.uint8), ref_a[0].view(torch.uint8))

    monkeypatch.setattr(ptq, "WORKSPACE_MAX_ROWS", 4)
    big = [ptq.per_token_quant_scratch(a, FP8_DTYPE)[0] for _ in range(2)]
    assert big[0].data_ptr() != big[1].data_ptr()
    assert all(torch.equal(t.view(torch.uint8), ref_a[0].view(torch.uint8)) for t in big)


def test_workspaces_are_bounded_dropping_exited_threads_first(monkeypatch):
    """Beyond WORKSPACE_LIMIT a new workspace first drops those of exited threads (a thread per request must not
    keep one per thread it ever had), with the plans viewing them; if every owner is alive, all are dropped and each
    owner makes a new one — every result stays bit for bit the planned launch's."""
    import threading

    from fastvideo_quant.kernels import per_token_quant as ptq

    ptq._SCRATCH_PLANS.clear()
    ptq._WORKSPACES.clear()
    monkeypatch.setattr(ptq, "WORKSPACE_LIMIT", 2)
    a, b = _x(6, 256, torch.bfloat16, 8), _x(6, 256, torch.bfloat16, 9)
    ref_a, ref_b = _fp8_ref(a), _fp8_ref(b)

    def same(q, ref):
        return torch.equal(q[0].view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(q[1], ref[1])

    # two workers, alive together (distinct idents), then exited; their calls one after the other (the Triton
    # interpreter runs one kernel at a time)
    both_done, turn, results, idents = threading.Barrier(2), threading.Lock(), [], set()

    def work(x, ref):
        with turn:
            results.append(all(same(ptq.per_token_quant_scratch(x, FP8_DTYPE), ref) for _ in range(2)))
            idents.add(threading.get_ident())
        both_done.wait(30)
    workers = [threading.Thread(target=work, args=args) for args in ((a, ref_a), (b, ref_b))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert results == [True, True] and {key[2] for key in ptq._WORKSPACES} == idents and len(idents) == 2
    assert same(ptq.per_token_quant_scratch(a, FP8_DTYPE), ref_a)  # a third workspace: the exited two go
    assert {key[2] for key in ptq._WORKSPACES} == {threading.get_ident()}
    assert all(key[-1] == threading.get_ident() for key in ptq._SCRATCH_PLANS)
    assert same(ptq.per_token_quant_scratch(b, FP8_DTYPE), ref_b)

    # every owner alive: all are dropped, and each owner's next call is still right
    monkeypatch.setattr(ptq, "WORKSPACE_LIMIT", 1)
    worker_done, main_done, seen = threading.Event(), threading.Event(), []

    def live_worker():
        seen.append(same(ptq.per_token_quant_scratch(b, FP8_DTYPE), ref_b))
        seen.append(set(ptq._WORKSPACES) == {key for key in ptq._WORKSPACES if key[2] == threading.get_ident()})
        worker_done.set()
        main_done.wait(30)
        seen.append(same(ptq.per_token_quant_scratch(b, FP8_DTYPE), ref_b))
    t = threading.Thread(target=live_worker)
    t.start()
    assert worker_done.wait(30)
    assert len(ptq._WORKSPACES) == 1  # the main thread's went although it is alive
    assert same(ptq.per_token_quant_scratch(a, FP8_DTYPE), ref_a)
    assert {key[2] for key in ptq._WORKSPACES} == {threading.get_ident()}
    main_done.set()
    t.join()
    assert seen == [True, True, True] and len(ptq._WORKSPACES) == 1


def test_padded_quantization_property():
    """For any M, K and padding: the first M rows of the padded result (checked, planned and scratch entry points)
    are the reference's codes and scales bit for bit, and the shapes are the padded ones."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fastvideo_quant.kernels import per_token_quant as ptq

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(m=st.integers(1, 9), k=st.integers(1, 300), pad=st.integers(0, 7), seed=st.integers(0, 2**16),
           scratch=st.booleans())
    def check(m, k, pad, seed, scratch):
        x = _x(m, k, torch.bfloat16, seed)
        rq, rs = _fp8_ref(x)
        fn = ptq.per_token_quant_scratch if scratch else ptq.per_token_quant_planned
        for q, s in (per_token_quant(x, FP8_DTYPE, out_rows=m + pad), fn(x, FP8_DTYPE, m + pad),
                     fn(x, FP8_DTYPE, m + pad)):
            assert q.shape == (m + pad, k) and s.shape == (m + pad, 1)
            assert torch.equal(q[:m].view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s[:m], rs)

    check()


@pytest.mark.parametrize("qdtype", [torch.int8, FP8_DTYPE])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_a_non_finite_row_gets_a_non_finite_scale_and_leaves_the_others_alone(qdtype, cfg):
    """NaN or inf in a token makes that row's scale non-finite, so its output row is (the GEMM multiplies by it); a NaN
    was dropped by the max (on the GPU and under the interpreter), so the row came back finite and wrong. The other
    rows are bit for bit those of the same input without the bad values."""
    x = _x(6, 300, torch.bfloat16, seed=5).to(DEV)
    bad = x.clone()
    bad[1, 7], bad[3, 250], bad[4, 0] = float("nan"), float("inf"), float("-inf")
    q, s = per_token_quant(bad, qdtype, config=cfg, flat_scale=True)
    rq, rs = per_token_quant(x, qdtype, config=cfg, flat_scale=True)
    assert not torch.isfinite(s[[1, 3, 4]]).any(), s
    good = [0, 2, 5]
    assert torch.equal(s[good], rs[good]) and torch.equal(q[good].view(torch.int8), rq[good].view(torch.int8))
