"""The fp8 (W8A8 float8 e4m3) quantization config: what a checkpoint says, or online defaults.

Config dicts read (vLLM ``Fp8Config.from_config``, HF ``FineGrainedFP8Config``):
``{"quant_method": "fp8", "activation_scheme": "dynamic"|"static", "ignored_layers" |
"modules_to_not_convert": [...], "weight_block_size": [bn, bk]}``, plus compressed-tensors
``float-quantized`` sections (claimed via ``override_quantization_method``).

Online quantization: ``from_config({})`` (the method selected by name ``fp8`` with no
checkpoint section) or ``"is_checkpoint_fp8_serialized": false`` loads float weights and
quantizes them in ``process_weights_after_loading``. A dict whose ``quant_method`` is
``fp8`` is serialized fp8 unless it says otherwise (vLLM's rule: ``"fp8" in quant_method``).

``weight_scale_strategy`` (``"tensor"`` default, ``"channel"``) is our key for per-channel
``weight_scale [out, 1]`` under quant_method fp8; vLLM's fp8 format is per tensor only,
and per-channel checkpoints otherwise come as compressed-tensors ``strategy: channel``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization.base import QuantizationConfig, Tolerance, fused_layer_matches, fused_parts
from fastvideo_quant.quantization.compressed_tensors import (
    GroupTargets,
    TargetList,
    ignore_class_error,
    ignore_entry,
    may_name_a_linear_layer,
    misspelled_class_targets,
    untargeted_layer_error,
)
from fvq_fp8 import claims, hints, layer_match
from fvq_fp8 import compressed_tensors as ct
from fvq_fp8.format import FP8_MAX, quantize_per_block, quantize_per_channel, quantize_per_tensor

ACTIVATION_SCHEMES = ("dynamic", "static")
WEIGHT_STRATEGIES = ("tensor", "channel", "block")


#: Characters that make a Hugging Face skip entry a regular expression (transformers reads every entry with
#: ``re.match``; in a plain module name only the dot is one, and it matches itself there).
_REGEX_CHARS = frozenset("*+?[](){}|^$\\")


@functools.cache
def _transformers_pattern(entry: str) -> re.Pattern[str] | None:
    """A ``modules_to_not_convert`` entry with a regular expression's characters as the pattern it is matched by:
    from a module's name's start up to a whole component (the module and every module under it); None for a plain
    name. A pattern that does not compile is a ConfigError naming it: transformers would fail on it too."""
    if not _REGEX_CHARS & set(entry):
        return None
    try:
        return re.compile(rf"(?:{entry})(?:\.|$)")
    except re.error as exc:
        raise ConfigError(f"fp8 config: modules_to_not_convert entry {entry!r} is not a valid regular expression "
                          f"({exc}); transformers matches each entry with re.match, so fix the pattern or give the "
                          "module's name") from None


class Fp8Config(QuantizationConfig):
    """W8A8 float8_e4m3fn: fp8 weights with tensor/channel/block scales, fp8 activations."""

    # Measured against the float32 reference of the de-quantized weights (tests/plugins/fp8,
    # docs/methods/fp8.md): per-token fp8 activations give ||out-ref||/||ref|| ≈ 2.3e-2 on
    # Gaussian data (e4m3 has 3 mantissa bits: ~2^-4 relative rounding, averaged over K),
    # bf16 output adds ~3e-3. 4e-2 leaves margin for heavier-tailed activations.
    tolerance: ClassVar[Tolerance] = Tolerance(max_rel_error=4e-2, min_sqnr_db=28.0)
    # Weight rounding measured 0.027 (per tensor, channel and block) on the suite's Gaussian weights.
    weight_rel_error: ClassVar[float] = 0.04
    supports_torch_compile: ClassVar[bool] = True  # custom ops around the Triton kernels; _scaled_mm; CPU: torch
    # quantize_weight writes fp8 tensors: the checkpoint is serialized fp8 (online is a way to load floats).
    quantized_checkpoint_keys: ClassVar[dict[str, Any]] = {"is_checkpoint_fp8_serialized": True}
    # Keys of other fp8 formats, not read: transformers' FineGrainedFP8Config writes "dequantize"; compressed-tensors
    # sections carry their status, version and other schemes (kv cache, sparsity). (DeepSeek's "fmt" is read: from_config
    # refuses anything but e4m3.)
    unread_checkpoint_keys: ClassVar[frozenset[str]] = frozenset({
        "dequantize", "quantization_status", "global_compression_ratio", "kv_cache_scheme", "sparsity_config",
        "transform_config", "version",
    })  # (transform_config / sparsity_config: parse refuses the ones asking work of the run time, runtime_work_problem)

    def __init__(
        self,
        is_checkpoint_fp8_serialized: bool = False,
        activation_scheme: str = "dynamic",
        ignored_layers: list[str] | None = None,
        weight_block_size: list[int] | tuple[int, int] | None = None,
        weight_scale_strategy: str | None = None,
        checkpoint_format: str = "fp8",
        use_fast_accum: bool = True,
        targets: list[str] | None = None,
        scheme_groups: list[ct.SchemeGroup] | None = None,
        transformers_skip: list[str] | tuple[str, ...] | frozenset[str] | None = None,
    ) -> None:
        super().__init__()
        self.is_checkpoint_fp8_serialized = bool(is_checkpoint_fp8_serialized)
        self.activation_scheme = activation_scheme
        self.weight_block_size = _check_block(weight_block_size)
        self.weight_scale_strategy = _strategy(weight_scale_strategy, self.weight_block_size)
        self.checkpoint_format = checkpoint_format
        self.use_fast_accum = use_fast_accum
        ignored = list(ignored_layers or [])
        self.ignore_regexes = layer_match.compile_patterns(ignored, self.skip_list_key())
        self.modules_to_not_convert = [p for p in ignored if not p.startswith("re:")]
        # Entries the checkpoint gives only under Hugging Face's key (modules_to_not_convert), which transformers'
        # fp8 readers match as a module, any module under it, or a trailing run of a module's components
        # (Devstral-Small-2's ["model.vision_tower", ...], Qwen3-Next's "mlp.gate"); vLLM's ignored_layers are whole
        # names. (Each must be in the skip list too; one under both keys is a whole name.)
        self.transformers_skip = frozenset(e for e in (transformers_skip or ()) if e in self.modules_to_not_convert)
        # (those transformers reads as a regular expression, "model.layers.*.mlp.gate": refused here if one does not
        # compile)
        for entry in self.transformers_skip:
            _transformers_pattern(entry)
        # compressed-tensors' config_groups targets (class names, module names, re: patterns); None: every linear layer.
        self.targets = None if targets is None else list(targets)
        layer_match.compile_patterns(self.targets or [], "config_groups targets")  # (a bad pattern named here)
        # compressed-tensors config groups of different schemes (None: one scheme, the fields above): each layer holds
        # its group's (scheme_group_for); the fields above then hold the first group's.
        self.scheme_groups = list(scheme_groups) if scheme_groups else None
        for group in self.scheme_groups or ():
            layer_match.compile_patterns(list(group.targets), f"config_groups.{group.name}.targets")
        # Which target names a module: compressed-tensors' rule, shared with fvq quantize (GroupTargets).
        self._matcher = GroupTargets(self.scheme_groups or [TargetList(tuple(self.targets or ()))])
        self._check()

    @property
    def ignored_layers(self) -> list[str]:
        """The skip list as a checkpoint stores it: names, then ``re:`` patterns (from current state)."""
        # (deduplicated: fvq quantize's skip list may hold an re: entry as given, beside the patterns)
        return list(dict.fromkeys([*self.modules_to_not_convert, *(f"re:{r.pattern}" for r in self.ignore_regexes)]))

    def _check(self) -> None:
        if self.activation_scheme not in ACTIVATION_SCHEMES:
            raise ConfigError(
                f"fp8 config: activation_scheme must be one of {ACTIVATION_SCHEMES}, found {self.activation_scheme!r}"
            )
        if self.weight_scale_strategy not in WEIGHT_STRATEGIES:
            raise ConfigError(
                f"fp8 config: weight_scale_strategy must be one of {WEIGHT_STRATEGIES}, "
                f"found {self.weight_scale_strategy!r}"
            )
        if self.activation_scheme == "static" and not self.is_checkpoint_fp8_serialized:
            raise ConfigError(
                "fp8 config: activation_scheme 'static' needs input_scale tensors from a serialized fp8 "
                "checkpoint; online quantization has none. Use activation_scheme 'dynamic'"
            )
        if self.weight_block_size and self.activation_scheme == "static":
            raise ConfigError("fp8 config: block-wise weights (weight_block_size) need activation_scheme 'dynamic'")
        if self.targets is not None and not any(may_name_a_linear_layer(t) for t in self.targets):
            misspelled = misspelled_class_targets(self.targets)
            raise ConfigError(
                f"compressed-tensors config: config_groups targets {self.targets} name no linear layer{misspelled}: "
                "fp8 quantizes linear layers, named by the class 'Linear', a module name or an 're:' pattern on module "
                "names" + ("" if misspelled else f"; {self.targets} are classes of another kind, which fp8 cannot load "
                                                 "quantized")
            )
        if self.scheme_groups is not None:
            if not self.is_checkpoint_fp8_serialized or self.checkpoint_format != ct.CT_METHOD:
                raise ConfigError("fp8 config: scheme_groups (config groups of different schemes) describe a "
                                  "compressed-tensors checkpoint: give checkpoint_format 'compressed-tensors' and "
                                  f"is_checkpoint_fp8_serialized true (found checkpoint_format "
                                  f"{self.checkpoint_format!r}, is_checkpoint_fp8_serialized "
                                  f"{self.is_checkpoint_fp8_serialized})")
            for group in self.scheme_groups:  # (each group's scheme must stand as a config of its own)
                self.scheme_config(group)

    def skip_list_key(self) -> str:
        """The key this config's format keeps its skip list under: ``ignore`` (compressed-tensors), ``ignored_layers``
        (vLLM's fp8; transformers' block-scale reader also takes ``modules_to_not_convert``, which ``to_dict`` writes
        too)."""
        return "ignore" if self.checkpoint_format == ct.CT_METHOD else "ignored_layers"

    def skip_entry_key(self, entry: str) -> str:
        """``modules_to_not_convert`` for an entry the checkpoint gave only under Hugging Face's key."""
        return "modules_to_not_convert" if entry in self.transformers_skip else self.skip_list_key()

    @property
    def block_scale_name(self) -> str:
        """The checkpoint name of block scales: ``weight_scale`` in compressed-tensors, ``weight_scale_inv`` in the
        DeepSeek-V3 / Hugging Face fp8 format (format.py)."""
        return "weight_scale" if self.checkpoint_format == ct.CT_METHOD else "weight_scale_inv"

    # --- identity and capability -------------------------------------------------------
    @classmethod
    def get_name(cls) -> str:
        return "fp8"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        # float8 tensor-core GEMMs (torch._scaled_mm) exist from Ada (sm_89) and Hopper (sm_90).
        return 89

    @classmethod
    def cpu_support(cls) -> str | None:
        return (
            "real fp8: activations quantized per token (or by the static input_scale) to float8_e4m3fn in "
            "torch, then the fp8 product as a float32 matmul of the upcast fp8 operands (every product exact, "
            "summed in fp32, as torch._scaled_mm forms it; the per-token and per-channel scales applied to that "
            "fp32 result)"
        )

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Fp8Config:
        method = str(config.get("quant_method", "")).lower()
        if method == ct.CT_METHOD:
            return cls(**ct.parse_compressed_tensors(config))
        if method and "fp8" not in method:
            raise ConfigError(f"fp8 config: quant_method {config.get('quant_method')!r} is not an fp8 format")
        fmt = config.get("fmt")
        if fmt is not None and str(fmt).lower() != "e4m3":
            raise ConfigError(
                f"fp8 config: fmt={fmt!r} is not supported; expected 'e4m3' (float8_e4m3fn, the only fp8 format this "
                "method reads): an e5m2 checkpoint's bytes would be read as e4m3 and give wrong weights"
            )
        serialized = cls.get_bool(config, "is_checkpoint_fp8_serialized", bool(method), "fp8 config")
        skip = cls.skip_list_from(config)  # (checks both keys' types)
        # (transformers' rule for a checkpoint's section; a dict without quant_method is options — fvq quantize gives
        # its skip list, whole module names, under the generic key)
        whole_names = set(config.get("ignored_layers") or ()) if method else set(skip)
        return cls(
            is_checkpoint_fp8_serialized=serialized,
            activation_scheme=cls.get_from_keys_or(config, ["activation_scheme"], "dynamic"),
            ignored_layers=skip,
            transformers_skip=[e for e in config.get("modules_to_not_convert") or () if e not in whole_names],
            weight_block_size=cls.get_from_keys_or(config, ["weight_block_size"], None),
            weight_scale_strategy=cls.get_from_keys_or(config, ["weight_scale_strategy"], None),
        )

    def to_dict(self) -> dict[str, Any]:
        """The config of the checkpoint ``quantize_weight`` writes (always serialized fp8)."""
        if self.checkpoint_format == ct.CT_METHOD:
            return ct.to_compressed_tensors(self.weight_scale_strategy, self.activation_scheme, self.ignored_layers,
                                            self.targets, self.weight_block_size, self.scheme_groups)
        out: dict[str, Any] = {"quant_method": "fp8", "activation_scheme": self.activation_scheme,
                               "ignored_layers": [e for e in self.ignored_layers if e not in self.transformers_skip]}
        if self.transformers_skip:  # (under the key that gives them transformers' rule again)
            out["modules_to_not_convert"] = [e for e in self.ignored_layers if e in self.transformers_skip]
        if self.weight_block_size:
            out["weight_block_size"] = list(self.weight_block_size)
            # Block scales are also Hugging Face's FineGrainedFP8Config format, which reads the skip list only from
            # modules_to_not_convert (vLLM only from ignored_layers): without it, transformers would build fp8 layers
            # over the modules this checkpoint left in float. Writing the key also makes `fvq quantize` check the
            # list the way transformers matches it (by substring, plan.SUBSTRING_SKIP_KEYS).
            out["modules_to_not_convert"] = list(self.ignored_layers)
        elif self.weight_scale_strategy == "channel":
            out["weight_scale_strategy"] = "channel"
        return out

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None) -> str | None:
        """fp8 for a compressed-tensors section it reads; also for one of float weights it cannot read that no other
        plugin claims, so that from_config says which field it cannot use (a format typo, a strategy it lacks). A
        section of integer weights (type 'int', compressed-tensors' default: the W4A16 / W8A16 / W8A8-INT8 family) is
        claimed only when fp8 is asked for by name: otherwise the core's refusal of a section no method claims quotes
        each method's refusal, in name order (fp8 claimed those too, and its "re-export it with an FP8 scheme" was the
        only advice a W8A16 checkpoint or a 'packed-quantized' typo got)."""
        if user_quant not in (None, "fp8", ct.CT_METHOD) or not ct.is_compressed_tensors(hf_quant_cfg):
            return None
        if ct.is_fp8_compressed_tensors(hf_quant_cfg):
            return "fp8"
        if user_quant != "fp8" and ct.has_integer_weights(hf_quant_cfg):
            return None
        return None if claims.claimed_elsewhere(cls, hf_quant_cfg, user_quant) else "fp8"

    # --- per layer ---------------------------------------------------------------------
    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        from fvq_fp8.method import Fp8LinearMethod

        def make():
            refused = ignore_class_error(layer, prefix, self.ignored_layers) if self.checkpoint_format == ct.CT_METHOD else None
            if refused is not None:
                raise refused
            if self.scheme_groups is not None:
                group = self.scheme_group_for(layer, prefix)
                if group is not None:
                    return Fp8LinearMethod(self.scheme_config(group))
            elif self.is_layer_targeted(layer, prefix):
                return Fp8LinearMethod(self)
            raise untargeted_layer_error(layer, prefix, self._matcher, self.ignored_layers, self.packed_modules_mapping)

        return self.linear_method_or_skip(layer, prefix, make)

    def shard_problems(self, parts: list[int], whole_parts: list[int], in_rank: int, in_total: int) -> list[str]:
        """Block scales read from a checkpoint: split sizes in whole blocks (the core's TP advice asks this); else none
        (online block quantization makes each rank's own grid, at any split)."""
        if self.scheme_groups is not None:
            # (every group's rules, each named: the layers ask before they know their group, so the sizes they list
            # hold for any)
            found = [f"for config_groups.{g.name} ({g.describe()}): {p}" for g in self.scheme_groups
                     for p in self.scheme_config(g).shard_problems(parts, whole_parts, in_rank, in_total)]
            return list(dict.fromkeys(found))
        if not self.weight_block_size or not self.is_checkpoint_fp8_serialized:
            return []
        from fvq_fp8.method import block_shard_problems

        return block_shard_problems(parts, whole_parts, in_rank, in_total, tuple(self.weight_block_size))

    def is_layer_skipped(self, prefix: str) -> bool:
        """Whether the skip list names layer ``prefix``: a name as whole dotted components (this package's rule), an
        ``re:`` pattern matching the name (``re.match`` for compressed-tensors, as its writer and vLLM match it; the
        whole name for the fp8 format); a fused layer through its parts, which must agree (fused_layer_matches)."""
        return fused_layer_matches(prefix, self.packed_modules_mapping, self._skip_entry_or_pattern,
                                   f"the skip list ({self.skip_list_key()})")

    def is_layer_targeted(self, layer: torch.nn.Module, prefix: str) -> bool:
        """Whether a compressed-tensors config group targets the linear ``layer`` named ``prefix`` (by class, name or
        ``re:`` pattern, a fused layer through its parts); always for a config without targets. A layer no group
        targets is refused at build unless ``ignore`` names it (``get_quant_method``), as vLLM refuses it."""
        if self.scheme_groups is not None:
            return self.scheme_group_for(layer, prefix) is not None
        if self.targets is None or self._matcher.by_class(layer) is not None:
            return True
        return fused_layer_matches(prefix, self.packed_modules_mapping, lambda name: self._matcher.naming(name) is not None,
                                   "config_groups targets")

    def skip_entry_matches(self, prefix: str) -> bool:
        """A skip-list name names exactly one module: vLLM's fp8 reader (``is_layer_skipped``: ``prefix in
        ignored_layers``) and compressed-tensors' (``ignore``: a name, or an ``re:`` pattern) match the whole name.
        So ``proj_out`` skips a root ``proj_out`` and not ``single_blocks.0.proj_out`` (Flux, HunyuanVideo), as the
        checkpoints those tools write mean it. An entry given only under ``modules_to_not_convert`` (Hugging Face's
        key: :attr:`transformers_skip`) is matched as transformers' fp8 readers match it, at whole components: the
        module itself, every module under it (``model.vision_tower``), or a module whose name ends with it
        (``mlp.gate``); an entry with a regular expression's characters (``model.layers.*.mlp.gate``; a dot alone is a
        name's) as transformers' ``re.match`` reads it, from the name's start, ending at a whole component."""
        return any(prefix == e or (e in self.transformers_skip
                                   and (prefix.startswith(e + ".") or prefix.endswith("." + e)
                                        or (pattern := _transformers_pattern(e)) is not None and pattern.match(prefix)))
                   for e in self.modules_to_not_convert)

    def _skip_entry_or_pattern(self, name: str) -> bool:
        if self.skip_entry_matches(name):
            return True
        if self.checkpoint_format == ct.CT_METHOD:  # (compressed-tensors' rule, as fvq quantize matches ignore)
            return ignore_entry(self.ignored_layers, name) is not None
        return any(r.fullmatch(name) for r in self.ignore_regexes)

    # --- config groups of different schemes ----------------------------------------------
    def scheme_config(self, group: ct.SchemeGroup) -> Fp8Config:
        """A config of one scheme for the layers of config group ``group`` (their method's config; built at each
        call, so a layer takes the settings this config has when it is built)."""
        # (no targets: which layers the group takes is this config's question; a group naming only modules of other
        # kinds quantizes nothing fp8 loads, whatever its scheme)
        sub = Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme=group.activation_scheme,
                        weight_block_size=group.block, weight_scale_strategy=group.strategy,
                        checkpoint_format=self.checkpoint_format, use_fast_accum=self.use_fast_accum,
                        ignored_layers=self.ignored_layers)
        sub.packed_modules_mapping = self.packed_modules_mapping
        return sub

    def scheme_group_for(self, layer: torch.nn.Module | None, prefix: str) -> ct.SchemeGroup | None:
        """The config group whose scheme linear ``layer`` named ``prefix`` holds, or None (no group targets it), for a
        config of several schemes: the scheme compressed-tensors gave the module when it wrote the checkpoint, by its
        rule (:class:`~fastvideo_quant.quantization.compressed_tensors.GroupTargets`, which fvq quantize asks too:
        the target equal to its name, else ``re:`` patterns in string order, else its class — across groups, whose
        order carries no meaning there; vLLM's reader takes the first matching target in the config's order instead,
        which differs only where two groups name one module). A fused layer goes by its checkpoint modules
        (``packed_modules_mapping``), as they were written, or by its own name when no group names any of them;
        modules in groups of different schemes are a ConfigError naming them, since one layer holds one scheme.
        ``layer`` None: by name only (``Linear`` names every module; a ConfigError where a linear class other than
        ``Linear`` might name it)."""
        if self.scheme_groups is None:
            return None  # (one scheme: is_layer_targeted says whether a layer holds it)
        parts = fused_parts(prefix, self.packed_modules_mapping)
        if not any(self._matcher.naming(p) for p in parts or ()):
            return self._group_of(prefix, layer)
        found = [self._group_of(p, layer) for p in parts or ()]
        if len({None if g is None else g.scheme for g in found}) > 1:
            held = "; ".join(f"{p}: " + (f"config_groups.{g.name} ({g.describe()})" if g else "no group")
                             for p, g in zip(parts or (), found, strict=True))
            raise ConfigError(
                f"layer {prefix!r} fuses the checkpoint modules {parts}, which the compressed-tensors config_groups "
                f"give different schemes ({held}): one layer holds one scheme. Target all of them from groups of one "
                "scheme (or build the model with those modules unfused)"
            )
        return found[0]

    def _group_of(self, name: str, layer: torch.nn.Module | None) -> ct.SchemeGroup | None:
        found = self._matcher.of_module(name, layer)
        return None if found is None else found[1]

    def target_of_module(self, name: str) -> tuple[str, ct.SchemeGroup] | None:
        """``(target, group)`` that gives checkpoint module ``name`` its scheme, by name (as :meth:`scheme_group_for`
        with no layer: a ``Linear`` class target names every module), or None, also where a linear class other than
        ``Linear`` might name it; for messages about stored tensors."""
        if self.scheme_groups is None:
            return None
        try:
            return self._matcher.of_module(name)
        except ConfigError:
            return None

    def stored_tensor_hints(self, stored: Mapping[str, tuple[torch.dtype | None, tuple[int, ...]]]) -> list[str]:
        """For a load that failed: what the checkpoint's tensors (name → (dtype, shape), all of them) say about the
        fp8 variant where it contradicts this config — per-channel or block scales, static activations —, one line a
        setting, naming the config key and the value the tensors imply (fvq_fp8.hints)."""
        if self.scheme_groups is not None:
            return hints.group_scheme_hints(self, stored)
        return hints.stored_tensor_hints(self, stored)

    # --- writing checkpoints -----------------------------------------------------------
    def uses_calibration(self) -> bool:
        """Static activation scales (``input_scale``) come from the calibration activations; dynamic ones are
        computed per token at run time, so quantize_weight then ignores them."""
        return self._any_static()

    def requires_calibration(self) -> bool:
        """Static activation scales cannot be written without calibration activations."""
        return self._any_static()

    def _any_static(self) -> bool:
        """A static scheme in a group that may name a linear layer (one naming only Embedding quantizes nothing)."""
        if self.scheme_groups is not None:
            return any(g.activation_scheme == "static" and any(map(may_name_a_linear_layer, g.targets))
                       for g in self.scheme_groups)
        return self.activation_scheme == "static"

    def quantize_weight(
        self, weight: torch.Tensor, *, prefix: str = "", activations: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The vLLM/HF on-disk tensors: ``weight`` fp8 ``[out, in]`` and its scale (see format.py); under config groups
        of different schemes, the scheme of the group naming module ``prefix``."""
        if self.scheme_groups is not None:
            return self._group_config_of(prefix).quantize_weight(weight, prefix=prefix, activations=activations)
        if weight.dim() != 2:
            raise ConfigError(f"fp8 quantize_weight {prefix!r}: expected a 2-D [out, in] weight, found {tuple(weight.shape)}")
        if self.weight_block_size:
            q, scale = quantize_per_block(weight, self.weight_block_size)
            tensors = {"weight": q, self.block_scale_name: scale}
        elif self.weight_scale_strategy == "channel":
            q, scale = quantize_per_channel(weight)
            tensors = {"weight": q, "weight_scale": scale}
        else:
            q, scale = quantize_per_tensor(weight)
            tensors = {"weight": q, "weight_scale": scale.reshape(1) if self._ct else scale}
        if self.activation_scheme == "static":
            tensors["input_scale"] = self._input_scale(prefix, activations)
        return tensors

    def _group_config_of(self, prefix: str) -> Fp8Config:
        try:
            group = self.scheme_group_for(None, prefix)
        except ConfigError as exc:
            raise ConfigError(f"fp8 quantize_weight {prefix!r}: {exc}") from exc
        if group is None:
            raise ConfigError(
                f"fp8 quantize_weight {prefix!r}: no compressed-tensors config group targets this module (by name, "
                f"'re:' pattern or the class 'Linear'; {self._matcher.describe()}), and the config has groups of "
                "different schemes, so its scheme is not known. Add it to a group's targets, or to 'ignore' (fvq "
                "quantize --skip)"
            )
        return self.scheme_config(group)

    @property
    def _ct(self) -> bool:
        return self.checkpoint_format == ct.CT_METHOD

    def _input_scale(self, prefix: str, activations: torch.Tensor | None) -> torch.Tensor:
        if activations is None:
            raise ConfigError(
                f"fp8 quantize_weight {prefix!r}: activation_scheme 'static' needs calibration activations to "
                "compute input_scale, and none were given: pass fvq quantize --calibration FILE.safetensors (each "
                "module's inputs; quantize_checkpoint(calibration=...), quantize_weight(activations=[tokens, in])), "
                "or use activation_scheme 'dynamic'"
            )
        if activations.numel() == 0:
            raise ConfigError(
                f"fp8 quantize_weight {prefix!r}: activation_scheme 'static' computes input_scale from the calibration "
                f"activations, and those given ({list(activations.shape)}) hold no values. Capture calibration data "
                "that reaches the module, or use activation_scheme 'dynamic'"
            )
        amax = activations.detach().abs().amax().float()
        if not bool(torch.isfinite(amax)) or float(amax) == 0:
            # All zero: no scale fits the layer's real inputs, and a floor only hides it (compressed-tensors clamps at
            # float32's eps: inputs past 448 * 1.2e-7 saturate, outputs ~0). fvq quantize refuses it first, by file.
            found = "all zero" if float(amax) == 0 else f"not finite (amax {float(amax)})"
            raise ConfigError(
                f"fp8 quantize_weight {prefix!r}: activation_scheme 'static' computes input_scale = amax / {FP8_MAX:g} "
                f"from the calibration activations, and those given ({list(activations.shape)}) are {found}: the scale "
                "would fit no real input. Capture calibration data that reaches the module, or use activation_scheme "
                "'dynamic'"
            )
        scale = amax.clamp(min=1e-12) / FP8_MAX  # (the floor only keeps a subnormal amax's scale from underflowing)
        return scale.reshape(1) if self._ct else scale


def _strategy(given: str | None, block: tuple[int, int] | None) -> str:
    """The weight scale strategy: ``"block"`` exactly when a block size is given (either implies the other);
    otherwise the one given, ``"tensor"`` by default. A contradiction is an error, not a silent pick."""
    if block is not None:
        if given not in (None, "block"):
            raise ConfigError(f"fp8 config: weight_scale_strategy {given!r} contradicts weight_block_size "
                              f"{list(block)} (block scales); drop one of the two")
        return "block"
    if given == "block":
        raise ConfigError("fp8 config: weight_scale_strategy 'block' needs weight_block_size [block_n, block_k] "
                          "(e.g. [128, 128]); none was given")
    return "tensor" if given is None else given


def _check_block(block: list[int] | tuple[int, int] | None) -> tuple[int, int] | None:
    if block is None:
        return None
    ok = (isinstance(block, (list, tuple)) and len(block) == 2
          and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block))
    if not ok:
        raise ConfigError(f"fp8 config: weight_block_size must be [bn, bk] with positive ints (e.g. [128, 128]), "
                          f"found {block!r}")
    return int(block[0]), int(block[1])
