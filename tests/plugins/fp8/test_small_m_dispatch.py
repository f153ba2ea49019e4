"""Which M take the W8A16 small-M kernel (``fastvideo_quant.kernels.small_m``, tested in tests/kernels) and the
W8A8 Triton GEMM (``fastvideo_quant.kernels.w8a8_gemm``) rather than ``torch._scaled_mm``."""

from __future__ import annotations

import json
import re

import pytest
import torch


def test_small_m_dispatch_and_threshold(monkeypatch):
    """fp8_linear sends CUDA bf16 M <= W8A16_MAX_M to the W8A16 kernel and everything else to W8A8."""
    from fvq_fp8.kernels import gemm

    calls = []
    monkeypatch.setattr(gemm, "w8a16_linear", lambda *a: calls.append(a[0].shape[0]) or "w8a16")
    w8a8 = lambda *a: (_ for _ in ()).throw(RuntimeError("w8a8"))  # noqa: E731
    monkeypatch.setattr(gemm, "quantize_activation", w8a8)
    monkeypatch.setattr(gemm, "triton_w8a8_linear", w8a8)
    x = torch.zeros(gemm.W8A16_MAX_M, 32, dtype=torch.bfloat16)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(gemm, "_capability", lambda index: (9, 0))
    w = torch.zeros(16, 32, dtype=torch.float8_e4m3fn)
    assert gemm.fp8_linear(x, w, torch.ones(1, 16), None, None, None) == "w8a16"
    with pytest.raises(RuntimeError, match="w8a8"):
        gemm.fp8_linear(torch.zeros(gemm.W8A16_MAX_M + 1, 32, dtype=torch.bfloat16), w, torch.ones(1, 16), None,
                        None, None)
    with pytest.raises(RuntimeError, match="w8a8"):
        gemm.fp8_linear(x.float(), w, torch.ones(1, 16), None, None, None)
    assert calls == [gemm.W8A16_MAX_M]


def _routing(monkeypatch):
    """fp8_linear on a faked CUDA tensor, recording (M, out dtype, pick) of each Triton GEMM call; ``_scaled_mm``
    raises."""
    from fvq_fp8.kernels import gemm

    calls = []
    monkeypatch.setattr(gemm, "quantize_activation", lambda x, s, scratch=False: (x, torch.ones(x.shape[0], 1)))
    monkeypatch.setattr(gemm, "triton_w8a8_linear",
                        lambda x, w, s, b, out_dtype, pick: calls.append((x.shape[0], out_dtype, pick)) or "triton")
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("scaled_mm")))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(gemm, "_capability", lambda index: (9, 0))  # (an H100/H200: what the shipped routes are for)
    return gemm, calls


def test_triton_gemm_dispatch_for_shapes_without_a_route(monkeypatch):
    """Untabled shapes: CUDA dynamic per-token W8A8 runs the core Triton GEMM (autotuned: no pick) up to
    UNTABLED_TRITON_MAX_M tokens (UNTABLED_TRITON_MAX_M_NARROW when N <= NARROW_N); larger M, static activation
    scales, exact accumulation (use_fast_accum=False) and M above TRITON_GEMM_MAX_M keep torch._scaled_mm."""
    gemm, calls = _routing(monkeypatch)
    narrow = (torch.zeros(16, 32, dtype=torch.float8_e4m3fn), torch.ones(1, 16))
    wide = (torch.zeros(gemm.NARROW_N + 16, 32, dtype=torch.float8_e4m3fn), torch.ones(1, gemm.NARROW_N + 16))
    for (w, row), m, dtype in ((narrow, gemm.W8A16_MAX_M + 1, torch.bfloat16),
                               (narrow, gemm.UNTABLED_TRITON_MAX_M_NARROW, torch.float16), (narrow, 8, torch.float32),
                               (wide, gemm.UNTABLED_TRITON_MAX_M, torch.bfloat16)):
        assert gemm.fp8_linear(torch.zeros(m, 32, dtype=dtype), w, row, None, None, None) == "triton"
    assert calls == [(gemm.W8A16_MAX_M + 1, torch.bfloat16, None), (gemm.UNTABLED_TRITON_MAX_M_NARROW, torch.float16,
                     None), (8, torch.float32, None), (gemm.UNTABLED_TRITON_MAX_M, torch.bfloat16, None)]
    for (w, row), m, input_scale, fast in ((narrow, gemm.UNTABLED_TRITON_MAX_M_NARROW + 1, None, True),
                                           (wide, gemm.UNTABLED_TRITON_MAX_M + 1, None, True),
                                           (narrow, 64, torch.ones(()), True), (narrow, 64, None, False)):
        with pytest.raises(RuntimeError, match="scaled_mm"):
            gemm.fp8_linear(torch.zeros(m, 32, dtype=torch.bfloat16), w, row, None, input_scale, None,
                            use_fast_accum=fast)
    monkeypatch.setattr(gemm, "TRITON_GEMM_MAX_M", 0)  # what FVQ_FP8_TRITON_GEMM_MAX_M=0 sets
    with pytest.raises(RuntimeError, match="scaled_mm"):
        gemm.fp8_linear(torch.zeros(64, 32, dtype=torch.bfloat16), *narrow, None, None, None)
    assert len(calls) == 4


