"""The bitsandbytes LLM.int8() checkpoint format: vector-wise int8 weights with row absmax.

Facts from bitsandbytes 0.50 (``functional.int8_vectorwise_quant``, its default
kernel in ``backends/default/ops.py``, and ``nn/modules.py``'s
``Linear8bitLt._save_to_state_dict``):

* ``weight``: int8 ``[out, in]``, row-major; ``weight[n, k] = round(w[n, k] * 127 / SCB[n])``
  (``torch.round``, i.e. half to even).
* ``SCB``: float32 ``[out]``, the absmax of each output row of the float weight.
* ``weight_format``: a 0-d uint8 tensor; ``0`` means ``"row"`` (the mapping is
  ``utils.LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {"row": 0, "col32": 1, "col_turing": 2,
  "col_ampere": 3}``). bitsandbytes >= 0.45 only writes and reads ``"row"``; a missing
  tensor also means ``"row"`` (``maybe_rearrange_weight``).

Dequantization is ``weight * SCB[:, None] / 127`` (``int8_vectorwise_dequant``).
Because the statistic is per output row, quantizing a fused q/k/v or gate/up
weight equals quantizing each shard, and a row-parallel shard (a slice of the
input dim) keeps every row's scale valid.
"""

from __future__ import annotations

import torch

from fastvideo_quant.errors import WeightLoadError

WEIGHT_FORMATS = {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
ROW_FORMAT = WEIGHT_FORMATS["row"]
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' vector-wise quantization of a float ``[out, in]`` weight: (int8 weight, SCB).

    Computed in float32 like bitsandbytes' kernel. An all-zero row gets SCB 0 and
    int8 zeros (bitsandbytes would divide by zero there).
    """
    if weight.dim() != 2 or weight.dtype not in FLOAT_DTYPES:
        raise WeightLoadError(
            f"int8 quantize: expected a 2-D float16/bfloat16/float32 weight [out, in], "
            f"found shape {tuple(weight.shape)} dtype {weight.dtype}"
        )
    w = weight.float()
    scb = w.abs().amax(dim=1)
    inv = torch.where(scb > 0, 127.0 / scb, torch.zeros_like(scb))
    q = torch.round(w * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scb


def dequantize_rows(weight: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    """Float32 ``[out, in]`` weight from int8 ``weight`` and its row absmax ``SCB``."""
    check_pair(weight, scb)
    return weight.float() * (scb.float()[:, None] / 127.0)


def check_pair(weight: torch.Tensor, scb: torch.Tensor, where: str = "int8 layer") -> None:
    """Check that ``weight`` is int8 ``[out, in]`` and ``SCB`` float32 ``[out]``; name both otherwise."""
    if weight.dtype != torch.int8 or weight.dim() != 2:
        raise WeightLoadError(
            f"{where}: tensor 'weight' must be int8 [out, in]; found dtype {weight.dtype} shape {tuple(weight.shape)}"
        )
    if scb.dim() != 1 or scb.shape[0] != weight.shape[0]:
        raise WeightLoadError(
            f"{where}: tensor 'SCB' must be float32 [out] = [{weight.shape[0]}] (one absmax per row of "
            f"'weight' {tuple(weight.shape)}); found shape {tuple(scb.shape)}. A bitsandbytes checkpoint "
            "stores SCB per output row; re-save it with bitsandbytes >= 0.45"
        )


def bad_scb(weight: torch.Tensor, scb: torch.Tensor,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, str]:
    """``(mask of the SCB rows that break a rule, what they should be)``; an all-false mask when none does.

    Every SCB is a row's absmax: finite and >= 0, small enough that the de-quantized row's absolute sum fits
    ``dtype`` (the layer's: inputs of magnitude 1 give a finite output), and 0 only for an all-zero row of ``weight``
    (bitsandbytes would de-quantize any other row to zeros). The first rule broken is the one reported.
    """
    s = scb.float()
    bad = ~torch.isfinite(s) | (s < 0)
    if bool(bad.any()):
        return bad, "finite and >= 0 (a row's absmax)"
    limit = torch.finfo(dtype).max
    row_l1 = weight.abs().sum(dim=1, dtype=torch.float32) * (s / 127)  # the output for inputs +-1 of the row's signs
    if bool((row_l1 > limit).any()):
        return row_l1 > limit, (
            f"such that the de-quantized row's absolute sum (SCB / 127 x sum |weight|: the output for inputs of "
            f"magnitude 1) fits the layer's {dtype} (at most {limit:.4g}); beyond it the output is inf/NaN: the "
            "scale is corrupt (a flipped exponent bit) or meant for another dtype")
    zero = (s == 0) & weight.ne(0).any(dim=1)
    return zero, "> 0 where the row of 'weight' is not all zero (SCB 0 de-quantizes the row to zeros)"


def weight_format_name(value: int | torch.Tensor) -> str:
    """The name of a stored ``weight_format`` code; WeightLoadError for an unknown code."""
    code = int(value.item() if isinstance(value, torch.Tensor) else value)
    names = {v: k for k, v in WEIGHT_FORMATS.items()}
    if code not in names:
        raise WeightLoadError(f"tensor 'weight_format': unknown code {code}; bitsandbytes knows {WEIGHT_FORMATS}")
    return names[code]


def check_row_format(value: int | torch.Tensor, where: str = "int8 layer") -> None:
    """Accept only ``"row"``: the tiled col32/col_turing/col_ampere layouts are gone from bitsandbytes."""
    name = weight_format_name(value)
    if name != "row":
        raise WeightLoadError(
            f"{where}: tensor 'weight_format' is {name!r} (code {WEIGHT_FORMATS[name]}); only 'row' (0) is "
            "supported, as in bitsandbytes >= 0.45. Re-save the checkpoint with a current bitsandbytes"
        )


def checkpoint_tensors(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors bitsandbytes saves for one ``Linear8bitLt``: weight, SCB and weight_format."""
    q, scb = quantize_rows(weight)
    return {"weight": q, "SCB": scb, "weight_format": torch.tensor(ROW_FORMAT, dtype=torch.uint8)}
