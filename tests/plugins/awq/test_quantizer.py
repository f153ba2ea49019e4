"""The AWQ quantizer: round-to-nearest matches AutoAWQ's formula; activation-aware beats it."""

import torch
from fvq_awq.format import dequantize_awq, unpack_awq
from fvq_awq.quantizer import _dequant, awq_scale_search, quantize_weight, rtn


def _outlier_layer(seed: int = 0, k: int = 256, n: int = 64):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.02
    scale = torch.ones(k)
    scale[torch.randperm(k, generator=gen)[:6]] = 40.0  # a few outlier input channels, as in DiT activations

    def acts(tokens: int) -> torch.Tensor:
        return torch.randn(tokens, k, generator=gen) * scale

    return w, acts


def _rel(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


def test_rtn_follows_autoawq_formula():
    w, _ = _outlier_layer()
    t = quantize_weight(w, group_size=64)
    q = unpack_awq(t["qweight"]).float().t()  # [out, in]
    wg = w.reshape(64, -1, 64)
    s = ((wg.amax(-1) - wg.amin(-1)).clamp(min=1e-5) / 15).half().float()
    z = (-torch.round(wg.amin(-1) / s)).clamp(0, 15)
    expect = torch.clamp(torch.round(wg / s[..., None]) + z[..., None], 0, 15).reshape(64, -1)
    assert torch.equal(q, expect)
    assert torch.equal(t["scales"].float(), s.t())
    err = _rel(dequantize_awq(**t).t(), w)
    assert 0.02 < err < 0.12  # 4-bit: ~6% relative weight error for Gaussian weights


def test_activation_aware_beats_rtn_on_outlier_channels():
    w, acts = _outlier_layer()
    calib, test = acts(512), acts(512)  # evaluated on held-out activations
    ref = test @ w.t()
    e_rtn = _rel(test @ dequantize_awq(**quantize_weight(w, group_size=64)), ref)
    e_clip = _rel(test @ dequantize_awq(**quantize_weight(w, calib, group_size=64)), ref)
    tensors, s = awq_scale_search(w, calib, group_size=64)
    e_awq = _rel((test / s) @ dequantize_awq(**tensors), ref)
    assert e_clip < 0.9 * e_rtn, (e_clip, e_rtn)
    assert e_awq < 0.8 * e_rtn, (e_awq, e_rtn)


def test_group_minus_one_and_gemm_format_shapes():
    w, acts = _outlier_layer(k=128, n=32)
    t = quantize_weight(w, acts(64), group_size=-1)
    assert t["qweight"].shape == (128, 4) and t["qzeros"].shape == (1, 4) and t["scales"].shape == (1, 32)
    assert t["qweight"].dtype == torch.int32 and t["scales"].dtype == torch.float16


def test_huge_activations_give_the_search_they_would_at_a_normal_scale():
    """Activations near 1e19 squared overflowed float32: every candidate's error read inf, awq_scale_search raised a
    bare TypeError and the clip search quietly kept no clipping. The scale search squares its error in float64 (its
    floor on s, 1e-4, is on the activations' own scale, as AutoAWQ's: dividing them would move it); the clip search,
    which has no floor, takes them over their largest magnitude."""
    w, acts = _outlier_layer()
    calib = acts(128)
    tensors, s = awq_scale_search(w, calib * 1e19, group_size=64)
    ref_tensors, ref_s = awq_scale_search(w, calib, group_size=64)
    torch.testing.assert_close(s, ref_s, rtol=1e-5, atol=0)
    assert all(torch.equal(tensors[k], ref_tensors[k]) for k in tensors)
    for factor in (1e19, 1e-19):
        clipped = quantize_weight(w, calib * factor, group_size=64)
        assert all(torch.equal(clipped[k], v) for k, v in quantize_weight(w, calib, group_size=64).items())


def test_the_scale_search_keeps_its_floor_on_the_activations_own_scale():
    """Dividing the activations by their largest magnitude put quiet channels under s's 1e-4 floor when one channel
    is 1e5x the others: s moved by up to 25x, and the output error grew 15x (a diff reviewer's finding)."""
    w, acts = _outlier_layer()
    x = acts(128)
    x[:, 0] *= 1e5
    _, s = awq_scale_search(w, x, group_size=64)
    x_mean, ref, best = x.abs().mean(0), x @ w.t(), (float("inf"), None)
    for i in range(20):  # (AutoAWQ's grid on the raw activations)
        si = x_mean.pow(i / 19).clamp(min=1e-4)
        si = si / (si.max().sqrt() * si.min().sqrt())
        err = ((x / si) @ _dequant(*rtn(w * si[None, :], 64), 64).t() - ref).double().pow(2).mean().item()
        if err < best[0]:
            best = (err, si)
    assert torch.equal(s, best[1])


def test_calibration_without_tokens_is_refused_naming_the_module():
    import pytest

    from fastvideo_quant.errors import QuantizeError

    w, _ = _outlier_layer()
    for search in (lambda x: awq_scale_search(w, x, group_size=64, prefix="blocks.0.attn.to_q"),
                   lambda x: quantize_weight(w, x, group_size=64, prefix="blocks.0.attn.to_q")):
        with pytest.raises(QuantizeError, match=r"AWQ quantize 'blocks\.0\.attn\.to_q' \(weight \[64, 256\]\): the "
                                                r"calibration activations \[0, 256\] hold no tokens"):
            search(torch.empty(0, 256))