def test_routes_send_their_intervals_to_the_triton_gemm_with_their_pick(monkeypatch, tmp_path):
    """A listed shape takes the Triton GEMM, with the interval's launch config, exactly in its intervals; every other
    M above the W8A16 range takes torch._scaled_mm. TRITON_GEMM_MAX_M still caps it."""
    gemm, calls = _routing(monkeypatch)
    table = tmp_path / "routes.json"
    table.write_text(json.dumps({"capability": [9, 0], "shapes": {"32x16": [[1, 40, [16, 32, 32, 1, 4, 1]],
                                                                            [100, 120, [64, 64, 128, 8, 4, 3]]]}}))
    monkeypatch.setattr(gemm, "ROUTES_PATH", str(table))
    w, row = torch.zeros(16, 32, dtype=torch.float8_e4m3fn), torch.ones(1, 16)
    for m in (17, 40, 100, 120):
        assert gemm.fp8_linear(torch.zeros(m, 32, dtype=torch.bfloat16), w, row, None, None, None) == "triton"
    assert [(m, pick) for m, _, pick in calls] == [(17, (16, 32, 32, 1, 4, 1)), (40, (16, 32, 32, 1, 4, 1)),
                                                   (100, (64, 64, 128, 8, 4, 3)), (120, (64, 64, 128, 8, 4, 3))]
    for m in (41, 99, 121):  # (the untabled rule would have sent these to the Triton GEMM)
        with pytest.raises(RuntimeError, match="scaled_mm"):
            gemm.fp8_linear(torch.zeros(m, 32, dtype=torch.bfloat16), w, row, None, None, None)
    monkeypatch.setattr(gemm, "TRITON_GEMM_MAX_M", 99)
    with pytest.raises(RuntimeError, match="scaled_mm"):
        gemm.fp8_linear(torch.zeros(100, 32, dtype=torch.bfloat16), w, row, None, None, None)
    # On a GPU of another compute capability the routes do not apply (a config's shared memory may not fit there):
    # the untabled rule, with the autotuner's pick.
    monkeypatch.setattr(gemm, "_capability", lambda index: (8, 9))
    calls.clear()
    assert gemm.fp8_linear(torch.zeros(41, 32, dtype=torch.bfloat16), w, row, None, None, None) == "triton"
    assert calls == [(41, torch.bfloat16, None)]


