"""The opt-in fp8 route (``AWQConfig(fp8_compute=True)``, ``fvq_awq.fp8_compute``): config, the e4m3 weight and its
scales, the CPU arithmetic against float64, routing by M, and (on CUDA) the GPU route against the CPU one."""

import sys
from pathlib import Path

import pytest
import torch
from fvq_awq import fp8_compute
from fvq_awq.config import AWQConfig
from fvq_awq.layout import dequantize_kernel, repack_to_kernel
from fvq_awq.quantizer import quantize_weight

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.kernels import FP8_DTYPE
from fastvideo_quant.testing.conformance import ConformanceTests

sys.path.insert(0, str(Path(__file__).parent))
from awq_workers import build, checkpoint  # noqa: E402


def _kernel_tensors(k, n, group, seed=0, device="cpu"):
    t = checkpoint(k, n, group, seed)
    wk, zk, sk, lay = repack_to_kernel(t["qweight"], t["qzeros"], t["scales"], k if group == -1 else group)
    return wk.to(device), zk.to(device), sk.to(device), lay


def _rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


# -- config -------------------------------------------------------------------------------------------------------

def test_config_reads_and_writes_the_option_only_when_set():
    plain = AWQConfig.from_config({"quant_method": "awq", "group_size": 64})
    assert not plain.fp8_compute and plain.min_m_for_fp8() == 0 and "fp8_compute" not in plain.to_dict()
    assert plain.tolerance == AWQConfig.tolerance
    on = AWQConfig.from_config({"quant_method": "awq", "group_size": 64, "fp8_compute": True})
    assert on.min_m_for_fp8() == fp8_compute.FP8_COMPUTE_MIN_M and on.to_dict()["fp8_compute"] is True
    assert on.tolerance == AWQConfig.fp8_tolerance and AWQConfig.tolerance.max_rel_error == 1e-2  # (the class's kept)
    tuned = AWQConfig.from_config({**on.to_dict(), "fp8_compute_min_m": 64})
    assert tuned.min_m_for_fp8() == 64 and AWQConfig.from_config(tuned.to_dict()).to_dict() == tuned.to_dict()
    assert "fp8_compute from M=64" in repr(tuned)


@pytest.mark.parametrize("bad, match", [
    ({"fp8_compute": "yes"}, "fp8_compute must be a bool.*found str 'yes'"),
    ({"fp8_compute": True, "fp8_compute_min_m": 0}, "fp8_compute_min_m must be an int >= 1.*found 0"),
    ({"fp8_compute": True, "fp8_compute_min_m": "256"}, "fp8_compute_min_m must be an int, found str"),
    ({"fp8_compute_min_m": 128}, "fp8_compute_min_m is set but fp8_compute is not"),
])
def test_config_refuses_bad_values(bad, match):
    with pytest.raises(ConfigError, match=match):
        AWQConfig.from_config({"quant_method": "awq", **bad})


def test_layer_sizes_the_fp8_product_cannot_take_are_refused_by_name_when_built():
    from fastvideo_quant.layers.linear import ColumnParallelLinear

    with pytest.raises(ConfigError, match=r"'col'.*output features 24 per rank not a multiple of 16.*"
                                          "load without it.*modules_to_not_convert does not help"):
        ColumnParallelLinear(128, 24, bias=False, quant_config=AWQConfig(group_size=32, fp8_compute=True),
                             prefix="col")
    build("column", 32, n=24)  # (the exact path takes it)


# -- the e4m3 weight and its scales --------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n, group", [(256, 64, 128), (256, 48, 32), (128, 32, -1)])
def test_channel_scales_are_each_rows_amax_over_448_in_any_chunking(k, n, group, monkeypatch):
    wk, zk, sk, lay = _kernel_tensors(k, n, group)
    w = dequantize_kernel(wk, zk, sk, lay)
    want = w.abs().amax(dim=1) / 448
    assert torch.equal(fp8_compute.channel_scales(wk, zk, sk, lay), want)
    monkeypatch.setattr(fp8_compute, "_CHUNK_NUMEL", k * 5)  # 5 rows a chunk: a ragged last chunk
    assert torch.equal(fp8_compute.channel_scales(wk, zk, sk, lay), want)


