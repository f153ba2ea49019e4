"""The CUDA C++ W8A16 small-M kernel: its float8 -> bfloat16 bit trick on any machine, numerics against float32 math
on a GPU of compute capability 8.9+."""

import pytest
import torch

from fastvideo_quant.kernels import w8_small_m_cuda as w8
from fastvideo_quant.kernels.w8_small_m_cuda import supports, w8_small_m_cuda

needs_fp8_gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                                   reason="needs a CUDA GPU of compute capability 8.9+")
needs_clusters = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                                    reason="needs a CUDA GPU of compute capability 9.0+ (thread-block clusters)")

FINITE_E4M3 = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)  # (0x7F, 0xFF: NaN)


def test_float16_bits_shifted_are_bfloat16_of_the_value_times_2_pow_minus_112():
    """The kernel's conversion for bfloat16 activations, on every finite e4m3 value (subnormals, both zeros, ±448):
    float16 bits (exact for e4m3) with the magnitude shifted right by 3 are bfloat16 bits of value * 2^-112."""
    values = FINITE_E4M3.view(torch.float8_e4m3fn).float()
    h = values.half().view(torch.int16).int() & 0xFFFF
    bits = ((h & 0x7FFF) >> 3) | (h & 0x8000)
    as_bf16 = bits.to(torch.int16).view(torch.bfloat16).float()
    assert torch.equal(as_bf16 * 2.0**112, values)
    assert torch.equal(torch.signbit(as_bf16), torch.signbit(values))  # -0 stays -0
    assert (as_bf16[values != 0].abs() >= 2.0**-126).all()  # every nonzero weight a normal bfloat16


def test_int8_bytes_under_float16_1024_minus_1152_are_exact_and_shift_to_bfloat16():
    """The kernel's int8 conversion on every value: byte v ^ 0x80 (= v + 128) as the low byte of float16 0x64xx is
    1024 + v + 128; minus 1152 is v exactly in float16, and the float16 bits shifted right by 3 are bfloat16 bits of
    v * 2^-112 (so the bf16 path's epilogue, x 2^112, is the same as for e4m3)."""
    v = torch.arange(-128, 128, dtype=torch.int32)
    u = (v & 0xFF) ^ 0x80
    magic = (0x6400 | u).to(torch.int16).view(torch.float16)
    assert torch.equal(magic.float(), 1024.0 + v.float() + 128)
    h16 = magic - torch.tensor(1152.0, dtype=torch.float16)  # (one float16 subtraction, as sub.rn.f16x2)
    assert torch.equal(h16.float(), v.float())
    h = h16.view(torch.int16).int() & 0xFFFF
    assert ((h & 0x7) == 0).all()  # the three mantissa bits the shift drops
    bits = ((h & 0x7FFF) >> 3) | (h & 0x8000)
    assert torch.equal(bits.to(torch.int16).view(torch.bfloat16).float() * 2.0**112, v.float())


