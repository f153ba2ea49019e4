"""The conformance suite tries the inputs a model gives ``apply``: row counts on both sides of kernels' dispatch limits,
a 4-D input and inputs with no rows.

Each toy below is the unquantized method with one bug a mutation review found passing the whole suite (it tried 1, 6,
8 and 65 rows, 2-D and 3-D inputs only): a path that drops the bias for 9-64 rows or from 128 rows on, an output
that keeps only the first leading dim, a kernel launched on an empty input. The checks are called directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fvq_unquantized.method import UnquantizedLinearMethod

from fastvideo_quant.layers.replicated import ReplicatedLinear
from fastvideo_quant.testing import conformance as C
from fastvideo_quant.testing.conformance.input_shapes import SWEEP_TOKEN_COUNTS, TOKEN_COUNTS, sweep_dtypes

sys.path.insert(0, str(Path(__file__).parent))  # (--import-mode=importlib does not put this folder on sys.path)
import broken_plugins  # noqa: E402
from broken_plugins import Plugin, failure  # noqa: E402


class _RowsMethod(UnquantizedLinearMethod):
    """The unquantized method, flattening leading dims and returning early on no rows (as fp8's and int8's do), with
    a hook for each toy's bug."""

    def apply(self, layer, x, bias=None):
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] == 0:
            return x.new_empty(*x.shape[:-1], layer.weight.shape[0])
        return self._restore(x, self._kernel(layer, x2, bias))

    def _kernel(self, layer, x2, bias):
        return F.linear(x2, layer.weight, bias)

    def _restore(self, x, out):
        return out.reshape(*x.shape[:-1], out.shape[-1])


class SmallMBiasMethod(_RowsMethod):
    def _kernel(self, layer, x2, bias):
        if 9 <= x2.shape[0] <= 64:  # bug: the small-M kernel's path forgets the bias
            bias = None
        return super()._kernel(layer, x2, bias)


class LargeMBiasMethod(_RowsMethod):
    def _kernel(self, layer, x2, bias):
        if x2.shape[0] >= 128:  # bug: the tiled GEMM path forgets the bias
            bias = None
        return super()._kernel(layer, x2, bias)


class FirstDimOnlyMethod(_RowsMethod):
    def _restore(self, x, out):
        return out if x.dim() == 2 else out.reshape(x.shape[0], -1, out.shape[-1])  # bug: right for 3-D only


class EmptyLaunchMethod(_RowsMethod):
    def apply(self, layer, x, bias=None):
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] == 0:  # bug: where the empty-input branch belongs
            raise RuntimeError("kernel launch with M=0")
        return self._restore(x, self._kernel(layer, x2, bias))


class FlatEmptyMethod(_RowsMethod):
    def apply(self, layer, x, bias=None):
        if x.numel() == 0:  # bug: the empty output is not given the input's leading dims
            return x.new_empty(0, layer.weight.shape[0])
        return super().apply(layer, x, bias)


TOYS = {"toy_rows_ok": _RowsMethod, "toy_small_m_bias": SmallMBiasMethod, "toy_large_m_bias": LargeMBiasMethod,
        "toy_first_dim_only": FirstDimOnlyMethod, "toy_empty_launch": EmptyLaunchMethod,
        "toy_flat_empty": FlatEmptyMethod}


@pytest.fixture(scope="module")
def toys():
    plugins = {name: Plugin(broken_plugins._config(name, method, f"{method.__name__}Config"), method, True)
               for name, method in TOYS.items()}
    with broken_plugins.registered(plugins):
        yield


def test_the_rows_span_the_dispatch_limits() -> None:
    """Both sides of 16 (small-M kernels), 64 and 128 (tiles), and a partial tile past two whole ones."""
    rows = TOKEN_COUNTS + SWEEP_TOKEN_COUNTS
    for limit in (16, 64, 128):
        assert limit in rows and limit + 1 in rows
    assert 1 in TOKEN_COUNTS and 257 in rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CPU only: a GPU sweeps every dtype")
