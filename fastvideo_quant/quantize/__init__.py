"""Quantize a Hugging Face-style safetensors checkpoint with any registered method (``fvq quantize``).

Only the plugin contract is used: ``get_quantization_config(name).from_config(options)``,
its ``quantize_weight`` (the method's on-disk tensors) and ``to_dict`` (the
checkpoint's ``quantization_config``), so a new plugin works here unchanged. The config's
``quantize_shape_problem(shape) -> str | None`` (default None; AWQ overrides it) says why it cannot quantize a weight
of that shape; it is asked for every planned weight so that all are refused in one error before anything is written
(:func:`~fastvideo_quant.quantize.plan.check_weight_shapes`).

- :mod:`~fastvideo_quant.quantize.plan`: which tensors are quantized (the rule) and the pattern checks;
- :mod:`~fastvideo_quant.quantize.targets`: with a compressed-tensors config, the modules its config groups target and
  its ``ignore`` list, matched as compressed-tensors matches them;
- :mod:`~fastvideo_quant.quantize.options`: the config from ``--option``, and the ``quantization_config`` written;
- :mod:`~fastvideo_quant.quantize.section_keys`: a compressed-tensors section's keys besides its scheme (llm-compressor's
  bookkeeping accepted, a set ``kv_cache_scheme`` / ``sparsity_config`` / ``transform_config`` refused);
- :mod:`~fastvideo_quant.quantize.contract`: what the config must offer before anything is read (``quantize_weight``'s
  signature, the attributes ``QuantizationConfig.__init__`` sets);
- :mod:`~fastvideo_quant.quantize.device`: the device ``quantize_weight`` runs on;
- :mod:`~fastvideo_quant.quantize.calibration`: the ``--calibration`` file, and refusing it (or its absence);
- :mod:`~fastvideo_quant.quantize.fused_names`: a name that looks like a fused module of modules the checkpoint stores
  apart (``to_qkv``), for the ``--fuse`` to suggest;
- :mod:`~fastvideo_quant.quantize.finite`: non-finite source weights, refused for every method;
- :mod:`~fastvideo_quant.quantize.convert`: :func:`quantize_checkpoint`, streaming and atomic.
"""

from fastvideo_quant.errors import QuantizeError
from fastvideo_quant.quantize.convert import Progress, QuantizeReport, quantize_checkpoint
from fastvideo_quant.quantize.device import check_device
from fastvideo_quant.quantize.finite import check_finite_weight, describe_non_finite
from fastvideo_quant.quantize.options import (
    build_config,
    builds_unquantized,
    check_options,
    describe_method,
    quantizing_options,
)
from fastvideo_quant.quantize.plan import (
    DEFAULT_EXCLUDE,
    PlannedTensor,
    SelectionRule,
    check_float_source,
    check_fused_groups,
    check_patterns,
    check_planned_some,
    check_skip_shadowing,
    check_weight_shapes,
    fused_pattern_parts,
    pattern_matches,
    plan_tensors,
    unconverted_modules,
)
from fastvideo_quant.quantize.targets import ConfigTargets

__all__ = [
    "ConfigTargets",
    "DEFAULT_EXCLUDE",
    "PlannedTensor",
    "Progress",
    "QuantizeError",
    "QuantizeReport",
    "SelectionRule",
    "build_config",
    "builds_unquantized",
    "check_device",
    "check_finite_weight",
    "check_float_source",
    "check_fused_groups",
    "check_options",
    "check_patterns",
    "check_planned_some",
    "check_skip_shadowing",
    "check_weight_shapes",
    "describe_method",
    "describe_non_finite",
    "fused_pattern_parts",
    "pattern_matches",
    "plan_tensors",
    "quantize_checkpoint",
    "quantizing_options",
    "unconverted_modules",
]