def test_padded_routes_run_scaled_mm_on_their_row_count(monkeypatch, tmp_path):
    """A "pad" interval sends bf16 M in it to ``_scaled_mm`` on the interval's row count (``padded_scaled_mm``);
    fp16 and float32 activations (not what was measured) and other capabilities take plain ``_scaled_mm``;
    TRITON_GEMM_MAX_M (a Triton cap) leaves it alone."""
    gemm, calls = _routing(monkeypatch)
    padded = []
    monkeypatch.setattr(gemm, "padded_scaled_mm", lambda x, w, s, b, rows: padded.append((x.shape[0], rows)) or "pad")
    table = tmp_path / "routes.json"
    table.write_text(json.dumps({"capability": [9, 0], "shapes": {"32x16": [[17, 256, [16, 32, 32, 1, 4, 1]]]},
                                 "pad": {"32x16": [[321, 384, 512]]}}))
    monkeypatch.setattr(gemm, "ROUTES_PATH", str(table))
    w, row = torch.zeros(16, 32, dtype=torch.float8_e4m3fn), torch.ones(1, 16)
    for m in (321, 384):
        assert gemm.fp8_linear(torch.zeros(m, 32, dtype=torch.bfloat16), w, row, None, None, None) == "pad"
    monkeypatch.setattr(gemm, "TRITON_GEMM_MAX_M", 0)
    assert gemm.fp8_linear(torch.zeros(330, 32, dtype=torch.bfloat16), w, row, None, None, None) == "pad"
    assert padded == [(321, 512), (384, 512), (330, 512)] and calls == []
    for m, dtype in ((320, torch.bfloat16), (385, torch.bfloat16), (330, torch.float16), (330, torch.float32)):
        with pytest.raises(RuntimeError, match="scaled_mm"):
            gemm.fp8_linear(torch.zeros(m, 32, dtype=dtype), w, row, None, None, None)
    # a shape with padded intervals only is a listed shape too (not the untabled rule's Triton GEMM at M <= 192)
    table.write_text(json.dumps({"capability": [9, 0], "shapes": {}, "pad": {"32x16": [[321, 384, 512]]}}))
    monkeypatch.setattr(gemm, "ROUTES_PATH", str(tmp_path / "routes.json"))
    gemm._ROUTE_TABLES.pop(str(table), None)
    gemm._route_cached.cache_clear()
    assert gemm.fp8_linear(torch.zeros(350, 32, dtype=torch.bfloat16), w, row, None, None, None) == "pad"
    with pytest.raises(RuntimeError, match="scaled_mm"):
        gemm.fp8_linear(torch.zeros(100, 32, dtype=torch.bfloat16), w, row, None, None, None)
    monkeypatch.setattr(gemm, "_capability", lambda index: (8, 9))
    with pytest.raises(RuntimeError, match="scaled_mm"):
        gemm.fp8_linear(torch.zeros(330, 32, dtype=torch.bfloat16), w, row, None, None, None)
    assert len(padded) == 4


def test_padded_scaled_mm_equals_the_unpadded_product():
    """``padded_scaled_mm`` on more rows than tokens returns exactly M rows, contiguous, equal to row-wise
    ``_scaled_mm`` on the M-row quantization (CPU: real fp8 ``_scaled_mm``, the quantization op's CPU path),
    with bias; the padded rows never show."""
    pytest.importorskip("triton", reason="triton not installed")
    from fvq_fp8.kernels import gemm, ops

    if torch.cuda.is_available():
        pytest.skip("CPU test (test_cuda.py runs the padded route on the GPU)")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 64, generator=g).bfloat16()
    w = (torch.randn(48, 64, generator=g) * 8).to(torch.float8_e4m3fn)
    ws, bias = torch.rand(1, 48, generator=g) + 0.5, torch.randn(48, generator=g).bfloat16()
    out = gemm.padded_scaled_mm(x, w, ws, bias, 64)
    xq, xs = ops.per_token_quant_ref(x)
    ref = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws, bias=bias, out_dtype=torch.bfloat16,
                           use_fast_accum=True)
    assert out.shape == (20, 48) and out.is_contiguous() and torch.equal(out, ref)