def _layer(n, k, seed=0, device="cuda", wdt=torch.float8_e4m3fn):
    gen = torch.Generator().manual_seed(seed)
    if wdt == torch.int8:
        w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
        scale = torch.rand(n, generator=gen) * 1e-3 + 1e-4
        return w.to(device), scale.to(device)
    w = (torch.randn(n, k, generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = torch.rand(n, generator=gen) * 1e-3 + 1e-4
    return w.to(device), scale.to(device)


def _rel(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()


@needs_fp8_gpu
@pytest.mark.parametrize("wdt", [torch.float8_e4m3fn, torch.int8], ids=["e4m3", "int8"])
@pytest.mark.parametrize("m", [1, 3, 8, 9, 13, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tile", [w8.RULE, {"rowt": 1, "kw": 4, "ft": 2, "u": 1}, {"rowt": 4, "kw": 2, "ft": 1, "u": 2},
                                  {"rowt": 2, "kw": 8, "ft": 1, "u": 1}, {"rowt": 3, "kw": 1, "ft": 2, "u": 2}])
def test_matches_float32_math(m, dtype, tile, wdt):
    # K = 1152: 9 blocks of 128, so 8 warps a column split it unevenly; N = 400: 25 tiles of 16, so two-tile warps
    # and 3- or 4-column blocks leave tiles past N (never stored)
    w, scale = _layer(400, 1152, seed=m, wdt=wdt)
    x = torch.randn(m, 1152, device="cuda", dtype=dtype)
    bias = torch.randn(400, device="cuda")
    ref = x.float() @ (w.float() * scale[:, None]).t()
    out = w8_small_m_cuda(x, w, scale, **tile)
    assert out.dtype == dtype and out.shape == (m, 400)
    assert _rel(out, ref) < 5e-3
    out_b = w8_small_m_cuda(x, w, scale, bias, **tile)
    assert _rel(out_b, ref + bias.to(dtype).float()) < 5e-3
    assert torch.equal(out_b, w8_small_m_cuda(x, w, scale, bias, **tile))  # fixed reduction order: repeatable


@needs_clusters
@pytest.mark.parametrize("m", [1, 8, 16])
@pytest.mark.parametrize("tile", [{"rowt": 1, "kw": 4, "ft": 2, "cs": 3, "occ": 4},
                                  {"rowt": 1, "kw": 8, "ft": 1, "cs": 2},
                                  {"rowt": 2, "kw": 2, "ft": 1, "cs": 4, "occ": 2},
                                  {"rowt": 3, "kw": 1, "ft": 2, "cs": 8, "u": 2}])
@pytest.mark.parametrize("wdt", [torch.float8_e4m3fn, torch.int8], ids=["e4m3", "int8"])
def test_cluster_k_split_matches_float32_math(m, tile, wdt):
    # K = 1152: 9 blocks of 128 over 2, 3, 4 or 8 cluster parts (uneven but for 3), then over each part's kw warps
    # (8 parts x 8 warps would leave most warps empty: kept apart); N = 400 leaves tiles past N in 3-column blocks
    w, scale = _layer(400, 1152, seed=m, wdt=wdt)
    x = torch.randn(m, 1152, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(400, device="cuda")
    ref = x.float() @ (w.float() * scale[:, None]).t() + bias.bfloat16().float()
    out = w8_small_m_cuda(x, w, scale, bias, **tile)
    assert _rel(out, ref) < 5e-3
    assert torch.equal(out, w8_small_m_cuda(x, w, scale, bias, **tile))  # parts added in a fixed order


@needs_clusters
def test_cluster_k_split_replays_under_a_cuda_graph():
    w, scale = _layer(5120 // 4, 2560)
    x = torch.randn(12, 2560, device="cuda", dtype=torch.bfloat16)
    tile = {"rowt": 1, "kw": 4, "ft": 2, "cs": 3, "occ": 4}
    w8_small_m_cuda(x, w, scale, **tile)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = w8_small_m_cuda(x, w, scale, **tile)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, w8_small_m_cuda(x, w, scale, **tile))


@needs_fp8_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_finite_e4m3_value_exactly(dtype):
    """One-hot activations pick single weights: out[m, n] = w[n, k_m] * scale[n] with one product, so every finite
    e4m3 value (subnormals, zeros, ±448) must come out exactly as float32 math rounds it."""
    n, k = 256, 256
    codes = FINITE_E4M3[torch.arange(n * k) % FINITE_E4M3.numel()].reshape(n, k)
    w = codes.view(torch.float8_e4m3fn).cuda()
    scale = torch.full((n,), 2.0**-4, device="cuda")
    cols = torch.tensor([0, 1, 7, 64, 127, 128, 200, 255] * 2)
    x = torch.zeros(16, k, device="cuda", dtype=dtype)
    x[torch.arange(16), cols] = 1.0
    out = w8_small_m_cuda(x, w, scale)
    ref = (w.float()[:, cols.cuda()].t() * scale).to(dtype)
    assert torch.equal(out, ref)


@needs_fp8_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_int8_value_exactly(dtype):
    """One-hot activations pick single int8 weights: every value -128..127 must come out as float32 math rounds it."""
    n, k = 256, 256
    w = ((torch.arange(n * k) % 256) - 128).to(torch.int8).reshape(n, k).cuda()
    scale = torch.full((n,), 2.0**-7, device="cuda")
    cols = torch.tensor([0, 1, 7, 64, 127, 128, 200, 255] * 2)
    x = torch.zeros(16, k, device="cuda", dtype=dtype)
    x[torch.arange(16), cols] = 1.0
    for tile in (w8.RULE, {"rowt": 1, "kw": 4, "ft": 1, "u": 1, "cs": 2}):
        if tile.get("cs", 1) > 1 and torch.cuda.get_device_capability() < (9, 0):
            continue
        out = w8_small_m_cuda(x, w, scale, **tile)
        assert torch.equal(out, (w.float()[:, cols.cuda()].t() * scale).to(dtype))


@needs_fp8_gpu
def test_replays_under_a_cuda_graph():
    w, scale = _layer(1024, 2048)
    x = torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16)
    g = torch.cuda.CUDAGraph()
    w8_small_m_cuda(x, w, scale)  # compiled and loaded before capture
    with torch.cuda.graph(g):
        y = w8_small_m_cuda(x, w, scale)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, w8_small_m_cuda(x, w, scale))


def test_supports_names_the_calls_it_takes():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    w, scale = _layer(64, 256, device=dev)
    x = torch.randn(4, 256, device=dev, dtype=torch.bfloat16)
    assert supports(x, w, scale) == (dev == "cuda")
    if dev == "cpu":
        return
    assert not supports(torch.randn(17, 256, device=dev, dtype=torch.bfloat16), w, scale)  # M > 16
    assert not supports(x.float(), w, scale)
    wk, _ = _layer(64, 320, device=dev)
    assert not supports(torch.randn(4, 320, device=dev, dtype=torch.bfloat16), wk, scale)  # K % 128
    assert not supports(x, w.t().contiguous().t(), scale)  # not contiguous
    assert not supports(x, w, scale.double())


@needs_fp8_gpu
def test_refuses_what_it_does_not_take():
    w, scale = _layer(64, 256)
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not supported.*x \\(4, 256\\) torch.float32"):
        w8_small_m_cuda(x.float(), w, scale)
    with pytest.raises(ValueError, match="kw must be 1, 2, 4 or 8.*found rowt=1 kw=3"):
        w8_small_m_cuda(x, w, scale, kw=3)
    with pytest.raises(ValueError, match="rowt \\* kw <= 16 warps a block, found rowt=4 kw=8"):
        w8_small_m_cuda(x, w, scale, rowt=4, kw=8)
    with pytest.raises(ValueError, match="bias must be \\[64\\]"):
        w8_small_m_cuda(x, w, scale, torch.zeros(65, device="cuda"))
    with pytest.raises(ValueError, match="cs \\(K parts of a cluster\\) must be in 1..2 .*K=256.*found 3"):
        w8_small_m_cuda(x, w, scale, cs=3)
    with pytest.raises(ValueError, match="occ must be 1..16 blocks a multiprocessor, found 17"):
        w8_small_m_cuda(x, w, scale, occ=17)
    if torch.cuda.get_device_capability() < (9, 0):
        with pytest.raises(ValueError, match="cs=2 \\(a thread-block cluster\\) needs compute capability 9.0"):
            w8_small_m_cuda(x, w, scale, cs=2)
    wide, wscale = _layer(1024, 2048)
    with pytest.raises(ValueError, match="rowt=16 kw=1 ft=2 cs=8 needs 229376 bytes of shared memory .* at M=16"):
        w8_small_m_cuda(torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16), wide, wscale, rowt=16, kw=1,
                        ft=2, cs=8)


def test_rule_fills_one_wave():
    tile = lambda m, n, k=5120, clusters=True: w8.rule(m, k, n, 132, clusters)  # noqa: E731
    assert tile(1, 5120)["kw"] == 8 and tile(4, 5120)["kw"] == 8  # 320 blocks of 8 warps: 3 an SM fit
    # M=5-8 there, e4m3 weights: K over a 2-block cluster while K keeps 3 input blocks for each of 8 warps
    assert tile(5, 5120) == tile(8, 5120) == tile(8, 5120, k=3072) == w8.RULE_M8_CLUSTER
    assert tile(8, 5120, clusters=False)["kw"] == tile(8, 5120, k=2944)["kw"] == 8
    assert tile(8, 5120, clusters=False).get("cs", 1) == tile(8, 5120, k=2944).get("cs", 1) == 1
    assert tile(1, 13824)["kw"] == 4 and tile(4, 12288)["kw"] == 4  # 864 / 768 blocks: 4 warps, 7 an SM
    assert tile(1, 65536)["kw"] == 4  # several waves either way
    # M=9-16: the tile whose blocks fill most of one wave, each warp keeping >= 3 blocks of 128 inputs
    wide, cs2, cs4, kw8 = (dict(t) for t, _ in (w8.RULE_TILES_M16[0], w8.RULE_TILES_M16[2], w8.RULE_TILES_M16[1],
                                                 w8.RULE_TILES_M16[3]))
    assert tile(16, 13824) == tile(9, 12288) == tile(12, 8192) == wide  # 432 / 384 / 256 blocks of 528
    assert tile(16, 5120) == tile(12, 6144) == cs2  # 640 / 768 blocks of 792 (8 warps a column either way)
    assert tile(16, 2048, k=8192) == cs4  # 512 of 792; 64 input blocks over 16 warps
    assert tile(16, 2048, k=4096) == cs2  # 32 input blocks: 4 parts x 4 warps would leave 2 a warp
    assert tile(16, 5120, clusters=False) == kw8  # same fill as cs2, one block of 8 warps
    assert tile(16, 8192, k=1024) is None  # 8 input blocks: no tile keeps 3 a warp
    assert tile(16, 32768) is None  # 1024 blocks of 32 features: over one wave
    # int8 weights: the same tiles at M <= 8, the Triton kernel (cheaper int8 widening) at M=9-16
    assert w8.rule(8, 5120, 5120, 132, True, int8=True) == tile(8, 5120, clusters=False)  # (no int8 cluster tile)
    assert w8.rule(9, 5120, 5120, 132, True, int8=True) is None and w8.rule(16, 5120, 13824, 132, int8=True) is None


@needs_fp8_gpu
@pytest.mark.parametrize("method", ["fp8", "int8"])
def test_8bit_layers_route_small_m_to_the_rule(monkeypatch, method):
    from fastvideo_quant.bench import build_layer
    from fastvideo_quant.kernels.small_m import small_m_linear
    from fastvideo_quant.kernels.split_k import sm_count

    planned = []
    real_plan = w8._plan
    monkeypatch.setattr(w8, "_plan", lambda *a: planned.append(real_plan(*a)) or planned[-1])
    monkeypatch.setattr(w8, "_PLANS", {})
    # (M <= 8; 32 features a block; K over a cluster on 9.0+; K too short for any M=9-16 tile: Triton; M=8 with K
    # over a cluster for fp8 on 9.0+)
    cases = [(1024, 512, 4), (12288, 2048, 12), (1024, 4096, 12), (5120, 512, 16), (2048, 3072, 8)]
    if method == "int8":
        cases.append((1024, 512, 20))  # int8's W8A16 goes to M=32: past 16 the Triton kernel
    for n, k, m in cases:
        w = (torch.randn(n, k, device="cuda") * 0.05).bfloat16()
        layer = build_layer(method, w)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        planned.clear()
        out = layer.quant_method.apply(layer, x)
        tile = (w8.rule(m, k, n, sm_count(0), m > 4 and w8.clusters_available(0), method == "int8") if m <= 16
                else None)
        assert len(planned) == 1 and (planned[0] is not None) == (tile is not None), (n, m, tile)
        out2 = layer.quant_method.apply(layer, x)  # the second call: the kept plan, the same launch
        assert len(planned) == 1 and torch.equal(out, out2)
        expect = (w8.run(x, layer.weight, layer.weight_scale, None, **tile) if tile is not None
                  else small_m_linear(x, layer.weight, layer.weight_scale, None))
        assert torch.equal(out, expect), (n, m, tile)


@needs_fp8_gpu
def test_a_misaligned_first_call_does_not_keep_its_call_key_off_the_kernel(monkeypatch):
    """The plan is kept per call key (shapes, strides, dtypes); pointer alignment is per call. A first call whose x
    starts 8 bytes off 16 takes the Triton kernel; the next call with the same key, aligned, takes the CUDA one."""
    from fastvideo_quant.kernels.small_m import small_m_linear
    from fastvideo_quant.kernels.split_k import sm_count

    monkeypatch.setattr(w8, "_PLANS", {})
    n, k, m = 1024, 512, 4
    tile = w8.rule(m, k, n, sm_count(0))
    w, scale = _layer(n, k)
    buf = torch.randn(m, k + 8, device="cuda", dtype=torch.bfloat16)
    off, on = buf[:, 4:4 + k], buf[:, :k]  # the same shape and strides; x 8 bytes off, then aligned
    assert off.data_ptr() % 16 == 8 and on.data_ptr() % 16 == 0
    assert torch.equal(w8.linear(off, w, scale, None), small_m_linear(off, w, scale, None))
    assert torch.equal(w8.linear(on, w, scale, None), w8.run(on, w, scale, None, **tile))
    assert list(w8._PLANS.values())[0] is not None


def test_both_small_m_kernels_are_compiled_with_the_shared_header_first():
    from fvq_awq.kernels import small_m_cuda as awq

    header = '#line 1 "small_m_common.cuh"\n'
    for source, name in ((w8._source(), "w8_small_m.cu"), (awq._source(), "awq_small_m.cu")):
        assert source.startswith(header) and f'#line 1 "{name}"\n' in source
        for helper in ("void kw_tree_sum(", "bool cluster_sum("):  # defined once, in the header
            assert source.count(helper) == 1 and source.index(helper) < source.index(f'#line 1 "{name}"')
        assert "cluster_sum(acc, " in source.split(f'#line 1 "{name}"')[1]
        assert source.count("void mma16816(") == 1 and "kw_tree_sum(acc, kpart, col, lane)" in source


@needs_clusters
@pytest.mark.parametrize("wdt", [torch.float8_e4m3fn, torch.int8], ids=["e4m3", "int8"])
@pytest.mark.parametrize("m", [1, 8, 16])
@pytest.mark.parametrize("tile", [w8.RULE, w8.RULE_M8_CLUSTER, {"rowt": 1, "kw": 4, "ft": 2, "u": 1},
                                  {"rowt": 2, "kw": 2, "ft": 1, "u": 2}])
def test_pdl_launch_equals_the_plain_launch_and_waits_for_its_producer(m, tile, wdt):
    """With programmatic dependent launch a kernel's blocks may start before the one before it has finished. K = N
    here, so six layers feed each other: a kernel that read its x (the previous kernel's output) or wrote before its
    wait would differ from the plain launches — eagerly and in a graph."""
    from pdl_checks import assert_pdl_layers_match_plain

    w, scale = _layer(1152, 1152, wdt=wdt)  # 9 blocks of K: kw 8 leaves warps a part of one block
    scale = scale * 0.05  # (outputs of the size of the inputs, six layers deep)
    x = torch.randn(m, 1152, device="cuda", dtype=torch.bfloat16)
    assert _rel(w8_small_m_cuda(x, w, scale, pdl=True, **tile), x.float() @ (w.float() * scale[:, None]).t()) < 1e-2
    plain = assert_pdl_layers_match_plain(lambda y, pdl: w8_small_m_cuda(y, w, scale, pdl=pdl, **tile), x)
    assert plain.abs().max() < 1e4


@needs_clusters
def test_pdl_launch_reads_weights_written_by_the_kernel_just_before():
    """Weights copied into the layer's buffer by the kernel right before (a weight update, a reload) are the ones
    multiplied: nothing is read before the wait."""
    layers = [_layer(1024, 2048, seed=s) for s in (1, 2)]
    w, scale = (t.clone() for t in layers[0])
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    want = [w8_small_m_cuda(x, *t, pdl=False) for t in layers]
    assert not torch.equal(want[0], want[1])
    for i in range(8):
        w.copy_(layers[i % 2][0])
        scale.copy_(layers[i % 2][1])
        assert torch.equal(w8_small_m_cuda(x, w, scale, pdl=True), want[i % 2])


@needs_fp8_gpu
def test_layers_bind_pdl_where_the_device_runs_it():
    from fastvideo_quant.kernels.cuda_rtc import supports_pdl

    w, scale = _layer(2048, 2048)
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    w8.linear(x, w, scale, None)
    plans = [p for k, p in w8._PLANS.items() if k[0] == x.shape and k[4] == w.shape and p is not None]
    assert plans and all(p[0].pdl == supports_pdl(x.device.index) for p in plans)


def _block_scales(n, k, seed):
    """float32 ``[K/128, N]`` scales spread over 2^-14..2^-4 (fp8 weights' amax / 448): one applied to the wrong block,
    or once per feature, is far off; the bf16 path's 2^-112 sums times them would leave float32's normal range."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.exp2(torch.randint(-14, -4, (k // 128, n), generator=gen).float()) * (1 + torch.rand(k // 128, n,
                                                                                                   generator=gen))
    return s.cuda()


def _block_ref(x, w, s):
    """float64 ``x @ (w * s per 128-input block).T``."""
    return (x.double() @ (w.double() * s.double().t().repeat_interleave(128, dim=1)).t()).float()


@needs_fp8_gpu
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tile", [w8.RULE, {"rowt": 1, "kw": 4, "ft": 2, "u": 1}, {"rowt": 4, "kw": 2, "ft": 1, "u": 2},
                                  {"rowt": 3, "kw": 1, "ft": 2, "u": 2}])
def test_block_scales_match_float64_math(m, dtype, tile):
    """``block_k=128`` (FVQ_BLOCK): each 128-input block's sums times that block's scale per feature, against float64
    math of the same codes and scales — only the output rounding differs, as with per-feature scales."""
    w, _ = _layer(400, 1152, seed=m)
    s = _block_scales(400, 1152, m)
    x = torch.randn(m, 1152, device="cuda", dtype=dtype) * 0.01  # (small activations: the 2^-112 sums near underflow)
    bias = torch.randn(400, device="cuda").to(dtype)
    ref = _block_ref(x, w, s)
    assert supports(x, w, s, 128) and not supports(x, w, s) and not supports(x, w, s, 64)
    out = w8_small_m_cuda(x, w, s, bias, block_k=128, **tile)
    assert out.dtype == dtype and out.shape == (m, 400)
    assert _rel(out, ref + bias.float()) < 5e-3
    assert torch.equal(out, w8_small_m_cuda(x, w, s, bias, block_k=128, **tile))


@needs_clusters
@pytest.mark.parametrize("m", [1, 8, 16])
@pytest.mark.parametrize("tile", [{"rowt": 1, "kw": 4, "ft": 2, "cs": 3, "occ": 4}, {"rowt": 1, "kw": 8, "ft": 1, "cs": 2}])
def test_block_scales_with_the_cluster_k_split(m, tile):
    w, _ = _layer(400, 1152, seed=m)
    s = _block_scales(400, 1152, m + 1)
    x = torch.randn(m, 1152, device="cuda", dtype=torch.bfloat16)
    assert _rel(w8_small_m_cuda(x, w, s, block_k=128, **tile), _block_ref(x, w, s)) < 5e-3


@needs_fp8_gpu
@pytest.mark.parametrize("m", [1, 8, 16])
@pytest.mark.parametrize("n,k", [(5120, 5120), (13824, 5120), (5120, 13824), (12288, 3072)])
def test_block_scales_at_dit_shapes_through_linear(m, n, k):
    """``linear`` with block scales at the DiT shapes (the rule's tile, or the Triton kernel where it has none), the
    planned launch on fresh inputs; equal to the Triton kernel's result up to summation order."""
    from fastvideo_quant.kernels.small_m import small_m_linear

    w, _ = _layer(n, k, seed=n + m)
    s = _block_scales(n, k, m)
    for _ in range(2):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        out = w8.linear(x, w, s, None, 128)
        assert _rel(out, _block_ref(x, w, s)) < 5e-3
        assert _rel(out, small_m_linear(x, w, s, None, block_k=128).float()) < 5e-3
