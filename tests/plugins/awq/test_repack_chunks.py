"""repack_to_kernel works in chunks of output rows (to bound its memory on load): several chunks, a ragged last one,
and one chunk give the same kernel tensors, which de-quantize to AutoAWQ's weight exactly."""

import pytest
import torch
from fvq_awq import format as awq_format
from fvq_awq import layout
from fvq_awq.format import dequantize_awq


@pytest.mark.parametrize("k, n, group", [(128, 40, 32), (256, 24, 256), (96, 64, 32)])
def test_chunked_repack_matches_one_chunk_and_the_reference(monkeypatch, k, n, group):
    g = torch.Generator().manual_seed(k + n)
    qweight = torch.randint(-2**31, 2**31 - 1, (k, n // 8), generator=g, dtype=torch.int64).to(torch.int32)
    qzeros = torch.randint(-2**31, 2**31 - 1, (k // group, n // 8), generator=g, dtype=torch.int64).to(torch.int32)
    scales = torch.rand(k // group, n, generator=g).half()
    whole = layout.repack_to_kernel(qweight, qzeros, scales, group)
    monkeypatch.setattr(awq_format, "PACK_CHUNK_NUMEL", 16 * k)  # 16 output rows a chunk: n / 16 is not whole for 40
    chunked = layout.repack_to_kernel(qweight, qzeros, scales, group)
    assert all(torch.equal(a, b) for a, b in zip(whole[:3], chunked[:3])) and whole[3] == chunked[3]
    reference = dequantize_awq(qweight, qzeros, scales).t()  # float32 [out, in]
    assert torch.equal(layout.dequantize_kernel(*chunked), reference)