def test_the_quant_op_pads_rows():
    """``fvq_fp8::per_token_quant(x, out_rows)``: CPU gives the M quantized rows then zeros, the fake kernel the padded
    shapes; fewer rows than x has is an error naming both."""
    from fvq_fp8.kernels import ops
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(5, 32)
    q, s = ops.per_token_quant(x, 8)
    rq, rs = ops.per_token_quant_ref(x)
    assert q.shape == (8, 32) and s.shape == (8, 1)
    assert torch.equal(q[:5].view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s[:5], rs)
    assert not q[5:].float().any() and not s[5:].any()
    with FakeTensorMode():
        fq, fs = ops.per_token_quant(torch.empty(5, 32), 8)
    assert fq.shape == (8, 32) and fq.dtype == torch.float8_e4m3fn and fs.shape == (8, 1)
    with pytest.raises(ValueError, match="out_rows must be >= the 5 rows of x, found 4"):
        ops.per_token_quant(x, 4)


@pytest.mark.parametrize("text, found", [
    ("not json", "JSONDecodeError"),
    ('{"capability": [9, 0], "routes": {}}', "KeyError: 'shapes'"),
    ('{"shapes": {}}', "KeyError: 'capability'"),
    ('{"capability": [9, 0], "shapes": {"32x16": [[40, 17, [16, 32, 32, 1, 4, 1]]]}}', "shapes['32x16']: each interval"),
    ('{"capability": [9, 0], "shapes": {"32x16": [[1, 40, [16, 32, 32, 1, 4]]]}}', "a pick is six positive ints"),
    ('{"capability": [9, 0], "shapes": {"32x16": [[1, 40, [16, 32, 32, 1, 4, 0]]]}}', "a pick is six positive ints"),
    ('{"capability": [9, 0], "shapes": {"32x16": [[1, 40, [16, 32, 32, 1, 4, 1]], [30, 50, [16, 32, 32, 1, 4, 1]]]}}',
     "not overlapping"),
    ('{"capability": [9, 0], "shapes": {"32by16": []}}', "ValueError"),
    ('{"capability": [9, 0], "shapes": {}, "pad": {"32x16": [[300, 384, 352]]}}',
     "pad['32x16']: each padded row count must be >= its interval's last M"),
    ('{"capability": [9, 0], "shapes": {}, "pad": {"32x16": [[384, 300, 512]]}}', "pad['32x16']: each interval"),
    ('{"capability": [9, 0], "shapes": {"32x16": [[1, 320, [16, 32, 32, 1, 4, 1]]]}, "pad": {"32x16": [[300, 384, '
     '512]]}}', "shapes and pad of '32x16'"),
    ('{"capability": [9, 0], "shapes": {}, "pad": {"32x16": [[300, 384]]}}', "ValueError"),
    ('{"capability": [9, 0], "shapes": {"32x16": [[300, 384, [16, 32, 32, 1, 4, 1]]]}, "pad": {"32x16": [[300, 384, '
     '512]]}}', "shapes and pad of '32x16'"),
])
def test_a_malformed_route_table_is_an_error_naming_the_file(monkeypatch, tmp_path, text, found):
    gemm, _ = _routing(monkeypatch)
    table = tmp_path / "routes.json"
    table.write_text(text)
    monkeypatch.setattr(gemm, "ROUTES_PATH", str(table))
    with pytest.raises(ValueError, match=rf"route table {re.escape(str(table))} is malformed .*{re.escape(found)}"):
        gemm.fp8_linear(torch.zeros(20, 32, dtype=torch.bfloat16), torch.zeros(16, 32, dtype=torch.float8_e4m3fn),
                        torch.ones(1, 16), None, None, None)


def test_a_route_table_that_is_not_there_is_an_error(monkeypatch, tmp_path):
    gemm, _ = _routing(monkeypatch)
    monkeypatch.setattr(gemm, "ROUTES_PATH", str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="FVQ_FP8_ROUTES names .*missing.json"):
        gemm.fp8_linear(torch.zeros(20, 32, dtype=torch.bfloat16), torch.zeros(16, 32, dtype=torch.float8_e4m3fn),
                        torch.ones(1, 16), None, None, None)


