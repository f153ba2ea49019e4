"""The CUDA C++ small-M kernel (NVRTC) and its runtime-compile layer: routing and errors on any machine, numerics
against float32 math of the de-quantized weight on a GPU."""

import pytest
import torch

pytest.importorskip("triton")

from fvq_awq.format import pack_awq  # noqa: E402
from fvq_awq.kernels import dispatch, small_m_cuda  # noqa: E402
from fvq_awq.kernels.small_m_cuda import awq_small_m_cuda, supports  # noqa: E402
from fvq_awq.layout import KernelLayout, dequantize_kernel, repack_to_kernel  # noqa: E402

from fastvideo_quant.kernels import cuda_rtc  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                                reason="thread-block clusters need compute capability 9.0")


def _layer(k, n, group=128, seed=0, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    g = k if group == -1 else group
    q, z = torch.randint(0, 16, (k, n), generator=gen), torch.randint(0, 16, (k // g, n), generator=gen)
    s = (torch.rand(k // g, n, generator=gen) * 0.02 + 0.001).half()
    wk, zk, sk, lay = repack_to_kernel(pack_awq(q), pack_awq(z), s, g)
    wk, zk, sk = wk.to(device), zk.to(device), sk.to(device)
    return wk, zk, sk, lay, dequantize_kernel(wk, zk, sk, lay)


def _rel(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()


def test_committed_table_names_the_cuda_kernel_only_where_it_takes_the_call():
    path = str(dispatch._DEFAULT_TABLE)
    cluster = {"kind": "cuda", "rowt": 1, "u": 1, "kw": 4, "ft": 2, "split_k": 3, "cluster": True, "occ": 4}
    for m in (1, 2, 4, 5, 8):  # the 1, 4 and 8 buckets
        assert dispatch._choose(m, 5120, 5120, path, 128) == (dispatch.CUDA_RULE if m <= 4 else cluster)
        assert dispatch._choose(m, 13824, 5120, path, 128) == cluster
        assert dispatch._choose(m, 3072, 12288, path, 128) == {"kind": "cuda", "rowt": 2, "u": 1, "kw": 4, "ft": 1,
                                                               "split_k": 1}
        # a device without thread-block clusters: the rule where the table measured a cluster split
        assert dispatch._choose(m, 13824, 5120, path, 128, 132, False) == dispatch.CUDA_RULE
    assert dispatch._choose(1, 5120, 13824, path, 128)["rowt"] == 4  # the measured tile, not the rule's
    # M=9-16: the CUDA kernel everywhere on the DiT shapes (with a cluster split at N=5120)
    assert dispatch._choose(16, 3072, 12288, path, 128)["ft"] == 2
    assert dispatch._choose(9, 5120, 5120, path, 128) == cluster
    assert dispatch._choose(16, 13824, 5120, path, 128) == cluster
    assert dispatch._choose(9, 5120, 5120, path, 128, 132, False) == dispatch.cuda_rule(9, 5120, 5120, 132, False)
    # groups of 64 / 32 (2 / 4 a 128-input block): the CUDA rule for groups (the table's tiles were timed at group
    # 128), capped for 3 blocks an SM at M <= 8; groups of 16 the Triton rule
    for group in (64, 32):
        for m in (1, 4, 8):
            for k, n in ((5120, 5120), (13824, 5120), (3072, 12288)):
                assert dispatch._choose(m, k, n, path, group) == dispatch.CUDA_RULE_GROUPS == {**dispatch.CUDA_RULE,
                                                                                              "occ": 3}
        assert dispatch._choose(16, 13824, 5120, path, group) == cluster
        assert dispatch._choose(16, 5120, 13824, path, group) == dispatch.cuda_rule(16, 5120, 13824, 132, True)
    # M=9-16: the 32-feature tile holds 2 blocks an SM with groups of 32 (229 registers), not 3: at 3072x12288 its
    # 384 blocks would need 1.45 waves, so groups of 32 take the 64-feature tile there (groups of 64 / 128 do not)
    assert _tile(dispatch._choose(16, 3072, 12288, path, 32)) == (1, 4, 4, 1, False)
    assert _tile(dispatch._choose(16, 3072, 12288, path, 64)) == _tile(dispatch.cuda_rule(16, 3072, 12288, 132, True))
    assert _tile(dispatch._choose(16, 3072, 12288, path, 64)) == (1, 4, 2, 1, False)
    assert dispatch._choose(1, 5120, 5120, path, 16)["kind"] != "cuda"


def test_untabled_shapes_take_the_cuda_rule_at_small_m_only_where_it_fits(tmp_path):
    path = str(tmp_path / "none.json")  # no table: the rules alone
    assert dispatch._choose(1, 4096, 5120, path, 128) == dispatch.CUDA_RULE
    assert dispatch._choose(1, 4096, 11008, path, 128) == dispatch.cuda_rule(1, 4096, 11008, 132, True)
    assert dispatch._choose(4, 11008, 4096, path, 256) == dispatch.CUDA_RULE  # groups of 256: one scale per block
    assert dispatch._choose(9, 4096, 11008, path, 128) == dispatch.cuda_rule(9, 4096, 11008, 132, True)
    assert dispatch._choose(17, 4096, 11008, path, 128)["kind"] == "gemm_t"  # M > 16
    assert dispatch._choose(1, 512, 4096, path, 128)["kind"] != "cuda"  # K < 1024: fewer blocks than warps
    assert dispatch._choose(1, 4096, 1024, path, 128)["kind"] != "cuda"  # N < 2048: under a block per SM
    assert dispatch._choose(1, 4096, 11008, path, 64) == dispatch.CUDA_RULE_GROUPS  # 2 groups a block, M <= 8
    assert dispatch._choose(9, 4096, 11008, path, 64) == dispatch.cuda_rule(9, 4096, 11008, 132, True)  # M > 8
    assert dispatch._choose(9, 4096, 11008, path, 32) == dispatch.cuda_rule(9, 4096, 11008, 132, True, 32)
    assert dispatch._choose(1, 4096, 11008, path, 16)["kind"] != "cuda"  # groups of 16
    assert dispatch._choose(1, 4160, 11008, path, 4160)["kind"] != "cuda"  # K not in whole 128s
    assert dispatch._choose(1, 4160, 11008, path, 64)["kind"] != "cuda"  # groups of 64, K not in whole 128s


def _tile(rule):
    return (rule["rowt"], rule["kw"], rule["ft"], rule["split_k"], bool(rule.get("cluster")))


def test_cuda_rule_fills_one_wave_with_the_tile_that_fills_it_most():
    def rule(m, n, sms, clusters, k=5120):
        return dispatch.cuda_rule(m, k, n, sms, clusters)

    # M <= 8: CUDA_RULE while N / 16 blocks fit 3 an SM
    assert rule(1, 5120, 132, True) == rule(8, 6336, 132, False) == dispatch.CUDA_RULE
    assert _tile(rule(8, 8192, 132, True)) == (2, 8, 2, 1, False)  # 128 blocks of 64 features: one an SM
    assert _tile(rule(1, 11008, 132, True)) == (1, 4, 2, 1, False)  # 344 blocks of 32, 4 an SM (528)
    # M=5-8: the cluster split first where it fits one wave (N=4096: 384 of 4 x 132 blocks; 6144: 576 do not) and
    # K gives each warp enough blocks (K >= 5120)
    assert rule(5, 4096, 132, True) == dispatch.CUDA_CLUSTER_TILE and rule(4, 4096, 132, True) == dispatch.CUDA_RULE
    assert rule(8, 4096, 132, False) == rule(8, 6144, 132, True) == rule(8, 4096, 132, True, k=4096) == dispatch.CUDA_RULE
    # M=9-16: the cluster split where N is too small to fill the SMs otherwise (5120: 480 of 528 blocks)
    assert rule(16, 5120, 132, True) == dispatch.CUDA_CLUSTER_TILE
    assert _tile(rule(16, 5120, 132, False)) == (2, 8, 2, 1, False)  # no clusters: 80 of 132
    assert _tile(rule(16, 8192, 132, True)) == (2, 8, 2, 1, False)  # the cluster split would need two waves
    assert _tile(rule(16, 12288, 132, True)) == (1, 4, 2, 1, False)  # 384 of 3 x 132
    assert _tile(rule(16, 13824, 132, True)) == (1, 4, 4, 1, False)  # 216 of 2 x 132
    assert _tile(rule(16, 4096, 64, True)) == (2, 8, 2, 1, False)  # a 64-SM device: 64 blocks, one an SM
    # nothing fits one wave: the best-filled last wave, never the cluster split
    assert not rule(16, 65536, 132, True).get("cluster")
    for m in (1, 6, 9):
        for n in range(2048, 40000, 1000):
            got = rule(m, n, 132, True)
            assert got["kind"] == "cuda" and got["rowt"] * got["kw"] <= 16


def test_route_runs_the_triton_rule_when_the_cuda_kernel_is_unavailable(monkeypatch, tmp_path):
    import json

    from fvq_awq.kernels.gemm import awq_gemm_t

    table = tmp_path / "t.json"
    table.write_text(json.dumps({"512x256x1": {"kind": "cuda", "rowt": 2, "split_k": 2, "u": 1}}))
    lay = KernelLayout(512, 256, 128, 16)
    monkeypatch.setattr(dispatch, "sm_count", lambda index: 132)
    monkeypatch.setattr(dispatch, "cuda_small_m_available", lambda index: False)
    fn, cfg = dispatch._route.__wrapped__(1, lay, False, str(table), 0)
    assert fn is awq_gemm_t and cfg["block_m"] == 16 and "rowt" not in cfg
    monkeypatch.setattr(dispatch, "cuda_small_m_available", lambda index: True)
    fn, cfg = dispatch._route.__wrapped__(1, lay, False, str(table), 0)
    assert fn is dispatch._cuda_small_m and cfg["rowt"] == 2 and cfg["fallback"]["block_m"] == 16


def test_routes_are_kept_per_device(monkeypatch):
    """Device 0 a Hopper (132 SMs, clusters), device 1 a GPU where the CUDA kernel's cluster split does not run and
    device 2 one where the CUDA kernel does not compile: the same layer and M route by the device each call is on,
    whichever device asked first."""
    from fvq_awq.kernels.gemm import awq_gemm_t

    monkeypatch.setattr(dispatch, "cuda_small_m_available", lambda index: index in (0, 1))
    monkeypatch.setattr(dispatch, "cuda_clusters_available", lambda index: index == 0)
    monkeypatch.setattr(dispatch, "sm_count", lambda index: {0: 132, 1: 84, 2: 84}[index])
    lay = KernelLayout(5120, 5120, 128, 16)
    route = dispatch._route.__wrapped__
    for order in ((0, 1, 2), (2, 1, 0)):
        got = {i: route(8, lay, False, dispatch._TABLE_PATH, i) for i in order}
        assert got[0][0] is dispatch._cuda_small_m and got[0][1]["cluster"]  # the table's cluster tile
        assert got[1][0] is dispatch._cuda_small_m and not got[1][1].get("cluster")  # the rule's tile without
        assert got[2][0] is awq_gemm_t  # the Triton rule
    assert route(8, lay, False, dispatch._TABLE_PATH, -1)[0] is awq_gemm_t  # no CUDA device (the interpreter)


def test_supports_names_the_calls_the_kernel_takes():
    wk, zk, sk, lay, _ = _layer(256, 32, device="cpu")
    x = torch.randn(16, 256, dtype=torch.bfloat16)
    assert supports(x, lay, wk, zk, sk)
    assert not supports(torch.randn(17, 256, dtype=torch.bfloat16), lay, wk, zk, sk)  # M > 16
    assert not supports(x.float(), lay, wk, zk, sk)  # float32 activations
    assert not supports(torch.randn(4, 257, dtype=torch.bfloat16)[:, 1:], lay, wk, zk, sk)  # rows not aligned
    for group in (64, 32):  # 2 / 4 groups a 128-input block
        wkg, zkg, skg, layg, _ = _layer(256, 32, group=group, device="cpu")
        assert supports(x, layg, wkg, zkg, skg)
        # the block's scales (zero points) are read as one 8- (4-) byte vector a row
        assert not supports(x, layg, wkg, zkg, torch.cat([skg.new_zeros(2), skg.flatten()])[2:].view_as(skg))
        assert not supports(x, layg, wkg, torch.cat([zkg.new_zeros(2), zkg.flatten()])[2:].view_as(zkg), skg)
    wk16, zk16, sk16, lay16, _ = _layer(256, 32, group=16, device="cpu")
    assert not supports(x, lay16, wk16, zk16, sk16)  # 8 groups a block: not taken
    assert small_m_cuda.groups_per_block(16) == 0 and small_m_cuda.groups_per_block(384) == 1


def test_missing_nvrtc_is_a_clear_error(monkeypatch):
    cuda_rtc._libnvrtc.cache_clear()
    monkeypatch.setattr(cuda_rtc, "_nvrtc_candidates", lambda: ["/nonexistent/libnvrtc.so.99"])
    try:
        with pytest.raises(cuda_rtc.CudaRtcError, match="no NVRTC library found.*libnvrtc.so.99"):
            cuda_rtc.compile_cubin("", "k", "sm_90")
    finally:
        cuda_rtc._libnvrtc.cache_clear()


def test_launcher_refuses_a_bad_signature():
    kernel = cuda_rtc.RtcKernel("k", 0, 0, 32, 1024)
    with pytest.raises(ValueError, match="'p' or 'i', found \\['f'\\]"):
        cuda_rtc.Launcher(kernel, "pif", (32, 1, 1))


@cuda
def test_compile_error_carries_the_compiler_log():
    with pytest.raises(cuda_rtc.CudaRtcError, match="failed to compile 'broken' with --gpu-architecture=sm_80") as e:
        cuda_rtc.compile_cubin('extern "C" __global__ void broken() { undeclared(); }', "broken", "sm_80")
    assert 'identifier "undeclared" is undefined' in str(e.value)  # NVRTC's own log


@cuda
@pytest.mark.parametrize("m", list(range(1, 17)))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tile", [{"rowt": 4, "u": 1}, {"rowt": 2, "u": 2}, {"rowt": 8, "u": 1},
                                  {"rowt": 1, "u": 1, "kw": 8}, {"rowt": 4, "u": 2, "kw": 2},
                                  {"rowt": 2, "u": 1, "kw": 4, "ft": 2}, {"rowt": 1, "u": 2, "kw": 1, "ft": 2},
                                  {"rowt": 1, "u": 1, "kw": 8, "ft": 4}])
def test_matches_reference(m, dtype, tile):
    wk, zk, sk, lay, w = _layer(1024, 384, seed=m)
    x = torch.randn(m, 1024, device="cuda", dtype=dtype)
    for split in (1, 3, 8):
        out = awq_small_m_cuda(x, wk, zk, sk, lay, split_k=split, **tile)
        assert out.dtype == dtype and out.shape == (m, 384)
        assert _rel(out, x.float() @ w.t()) < 5e-3


@cuda
@pytest.mark.parametrize("m", [3, 12])
@pytest.mark.parametrize("ft", [2, 4])
@pytest.mark.parametrize("tile", [{"rowt": 1, "kw": 1}, {"rowt": 4, "kw": 2}, {"rowt": 1, "kw": 8}])
def test_tile_columns_past_the_last_feature(m, ft, tile):
    """25 tiles of 16 features: with 2 or 4 tiles a warp the last column's later tiles lie past N (never stored)."""
    wk, zk, sk, lay, w = _layer(1024, 400, seed=m)
    x = torch.randn(m, 1024, device="cuda", dtype=torch.float16)
    bias = torch.randn(400, device="cuda")
    for split in (1, 2):
        out = awq_small_m_cuda(x, wk, zk, sk, lay, bias, split_k=split, ft=ft, u=1, **tile)
        assert _rel(out, x.float() @ w.t() + bias.half().float()) < 5e-3


@cuda
@pytest.mark.parametrize("group", [256, -1])
@pytest.mark.parametrize("u", [1, 2])
def test_groups_of_several_blocks_and_bias(group, u):
    wk, zk, sk, lay, w = _layer(1024, 256, group=group)
    x = torch.randn(5, 1024, device="cuda", dtype=torch.bfloat16)
    for bias in (torch.randn(256, device="cuda"), torch.randn(256, device="cuda").bfloat16()):
        out = awq_small_m_cuda(x, wk, zk, sk, lay, bias, split_k=3, u=u)
        assert _rel(out, x.float() @ w.t() + bias.bfloat16().float()) < 5e-3


GROUP_TILES = [{"rowt": 1, "u": 1, "kw": 8}, {"rowt": 4, "u": 2, "kw": 2}, {"rowt": 2, "u": 1, "kw": 4, "ft": 2},
               {"rowt": 1, "u": 2, "ft": 4}, {"rowt": 2, "u": 1, "kw": 8, "ft": 2, "occ": 1}]


@cuda
@pytest.mark.parametrize("group", [64, 32])
@pytest.mark.parametrize("m", [1, 2, 7, 8, 9, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tile", GROUP_TILES)
def test_groups_of_64_and_32_match_reference(group, m, dtype, tile):
    """2 / 4 groups a 128-input block: each MMA's k-slots in one group, the block's scales and zero points read as
    one vector a row. Scales that differ by group (a kernel applying a block's first scale to all of it, or pairing a
    byte with the wrong group, is off by far more than the tolerance), split K through global memory, bias, and N
    not a multiple of a warp column's features."""
    wk, zk, sk, lay, w = _layer(1152, 400, group=group, seed=m)
    assert lay.group == group
    x = torch.randn(m, 1152, device="cuda", dtype=dtype)
    bias = torch.randn(400, device="cuda")
    ref = x.float() @ w.t()
    for split in (1, 4):
        out = awq_small_m_cuda(x, wk, zk, sk, lay, split_k=split, **tile)
        assert out.dtype == dtype and out.shape == (m, 400)
        assert _rel(out, ref) < 5e-3
        assert torch.equal(out, awq_small_m_cuda(x, wk, zk, sk, lay, split_k=split, **tile))  # fixed order
    out = awq_small_m_cuda(x, wk, zk, sk, lay, bias, split_k=2, **tile)
    assert _rel(out, ref + bias.to(dtype).float()) < 5e-3


@needs_sm90
@pytest.mark.parametrize("group", [64, 32])
@pytest.mark.parametrize("m", [1, 9])
def test_groups_of_64_and_32_in_a_cluster_split_and_a_graph(group, m):
    wk, zk, sk, lay, w = _layer(1152, 528, group=group)
    x = torch.randn(m, 1152, device="cuda", dtype=torch.bfloat16)
    tile = {"rowt": 1, "u": 1, "kw": 4, "ft": 2, "split_k": 3}
    out = awq_small_m_cuda(x, wk, zk, sk, lay, cluster=True, occ=4, **tile)
    assert _rel(out, x.float() @ w.t()) < 5e-3
    assert torch.equal(out, awq_small_m_cuda(x, wk, zk, sk, lay, **tile))  # the global split's order: bit for bit
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = awq_small_m_cuda(x, wk, zk, sk, lay, cluster=True, occ=4, **tile)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert _rel(y, x.float() @ w.t()) < 5e-3


@cuda
@pytest.mark.parametrize("group", [64, 32])
def test_dispatcher_runs_groups_of_64_and_32_on_the_cuda_kernel(group):
    if not dispatch.cuda_small_m_available(torch.cuda.current_device()):
        pytest.skip("the CUDA kernel does not compile here")
    wk, zk, sk, lay, w = _layer(5120, 5120, group=group)
    for m in (1, 8, 16):
        fn, cfg = dispatch._route(m, lay, False, dispatch._TABLE_PATH, torch.cuda.current_device())
        assert fn is dispatch._cuda_small_m
        x = torch.randn(m, 5120, device="cuda", dtype=torch.bfloat16)
        assert _rel(dispatch.awq_linear_cuda(x, wk, zk, sk, lay), x.float() @ w.t()) < 5e-3


@cuda
@pytest.mark.parametrize("tile", [{"split_k": 7}, pytest.param(
    {"rowt": 2, "kw": 4, "ft": 2, "split_k": 3, "cluster": True, "occ": 2}, marks=needs_sm90, id="cluster")])
def test_split_k_is_deterministic_and_replays_under_a_cuda_graph(tile):
    wk, zk, sk, lay, w = _layer(2048, 512)
    x = torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16)
    a = awq_small_m_cuda(x, wk, zk, sk, lay, **tile)
    assert torch.equal(a, awq_small_m_cuda(x, wk, zk, sk, lay, **tile))
    for kw, ft in ((4, 1), (8, 2)):  # the in-block K reduction is a fixed tree: bit for bit too
        b = awq_small_m_cuda(x, wk, zk, sk, lay, rowt=1, split_k=2, kw=kw, ft=ft)
        assert torch.equal(b, awq_small_m_cuda(x, wk, zk, sk, lay, rowt=1, split_k=2, kw=kw, ft=ft))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = awq_small_m_cuda(x, wk, zk, sk, lay, **tile)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        assert _rel(y, x.float() @ w.t()) < 5e-3
        assert torch.equal(y, awq_small_m_cuda(x, wk, zk, sk, lay, **tile))


@needs_sm90
@pytest.mark.parametrize("m", [1, 8, 9, 16])
@pytest.mark.parametrize("tile", [{"rowt": 2, "kw": 4, "ft": 2, "split_k": 3, "occ": 2},
                                  {"rowt": 1, "kw": 2, "ft": 4, "split_k": 6},
                                  {"rowt": 4, "kw": 1, "ft": 1, "split_k": 2},
                                  {"rowt": 1, "kw": 8, "ft": 1, "split_k": 8}])
def test_cluster_split_matches_reference_and_global_split(m, tile):
    # K = 1152: 9 blocks, so split 8 leaves a part of one block and kw 8 warps with nothing to do
    wk, zk, sk, lay, w = _layer(1152, 528)  # 33 feature tiles: the last column is partly outside N
    x = torch.randn(m, 1152, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(528, device="cuda")
    out = awq_small_m_cuda(x, wk, zk, sk, lay, bias, cluster=True, **tile)
    assert _rel(out, x.float() @ w.t() + bias.bfloat16().float()) < 5e-3
    # the same parts added in the same order as the global split: bit for bit
    glob = {k: v for k, v in tile.items() if k != "occ"}
    assert torch.equal(out, awq_small_m_cuda(x, wk, zk, sk, lay, bias, **glob))


@cuda
def test_refuses_what_it_does_not_take():
    wk, zk, sk, lay, _ = _layer(512, 64)
    with pytest.raises(ValueError, match="not supported"):
        awq_small_m_cuda(torch.randn(17, 512, device="cuda", dtype=torch.bfloat16), wk, zk, sk, lay)
    x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="split_k must be in 1..4"):
        awq_small_m_cuda(x, wk, zk, sk, lay, split_k=5)
    with pytest.raises(ValueError, match="kw must be 1, 2, 4 or 8 and ft 1, 2 or 4.*kw=3"):
        awq_small_m_cuda(x, wk, zk, sk, lay, kw=3)
    with pytest.raises(ValueError, match="rowt \\* kw <= 16 warps a block, found rowt=4 kw=8"):
        awq_small_m_cuda(x, wk, zk, sk, lay, rowt=4, kw=8)
    with pytest.raises(ValueError, match="occ must be 1..4 blocks a multiprocessor, found 5"):
        awq_small_m_cuda(x, wk, zk, sk, lay, occ=5)
    with pytest.raises(ValueError, match="cluster needs compute capability 9.0.*split_k 2..8 \\(found 1\\)"):
        awq_small_m_cuda(x, wk, zk, sk, lay, cluster=True)
    if torch.cuda.get_device_capability() >= (9, 0):
        wk2, zk2, sk2, lay2, _ = _layer(1024, 1024)
        x16 = torch.randn(16, 1024, device="cuda", dtype=torch.bfloat16)
        with pytest.raises(ValueError, match="cluster of 8 with rowt=4 kw=4 ft=4 needs 147456 bytes"):
            awq_small_m_cuda(x16, wk2, zk2, sk2, lay2, rowt=4, kw=4, ft=4, split_k=8, cluster=True)


@cuda
def test_dispatcher_routes_the_table_pick_and_falls_back_for_unaligned_rows():
    if not dispatch.cuda_small_m_available(torch.cuda.current_device()):
        pytest.skip("the CUDA kernel does not compile here")
    wk, zk, sk, lay, w = _layer(5120, 5120)
    assert dispatch._route(1, lay, False, dispatch._TABLE_PATH, torch.cuda.current_device())[0] is dispatch._cuda_small_m
    x = torch.randn(1, 5120, device="cuda", dtype=torch.bfloat16)
    assert _rel(dispatch.awq_linear_cuda(x, wk, zk, sk, lay), x.float() @ w.t()) < 5e-3
    xs = torch.randn(1, 5121, device="cuda", dtype=torch.bfloat16)[:, 1:]  # 2-byte offset: not 8-byte aligned
    assert not supports(xs, lay, wk, zk, sk)
    assert _rel(dispatch.awq_linear_cuda(xs, wk, zk, sk, lay), xs.float() @ w.t()) < 5e-3


PDL_TILES = [{"rowt": 1, "u": 1, "kw": 8, "ft": 1}, {"rowt": 2, "u": 2, "split_k": 7},
             {"rowt": 1, "u": 1, "kw": 4, "ft": 2, "split_k": 3, "cluster": True, "occ": 4},
             {"rowt": 1, "u": 1, "kw": 2, "ft": 4}]


@needs_sm90
@pytest.mark.parametrize("m", [1, 9, 16])
@pytest.mark.parametrize("tile", PDL_TILES)
def test_pdl_launch_equals_the_plain_launch_and_waits_for_its_producer(m, tile):
    """With programmatic dependent launch a kernel's blocks may start before the one before it has finished. K = N
    here, so six layers feed each other: a kernel that read its x (the previous kernel's output) or wrote before its
    wait would differ from the plain launches — eagerly and in a graph."""
    from pdl_checks import assert_pdl_layers_match_plain

    wk, zk, sk, lay, w = _layer(1152, 1152)  # 9 blocks of K: split 7 and kw 8 leave warps a part of one block
    x = torch.randn(m, 1152, device="cuda", dtype=torch.bfloat16)
    assert _rel(awq_small_m_cuda(x, wk, zk, sk, lay, pdl=True, **tile), x.float() @ w.t()) < 5e-3
    assert_pdl_layers_match_plain(lambda y, pdl: awq_small_m_cuda(y, wk, zk, sk, lay, pdl=pdl, **tile), x)


@needs_sm90
def test_pdl_launch_reads_weights_written_by_the_kernel_just_before():
    """Weights copied into the layer's buffers by the kernel right before (a weight update, a reload) are the ones
    multiplied: nothing is read before the wait."""
    layers = [_layer(2048, 1024, seed=s) for s in (1, 2)]
    wk, zk, sk = (t.clone() for t in layers[0][:3])
    lay = layers[0][3]
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    want = [awq_small_m_cuda(x, *t[:4], pdl=False, rowt=1, u=1, kw=8) for t in layers]
    assert not torch.equal(want[0], want[1])
    for i in range(8):
        src = layers[i % 2]
        for dst, s in zip((wk, zk, sk), src[:3], strict=True):
            dst.copy_(s)
        assert torch.equal(awq_small_m_cuda(x, wk, zk, sk, lay, pdl=True, rowt=1, u=1, kw=8), want[i % 2])


def test_the_cuda_pick_asks_each_call_s_device_for_pdl(monkeypatch):
    """Routes are cached per layer and M, not per device: whether to launch with programmatic dependent launch is
    asked of the device of each call's x (a machine with a Hopper and an older GPU must not send the older one a
    kernel compiled with griddepcontrol)."""
    import types

    from fvq_awq.kernels import small_m_cuda

    seen = []
    monkeypatch.setattr(small_m_cuda, "supports", lambda *a: True)
    monkeypatch.setattr(small_m_cuda, "run", lambda *a: seen.append(a[-1]))
    monkeypatch.setattr(dispatch, "supports_pdl", lambda index: index == 1)
    for index in (0, 1, 0):
        x = types.SimpleNamespace(device=types.SimpleNamespace(index=index))
        dispatch._cuda_small_m(x, None, None, None, None, None, {}, 1, 1, 1, 8)
    assert seen == [False, True, False]


@cuda
def test_the_dispatcher_launches_with_pdl_where_the_device_runs_it(monkeypatch, tmp_path):
    from fvq_awq.kernels import small_m_cuda

    seen = []
    real = small_m_cuda.run
    monkeypatch.setattr(small_m_cuda, "run", lambda *a: seen.append(a[-1]) or real(*a))
    monkeypatch.setattr(dispatch, "_TABLE_PATH", str(tmp_path / "none.json"))  # the rule: the CUDA kernel at M=1
    dispatch._route.cache_clear()
    try:
        wk, zk, sk, lay, w = _layer(2048, 2048)
        x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
        assert _rel(dispatch.awq_linear_cuda(x, wk, zk, sk, lay), x.float() @ w.t()) < 5e-3
        assert seen == [cuda_rtc.supports_pdl(x.device.index)]
    finally:
        dispatch._route.cache_clear()
