"""A warning for stored weight scales that imply implausibly large weights — what a checkpoint whose scales were
stored as their reciprocal loads as (``448 / amax``, the quantization multiplier, where fp8 reads the de-quantization
multiplier ``amax / 448``: ``weight_scale_inv`` is one despite its name, docs/formats.md). Such a load passes every
check (the scales are finite and > 0) and gives outputs off by a factor of ~1e5.

Not an error: a weight this large is conceivable. ``validate_loaded_weights`` returns the layer's
:class:`Fp8ScaleWarning` (:func:`implausible`), and the loader issues one warning for the load once every layer has
passed, naming every layer that returned one (``fastvideo_quant.processing.warn_together``). Nothing is kept between
loads, and nothing runs on the forward path.
"""

from __future__ import annotations

import torch

from fastvideo_quant.errors import CheckpointWarning
from fvq_fp8.format import FP8_MAX

#: The largest de-quantized weight (``448 x scale``) taken as plausible. Trained linear layers' weights are far
#: below it (|w| well under 10, outlier channels included: the outliers of LLM.int8 are activations'), and so is
#: fp8's own range (448); a scale stored as its reciprocal implies ``448**2 / amax``, above 1e4 for any layer whose
#: true largest weight is below 20 — every layer seen in practice. A true scale above ``1e4 / 448`` (a weight over
#: 1e4) is what it takes to warn wrongly.
IMPLAUSIBLE_WEIGHT = 1e4


class Fp8ScaleWarning(CheckpointWarning):
    """fp8 weight scales that imply implausibly large weights (:data:`IMPLAUSIBLE_WEIGHT`): a load that went through,
    likely with scales stored as their reciprocal."""


def implausible(layer: torch.nn.Module, names: list[str]) -> Fp8ScaleWarning | None:
    """The warning for ``layer`` when one of its weight scales ``names`` implies a weight above
    :data:`IMPLAUSIBLE_WEIGHT` (naming the largest), else None. Reads the layer only."""
    from fvq_fp8.loading import layer_name

    worst = None
    for name in names:
        scale = getattr(layer, name, None)
        if isinstance(scale, torch.Tensor) and scale.numel():
            implied = FP8_MAX * float(scale.detach().float().amax())
            if implied > IMPLAUSIBLE_WEIGHT and (worst is None or implied > worst[1]):
                worst = (f"{layer_name(layer)}.{name}", implied)
    if worst is None:
        return None
    tensor, implied = worst
    return Fp8ScaleWarning(
        f"fp8: the weight scales of layer {layer_name(layer)!r} imply de-quantized weights up to |w| = {implied:.3g} "
        f"({FP8_MAX:g}, the largest float8 e4m3 value, x {implied / FP8_MAX:.3g} in {tensor!r}), where linear layers' "
        f"weights are far below {IMPLAUSIBLE_WEIGHT:.0e}. A checkpoint that stores each scale as its reciprocal "
        "(448 / amax, the quantization multiplier; fp8 reads the de-quantization multiplier amax / 448 — "
        "weight_scale_inv is one despite its name) loads like this, and its outputs come out orders of magnitude too "
        "large: check how it was exported, and re-export it with w ≈ fp8 x scale. The layers are loaded as stored "
        "(a weight this large is possible, so this is not an error)")