def test_the_shipped_routes_are_the_autotuners_configs_within_the_cap():
    """Every shipped pick is one of the configs the autotuner would consider (so it compiles and was measured), every
    interval lies above the W8A16 range's start and within TRITON_GEMM_MAX_M, and the file is what fp8_routes.py
    derives from the sweeps it names."""
    from pathlib import Path

    from fvq_fp8.kernels import gemm

    pytest.importorskip("triton", reason="triton not installed")
    from fastvideo_quant.kernels.w8a8_configs import CONFIGS

    configs = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["GROUP_M"], c.num_warps,
                c.num_stages) for c in CONFIGS}
    capability, routes, pads = gemm._routes(str(Path(gemm.__file__).with_name("routes.json")))
    assert capability == (9, 0) and set(routes) == {"5120x5120", "5120x13824", "13824x5120", "3072x12288"}
    for entries in routes.values():
        assert entries and all(pick in configs and hi <= gemm.TRITON_GEMM_MAX_M for _, hi, pick in entries)
    root = Path(__file__).resolve().parents[3]
    derive = _fp8_routes_module()
    shipped = json.loads(Path(gemm.__file__).with_name("routes.json").read_text())
    rows = [r for name in shipped["source"]
            for r in json.loads((root / "benchmarks" / "results" / name).read_text())["rows"]]
    modes = tuple(shipped.get("modes", ["harness"]))
    assert derive.derive(derive.latest(rows, modes)) == (shipped["shapes"], shipped["pad"])
    assert set(pads) <= set(routes) and all(lo > 256 for entries in pads.values() for lo, _, _ in entries)


def test_triton_gemm_under_compile_calls_the_custom_op(monkeypatch):
    """Compiled code reaches the kernels through ``fvq_fp8::per_token_quant`` and ``fvq_fp8::w8a8_gemm`` (opaque
    ops), eager code through the core W8A8 linear (its cached launch plans) with fp8 operands."""
    from types import SimpleNamespace

    from fvq_fp8.kernels import gemm, ops

    seen = []
    monkeypatch.setattr(ops, "per_token_quant", lambda x: seen.append("quant op") or (x, None))
    monkeypatch.setattr(ops, "w8a8_gemm", lambda *a: seen.append("gemm op") or "op")
    kernels = SimpleNamespace(w8a8_linear=lambda x, qdtype, *a, pdl: seen.append((qdtype, pdl)) or "kernel")
    monkeypatch.setattr(gemm, "_cuda_kernels", lambda: kernels)  # (the eager entry points, imported once)
    rest = (None,) * 3 + (torch.bfloat16,)
    # eager: programmatic dependent launch up to PDL_MAX_M rows (measured to pay there), not above
    assert gemm.triton_w8a8_linear(torch.empty(gemm.PDL_MAX_M, 8), *rest) == "kernel"
    assert gemm.triton_w8a8_linear(torch.empty(gemm.PDL_MAX_M + 1, 8), *rest) == "kernel"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert gemm.triton_w8a8_linear(torch.empty(17, 8), *rest) == "op"
    assert seen == [(torch.float8_e4m3fn, True), (torch.float8_e4m3fn, False), "quant op", "gemm op"]


def test_w8a8_gemm_custom_op_fake_has_the_output_shape_and_dtype():
    from fvq_fp8.kernels import ops
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        xq = torch.empty(40, 64, dtype=torch.float8_e4m3fn)
        w = torch.empty(48, 64, dtype=torch.float8_e4m3fn)
        out = ops.w8a8_gemm(xq, torch.empty(40, 1), w, torch.empty(1, 48), None, torch.float16)
    assert out.shape == (40, 48) and out.dtype == torch.float16


