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
    if _takes_w8a16(kind, dtype, 48):
        # No activation quantization on this path: only the output rounding differs from the float32 reference.
        assert rel_err(out, reference(layer, x)) < 8e-3
        return
    cpu = fp8_layer(w.cpu(), CONFIGS[kind], bias=b.cpu(), dtype=dtype, activations=x.reshape(-1, 512).cpu())
    cpu_out = cpu.quant_method.apply(cpu, x.cpu(), cpu.bias)
    assert rel_err(out.cpu(), cpu_out) < 1e-2  # same fp8 inputs; differences are accumulation order/rounding


def _takes_w8a16(kind, dtype, m):
    from fvq_fp8.kernels.gemm import W8A16_MAX_M

    return kind != "block" and dtype != torch.float32 and m <= W8A16_MAX_M


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
    layer, x = _layer_and_input(m=16)
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
