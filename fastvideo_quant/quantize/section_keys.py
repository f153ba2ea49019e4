"""The keys of a compressed-tensors ``quantization_config`` given to ``fvq quantize`` besides its scheme
(``config_groups``, ``format``, ``ignore``), as llm-compressor writes them into a checkpoint's config.json: the ones
that describe the checkpoint the section was copied from are accepted, the ones asking for work this writer does not
do are refused when set. Neither is written as given: the ``quantization_config`` written describes the checkpoint
written.

* Accepted, any value: the keys the method's config declares it leaves unread when loading
  (:attr:`~fastvideo_quant.quantization.base.QuantizationConfig.unread_checkpoint_keys`; fp8's and AWQ's list
  compressed-tensors' ``quantization_status``, ``global_compression_ratio``, ``version`` beside their own). This
  package's readers load a checkpoint alike whatever they say: ``quantization_status`` is the state of the model the
  section was saved from, and the section written says ``"compressed"`` whatever it says (the tensors written are;
  transformers reads them only so, ``compressed_tensors.COMPRESSED_STATUS``); ``global_compression_ratio`` is a figure
  measured on that model and ``version`` the compressed-tensors release that wrote it, both left out (AWQ's reader asks
  for ``version`` and reads every one alike, so it passes as read).
* Refused when set (not null, not empty), though a reader accepts them (null, or the values it can compute with:
  :func:`~fastvideo_quant.quantization.compressed_tensors.runtime_work_problem`): :data:`NOT_APPLIED`, and a group's
  ``output_activations`` (:data:`GROUP_NOT_APPLIED`). Each asks for tensors or a layout ``quantize_weight`` does not
  produce, and the section written would drop it silently.
* Accepted with a note (:func:`observer_notes`): a group's ``observer`` other than the min/max ones
  (:data:`MINMAX_OBSERVERS`), or ``observer_kwargs``. They say how llm-compressor chose the scales; the tensors are
  still of the scheme the section names, but fvq quantize computes its scales from min/max alone, so they can differ.
"""

from __future__ import annotations

import json
from typing import Any

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization.base import QuantizationConfig

#: Section keys whose value asks for work ``fvq quantize`` does not do (compressed-tensors ``base.py``,
#: ``QuantizationConfig``; ``SparsityCompressionConfig``; ``TransformConfig``), with what a set value asks.
NOT_APPLIED = {
    "kv_cache_scheme": "asks for the attention's KV cache to be quantized (k_scale / v_scale on the attention modules, "
                       "calibrated on their key and value outputs), and fvq quantize quantizes linear weights only",
    "sparsity_config": "describes a pruned model (weights stored sparse-compressed, or dense with their sparsity "
                       "structure recorded), and fvq quantize neither prunes weights nor stores them sparse",
    "transform_config": "asks for rotations (QuIP / SpinQuant transforms) of the weights and activations, and fvq "
                        "quantize applies none: the weights it writes are not rotated",
}
#: Config group keys whose value asks for work ``fvq quantize`` does not do (``QuantizationScheme``).
GROUP_NOT_APPLIED = {
    "output_activations": "asks for the layers' outputs to be quantized, and fvq quantize writes weights only (and "
                          "input activation scales where the scheme has static ones)",
}


def _is_set(value: Any) -> bool:
    """Whether a value asks for something: not null and not empty (llm-compressor writes ``{}`` or null for none)."""
    return value is not None and value != {} and value != []


def _refusal(key: str, value: Any, what: str, where: str) -> ConfigError:
    shown = json.dumps(value, default=repr)
    shown = shown if len(shown) <= 200 else shown[:200] + "..."
    return ConfigError(
        f"compressed-tensors config key {key}={shown} for {where}: it {what}. It would not be applied, and the "
        "quantization_config written would leave it out, so the checkpoint would not be what the config describes. "
        "Drop the key or set it to null (null or {}, what llm-compressor writes for a checkpoint without one, is "
        "accepted)"
    )


def check_not_applied(section: dict[str, Any], where: str) -> None:
    """ConfigError naming the first key of compressed-tensors ``section`` (``fvq quantize``'s options for method
    ``where``) that is set and asks for work this writer does not do (:data:`NOT_APPLIED`, :data:`GROUP_NOT_APPLIED`)."""
    for key, what in NOT_APPLIED.items():
        if _is_set(section.get(key)):
            raise _refusal(key, section[key], what, where)
    groups = section.get("config_groups")
    for name, group in groups.items() if isinstance(groups, dict) else ():
        for key, what in GROUP_NOT_APPLIED.items():
            if isinstance(group, dict) and _is_set(group.get(key)):
                raise _refusal(f"config_groups.{name}.{key}", group[key], what, where)


def without_unread(cls: type[QuantizationConfig], section: dict[str, Any]) -> dict[str, Any]:
    """``section`` without the keys ``cls`` declares it leaves unread when loading a checkpoint (its
    ``unread_checkpoint_keys``): the keys left are the ones ``fvq quantize`` refuses if ``from_config`` does not read
    them."""
    unread = getattr(cls, "unread_checkpoint_keys", frozenset())
    return {k: v for k, v in section.items() if k not in unread}


#: compressed-tensors observers whose scales are the range of the values seen, as fvq quantize computes them: the
#: weights' own min/max (over each channel, group or block), and for static input scales the amax over the calibration
#: tokens. ``minmax`` on input activations averages per-batch ranges in llm-compressor, close to the same for
#: calibration data of one distribution. Others (``mse``: a searched, clipped range) choose scales differently.
MINMAX_OBSERVERS = frozenset({"minmax", "static_minmax", "memoryless_minmax", "memoryless"})


def observer_notes(section: dict[str, Any]) -> list[str]:
    """The summary note for the groups of compressed-tensors ``section`` whose weights (or static input activations)
    name an ``observer`` not in :data:`MINMAX_OBSERVERS`, or set ``observer_kwargs``: fvq quantize does not run it."""
    found = []
    groups = section.get("config_groups")
    for name, group in groups.items() if isinstance(groups, dict) else ():
        for part in ("weights", "input_activations"):
            args = group.get(part) if isinstance(group, dict) else None
            if not isinstance(args, dict) or (part == "input_activations" and args.get("dynamic") is True):
                continue  # (a dynamic scale is computed at run time: no observer chose it)
            observer, kwargs = args.get("observer"), args.get("observer_kwargs")
            if (observer is not None and observer not in MINMAX_OBSERVERS) or _is_set(kwargs):
                shown = f"observer={json.dumps(observer)}" + (f" observer_kwargs={json.dumps(kwargs, default=repr)}"
                                                              if _is_set(kwargs) else "")
                found.append(f"config_groups.{name}.{part} {shown}")
    if not found:
        return []
    return [f"{'; '.join(found)}: fvq quantize does not run observers. It computes scales from min/max alone (the "
            "weights' over each channel, group or block; static input scales from the amax over all calibration "
            "tokens), so they can differ from the ones llm-compressor would choose with this config. The tensors are "
            "of the scheme the section names, and the section written leaves the observer out"]