def test_a_gpu_without_fp8_tensor_cores_is_refused_on_every_call(monkeypatch):
    """The capability is looked up once per device; the refusal is not (a cached False once let the second call
    through to ``torch._scaled_mm``)."""
    from fvq_fp8.kernels import gemm

    from fastvideo_quant.errors import MethodUnavailableError

    monkeypatch.setattr(gemm, "_CAPABILITY_OK", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA A100")
    for _ in range(2):
        with pytest.raises(MethodUnavailableError, match="A100 has compute capability 8.0"):
            gemm.require_fp8_gpu_index(0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    gemm.require_fp8_gpu_index(1)
    assert gemm._CAPABILITY_OK == {0: False, 1: True}


@pytest.mark.parametrize("dynamic", [False, True])
def test_the_route_lookup_traces_under_torch_compile(dynamic):
    """Compiled fp8 code looks the route up while dynamo traces it (M may be symbolic): a dict lookup and integer
    comparisons only — the table file is read at import, never while tracing (``os.stat`` broke fullgraph=True on
    the H200 when the lookup still read the file lazily)."""
    from fvq_fp8.kernels import gemm

    def pick_sum(t):
        route = gemm._route(t.shape[0], 5120, 5120, gemm.ROUTES_PATH, (9, 0))
        return t * (sum(route.pick) if route.triton else -1)

    compiled = torch.compile(pick_sum, fullgraph=True, dynamic=dynamic, backend="eager")
    for m in (24, 40, 100, 300):
        assert torch.equal(compiled(torch.ones(m)), pick_sum(torch.ones(m)))


def test_the_gemm_op_carries_the_pick_through_torch_compile():
    """``fvq_fp8::w8a8_gemm`` with a route's pick, compiled with fullgraph=True, gives the eager op's numbers (on CPU
    under the Triton interpreter, which honours the pick's tiles; on a GPU, the compiled kernel with those tiles)."""
    pytest.importorskip("triton", reason="triton not installed")
    from fvq_fp8.kernels import ops

    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("the fp8 Triton GEMM needs compute capability >= 8.9")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    xq = (torch.randn(20, 64, generator=g) * 8).to(torch.float8_e4m3fn).to(dev)
    w = (torch.randn(48, 64, generator=g) * 8).to(torch.float8_e4m3fn).to(dev)
    xs, ws = (torch.rand(20, 1, generator=g) + 0.5).to(dev), (torch.rand(1, 48, generator=g) + 0.5).to(dev)
    pick = [16, 32, 32, 1, 4, 1]
    eager = ops.w8a8_gemm(xq, xs, w, ws, None, torch.bfloat16, pick)
    compiled = torch.compile(lambda a: ops.w8a8_gemm(a, xs, w, ws, None, torch.bfloat16, pick), fullgraph=True,
                             backend="eager")
    assert torch.equal(compiled(xq), eager)
    ref = (xq.float() * xs) @ (w.float() * ws.reshape(-1, 1)).T
    assert float((eager.float() - ref).norm() / ref.norm()) < 8e-3


def test_the_capability_lookup_traces_under_torch_compile(monkeypatch):
    """A compiled call may be the first to ask for the device's compute capability (the routes apply per
    capability): dynamo takes the answer as a constant instead of tracing the driver query."""
    from fvq_fp8.kernels import gemm

    calls = []

    def hopper(index=None):
        calls.append(index)
        return (9, 0)

    monkeypatch.setattr(torch.cuda, "get_device_capability", hopper)
    monkeypatch.setattr(gemm, "_CAPABILITIES", {})
    compiled = torch.compile(lambda t: t * (2 if gemm._capability(0) == (9, 0) else 3), fullgraph=True,
                             backend="eager")
    assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 2.0))
    assert gemm._capability(0) == (9, 0)
    assert calls == [0], f"asked {len(calls)} times: traced, not taken as a constant (unmarked: twice)"


def test_the_capability_query_is_marked_as_torch_compilers_decorator_marks():
    """gemm marks the query constant without torch.compiler.assume_constant_result, which imports torch._dynamo (two
    seconds at every `import fvq_fp8`): the mark must stay the one the decorator sets in this torch."""
    from fvq_fp8.kernels import gemm

    def probe() -> None: ...

    marked = torch.compiler.assume_constant_result(probe)
    assert vars(marked) == {"_dynamo_marked_constant": True}, vars(marked)
    assert vars(gemm._ask_capability) == vars(marked)


