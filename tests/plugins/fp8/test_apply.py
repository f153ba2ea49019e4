"""fp8 apply on CPU: real fp8 products (those _scaled_mm forms), accuracy vs float32, dtypes, bias, shapes; Triton interpreted."""

from __future__ import annotations

import pytest
import torch
from fp8_helpers import fp8_layer, reference, rel_err
from fvq_fp8.format import FP8_MAX, cast_to_fp8, dequantize
from fvq_fp8.kernels.ops import per_token_quant_ref, static_quant_ref
from hypothesis import given, settings
from hypothesis import strategies as st

CONFIGS = {
    "tensor": {"quant_method": "fp8"},
    "channel": {"quant_method": "fp8", "weight_scale_strategy": "channel"},
    "static": {"quant_method": "fp8", "activation_scheme": "static"},
    "block": {"quant_method": "fp8", "weight_block_size": [32, 64]},
    "ct-channel": {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
        "input_activations": {"num_bits": 8, "type": "float", "dynamic": True}}}},
}
# Measured on these Gaussian inputs: 1.7e-2 .. 2.0e-2 for every config and dtype (see docs/methods/fp8.md).
MAX_REL_ERR = 3e-2


def _data(dtype, shape=(2, 12, 200), n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, shape[-1], generator=g) / shape[-1] ** 0.5
    return w, torch.randn(n, generator=g), torch.randn(*shape, generator=g).to(dtype)


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_accuracy_vs_float32(kind, dtype):
    w, b, x = _data(dtype)
    layer = fp8_layer(w, CONFIGS[kind], bias=b, dtype=dtype, activations=x.reshape(-1, 200))
    out = layer.quant_method.apply(layer, x, layer.bias)
    assert out.dtype == dtype and out.shape == (2, 12, 96)
    err = rel_err(out, reference(layer, x))
    assert 1e-3 < err < MAX_REL_ERR  # > 1e-3: activations really are fp8, not bf16
    assert rel_err(out, x.float() @ w.T + b) < MAX_REL_ERR + 0.01  # incl. weight rounding


@pytest.mark.parametrize("kind", ["tensor", "channel", "static", "block"])
def test_cpu_path_multiplies_the_fp8_operands(monkeypatch, kind):
    """Every scale layout reaches the product with both operands in float8_e4m3fn (the activation quantized, not a
    de-quantize-to-bf16 shortcut), and torch's CPU _scaled_mm (a reference loop, ~0.12 GFLOP/s) is not called."""
    from fvq_fp8.kernels import gemm

    calls = []
    real = gemm.fp8_product
    monkeypatch.setattr(gemm, "fp8_product", lambda a, b, *r: calls.append((a.dtype, b.dtype)) or real(a, b, *r))
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: pytest.fail("torch._scaled_mm called on CPU"))
    w, b, x = _data(torch.bfloat16)
    layer = fp8_layer(w, CONFIGS[kind], bias=b, activations=x.reshape(-1, 200))
    layer.quant_method.apply(layer, x, layer.bias)
    assert calls and set(calls) == {(torch.float8_e4m3fn, torch.float8_e4m3fn)}


def _fp8(*shape, seed):
    """Random e4m3 values over the whole range: normals to ±448, subnormals, zeros (no NaN)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.exp2(torch.randint(-10, 8, shape, generator=g).float())
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 40), n=st.integers(1, 24), chunk=st.integers(1, 200),
       seed=st.integers(0, 2**31 - 1))
def test_cpu_fp8_product_equals_torch_scaled_mm(m, k, n, chunk, seed):
    """The CPU product (float32 matmul of the upcast operands, the weight upcast ``chunk`` elements of whole rows at a
    time) equals torch's fp8 ``_scaled_mm`` with unit scales, and float64 math of the fp8 operands, to the order of
    float32 sums."""
    from fvq_fp8.kernels import gemm

    xq, wq = _fp8(m, k, seed=seed), _fp8(n, k, seed=seed + 1)
    one = torch.ones((), dtype=torch.float32)
    old, gemm.CPU_CHUNK_NUMEL = gemm.CPU_CHUNK_NUMEL, chunk
    try:
        got = gemm.fp8_product(xq, wq)
    finally:
        gemm.CPU_CHUNK_NUMEL = old
    exact = xq.double() @ wq.double().T
    theirs = torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    bound = k * 2.0**-24 * (xq.double().abs() @ wq.double().abs().T)  # k float32 roundings of the |terms|' sum
    assert ((got.double() - exact).abs() <= bound).all()
    assert ((theirs.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz])
def test_upcast_table_gives_torch_cast_for_every_byte(dtype):
    """The CPU product's table upcast equals torch's own cast for all 256 codes (NaN codes stay NaN, -0 keeps its
    sign), in the input's shape, also from a strided view."""
    from fvq_fp8.kernels.gemm import upcast_fp8

    codes = torch.arange(256, dtype=torch.uint8).view(dtype).reshape(16, 16)
    for t in (codes, codes.t(), codes[::3, 1::2]):
        got, want = upcast_fp8(t), t.float()
        assert got.dtype == torch.float32 and got.shape == t.shape
        assert torch.equal(got.isnan(), want.isnan())
        ok = ~want.isnan()
        assert torch.equal(got[ok], want[ok]) and torch.equal(got[ok].signbit(), want[ok].signbit())


