"""Non-finite source weights: refused before any method quantizes them.

A NaN or inf weight makes every method's scales NaN or inf (fp8's ``amax / 448``, int8's ``SCB``, AWQ's group
ranges), and the checkpoint written then fails to load (``expected every entry finite``). ``fvq quantize`` checks each
weight it quantizes here, in the core flow, so every method — a third party's too — refuses it in the same words
before the method runs; the output is written atomically, so nothing reaches the destination.
"""

from __future__ import annotations

import torch

from fastvideo_quant.errors import QuantizeError
from fastvideo_quant.quantization.base import all_finite, as_model_shows


def describe_non_finite(tensor: torch.Tensor, what: str = "weight") -> str | None:
    """``"2 weight value(s) of 16384 are not finite, the first at [3, 5] = nan"``, or None when all are finite
    (integer and bool tensors always are; float8, which ``isfinite`` does not take, is checked as float32)."""
    if not tensor.is_floating_point():
        return None
    if tensor.element_size() == 1:
        tensor = tensor.float()
    if all_finite(tensor):  # (one reduction; the mask below only for the error)
        return None
    bad = ~torch.isfinite(tensor)
    first = tuple(int(i) for i in bad.nonzero()[0])
    return (f"{int(bad.sum())} {what} value(s) of {tensor.numel()} are not finite, the first at "
            f"[{', '.join(map(str, first))}] = {tensor[first].item()}")


def check_finite_weight(weight: torch.Tensor, name: str, file: str, method: str,
                        packed_modules_mapping: dict[str, list[str]] | None = None) -> None:
    """QuantizeError naming the tensor ``name`` (of checkpoint file ``file``), the count of NaN/inf values and the
    first one, when ``weight`` is not all finite. The ``--skip`` it mentions is the fused module's name for a part
    of one (``packed_modules_mapping``: ``gate_proj`` → ``gate_up_proj``), the name ``--skip`` takes there."""
    found = describe_non_finite(weight)
    if found is None:
        return
    module = as_model_shows(name.removesuffix(".weight"), packed_modules_mapping)
    raise QuantizeError(
        f"tensor {name!r} in {file} (shape {list(weight.shape)}, {weight.dtype}): expected finite weights to quantize, "
        f"but {found}. Method {method!r} would compute its scales from them and write NaN/inf tensors that no loader "
        "accepts. The source checkpoint is corrupt or was written by a broken export: re-export the tensor (--skip "
        f"{module} would only copy it unchanged, NaN/inf included). Nothing was written to the destination"
    )
