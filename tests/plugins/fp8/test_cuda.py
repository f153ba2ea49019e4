"""fp8 on a CUDA GPU (sm_89+): the Triton quant kernel, _scaled_mm paths, torch.compile and CUDA graphs."""

from __future__ import annotations

import pytest
import torch
from fp8_helpers import fp8_layer, reference, rel_err
from fvq_fp8.kernels.ops import per_token_quant_ref, static_quant_ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
        reason="needs a CUDA GPU with compute capability >= 8.9 (fp8 tensor cores)",
    ),
]


@pytest.mark.parametrize("m,k", [(1, 5120), (7, 3072), (64, 13824), (3, 20000), (33, 100)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_per_token_matches_reference(m, k, dtype):
    from fvq_fp8.kernels.act_quant_triton import per_token_quant

    x = (torch.randn(m, k, device="cuda") * 5).to(dtype)
    q, s = per_token_quant(x)
    rq, rs = per_token_quant_ref(x)
    assert torch.equal(s, rs)
    _assert_same_fp8(q, rq)


def _assert_same_fp8(q, rq):
    diff = (q.view(torch.uint8).int() - rq.view(torch.uint8).int()).abs()
    bad = int((diff != 0).sum())
    assert bad == 0, f"{bad} of {q.numel()} fp8 codes differ, max code distance {int(diff.max())}"


def test_triton_static_matches_reference():
    from fvq_fp8.kernels.act_quant_triton import static_quant

    x = torch.randn(17, 5000, device="cuda", dtype=torch.bfloat16) * 3
    scale = torch.tensor(0.011, device="cuda")
    _assert_same_fp8(static_quant(x, scale), static_quant_ref(x, scale))


CONFIGS = {
    "tensor": {"quant_method": "fp8"},
    "channel": {"quant_method": "fp8", "weight_scale_strategy": "channel"},
    "static": {"quant_method": "fp8", "activation_scheme": "static"},
    "block": {"quant_method": "fp8", "weight_block_size": [128, 128]},
}


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_apply_accuracy_on_gpu(kind, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(256, 512, device="cuda", generator=g) / 512**0.5
    b = torch.randn(256, device="cuda", generator=g)
    x = torch.randn(2, 24, 512, device="cuda", generator=g).to(dtype)
    layer = fp8_layer(w, CONFIGS[kind], bias=b, dtype=dtype, activations=x.reshape(-1, 512), device="cuda")
    out = layer.quant_method.apply(layer, x, layer.bias)
    assert out.dtype == dtype and out.shape == (2, 24, 256)
    assert rel_err(out, reference(layer, x)) < 4e-2
    if _takes_w8a16(kind, dtype, 48, layer, x.reshape(-1, 512)):
        # No activation quantization on this path: only the output rounding differs from the float32 reference.
        assert rel_err(out, reference(layer, x)) < 8e-3
        return
    cpu = fp8_layer(w.cpu(), CONFIGS[kind], bias=b.cpu(), dtype=dtype, activations=x.reshape(-1, 512).cpu())
    cpu_out = cpu.quant_method.apply(cpu, x.cpu(), cpu.bias)
    assert rel_err(out.cpu(), cpu_out) < 1e-2  # same fp8 inputs; differences are accumulation order/rounding


def _takes_w8a16(kind, dtype, m, layer=None, x=None):
    """Whether a layer of ``kind`` runs ``x`` (``[m, K]``) on a W8A16 kernel (activations not quantized). Block scales
    on sm_90: where the CUDA C++ kernel takes the call (``w8_small_m_cuda.takes``: K whole 128-input blocks, M <= 16,
    and at M=9-16 enough K blocks a warp for its rule to have a tile)."""
    from fvq_fp8.kernels import gemm

    from fastvideo_quant.kernels import w8_small_m_cuda

    if dtype == torch.float32:
        return False
    if kind != "block":
        return m <= gemm.W8A16_MAX_M
    if gemm.block_mm_ok(torch.cuda.current_device()):
        if m > gemm.BLOCK_W8A16_MAX_M:
            return False
        return w8_small_m_cuda.takes(x, layer.weight, layer.weight_scale_cols, 128)
    return m <= gemm.BLOCK_LOOP_W8A16_MAX_M


@pytest.mark.parametrize("m", [16, 128, 512])  # W8A16, the Triton W8A8 GEMM, torch._scaled_mm
def test_torch_compile_fullgraph_all_paths(m):
    layer, x = _layer_and_input(m)
    compiled = torch.compile(lambda t: layer(t)[0], fullgraph=True)
    assert torch.equal(compiled(x), layer(x)[0])


def test_torch_compile_takes_the_routes_pick():
    """At a routed shape compiled code launches the route's config too (the op carries it): bit for bit eager's."""
    from fvq_fp8.kernels import gemm

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the shipped routes were measured on sm_90 and apply there only")
    w = torch.randn(5120, 5120, device="cuda") / 72
    layer = fp8_layer(w, {"quant_method": "fp8"}, device="cuda")
    x = torch.randn(24, 5120, device="cuda", dtype=torch.bfloat16)
    assert gemm.cuda_route(x, layer.weight, None, True).pick is not None
    compiled = torch.compile(lambda t: layer(t)[0], fullgraph=True)
    assert torch.equal(compiled(x), layer(x)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m", [24, 48, 128, 192])
@pytest.mark.parametrize("n", [3072, 5120])  # no route (autotuned), a route (its picks)
def test_triton_gemm_route_matches_scaled_mm(n, m, dtype, monkeypatch):
    """Mid M takes the core Triton GEMM; its output is row-wise ``torch._scaled_mm``'s on the same fp8 operands."""
    from fvq_fp8.kernels import gemm

    g = torch.Generator(device="cuda").manual_seed(m)
    w = torch.randn(n, 5120, device="cuda", generator=g) / 5120**0.5
    x = torch.randn(m, 5120, device="cuda", generator=g).to(dtype)
    route = gemm.cuda_route(x, w, None, True)
    if not route.triton or _takes_w8a16("channel", dtype, m):
        pytest.skip(f"the environment's routes send M={m} elsewhere")
    assert (route.pick is not None) == (n == 5120 and torch.cuda.get_device_capability() == (9, 0))
    routed = []
    real = gemm.triton_w8a8_linear
    monkeypatch.setattr(gemm, "triton_w8a8_linear", lambda *a: routed.append(a[-1]) or real(*a))
    layer = fp8_layer(w, CONFIGS["channel"], bias=torch.randn(n, device="cuda", generator=g), dtype=dtype,
                      device="cuda")
    out = layer.quant_method.apply(layer, x, layer.bias)
    assert routed == [route.pick]
    xq, xs = gemm.quantize_activation(x, None)
    scaled = torch._scaled_mm(xq, layer.weight.t(), scale_a=xs.reshape(-1, 1).float(), scale_b=layer.weight_scale,
                              out_dtype=torch.bfloat16, use_fast_accum=True)
    assert routed and out.dtype == dtype and rel_err(out, scaled.float() + layer.bias.float()) < 1e-2
    assert rel_err(out, reference(layer, x)) < 4e-2


def _layer_and_input(m=64):
    w = torch.randn(512, 1024, device="cuda") / 32
    layer = fp8_layer(w, {"quant_method": "fp8"}, bias=torch.randn(512), device="cuda")
    return layer, torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)


def test_torch_compile_fullgraph():
    layer, x = _layer_and_input()
    eager = layer(x)[0]
    compiled = torch.compile(lambda t: layer(t)[0], fullgraph=True)
    assert torch.equal(compiled(x), eager)


def test_cuda_graph_capture():
    _assert_graph_replays_the_layer(*_layer_and_input(m=16))


def _assert_graph_replays_the_layer(layer, x):
    """Capture ``layer(x)`` (after a warm-up on a side stream), refill ``x``, replay: eager's output for the new x."""
    eager = layer(x)[0]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(x)[0]
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, layer(x)[0]) and not torch.equal(out, eager)


@pytest.fixture
def padded_route(monkeypatch, tmp_path):
    """A route table (for this GPU's capability) padding 1024x512 at M=300-384 to 512 rows."""
    import json

    from fvq_fp8.kernels import gemm

    table = tmp_path / "routes.json"
    table.write_text(json.dumps({"capability": list(torch.cuda.get_device_capability()), "shapes": {"1024x512": []},
                                 "pad": {"1024x512": [[300, 384, 512]]}}))
    monkeypatch.setattr(gemm, "ROUTES_PATH", str(table))
    return gemm


@pytest.mark.parametrize("m", [300, 333, 384])
def test_padded_route_equals_scaled_mm_on_the_tokens(padded_route, m, monkeypatch):
    """A padded route runs ``_scaled_mm`` on 512 rows and returns the M token rows (contiguous): the unpadded
    product's values (cuBLASLt may pick another kernel for 512 rows: close, not bit for bit), the float32 reference's
    accuracy; eager, compiled (fullgraph) and CUDA-graph replays agree bit for bit."""
    gemm = padded_route
    layer, x = _layer_and_input(m)
    assert gemm.cuda_route(x, layer.weight, None, True) == gemm.Route(False, None, 512)
    seen = []
    real = gemm.padded_scaled_mm
    monkeypatch.setattr(gemm, "padded_scaled_mm", lambda *a: seen.append(a[-1]) or real(*a))
    out = layer(x)[0]
    assert seen == [512] and out.shape == (m, 512) and out.is_contiguous()
    xq, xs = gemm.quantize_activation(x, None)
    plain = torch._scaled_mm(xq, layer.weight.t(), scale_a=xs, scale_b=layer.weight_scale,
                             bias=layer.bias.bfloat16(), out_dtype=torch.bfloat16, use_fast_accum=True)
    assert rel_err(out, plain.float()) < 1e-2 and rel_err(out, reference(layer, x)) < 4e-2
    compiled = torch.compile(lambda t: layer(t)[0], fullgraph=True)
    assert torch.equal(compiled(x), out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = layer(x)[0]
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(replayed, out)


def test_scaled_mm_path_quantizes_into_the_workspace_eagerly_and_fresh_under_capture():
    """Above the Triton GEMM's M, eager calls quantize into the per-(stream, thread) workspace (no allocation): calls
    back to back on two layers (the second overwriting the first's quantized activations after the first's GEMM
    read them, in stream order) give each layer's own result; a captured CUDA graph gets its own buffers and
    replays the eager numbers after the eager path has reused the workspace again."""
    from fastvideo_quant.kernels import per_token_quant as ptq

    layer, x = _layer_and_input(300)  # (an untabled shape: _scaled_mm above M=192)
    other, y = _layer_and_input(300)
    want_x, want_y = layer(x)[0].clone(), other(y)[0].clone()
    outs = [(layer(x)[0], other(y)[0]) for _ in range(3)]
    torch.cuda.synchronize()
    assert all(torch.equal(a, want_x) and torch.equal(b, want_y) for a, b in outs)
    assert ptq._SCRATCH_PLANS and ptq._WORKSPACES
    buffers = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for ws in ptq._WORKSPACES.values()
               for t in ws]
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        q, _ = ptq.per_token_quant_scratch(x, torch.float8_e4m3fn)
        captured = layer(x)[0]
    assert not any(lo <= q.data_ptr() < hi for lo, hi in buffers)
    other(y)  # (eager: rewrites the workspace)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, want_x)


# --- block scales (128x128): one torch._scaled_mm on sm_90 ------------------------------------------------------
@pytest.mark.parametrize("m,k,rows", [(1, 5120, None), (5, 1040, 8), (64, 13824, None), (3, 100, 4)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_per_group_matches_reference(m, k, rows, dtype):
    from fvq_fp8.kernels.act_quant_triton import per_group_quant
    from fvq_fp8.kernels.ops import per_group_quant_ref

    x = (torch.randn(m, k, device="cuda") * torch.logspace(-3, 3, k, device="cuda")).to(dtype)
    q, s = per_group_quant(x, 128, rows)
    rq, rs = per_group_quant_ref(x, 128)
    assert q.shape == (rows or m, k) and s.shape == (-(-k // 128), rows or m)
    _assert_same_fp8(q[:m], rq)
    assert torch.equal(s[:, :m], rs.t())


def _block_route_or_skip():
    from fvq_fp8.kernels import gemm

    if not gemm.block_mm_ok(torch.cuda.current_device()):
        pytest.skip("the one-call block route needs sm_90 and CUDA >= 12.9 (the per-block loop runs elsewhere)")
    return gemm


def _block_layer(dtype, n=384, k=1024, bias=True):
    g = torch.Generator(device="cuda").manual_seed(n + k)
    w = torch.randn(n, k, device="cuda", generator=g) / k**0.5
    b = torch.randn(n, device="cuda", generator=g) if bias else None
    return fp8_layer(w, CONFIGS["block"], bias=b, dtype=dtype, device="cuda")


def _no_per_block_product(gemm, monkeypatch):
    def per_block_product(*args):
        raise AssertionError("the block route ran a per-block product")

    monkeypatch.setattr(gemm, "fp8_product", per_block_product)


#: The block route against the per-block loop (float32 sums, rounded once to the output dtype): cuBLASLt's summation
#: order and output rounding. H100 (``benchmarks/results/fp8-block-probe_*``): 0-3.3e-5 in bf16 at the DiT shapes;
#: against float64 math of the same operands 1.7e-3 (bf16), 2.5e-4 (fp16), 1.3e-4 (fp32 out).
BLOCK_ROUTE_TOL = {torch.bfloat16: 4e-3, torch.float16: 1e-3, torch.float32: 5e-4}


@pytest.mark.parametrize("k", [1024, 1152, 1040])  # 128x128 grid above 64 rows; 9 K blocks; a partial K block
@pytest.mark.parametrize("m", [1, 3, 16, 130, 1024])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_block_route_is_one_scaled_mm_and_matches_the_per_block_loop(k, m, dtype, monkeypatch):
    """The route makes no per-block product (``fp8_product`` is not called) and equals the per-block loop (the
    reference: every K block's fp8 product scaled and summed in float32) up to its output rounding — with the 128x128
    grid (K=1024, M > 128) and with per-row weight scales (M <= 128, and K whose grid cuBLASLt gets wrong); at small M
    where the W8A16 kernel takes it, float32 math of the unquantized activations instead."""
    gemm = _block_route_or_skip()
    n = 1024 if m >= 1024 else 384  # (the grid for M x N >= 2^20 outputs: gemm.BLOCK_GRID_MIN_OUTPUT)
    layer = _block_layer(dtype, k=k, n=n)
    assert layer.fp8_block_grid is (k == 1024)
    x = torch.randn(m, k, device="cuda").to(dtype)
    loop = gemm.block_loop_linear(x, layer.weight, layer.weight_scale_cols, 128, layer.bias)
    _no_per_block_product(gemm, monkeypatch)
    layouts = []
    real = gemm._scaled_mm_bias
    monkeypatch.setattr(gemm, "_scaled_mm_bias", lambda xq, w, sa, sb, *a: layouts.append(tuple(sb.shape))
                        or real(xq, w, sa, sb, *a))
    out = layer.quant_method.apply(layer, x, layer.bias)
    assert out.dtype == dtype and out.shape == (m, n)
    if layouts:  # (the W8A16 kernel at small M makes no _scaled_mm call)
        grid = layer.weight_scale_inv.shape
        assert layouts == [grid[::-1] if k == 1024 and m * n >= gemm.BLOCK_GRID_MIN_OUTPUT else (-(-k // 128), n)]
    if _takes_w8a16("block", dtype, m, layer, x):
        # the W8A16 kernel with the block scales: activations not quantized, so against float32 math of the
        # de-quantized weight only the output rounding differs
        assert rel_err(out, reference(layer, x)) < 8e-3
    else:
        assert rel_err(out, loop) < BLOCK_ROUTE_TOL[dtype]
    assert rel_err(out, reference(layer, x)) < 4e-2


@pytest.mark.parametrize("k", [1024, 1152, 2048, 1040, 208])  # CUDA kernel (8, 9, 16 blocks); partial blocks
@pytest.mark.parametrize("m", [1, 5, 16, 48])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_block_layers_at_small_m_take_w8a16_with_their_block_scales(k, m, dtype, monkeypatch):
    """Small M: one W8A16 launch with the block scales (no activation quantization, no per-block product) — on sm_90
    where the CUDA C++ kernel takes the call (M <= 16, K whole 128-input blocks; else the block-scaled ``_scaled_mm``
    stays), on other fp8 GPUs up to BLOCK_LOOP_W8A16_MAX_M (the Triton kernel where the CUDA one does not take it);
    equal to float32 math of the de-quantized weight up to the output rounding, bias included."""
    from fvq_fp8.kernels import gemm, ops

    from fastvideo_quant.kernels import w8_small_m_cuda

    layer = _block_layer(dtype, k=k, n=400)
    x = torch.randn(m, k, device="cuda").to(dtype)
    if gemm.block_mm_ok(torch.cuda.current_device()):
        takes = w8_small_m_cuda.takes(x, layer.weight, layer.weight_scale_cols, 128)
        if k % 128 or m > 16:
            assert not takes  # (the Triton kernel is slower than the block-scaled _scaled_mm on sm_90: not used)
        elif m <= 8 or k == 2048:  # (M=9-16 needs 3 K blocks a warp, 12+ blocks, for the rule's tiles)
            assert takes
    if not _takes_w8a16("block", dtype, m, layer, x):
        pytest.skip(f"M={m}, K={k} takes the block-scaled GEMM or the loop here")
    _no_per_block_product(gemm, monkeypatch)
    monkeypatch.setattr(ops, "per_group_quant", lambda *a: pytest.fail("quantized the activations"))
    monkeypatch.setattr(gemm._cuda_kernels(), "per_group_quant_scratch",
                        lambda *a: pytest.fail("quantized the activations"))
    out = layer.quant_method.apply(layer, x, layer.bias)
    assert out.dtype == dtype and out.shape == (m, 400)
    assert rel_err(out, reference(layer, x)) < (8e-3 if dtype == torch.bfloat16 else 1e-3)
    assert torch.equal(out, layer.quant_method.apply(layer, x, layer.bias))


def test_block_route_under_torch_compile_and_cuda_graphs():
    _block_route_or_skip()
    layer = _block_layer(torch.bfloat16)
    for m in (8, 48, 2800):  # W8A16 with block scales, per-row weight scales, the 128x128 grid (M x 384 >= 2^20)
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        compiled = torch.compile(lambda t: layer(t)[0], fullgraph=True)
        assert torch.equal(compiled(x), layer(x)[0])
        _assert_graph_replays_the_layer(layer, x)


def test_block_layer_with_a_partial_shard_takes_per_row_scales(monkeypatch):
    """A fused shard that is not whole 128-row blocks has no fused grid: one call with per-row weight scales."""
    from fvq_fp8.config import Fp8Config

    from fastvideo_quant.layers.linear import MergedColumnParallelLinear

    gemm = _block_route_or_skip()
    cfg = Fp8Config.from_config(CONFIGS["block"])
    with torch.device("cuda"):
        layer = MergedColumnParallelLinear(256, [208, 128], bias=False, params_dtype=torch.bfloat16, quant_config=cfg)
    for i, n in enumerate((208, 128)):
        t = cfg.quantize_weight(torch.randn(n, 256, device="cuda") * (i + 1))
        layer.weight_loader_v2(layer.weight, t["weight"], i)
        layer.weight_loader_v2(layer.weight_scale_inv, t["weight_scale_inv"], i)
    layer.quant_method.process_weights_after_loading(layer)
    assert not layer.fp8_block_grid
    x = torch.randn(200, 256, device="cuda", dtype=torch.bfloat16)
    loop = gemm.block_loop_linear(x, layer.weight, layer.weight_scale_cols, 128, None)
    _no_per_block_product(gemm, monkeypatch)
    assert rel_err(layer(x)[0], loop) < BLOCK_ROUTE_TOL[torch.bfloat16]


def test_block_route_workspace_does_not_grow_with_each_new_row_count(monkeypatch):
    """Eager block calls at M = 20, 24, ..., 1024 keep one workspace (the scales of 1024 rows asked for at once), and
    give the fresh-tensor path's bits. (Was: a new scale and code buffer at each larger M, each kept by its plan:
    +1.3 GB at 5120 x 5120 on the H100.)"""
    gemm = _block_route_or_skip()
    from fvq_fp8.kernels import act_quant_triton as aq

    from fastvideo_quant.kernels import per_token_quant as ptq

    layer = _block_layer(torch.bfloat16, n=1024, k=5120)
    for cache in ptq.WORKSPACE_PLAN_CACHES:
        cache.clear()
    ptq._WORKSPACES.clear()
    with torch.no_grad():  # (the first call makes the workspace, and cuBLAS its own ~32 MiB one)
        layer(torch.randn(20, 5120, device="cuda", dtype=torch.bfloat16))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        for m in range(24, 1025, 4):
            layer(torch.randn(m, 5120, device="cuda", dtype=torch.bfloat16))
    torch.cuda.synchronize()
    grown = (torch.cuda.memory_allocated() - base) / 2**20
    assert grown < 4, f"{grown:.1f} MiB kept"  # (was 5 MiB more at each of many row counts)
    assert aq._GROUP_SCRATCH_PLANS
    x = torch.randn(300, 5120, device="cuda", dtype=torch.bfloat16)
    scratch = layer.quant_method.apply(layer, x)
    monkeypatch.setattr(gemm._cuda_kernels(), "per_group_quant_scratch", aq.per_group_quant)  # fresh tensors
    assert torch.equal(scratch, layer.quant_method.apply(layer, x))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_activation_quantization_refuses_an_input_on_another_gpu_than_the_current_one():
    """The launchers use the current device's stream, and the block route's scratch workspace is the current device's:
    an input on another GPU is refused by name, as the core's per-token quantization refuses it (no plan is kept)."""
    from fvq_fp8.kernels import act_quant_triton as aq

    x = torch.randn(4, 256, device="cuda:1", dtype=torch.bfloat16)
    with torch.cuda.device(0):
        for call in (lambda: aq.per_group_quant(x, 128), lambda: aq.per_group_quant_scratch(x, 128),
                     lambda: aq.static_quant(x, torch.ones(1, device="cuda:1"))):
            with pytest.raises(ValueError, match=r"x is on cuda:1 but the current CUDA device is cuda:0"):
                call()
