"""The AWQ quantizer's group range: zero is always inside it (constant and one-sided groups), groups that straddle zero
quantize exactly as AutoAWQ's formula does, and fp16 scales out of range are refused (too large) or harmless (tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fvq_awq.format import dequantize_awq, unpack_awq
from fvq_awq.quantizer import awq_scale_search, quantize_weight
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, random_state_dict
from fastvideo_quant.errors import FastVideoQuantError, QuantizeError
from fastvideo_quant.quantization import get_quantization_config
from fastvideo_quant.quantize import quantize_checkpoint

MODES = ["rtn", "aware"]
FP16_ULP = 2.0**-11  # fp16's relative rounding of the stored scale


def _acts(k: int, tokens: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(tokens, k, generator=torch.Generator().manual_seed(seed))


def _quant(w: torch.Tensor, mode: str, group: int = 32, **kw) -> dict[str, torch.Tensor]:
    return quantize_weight(w, _acts(w.shape[1]) if mode == "aware" else None, group_size=group, **kw)


def _deq(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return dequantize_awq(t["qweight"], t["qzeros"], t["scales"]).t().float()  # [out, in]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _gaussian(n: int = 64, k: int = 256, std: float = 0.3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * std


# --- the previous algorithm (AutoAWQ's pseudo_quantize_tensor), the reference for groups that straddle zero ---------
def _old_grid(w, group, max_val=None, min_val=None):
    wg = w.reshape(w.shape[0], -1, group)
    max_val = wg.amax(-1) if max_val is None else max_val
    min_val = wg.amin(-1) if min_val is None else min_val
    scales = ((max_val - min_val).clamp(min=1e-5) / 15).to(torch.float16).to(torch.float32)
    zeros = (-torch.round(min_val / scales)).clamp(0, 15)
    return scales, zeros


def _old_codes(w, scales, zeros, group):
    wg = w.reshape(w.shape[0], -1, group)
    return torch.clamp(torch.round(wg / scales[..., None]) + zeros[..., None], 0, 15).reshape(w.shape)


def _old_rtn(w, group):
    scales, zeros = _old_grid(w, group)
    return _old_codes(w, scales, zeros, group), scales, zeros


def _old_clip(w, x, group, n_grid=20, max_shrink=0.5):
    out, k = w.shape
    g = k // group
    wg, xg = w.reshape(out, g, group), x.reshape(-1, g, group)
    best_err = torch.full((out, g), float("inf"))
    best_max, best_min = wg.amax(-1), wg.amin(-1)
    ref = torch.einsum("tgk,ogk->tog", xg, wg)
    for i in range(int(max_shrink * n_grid)):
        ratio = 1 - i / n_grid
        mx, mn = wg.amax(-1) * ratio, wg.amin(-1) * ratio
        scales, zeros = _old_grid(w, group, mx, mn)
        q = _old_codes(w, scales, zeros, group).reshape(out, g, group)
        deq = (q - zeros[..., None]) * scales[..., None]
        err = (torch.einsum("tgk,ogk->tog", xg, deq) - ref).pow(2).mean(0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, mx, best_max)
        best_min = torch.where(better, mn, best_min)
    scales, zeros = _old_grid(w, group, best_max, best_min)
    return _old_codes(w, scales, zeros, group), scales, zeros


def _tensors(q, scales, zeros) -> dict[str, torch.Tensor]:
    from fvq_awq.format import pack_awq

    return {"qweight": pack_awq(q.t().to(torch.int32)), "qzeros": pack_awq(zeros.t().to(torch.int32)),
            "scales": scales.t().contiguous().to(torch.float16)}


# --- zero in every group's range ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", [0.5, -0.5, 3.0, -1e-3, 0.0])
def test_constant_group_is_exact(mode: str, value: float):
    w = torch.full((8, 64), value)
    t = _quant(w, mode)
    d = _deq(t)
    assert torch.isfinite(t["scales"].float()).all() and (t["scales"].float() > 0).all()
    if value == 0.0:
        assert torch.equal(d, w)  # all-zero group: exactly zero, with a finite positive scale
    else:
        assert (d - w).abs().max().item() <= abs(value) * FP16_ULP, (d[0, :3], value)


@pytest.mark.parametrize("mode", MODES)
def test_mixed_constant_groups_in_one_row(mode: str):
    w = torch.zeros(8, 128)
    for g, v in enumerate([0.5, -2.0, 0.0, 1e-2]):
        w[:, 32 * g:32 * (g + 1)] = v
    d = _deq(_quant(w, mode))
    assert torch.allclose(d, w, rtol=FP16_ULP, atol=0)


def _one_sided(name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return {"uniform [1, 2]": 1 + torch.rand(64, 256, generator=gen),
            "uniform [-2, -1]": -1 - torch.rand(64, 256, generator=gen),
            "gaussian + 1 offset": 1.0 + torch.randn(64, 256, generator=gen) * 0.3,
            "gaussian - 1 offset": -1.0 + torch.randn(64, 256, generator=gen) * 0.3}[name]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["uniform [1, 2]", "uniform [-2, -1]", "gaussian + 1 offset", "gaussian - 1 offset"])
def test_one_sided_groups_error_like_gaussian(mode: str, name: str):
    control = _gaussian()
    e_control = _rel(_deq(_quant(control, mode)), control)
    w = _one_sided(name)
    t = _quant(w, mode)
    e = _rel(_deq(t), w)
    assert e <= 1.2 * e_control, (name, e, e_control)
    # the output too, through the activations the aware mode saw
    x = _acts(256)
    assert _rel(x @ _deq(t).t(), x @ w.t()) <= 1.2 * _rel(x @ _deq(_quant(control, mode)).t(), x @ control.t())


@pytest.mark.parametrize("group", [32, 64, 128, -1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_straddling_groups_unchanged_bit_for_bit(group: int, seed: int):
    w = _gaussian(n=64, k=256, std=0.02, seed=seed)
    g = 256 if group == -1 else group
    wg = w.reshape(64, -1, g)
    assert (wg.amax(-1) > 0).all() and (wg.amin(-1) < 0).all()  # every group straddles zero
    x = _acts(256, tokens=128, seed=seed + 10)
    for got, ref in [(quantize_weight(w, group_size=group), _tensors(*_old_rtn(w, g))),
                     (quantize_weight(w, x, group_size=group), _tensors(*_old_clip(w, x, g)))]:
        for key in ("qweight", "qzeros", "scales"):
            assert torch.equal(got[key], ref[key]), key
        assert torch.equal(unpack_awq(got["qweight"]), unpack_awq(ref["qweight"]))


def test_scale_search_straddling_unchanged_and_one_sided_ok():
    w = _gaussian(n=32, k=128, std=0.02)
    x = _acts(128, tokens=128)
    t, s = awq_scale_search(w, x, group_size=32)
    # the reference: the same alpha grid with the old RTN (s normalized as sqrt(max) * sqrt(min), the error squared in
    # float64, as the search computes them so that 1e19-sized activations overflow neither)
    x_mean, ref, best = x.abs().mean(0), x @ w.t(), (float("inf"), None)
    for i in range(20):
        si = x_mean.pow(i / 19).clamp(min=1e-4)
        si = si / (si.max().sqrt() * si.min().sqrt())
        q, sc, z = _old_rtn(w * si[None, :], 32)
        deq = ((q.reshape(32, -1, 32) - z[..., None]) * sc[..., None]).reshape(32, 128)
        err = ((x / si) @ deq.t() - ref).double().pow(2).mean().item()
        if err < best[0]:
            best = (err, _tensors(q, sc, z), si)
    assert torch.equal(s, best[2])
    for key in ("qweight", "qzeros", "scales"):
        assert torch.equal(t[key], best[1][key]), key
    # one-sided weight: the folded output error is no worse than for the Gaussian
    w1 = 1 + torch.rand(32, 128, generator=torch.Generator().manual_seed(4))
    t1, s1 = awq_scale_search(w1, x, group_size=32)
    e1 = _rel((x / s1) @ _deq(t1).t(), x @ w1.t())
    e0 = _rel((x / s) @ _deq(t).t(), ref)
    assert e1 <= 1.2 * e0, (e1, e0)


def test_through_the_config_entry_point():
    cfg = get_quantization_config("awq").from_config({"quant_method": "awq", "group_size": 32})
    w = torch.full((8, 64), 0.5)
    for x in (None, _acts(64)):
        d = _deq(cfg.quantize_weight(w, prefix="lin", activations=x))
        assert (d - w).abs().max().item() <= 0.5 * FP16_ULP


# --- fp16 scale range -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_scale_overflow_refused_naming_tensor_group_and_limit(mode: str):
    w = _gaussian(n=8, k=128, std=1.0)
    w[5, 40] = 3e6
    with pytest.raises(QuantizeError) as info:
        _quant(w, mode, prefix="blocks.0.attn.to_q")
    msg = str(info.value)
    assert "'blocks.0.attn.to_q'" in msg and "3e+06" in msg and "65504" in msg, msg
    assert "output row 5" in msg and "group 1" in msg, msg
    assert "modules_to_not_convert" in msg or "--skip" in msg, msg


def test_scale_search_overflow_refused():
    w = _gaussian(n=8, k=128, std=3e5)
    with pytest.raises(QuantizeError, match=r"'lin'.*max \|w\|.*65504"):
        awq_scale_search(w, _acts(128), group_size=32, prefix="lin")


def test_config_entry_point_refuses_inf_scales():
    cfg = get_quantization_config("awq").from_config({"quant_method": "awq", "group_size": 128})
    with pytest.raises(QuantizeError, match="65504"):
        cfg.quantize_weight(torch.randn(8, 128) * 3e5, prefix="lin")


@pytest.mark.parametrize("mode", MODES)
def test_largest_scale_that_fits_is_kept(mode: str):
    w = torch.zeros(8, 32)
    w[:, 0], w[:, 1] = 4.8e5, -4.8e5  # (max - min) / 15 = 64000 < 65504
    t = _quant(w, mode)
    assert torch.isfinite(t["scales"].float()).all()
    assert _rel(_deq(t), w) < 0.1


def test_non_finite_weight_refused():
    w = _gaussian(n=8, k=64)
    w[2, 7] = float("nan")
    with pytest.raises(QuantizeError, match=r"'lin'.*not finite.*\[2, 7\]"):
        quantize_weight(w, group_size=32, prefix="lin")


def test_fvq_quantize_names_the_tensor(tmp_path: Path):
    cfg = DemoConfig(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256, num_layers=1,
                     in_channels=32, num_tokens=16)
    sd = random_state_dict(cfg, seed=0)
    name = next(n for n in sorted(sd) if n.endswith("proj.weight") and sd[n].shape[1] % 128 == 0)
    sd[name] = (sd[name].float() * 1e7).to(sd[name].dtype)
    src = tmp_path / "src"
    src.mkdir()
    save_file(sd, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(FastVideoQuantError, match=rf"{name.replace('.', '[.]')}.*65504"):
        quantize_checkpoint(src, tmp_path / "q", "awq")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factor", [1e-4, 1e-5, 3e-6])
def test_tiny_weights_keep_gaussian_error(mode: str, factor: float):
    w0 = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) / 16
    e_control = _rel(_deq(_quant(w0, mode, group=128)), w0)
    w = w0 * factor
    t = _quant(w, mode, group=128)
    assert torch.isfinite(t["scales"].float()).all() and (t["scales"].float() > 0).all()
    assert _rel(_deq(t), w) <= 1.5 * e_control, (factor, _rel(_deq(t), w), e_control)


@pytest.mark.parametrize("mode", MODES)
def test_zero_group_next_to_tiny_group(mode: str):
    w = torch.zeros(8, 64)
    w[:, 32:] = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)) * 1e-5
    t = _quant(w, mode)
    d = _deq(t)
    assert torch.equal(d[:, :32], w[:, :32])
    assert _rel(d[:, 32:], w[:, 32:]) < 0.2


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_activations_are_refused_naming_the_module(bad) -> None:
    """Every candidate's output error would be NaN (the scale search then had no pick: a bare TypeError)."""
    from fvq_awq.config import AWQConfig

    w, x = torch.randn(16, 128), torch.randn(4, 128)
    x[1, 3] = bad
    with pytest.raises(QuantizeError, match=r"AWQ quantize 'blocks\.0\.proj' \(weight \[16, 128\]\): 1 calibration "
                                            r"activation value\(s\) are not finite"):
        AWQConfig(group_size=32).quantize_weight(w, prefix="blocks.0.proj", activations=x)
    with pytest.raises(QuantizeError, match="calibration activation value"):
        awq_scale_search(w, x, group_size=32, prefix="blocks.0.proj")