def test_output_equals_exact_fp8_product():
    """The CPU result is the fp8 product of the quantized operands, summed in fp32, then rounded."""
    w, _, x = _data(torch.float32, shape=(7, 200))
    layer = fp8_layer(w, CONFIGS["channel"], dtype=torch.float32)
    xq, xs = per_token_quant_ref(x)
    expected = (xq.double() @ layer.weight.double().T) * xs.double() * layer.weight_scale.double()
    out = layer.quant_method.apply(layer, x)
    assert rel_err(out.double(), expected) < 1e-6


@pytest.mark.parametrize("shape", [(5, 200), (3, 4, 200), (1, 200), (0, 200)])
def test_bias_and_leading_dims(shape):
    w, b, x = _data(torch.bfloat16, shape=shape)
    layer = fp8_layer(w, CONFIGS["tensor"], bias=b)
    with_bias = layer.quant_method.apply(layer, x, layer.bias)
    without = layer.quant_method.apply(layer, x)
    assert with_bias.shape == (*shape[:-1], 96)
    if x.numel():
        assert rel_err(with_bias - without, layer.bias.expand_as(with_bias)) < 1e-2


def test_zero_rows_and_outliers_stay_finite():
    w, _, x = _data(torch.bfloat16, shape=(4, 200))
    x[1] = 0
    x[2, 3] = 3e4  # an outlier only hurts its own row with per-token scales
    layer = fp8_layer(w, CONFIGS["tensor"])
    out = layer.quant_method.apply(layer, x)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    assert rel_err(out[[0, 3]], reference(layer, x)[[0, 3]]) < MAX_REL_ERR


def test_wrong_input_size_names_layer():
    w, _, x = _data(torch.bfloat16)
    layer = fp8_layer(w, CONFIGS["tensor"])
    with pytest.raises(ValueError, match=r"layer 'l'.*last dim must be 200"):
        layer.quant_method.apply(layer, x[..., :100])


def test_quantize_weight_formats():
    w = torch.randn(100, 300)
    from fvq_fp8 import Fp8Config

    t = Fp8Config.from_config({"quant_method": "fp8"}).quantize_weight(w)
    assert t["weight"].dtype == torch.float8_e4m3fn and t["weight_scale"].shape == ()
    assert t["weight_scale"].item() == pytest.approx(w.abs().max().item() / FP8_MAX)
    t = Fp8Config.from_config(CONFIGS["channel"]).quantize_weight(w)
    assert t["weight_scale"].shape == (100, 1)
    t = Fp8Config.from_config({"quant_method": "fp8", "weight_block_size": [64, 128]}).quantize_weight(w)
    assert t["weight_scale_inv"].shape == (2, 3) and t["weight_scale_inv"].dtype == torch.float32
    deq = dequantize(t["weight"], t["weight_scale_inv"], (64, 128))
    assert rel_err(deq, w) < 3e-2
    # a block's max maps to ±448 exactly: the scale is amax / 448
    assert t["weight"][:64, :128].float().abs().max().item() == FP8_MAX


# --- the Triton kernel, interpreted on CPU (TRITON_INTERPRET=1 from tests/conftest.py) ---------------------
triton = pytest.importorskip("triton", reason="triton not installed")


