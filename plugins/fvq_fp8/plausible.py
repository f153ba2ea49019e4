"""A warning for stored weight scales that imply implausibly large weights — what a checkpoint whose scales were
stored as their reciprocal loads as (``448 / amax``, the quantization multiplier, where fp8 reads the de-quantization
multiplier ``amax / 448``: ``weight_scale_inv`` is one despite its name, docs/formats.md). Such a load passes every
check (the scales are finite and > 0) and gives outputs off by a factor of ~1e5.

Not an error: a weight this large is conceivable. One warning a load, naming its layers: ``validate_loaded_weights``
notes each layer whose largest implied ``|w| = 448 x scale`` is above :data:`IMPLAUSIBLE_WEIGHT` (the loader validates
every layer before it processes any), and the first ``process_weights_after_loading`` after that warns for all the
layers noted and not yet processed. So the check runs once a layer at load time, never on the forward path.
"""

from __future__ import annotations

import threading
import warnings
import weakref

import torch

from fastvideo_quant.errors import CheckpointWarning
from fastvideo_quant.quantization.base import weights_processed
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


_lock = threading.Lock()
#: id(layer) → (the layer, weakly; the scale tensor's name; its largest implied weight), noted by validation.
_noted: dict[int, tuple[weakref.ref, str, float]] = {}
#: The layers the last warning named, until each is processed (its own processing then says nothing again).
_told: weakref.WeakSet = weakref.WeakSet()


def note(layer: torch.nn.Module, names: list[str]) -> None:
    """Record ``layer`` when one of its weight scales ``names`` implies a weight above :data:`IMPLAUSIBLE_WEIGHT`
    (reads the layer only)."""
    from fvq_fp8.loading import layer_name

    worst = None
    for name in names:
        scale = getattr(layer, name, None)
        if isinstance(scale, torch.Tensor) and scale.numel():
            implied = FP8_MAX * float(scale.detach().float().amax())
            if implied > IMPLAUSIBLE_WEIGHT and (worst is None or implied > worst[1]):
                worst = (f"{layer_name(layer)}.{name}", implied)
    with _lock:
        if worst is None or layer in _told:
            _noted.pop(id(layer), None)
        else:
            _noted[id(layer)] = (weakref.ref(layer), *worst)


def warn_once(layer: torch.nn.Module, limit: int = 3) -> None:
    """At ``layer``'s processing: one Fp8ScaleWarning for every noted layer not yet processed (``layer`` among them
    or not), unless the last warning named ``layer`` already."""
    from fvq_fp8.loading import layer_name

    with _lock:
        if layer in _told:
            _told.discard(layer)
            return
        if not _noted:
            return
        found = []
        for key, (ref, tensor, implied) in list(_noted.items()):
            held = ref()
            del _noted[key]
            if held is not None and (held is layer or not weights_processed(held)):
                found.append((held, tensor, implied))
        _told.update(held for held, _, _ in found if held is not layer)
    if not found:
        return
    layers = [layer_name(held) for held, _, _ in found]
    _, tensor, implied = max(found, key=lambda f: f[2])
    shown = ", ".join(map(repr, layers[:limit])) + (f" and {len(layers) - limit} more" if len(layers) > limit else "")
    warnings.warn(
        f"fp8: the weight scales of {len(layers)} layer(s) ({shown}) imply de-quantized weights up to |w| = "
        f"{implied:.3g} ({FP8_MAX:g}, the largest float8 e4m3 value, x {implied / FP8_MAX:.3g} in {tensor!r}), where "
        f"linear layers' weights are far below {IMPLAUSIBLE_WEIGHT:.0e}. A checkpoint that stores each scale as its "
        "reciprocal (448 / amax, the quantization multiplier; fp8 reads the de-quantization multiplier amax / 448 — "
        "weight_scale_inv is one despite its name) loads like this, and its outputs come out orders of magnitude too "
        "large: check how it was exported, and re-export it with w ≈ fp8 x scale. The layers are loaded as stored "
        "(a weight this large is possible, so this is not an error)",
        Fp8ScaleWarning, stacklevel=3,
    )