def test_importing_the_plugins_and_the_cli_does_not_import_dynamo():
    """torch._dynamo costs two seconds to import; a model that is never compiled, and the CLI, should not pay it."""
    import subprocess
    import sys

    code = ("import sys, fvq_fp8, fvq_int8, fvq_awq, fastvideo_quant.cli as cli; cli.build_parser(); "
            "print('torch._dynamo' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr[-2000:]


def _fp8_routes_module():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    spec = importlib.util.spec_from_file_location("fp8_routes", root / "benchmarks" / "fp8_routes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_route_derivation_rules_on_synthetic_sweeps():
    """fp8_routes.derive: up to M=256 the Triton GEMM unless _scaled_mm is > 10% faster; above, the faster of the
    Triton GEMM and a padded _scaled_mm (P >= the interval's last M) where it beats plain _scaled_mm by 5%; a later
    sweep's row for the same (K, N, M) replaces an earlier one."""
    routes = _fp8_routes_module()

    def row(m, triton, cublas, pad=None):
        r = {"K": 64, "N": 32, "M": m, "triton": {"16,32,32,1,4,1": triton}, "cublas_graph": cublas}
        if pad is not None:
            r["cublas_pad"] = pad
        return r

    rows = [row(100, 1.05, 1.0),  # (64, 128]: Triton within the 10% margin
            row(200, 1.2, 1.0),  # (192, 256]: _scaled_mm > 10% faster
            row(300, 1.0, 1.2, {"320": 1.1}),  # (256, 320]: Triton beats plain by 5%, and the pad
            row(352, 1.0, 1.0, {"320": 0.1, "384": 0.5, "512": 0.9}),  # (320, 384]: the fastest pad >= 384
            row(400, 1.0, 1.0, {"448": 0.97, "512": 0.97}),  # (384, 448]: neither is 5% ahead
            row(480, 1.0, 1.0, {"512": 0.9})]
    shapes, pads = routes.derive(rows)
    assert shapes == {"64x32": [[65, 128, [16, 32, 32, 1, 4, 1]], [257, 320, [16, 32, 32, 1, 4, 1]]]}
    assert pads == {"64x32": [[321, 384, 384], [449, 512, 512]]}
    newer = routes.latest(rows + [row(480, 1.0, 1.0, {"512": 0.99})])
    assert routes.derive(newer)[1] == {"64x32": [[321, 384, 384]]}


def test_route_derivation_with_two_measurements():
    """With harness and chain rows: the Triton pick is the best over both (geometric mean), it keeps an interval up
    to M=256 only if _scaled_mm is not > 10% faster in either measurement, rows of a measurement not asked for are
    left out, and rows without a "mode" are harness rows."""
    routes = _fp8_routes_module()

    def row(m, mode, triton, cublas):
        r = {"K": 64, "N": 32, "M": m, "triton": triton, "cublas_graph": cublas}
        return r if mode is None else {**r, "mode": mode}

    a, b = "16,32,32,1,4,1", "64,32,32,8,4,1"
    rows = [row(20, None, {a: 1.0, b: 1.3}, 2.0), row(20, "chain", {a: 1.0, b: 0.6}, 2.0),  # b: 0.88x a's
            # (64, 128]: _scaled_mm 8% ahead over both, but 17% ahead one call at a time: it takes the interval
            row(100, None, {a: 1.17}, 1.0), row(100, "chain", {a: 1.0}, 1.0)]
    shapes, _ = routes.derive(routes.latest(rows, ("harness", "chain")))
    assert shapes == {"64x32": [[1, 32, [64, 32, 32, 8, 4, 1]]]}
    shapes, _ = routes.derive(routes.latest(rows, ("harness",)))
    assert shapes == {"64x32": [[1, 32, [16, 32, 32, 1, 4, 1]]]}
    shapes, _ = routes.derive(routes.latest(rows, ("chain",)))
    assert shapes == {"64x32": [[1, 32, [64, 32, 32, 8, 4, 1]], [65, 128, [16, 32, 32, 1, 4, 1]]]}