def test_the_sweep_runs_in_bfloat16_where_it_can_on_cpu(toys) -> None:
    assert sweep_dtypes(C.Subject("toy_rows_ok")) == (torch.bfloat16,)
    assert sweep_dtypes(C.Subject("toy_rows_ok", act_dtypes=(torch.float32, torch.float16))) == (torch.float32,)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_sweep_runs_in_every_dtype_on_a_gpu(toys) -> None:
    assert sweep_dtypes(C.Subject("toy_rows_ok", act_dtypes=(torch.float32, torch.float16))) == (torch.float32,
                                                                                                torch.float16)
    msg = failure(C.check_apply, C.Subject("toy_small_m_bias"), "replicated", torch.float16)
    assert "off at [16, 17, 33, 64] rows" in msg, msg


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_a_correct_method_passes(toys, dtype: torch.dtype) -> None:
    s = C.Subject("toy_rows_ok")
    for kind in C.LAYER_KINDS:
        C.check_apply(s, kind, dtype)


@pytest.mark.parametrize(("method", "first", "off", "right"), [
    ("toy_small_m_bias", 16, [16, 17, 33, 64], [1, 2, 65, 128, 129, 257]),
    ("toy_large_m_bias", 128, [128, 129, 257], [1, 2, 16, 17, 33, 64, 65]),
])
def test_a_path_dropping_the_bias_fails_at_its_row_counts(toys, method: str, first: int, off: list[int],
                                                          right: list[int]) -> None:
    """The suite's 8-row, [2, 3, in], 1-row and 65-row inputs take neither path."""
    msg = failure(C.check_apply, C.Subject(method), "replicated", torch.bfloat16)
    assert f"[contract: apply: token count] method '{method}', ReplicatedLinear(" in msg, msg
    assert f"with {first} input rows (the 8-row input is within tolerance)" in msg, msg
    assert "relative error" in msg and "the output holds the bias 0.00 times (expected once)" in msg, msg
    assert f"off at {off} rows, right at {right} (kernels dispatch on the row count" in msg, msg
    assert "a small-M kernel, the last partial tile) for a missing bias or scale" in msg, msg


def test_an_output_keeping_the_first_dim_only_fails_on_a_4d_input(toys) -> None:
    s = C.Subject("toy_first_dim_only")
    msg = failure(C.check_apply, s, "replicated", torch.float32)
    assert "[contract: apply: 4-D input] method 'toy_first_dim_only', ReplicatedLinear(" in msg, msg
    assert "a [B, T, S, in] input [2, 3, 4, 256] (a video model's [batch, frames, tokens, in]) gave [2, 12, 128], " \
           "expected [2, 3, 4, 128]" in msg, msg
    assert "restore them all on the output (out.reshape(*x.shape[:-1], out.shape[-1]))" in msg, msg
    C.check_apply(s, "column", torch.float32)  # (the caller checks run on the replicated layer only)


def test_the_layer_passes_an_empty_input_on_to_apply() -> None:
    """Why zero rows are the method's to handle: the layers have no empty-input branch of their own."""
    class Probe(UnquantizedLinearMethod):
        def apply(self, layer, x, bias=None):
            self.seen = list(x.shape)
            return super().apply(layer, x, bias)

    layer = ReplicatedLinear(16, 8)
    layer.quant_method = probe = Probe()
    layer.weight.data.normal_()
    assert list(layer(torch.empty(2, 0, 16))[0].shape) == [2, 0, 8] and probe.seen == [2, 0, 16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_a_kernel_launched_on_no_rows_fails(toys, dtype: torch.dtype) -> None:
    msg = failure(C.check_apply, C.Subject("toy_empty_launch"), "replicated", dtype)
    assert "[contract: apply: zero rows] method 'toy_empty_launch', ReplicatedLinear(" in msg, msg
    assert (f"the layer's forward on an input [0, 256] {dtype} (no rows: an empty batch) raised RuntimeError: kernel "
            "launch with M=0") in msg, msg
    assert "if x.numel() == 0: return x.new_empty(*x.shape[:-1], 128)" in msg, msg


def test_an_empty_output_without_the_leading_dims_fails(toys) -> None:
    """[2, 0, in] answered with [0, out]: the layer's own output check refuses it, named as the suite's contract."""
    msg = failure(C.check_apply, C.Subject("toy_flat_empty"), "replicated", torch.float32)
    assert "[contract: apply: zero rows] method 'toy_flat_empty', ReplicatedLinear(" in msg, msg
    assert "the layer's forward on an input [2, 0, 256] torch.float32 (no rows: an empty batch) raised PluginError" in msg
    assert "returned shape [0, 128] for an input of shape [2, 0, 256]; expected [2, 0, 128]" in msg, msg