def test_fp8_weight_is_the_rounded_scaled_weight():
    wk, zk, sk, lay = _kernel_tensors(256, 64, 32)
    t = fp8_compute.channel_scales(wk, zk, sk, lay)
    w8 = fp8_compute.fp8_weight_ref(wk, zk, sk, lay, t)
    w = dequantize_kernel(wk, zk, sk, lay).double()
    assert w8.dtype == FP8_DTYPE and w8.shape == (64, 256)
    assert torch.equal(w8.float().abs().amax(dim=1), torch.full((64,), 448.0))  # each row's largest maps to 448
    err = (w8.double() * t.double()[:, None] - w).abs() / w.abs().amax(dim=1, keepdim=True)
    # at most half an e4m3 step of the top binade [256, 448) (16), relative to the row's amax (448)
    assert err.max() <= 16 / 448 * (1 + 1e-6)  # (1e-6: the float32 scale)


# -- the arithmetic -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_route_is_the_fp8_product_in_float64(dtype):
    wk, zk, sk, lay = _kernel_tensors(256, 64, 32, seed=3)
    t = fp8_compute.channel_scales(wk, zk, sk, lay)
    x = torch.randn(40, 256).to(dtype)
    bias = torch.randn(64).to(dtype)
    out = fp8_compute.linear(x, wk, zk, sk, lay, t, bias)
    assert out.dtype == dtype
    w8 = fp8_compute.fp8_weight_ref(wk, zk, sk, lay, t).double() * t.double()[:, None]
    xf = x.double()
    sx = xf.abs().amax(dim=1, keepdim=True).float() / 448
    x8 = (x.float() * sx.reciprocal()).to(FP8_DTYPE).double() * sx.double()
    ref = x8 @ w8.t() + bias.double()
    assert _rel(out, ref) < {torch.float32: 1e-6, torch.bfloat16: 5e-3, torch.float16: 1e-3}[dtype]
    exact = xf @ dequantize_kernel(wk, zk, sk, lay).double().t() + bias.double()
    err = _rel(out, exact)
    assert 5e-3 < err < AWQConfig.fp8_tolerance.max_rel_error  # (a different product, within the stated bound)


