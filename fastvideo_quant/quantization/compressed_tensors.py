"""What every plugin reading compressed-tensors checkpoints must refuse alike: sections whose tensors only compute
right with work at run time that the layers here do not do.

* ``transform_config`` (compressed-tensors ``TransformConfig``; llm-compressor's QuIP and SpinQuant modifiers): each
  config group lists where its rotation applies (``apply[i].location``). ``weight_input`` / ``weight_output``
  rotations are fused into the stored weights (a model runs them with no help); ``input``, ``output``, ``k_cache``,
  ``q_attn`` are *online*: applied to activations by forward hooks at run time (compressed-tensors
  ``transform/transform_args.py``, ``TransformLocation``). Layers that ignore them compute ``x (W H)^T`` for
  ``x W^T``: wrong outputs, no error. llm-compressor's W4A16 QuIP and SpinQuant (R4) examples write such sections.
* ``sparsity_config`` with a ``format`` other than ``dense``: weights stored in a sparse-compressed layout (2:4
  ``sparse-24-bitmask``, ``sparse-bitmask``), under other tensor names and shapes.

Plugins call :func:`runtime_work_problem` from their section parsers and raise its text as a ConfigError.
"""

from __future__ import annotations

from typing import Any

#: ``TransformLocation`` values whose rotation is fused into the stored weights.
OFFLINE_LOCATIONS = ("weight_input", "weight_output")


def runtime_work_problem(section: dict[str, Any], method: str) -> str | None:
    """Why ``method`` cannot compute a compressed-tensors ``section`` right (an online transform, sparse-compressed
    weights), naming the field and the value found; None when nothing is asked of the run time."""
    transforms = section.get("transform_config")
    if transforms:
        groups = transforms.get("config_groups") if isinstance(transforms, dict) else None
        if not isinstance(groups, dict):
            return (f"compressed-tensors config: transform_config {transforms!r:.200} has no config_groups object, so "
                    f"{method} cannot tell whether its rotations are fused into the weights; it reads sections without "
                    "transforms or with weight_input / weight_output ones only")
        for name, group in groups.items():
            applies = group.get("apply") if isinstance(group, dict) else None
            if not isinstance(applies, list):
                return (f"compressed-tensors config: transform_config.config_groups.{name} has no 'apply' list (found "
                        f"{group!r:.200}), so {method} cannot tell where its rotation applies")
            for i, entry in enumerate(applies):
                location = entry.get("location") if isinstance(entry, dict) else None
                if location not in OFFLINE_LOCATIONS:
                    return (f"compressed-tensors config: transform_config.config_groups.{name}.apply[{i}] has location "
                            f"{location!r}, an online transform (a QuIP / SpinQuant rotation applied to activations at "
                            f"run time), which {method} does not apply: its layers would multiply unrotated inputs by "
                            "rotated weights and return wrong outputs. Load this checkpoint with a runtime that applies "
                            "compressed-tensors transforms, or export it with weight_input / weight_output rotations "
                            "only (fused into the weights)")
    sparsity = section.get("sparsity_config")
    if sparsity:
        fmt = sparsity.get("format") if isinstance(sparsity, dict) else sparsity
        if fmt not in (None, "dense"):
            return (f"compressed-tensors config: sparsity_config format {fmt!r}: the weights are stored sparse-"
                    f"compressed (other tensor names and shapes), which {method} does not read; it reads dense "
                    "checkpoints (sparsity_config {} or format 'dense')")
    return None