@pytest.mark.parametrize("m,k", [(1, 64), (5, 300), (3, 1000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_per_token_quant_bitwise_vs_torch(m, k, dtype):
    if torch.cuda.is_available():
        pytest.skip("interpreter test; test_cuda.py covers the compiled kernel")
    from fvq_fp8.kernels import act_quant_triton

    g = torch.Generator().manual_seed(m * k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-4, 2, k)  # spans fp8 subnormals to the top of the range
    x[0, 0] = -0.0  # the sign of zero survives, as in torch's cast
    x = x.to(dtype)
    q, s = act_quant_triton.per_token_quant(x)
    rq, rs = per_token_quant_ref(x)
    assert torch.equal(s, rs)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


def test_triton_static_bitwise():
    """(The per-token kernel's two-pass form: tests/kernels/test_per_token_quant.py.)"""
    if torch.cuda.is_available():
        pytest.skip("interpreter test")
    from fvq_fp8.kernels import act_quant_triton

    x = (torch.randn(3, 700) * 7).bfloat16()
    scale = torch.tensor([0.013])
    assert torch.equal(act_quant_triton.static_quant(x, scale).view(torch.uint8),
                       static_quant_ref(x, scale).view(torch.uint8))
    # values past 448 * scale saturate instead of becoming NaN
    assert torch.equal(act_quant_triton.static_quant(x * 100, scale).float().abs().max(), torch.tensor(FP8_MAX))


def test_cast_rounds_to_nearest_even():
    v = torch.tensor([100.0, 31.0, 127.0, -0.3])  # 100 is a tie between 96 and 104
    assert cast_to_fp8(v, torch.tensor(1.0)).float().tolist() == [96.0, 32.0, 128.0, -0.3125]


def test_block_scale_columns_are_computed_once_after_loading():
    """apply reads the ``weight_scale_cols`` buffer made by process_weights_after_loading (no per-call expansion)."""
    w, _, x = _data(torch.float32, shape=(5, 200))
    layer = fp8_layer(w, CONFIGS["block"], dtype=torch.float32)
    cols = layer.weight_scale_cols
    assert "weight_scale_cols" in dict(layer.named_buffers()) and "weight_scale_cols" in layer.state_dict()
    bn = CONFIGS["block"]["weight_block_size"][0]
    assert torch.equal(cols, layer.weight_scale_inv.repeat_interleave(bn, dim=0)[:96].t())
    out = layer.quant_method.apply(layer, x)
    layer.weight_scale_cols = cols * 2
    assert torch.allclose(layer.quant_method.apply(layer, x), 2 * out, rtol=1e-6, atol=0)


def test_apply_refuses_a_cast_weight_and_another_device():
    """``model.to(bf16)`` keeps the float8 weight (LinearBase._apply); a weight cast by hand is named by apply instead
    of computing with a bf16 weight."""
    from fastvideo_quant.errors import ModelStateError

    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    layer = fp8_layer(w, {"quant_method": "fp8"})
    x = torch.randn(4, 64).bfloat16()
    expected = layer.quant_method.apply(layer, x)
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.float8_e4m3fn and torch.equal(layer.quant_method.apply(layer, x), expected)
    layer.weight.data = layer.weight.data.to(torch.bfloat16)
    with pytest.raises(ModelStateError, match=r"weight is torch.bfloat16 \(32, 64\), expected torch.float8_e4m3fn \(32, 64\)"):
        layer.quant_method.apply(layer, x)
    layer = fp8_layer(w, {"quant_method": "fp8"})
    with pytest.raises(ValueError, match="input is on meta, the weight on cpu"):
        layer.quant_method.apply(layer, torch.empty(4, layer.weight.shape[1], device="meta"))


@pytest.mark.parametrize("m,k,rows", [(1, 640, None), (5, 1040, 8), (33, 384, None), (3, 100, 4)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("config", [None, (1, 1), (16, 4)])  # the shipped launch shape, and two a sweep times
def test_triton_per_group_quant_bitwise_vs_torch(m, k, rows, dtype, config):
    """The block path's activation quantization (per token and 128 columns, scales group-major): the kernel equals the
    torch reference bit for bit, a partial last group and extra output rows included."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; test_cuda.py covers the compiled kernel")
    from fvq_fp8.kernels import act_quant_triton
    from fvq_fp8.kernels.ops import per_group_quant_ref

    g = torch.Generator().manual_seed(m * k)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-4, 2, k)).to(dtype)
    q, s = act_quant_triton.per_group_quant(x, 128, rows, config)
    rq, rs = per_group_quant_ref(x, 128)
    assert q.shape == (rows or m, k) and s.shape == (-(-k // 128), rows or m)
    assert torch.equal(q[:m].view(torch.uint8), rq.view(torch.uint8))
    assert torch.equal(s[:, :m], rs.t())


def test_group_quantization_into_the_workspace(monkeypatch):
    """``per_group_quant_scratch`` (the block route's eager quantization): the reference's codes and scales bit for
    bit, in the workspace of (device, stream, thread) it shares with the per-token scratch — later calls return the
    same storage; a call needing more scales than the workspace holds grows it; above WORKSPACE_MAX_ROWS each call
    gets fresh tensors. Under the interpreter on CPU, natively on a GPU."""
    from fvq_fp8.kernels import act_quant_triton as aq
    from fvq_fp8.kernels.ops import per_group_quant_ref

    from fastvideo_quant.kernels import per_token_quant as ptq

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    aq._GROUP_SCRATCH_PLANS.clear()
    ptq._WORKSPACES.clear()
    g = torch.Generator().manual_seed(3)
    a, b = ((torch.randn(6, 300, generator=g) * torch.logspace(-3, 2, 300)).bfloat16().to(dev) for _ in range(2))

    def check(q, s, x, rows):
        rq, rs = per_group_quant_ref(x, 128)
        assert q.shape == (rows, x.shape[1]) and s.shape == (-(-x.shape[1] // 128), rows)
        assert torch.equal(q[: x.shape[0]].view(torch.uint8), rq.view(torch.uint8))
        assert torch.equal(s[:, : x.shape[0]], rs.t())

    for x in (a, a, b):  # (the first call per key runs the checked function; the others, the plan)
        check(*aq.per_group_quant_scratch(x, 128, 8), x, 8)
    first, _ = aq.per_group_quant_scratch(a, 128, 8)
    second, _ = aq.per_group_quant_scratch(b, 128, 8)
    assert first.data_ptr() == second.data_ptr()  # the workspace: a's codes are gone
    check(second, aq.per_group_quant_scratch(b, 128, 8)[1], b, 8)
    ptq.per_token_quant_scratch(a, ptq.FP8_DTYPE)
    assert len(ptq._WORKSPACES) == 1  # one workspace for both
    many = torch.randn(6, 128 * 64, generator=g).bfloat16().to(dev)  # 64 groups: 24 rows of scales outgrow 1024 floats
    check(*aq.per_group_quant_scratch(many, 128, 8), many, 8)
    (buffers,) = ptq._WORKSPACES.values()
    for rows in (12, 16, 20, 24):  # (was: a new buffer at each larger row count, each kept by its plan: 1.3 GB on a GPU)
        check(*aq.per_group_quant_scratch(many, 128, rows), many, rows)
    assert [t.data_ptr() for t in ptq._WORKSPACES[next(iter(ptq._WORKSPACES))]] == [t.data_ptr() for t in buffers]
    wide = torch.randn(6, 128 * 200, generator=g).bfloat16().to(dev)  # 200 groups x 8 rows of scales: it grows
    for _ in range(2):
        check(*aq.per_group_quant_scratch(wide, 128, 8), wide, 8)
    assert len(ptq._WORKSPACES) == 1
    check(*aq.per_group_quant_scratch(a, 128, 8), a, 8)  # (an earlier plan keeps the buffer it views)
    monkeypatch.setattr(ptq, "WORKSPACE_MAX_ROWS", 4)
    big = [aq.per_group_quant_scratch(a, 128, 8) for _ in range(2)]
    assert big[0][0].data_ptr() != big[1][0].data_ptr()
    for q, s in big:
        check(q, s, a, 8)


def test_per_group_quant_op_on_cpu_pads_with_zero_rows_and_names_a_short_row_count():
    from fvq_fp8.kernels import ops

    x = torch.randn(3, 300)
    q, s = ops.per_group_quant(x, 128, 4)
    rq, rs = ops.per_group_quant_ref(x, 128)
    assert q.shape == (4, 300) and s.shape == (3, 4)
    assert torch.equal(q[:3].view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s[:, :3], rs.t())
    assert not q[3].float().any() and not s[:, 3].any()
    with pytest.raises(ValueError, match=r"out_rows must be >= the 3 rows of x, found 2"):
        ops.per_group_quant(x, 128, 2)


@pytest.mark.parametrize("out_rows", [None, 3, 5])
@pytest.mark.parametrize("in_dim", [0, 1])
def test_activation_quantization_ops_have_vmap_rules_that_equal_the_loop(in_dim, out_rows):
    """torch.func.vmap over the quantization ops with torch's per-item fallback off: per-token (a padded row count
    too), and static with one scale or a scale per item."""
    from fvq_fp8.kernels import ops

    x = torch.randn(4, 3, 40, generator=torch.Generator().manual_seed(1)) * 3
    xs = x.movedim(0, in_dim)
    enabled = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        q, s = torch.func.vmap(lambda t: ops.per_token_quant(t, out_rows), in_dims=in_dim)(xs)
        one = torch.tensor([0.02])
        static = torch.func.vmap(lambda t: ops.static_quant(t, one), in_dims=in_dim)(xs)
        scales = torch.tensor([[0.01], [0.02], [0.03], [0.04]])
        per_item = torch.func.vmap(ops.static_quant, in_dims=(in_dim, 0))(xs, scales)
        if out_rows is not None:
            with pytest.raises(ValueError, match=r"out_rows must be >= the 3 rows of x, found 2"):
                torch.func.vmap(lambda t: ops.per_token_quant(t, 2), in_dims=in_dim)(xs)
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(enabled)
    loop = [ops.per_token_quant(t, out_rows) for t in x]
    assert torch.equal(q.view(torch.uint8), torch.stack([lq for lq, _ in loop]).view(torch.uint8))
    assert torch.equal(s, torch.stack([ls for _, ls in loop]))
    assert torch.equal(static.view(torch.uint8), torch.stack([ops.static_quant(t, one) for t in x]).view(torch.uint8))
    want = torch.stack([ops.static_quant(t, sc) for t, sc in zip(x, scales)])
    assert torch.equal(per_item.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("widths,block,k,grid", [([256, 128], [128, 128], 512, True),
                                                 ([200, 128], [128, 128], 512, False),
                                                 ([256, 128], [64, 128], 512, False),
                                                 ([256, 128], [128, 128], 1152, False)])
def test_block_grid_is_the_fused_weights_block_scales_when_every_shard_is_whole_blocks(widths, block, k, grid):
    """The sm_90 block route hands cuBLASLt ``weight_scale_inv`` as the fused weight's 128x128 grid only when the
    blocks are 128x128, every fused shard is whole blocks (each shard's grid stacked is then the fused grid) and the
    grid's rows are a multiple of 4 floats (cuBLASLt computes wrong numbers with 9 or 10 K blocks)."""
    from fvq_fp8.config import Fp8Config
    from fvq_fp8.format import expand_block_scale, expand_row_block_scale

    from fastvideo_quant.layers.linear import MergedColumnParallelLinear

    cfg = Fp8Config.from_config({"quant_method": "fp8", "weight_block_size": block})
    layer = MergedColumnParallelLinear(k, widths, bias=False, params_dtype=torch.bfloat16, quant_config=cfg)
    gen = torch.Generator().manual_seed(len(widths))
    for i, n in enumerate(widths):
        t = cfg.quantize_weight(torch.randn(n, k, generator=gen) * (i + 1))
        layer.weight_loader_v2(layer.weight, t["weight"], i)
        layer.weight_loader_v2(layer.weight_scale_inv, t["weight_scale_inv"], i)
    layer.quant_method.process_weights_after_loading(layer)
    assert layer.fp8_block_grid is grid
    if grid:
        n, k = layer.weight.shape
        assert torch.equal(expand_block_scale(layer.weight_scale_inv, (128, 128), (n, k)),
                           expand_row_block_scale(layer.weight_scale_cols.t(), 128, k))


def _fake_block_scaled_mm(calls):
    """``torch._scaled_mm`` for the two block recipes on CPU, from their documented layouts (activation scales
    ``[rows, G]`` M-major; weight scales the 128x128 grid's transpose ``[G, N/128]`` or per row ``[G, N]``): float64
    math of the scaled operands, recorded in ``calls``."""
    real = torch._scaled_mm

    def fake(a, b, scale_a, scale_b, bias=None, out_dtype=None, use_fast_accum=False, **kw):
        if scale_a.numel() == 1 or scale_a.shape[1] == 1:  # (tensor- / row-wise: not the block route)
            return real(a, b, scale_a, scale_b, bias=bias, out_dtype=out_dtype, use_fast_accum=use_fast_accum)
        rows, k = a.shape
        n = b.shape[1]
        assert scale_a.shape == (rows, -(-k // 128)) and scale_a.stride() == (1, rows), "activation scales M-major"
        assert rows % 4 == 0 and not use_fast_accum
        grid = scale_b.shape[1] != n
        if grid:
            assert scale_b.shape == (-(-k // 128), -(-n // 128)) and scale_b.stride() == (1, scale_b.shape[0])
            w_scale = scale_b.t().double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
        else:
            assert scale_b.shape == (-(-k // 128), n) and scale_b.is_contiguous()
            w_scale = scale_b.t().double().repeat_interleave(128, 1)[:, :k]
        assert bias is None or out_dtype != torch.float32
        calls.append(("grid" if grid else "cols", rows, bias is not None))
        xa = a.double() * scale_a.double().repeat_interleave(128, 1)[:, :k]
        out = xa @ (b.t().double() * w_scale).t()
        return (out if bias is None else out + bias.double()).to(out_dtype)

    return fake


@pytest.mark.parametrize("m,grid_given,recipe", [(1, True, "cols"), (5, True, "cols"), (4092, True, "cols"),
                                                 (4093, True, "grid"), (4100, False, "cols")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_block_scaled_mm_pads_rows_picks_the_scale_layout_and_equals_the_loop(m, grid_given, recipe, dtype,
                                                                              monkeypatch):
    """The sm_90 route's host logic on CPU, ``torch._scaled_mm`` replaced by float64 math of the layouts cuBLASLt is
    given: M rounded up to a multiple of 4 and cut back, the 128x128 grid when the layer has one and the padded output
    has ``BLOCK_GRID_MIN_OUTPUT`` (2^20) elements or more — 4096 rows x 256 here, so M=4093 (padded to 4096) takes it and
    M=4092 does not — per-row scales otherwise, the bias fused except with float32 output; the result is the
    per-block loop's."""
    from fvq_fp8.format import quantize_per_block
    from fvq_fp8.kernels import gemm

    g = torch.Generator().manual_seed(m)
    n, k = 256, 384
    wq, grid = quantize_per_block(torch.randn(n, k, generator=g) / k**0.5, (128, 128))
    cols = grid.repeat_interleave(128, 0)[:n].t().contiguous()
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    calls = []
    monkeypatch.setattr(torch, "_scaled_mm", _fake_block_scaled_mm(calls))
    out = gemm.block_scaled_mm(x, wq, cols, grid.contiguous() if grid_given else None, bias)
    assert calls == [(recipe, -(-m // 4) * 4, dtype != torch.float32)]
    assert out.shape == (m, n) and out.dtype == dtype
    loop = gemm.block_loop_linear(x, wq, cols, 128, bias)
    assert rel_err(out, loop) < (4e-3 if dtype == torch.bfloat16 else 1e-5)


def test_float32_activations_near_1e36_give_the_finite_output():
    """The activation scale was applied before the weight scale: the product of unscaled e4m3 values (up to 448² · K)
    times a scale of ~1e36 / 448 overflowed float32 where the output (~1e35) does not (a numerics reviewer's finding;
    bitsandbytes multiplies its two scales first)."""
    w, _, x = _data(torch.float32, shape=(4, 200))
    layer = fp8_layer(w, CONFIGS["channel"], dtype=torch.float32)
    big = x / x.abs().amax() * 1e36
    out = layer.quant_method.apply(layer, big)
    assert torch.isfinite(out).all()
    ref = big.double() @ w.double().T
    assert float((out.double() - ref).norm() / ref.norm()) < 0.05  # (in float64: the norm of 1e35s overflows float32)