def test_accuracy_against_the_original_weight():
    """What the module docstring states: on a Gaussian layer quantized RTN at groups of 128, the fp8 route's error
    against the float weight is the int4 error plus a little (0.101 -> 0.107 measured)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(512, 1024, generator=gen)
    x = torch.randn(128, 1024, generator=gen)
    t = quantize_weight(w, None, group_size=128)
    wk, zk, sk, lay = repack_to_kernel(t["qweight"], t["qzeros"], t["scales"], 128)
    ref = x.double() @ w.double().t()
    exact = _rel(x.double() @ dequantize_kernel(wk, zk, sk, lay).double().t(), ref)
    fp8 = _rel(fp8_compute.linear(x, wk, zk, sk, lay, fp8_compute.channel_scales(wk, zk, sk, lay), None), ref)
    assert 0.09 < exact < 0.11 and exact < fp8 < exact + 0.012


def test_layers_route_by_rows():
    """Below fp8_compute_min_m rows the exact product (bit for bit the layer without the option), from it the fp8
    route (the function itself); a 3-D input counts its rows."""
    fp8_layer, _, _ = build("qkv", 32, k=128, fp8_compute=True, fp8_compute_min_m=8)
    exact_layer, _, _ = build("qkv", 32, k=128)
    assert fp8_layer.fp8_scale_k.shape == (128,) and not hasattr(exact_layer, "fp8_scale_k")
    x = torch.randn(7, 128, dtype=torch.bfloat16)
    assert torch.equal(fp8_layer(x)[0], exact_layer(x)[0])
    x = torch.randn(2, 4, 128, dtype=torch.bfloat16)
    out = fp8_layer(x)[0]
    want = fp8_compute.linear(x.reshape(8, 128), fp8_layer.qweight_k, fp8_layer.zeros_k, fp8_layer.scales_k,
                              fp8_layer.awq_layout, fp8_layer.fp8_scale_k, None)
    assert out.shape == (2, 4, 128) and torch.equal(out.reshape(8, 128), want)
    assert not torch.equal(out, exact_layer(x)[0])


def test_takes_counts_rows_over_every_leading_dim():
    k = 64
    assert fp8_compute.takes(torch.empty(2, 4, k), k, 8) and not fp8_compute.takes(torch.empty(7, k), k, 8)
    assert not fp8_compute.takes(torch.empty(4096, k), k, 0)  # (0: the route is off)
    assert not fp8_compute.takes(torch.empty(0, k), k, 1)  # (no rows: never, whatever the cut)


@pytest.mark.parametrize("lead", [(3,), (2, 3)])
def test_linear_takes_any_leading_dims(lead):
    wk, zk, sk, lay = _kernel_tensors(128, 32, 64, seed=5)
    t = fp8_compute.channel_scales(wk, zk, sk, lay)
    x = torch.randn(*lead, 128, dtype=torch.bfloat16)
    out = fp8_compute.linear(x, wk, zk, sk, lay, t, None)
    flat = fp8_compute.linear(x.reshape(-1, 128), wk, zk, sk, lay, t, None)
    assert out.shape == (*lead, 32) and torch.equal(out.reshape(-1, 32), flat)


# -- the conformance suite with the route on at every M -----------------------------------------------------------

class TestAWQFp8ComputeConformance(ConformanceTests):
    method = "awq"
    config = {"group_size": 32, "fp8_compute": True, "fp8_compute_min_m": 1}
    weight_rel_error = 0.11


# -- CUDA (and the Triton conversion under the interpreter) -------------------------------------------------------

def _triton_device():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    from fastvideo_quant.kernels.triton_launch import INTERPRETED

    if not INTERPRETED:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    return "cpu"


@pytest.mark.parametrize("k, n, group, block_n, r", [(256, 64, 128, 32, 2), (512, 48, 32, 32, 2),
                                                     (256, 40, -1, 16, 1), (384, 24, 64, 32, 4)])
def test_triton_conversion_equals_the_reference_bit_for_bit(k, n, group, block_n, r):
    from fvq_awq.kernels.gemm import awq_dequantize

    dev = _triton_device()
    wk, zk, sk, lay = _kernel_tensors(k, n, group, seed=11, device=dev)
    t = fp8_compute.channel_scales(wk, zk, sk, lay)
    got = awq_dequantize(wk, zk, sk, lay, FP8_DTYPE, block_n=block_n, r=r, fp8_scale=t)
    want = fp8_compute.fp8_weight_ref(wk, zk, sk, lay, t)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_triton_conversion_refuses_mismatched_scale_arguments():
    from fvq_awq.kernels.gemm import awq_dequantize

    dev = _triton_device()
    wk, zk, sk, lay = _kernel_tensors(256, 64, 128, device=dev)
    with pytest.raises(ValueError, match="fp8_scale is given with dtype float8_e4m3fn and only then"):
        awq_dequantize(wk, zk, sk, lay, FP8_DTYPE)
    with pytest.raises(ValueError, match=r"fp8_scale must be a contiguous float32 \[64\] tensor"):
        awq_dequantize(wk, zk, sk, lay, FP8_DTYPE, fp8_scale=torch.ones(32, device=dev))


def test_conversion_plan_is_per_layout_and_keeps_each_layers_own_weight():
    """The GPU route's conversion (``fp8_compute._convert``): its first call per key runs the checked function and
    binds the launch; later calls — here alternating between two layers of one layout, then a third layout — launch
    that binding with their own tensors and give the reference bit for bit (the interpreter on CPU, or CUDA)."""
    dev = _triton_device()
    kernels = fp8_compute._cuda_kernels()
    index = torch.cuda.current_device() if dev == "cuda" else -1
    layers = [_kernel_tensors(k, n, g, seed=s, device=dev) for k, n, g, s in
              ((256, 64, 128, 40), (256, 64, 128, 41), (256, 64, 128, 42), (384, 48, 64, 43))]
    kernels.conversions.clear()
    for wk, zk, sk, lay in [*layers[:3], *layers[:3], layers[3], layers[0]]:
        t = fp8_compute.channel_scales(wk, zk, sk, lay)
        got = fp8_compute._convert(wk, zk, sk, lay, t, index, kernels)
        want = fp8_compute.fp8_weight_ref(wk, zk, sk, lay, t)
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert len(kernels.conversions) == 2  # (one plan per layout here: same dtypes, aligned)


cuda = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                          reason="needs a CUDA GPU with fp8 tensor cores")


@cuda
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 1e-2), (torch.float16, 1e-2), (torch.float32, 2e-3)])
@pytest.mark.parametrize("k, n, group", [(1024, 512, 128), (512, 256, 32)])
def test_cuda_route_against_the_cpu_route(dtype, tol, k, n, group):
    """Fresh inputs: the GPU route (Triton conversion, per-token kernel, ``_scaled_mm`` with fast accumulation)
    against the CPU arithmetic on the same tensors."""
    wk, zk, sk, lay = _kernel_tensors(k, n, group, seed=21)
    t = fp8_compute.channel_scales(wk, zk, sk, lay)
    x = torch.randn(300, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    want = fp8_compute.linear(x, wk, zk, sk, lay, t, bias)
    got = fp8_compute.linear(x.cuda(), wk.cuda(), zk.cuda(), sk.cuda(), lay, t.cuda(), bias.cuda())
    assert got.dtype == dtype and _rel(got.cpu(), want.double()) < tol


@cuda
def test_cuda_layer_graph_capture_and_compile():
    layer, _, _ = build("merged", 32, k=256, fp8_compute=True, fp8_compute_min_m=16)
    layer.cuda()
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    eager = layer(x)[0]
    want = layer.cpu()(x.cpu())[0]
    layer.cuda()
    assert _rel(eager.cpu(), want.double()) < 1e-2
    graph = torch.cuda.CUDAGraph()
    static = x.clone()
    layer(static)  # (warm-up: compiled kernels and plans before capture)
    with torch.cuda.graph(graph):
        captured = layer(static)[0]
    graph.replay()
    assert torch.equal(captured, eager)
    compiled = torch.compile(lambda t: layer(t)[0], fullgraph=True)
    assert torch.equal(compiled(x), eager)


@cuda
@pytest.mark.parametrize("rows", [300, 2048])  # (the activations in the core's workspace; above its rows, fresh)
def test_cuda_repeated_calls_through_the_plans_stay_each_layers_own(rows):
    """Two layers of one layout share the conversion's plan and the activation workspace: calls alternating between
    them, each with fresh inputs, give what their first (checked) calls would — bit for bit — and what the CPU route
    gives; a result stays right after later calls have reused the workspace."""
    from fastvideo_quant.kernels.per_token_quant import WORKSPACE_MAX_ROWS

    assert (rows <= WORKSPACE_MAX_ROWS) == (rows == 300)
    layers = []
    for seed in (31, 32):
        wk, zk, sk, lay = _kernel_tensors(512, 256, 128, seed=seed)
        layers.append(((wk, zk, sk), lay, fp8_compute.channel_scales(wk, zk, sk, lay)))
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(rows, 512, generator=gen).to(torch.bfloat16) for _ in range(4)]
    outs = []
    for i, x in enumerate(xs):
        (wk, zk, sk), lay, t = layers[i % 2]
        got = fp8_compute.linear(x.cuda(), wk.cuda(), zk.cuda(), sk.cuda(), lay, t.cuda(), None)
        outs.append((got, fp8_compute.linear(x, wk, zk, sk, lay, t, None)))
    torch.cuda.synchronize()
    for got, want in outs:
        assert _rel(got.cpu(), want.double()) < 1e-2
    (wk, zk, sk), lay, t = layers[0]
    again = fp8_compute.linear(xs[0].cuda(), wk.cuda(), zk.cuda(), sk.cuda(), lay, t.cuda(), None)
    assert torch.equal(again, outs[0][0])
