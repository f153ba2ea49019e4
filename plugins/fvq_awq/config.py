"""The AWQ quantization config: Hugging Face ``quantization_config``, AutoAWQ ``quant_config.json``, and
compressed-tensors ``pack-quantized`` W4A16 sections (llm-compressor; ``fvq_awq.compressed_tensors``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization.base import (
    QuantizationConfig,
    QuantizeMethodBase,
    Tolerance,
    fused_layer_matches,
)
from fastvideo_quant.quantization.compressed_tensors import (
    GroupTargets,
    TargetList,
    ignore_class_error,
    ignore_entry,
    untargeted_layer_error,
)
from fvq_awq import compressed_tensors as ct

SUPPORTED_GROUP_SIZES = (32, 64, 128, -1)  # vLLM awq_triton.AWQ_TRITON_SUPPORTED_GROUP_SIZES


class AWQConfig(QuantizationConfig):
    # AWQ needs a scale/clip search (fvq quantize); it never quantizes on load.
    online_quantization: ClassVar[bool] = False

    """4-bit weight-only, group-wise asymmetric quantization in AutoAWQ's GEMM format.

    Reads ``{"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true,
    "version": "gemm", "modules_to_not_convert": [...]}`` (Hugging Face) and AutoAWQ's
    ``{"w_bit": 4, "q_group_size": 128, "zero_point": true, "version": "GEMM"}``; and compressed-tensors W4A16
    sections (``checkpoint_format`` ``"compressed-tensors"``: ``zero_point`` false for symmetric weights, whose zero
    point is 8; ``targets`` and the ``ignore`` list, held as ``modules_to_not_convert``, match as compressed-tensors
    matches them), whose layers load compressed-tensors' tensors (``fvq_awq.ct_method``).
    """

    # Against x.float() @ dequantize_weight().T: the CPU path is float32 (~1e-7); the GPU GEMV
    # accumulates in float32 (~1e-6 before the bf16 output rounding, 2e-3 after); the GEMM paths
    # round the de-quantized weight to the activation dtype (bf16: 2^-9 per weight), measured
    # 2.5e-3..3.5e-3 on H100 at K=5120. 1e-2 leaves ~3x margin. float16 and float32
    # are held to their own rounding: every route measured <= 2.5e-4 and <= 5.7e-7 at
    # K=2048, M=1..1024 on an H100 (9.4e-8 on CPU; benchmarks/apply_error_by_dtype.py),
    # so a float16 or float32 input computed in bfloat16 (~2e-3) fails.
    tolerance: ClassVar[Tolerance] = Tolerance(max_rel_error=1e-2, dtypes={
        torch.float16: Tolerance(max_rel_error=1e-3), torch.float32: Tolerance(max_rel_error=1e-5)})
    # Weight rounding on the suite's Gaussian weights (256 inputs): 0.081 at groups of 32, 0.11 as one group.
    weight_rel_error: ClassVar[float] = 0.14
    supports_torch_compile: ClassVar[bool] = True  # CPU: plain torch; CUDA: one custom op, fvq_awq::linear
    # transformers.AwqConfig.to_dict() writes these runtime settings (fusing, kernel backend), which do not change
    # how the tensors are stored.
    # compressed-tensors sections carry their status, version and other schemes (kv cache, sparsity, transforms).
    unread_checkpoint_keys: ClassVar[frozenset[str]] = frozenset({
        "backend", "do_fuse", "fuse_max_seq_len", "modules_to_fuse", "exllama_config",
        "quantization_status", "global_compression_ratio", "kv_cache_scheme", "sparsity_config", "transform_config",
    })  # (transform_config / sparsity_config: ct.parse refuses the ones asking work of the run time)

    #: The fp8 route's accuracy (``fp8_compute``): against the same de-quantized-weight reference, measured 3.5e-2 to
    #: 3.8e-2 on Gaussian data (the weight's e4m3 rounding per output channel and the activations' per token) —
    #: the fp8 plugin's W8A8 bound plus the second rounding.
    fp8_tolerance: ClassVar[Tolerance] = Tolerance(max_rel_error=6e-2, min_sqnr_db=24.0)
    # The fp8 route is chosen when loading (it changes no stored tensor): fvq quantize refuses it as an option.
    load_time_keys: ClassVar[tuple[str, ...]] = ("fp8_compute", "fp8_compute_min_m")

    def __init__(self, weight_bits: int = 4, group_size: int = 128, zero_point: bool = True,
                 modules_to_not_convert: list[str] | None = None, version: str = "gemm",
                 fp8_compute: bool = False, fp8_compute_min_m: int | None = None,
                 checkpoint_format: str = "awq", targets: list[str] | None = None, act_order: bool = False) -> None:
        """:param checkpoint_format: ``"awq"`` (AutoAWQ's GEMM tensors) or ``"compressed-tensors"`` (``pack-quantized``
            tensors; ``zero_point`` false is symmetric, ``targets`` the config groups' targets, None every linear).
        :param fp8_compute: calls of ``fp8_compute_min_m`` rows or more multiply in fp8 (W4A8: the int4 weight
            converted to e4m3 per call, activations quantized per token; ``fvq_awq.fp8_compute``) — faster at large M,
            with ~3.8e-2 more error against the exact product. Off: every call is the exact int4 product.
        :param fp8_compute_min_m: the rows from which ``fp8_compute`` applies (default
            ``fvq_awq.fp8_compute.FP8_COMPUTE_MIN_M``, measured).
        :param act_order: compressed-tensors ``actorder: group``: each layer's ``weight_g_idx`` gives each input its
            group (``fvq_awq.act_order``)."""
        super().__init__()
        if weight_bits != 4:
            raise ConfigError(f"AWQ config: bits={weight_bits} is not supported; only 4-bit AWQ is (set bits/w_bit to 4)")
        if group_size not in SUPPORTED_GROUP_SIZES:
            raise ConfigError(f"AWQ config: group_size={group_size} is not supported; use one of {SUPPORTED_GROUP_SIZES}")
        if checkpoint_format not in ("awq", ct.CT_METHOD):
            raise ConfigError(f"AWQ config: checkpoint_format={checkpoint_format!r} is not supported; use 'awq' "
                              f"(AutoAWQ's GEMM tensors) or {ct.CT_METHOD!r} (pack-quantized W4A16 tensors)")
        self.checkpoint_format = checkpoint_format
        if not zero_point and not self.compressed_tensors:
            raise ConfigError("AWQ config: zero_point=false (symmetric) is not supported; the GEMM format stores zeros")
        if str(version).lower() != "gemm":
            raise ConfigError(f"AWQ config: version={version!r} is not supported; only AutoAWQ's 'gemm' layout is")
        if not isinstance(act_order, bool):
            raise ConfigError(f"AWQ config: act_order must be true or false, found {act_order!r}")
        if act_order and (not self.compressed_tensors or group_size == -1):
            raise ConfigError("AWQ config: act_order (compressed-tensors actorder 'group': a weight_g_idx per layer) "
                              + ("needs groups of inputs (a group_size other than -1)" if self.compressed_tensors else
                                 "is read from compressed-tensors checkpoints; AutoAWQ's GEMM format has no g_idx"))
        self.act_order = act_order
        if targets is not None and not self.compressed_tensors:
            raise ConfigError(f"AWQ config: targets {targets!r} are compressed-tensors' config_groups targets; AutoAWQ "
                              "checkpoints quantize every linear layer not in modules_to_not_convert")
        self.weight_bits = weight_bits
        self.group_size = group_size
        self.zero_point = zero_point
        self.version = "gemm"
        self.modules_to_not_convert = list(modules_to_not_convert or [])
        # compressed-tensors: which linear layers the config groups quantize (None: every one); the ignore list's
        # entries (names and re: patterns) are modules_to_not_convert, checked here as from_config checks them
        self.targets = None if targets is None else ct.entries(targets, "config_groups targets", required=True)
        # (built once, as fp8's: is_layer_targeted asks it for every layer)
        self._matcher = None if self.targets is None else GroupTargets([TargetList(tuple(self.targets))])
        if self.compressed_tensors:
            ct.entries(self.modules_to_not_convert, "ignore")
        self.pack_factor = 32 // weight_bits
        if not isinstance(fp8_compute, bool):
            raise ConfigError(f"AWQ config: fp8_compute must be true or false, found {fp8_compute!r}")
        if fp8_compute_min_m is not None and (not isinstance(fp8_compute_min_m, int) or isinstance(
                fp8_compute_min_m, bool) or fp8_compute_min_m < 1):
            raise ConfigError(f"AWQ config: fp8_compute_min_m must be an int >= 1 (rows), found {fp8_compute_min_m!r}")
        if fp8_compute_min_m is not None and not fp8_compute:
            raise ConfigError("AWQ config: fp8_compute_min_m is set but fp8_compute is not; set fp8_compute true to "
                              "use it, or drop fp8_compute_min_m")
        self.fp8_compute = fp8_compute
        self.fp8_compute_min_m = fp8_compute_min_m
        if fp8_compute:
            self.tolerance = self.fp8_tolerance  # (the instance's: conformance reads config.tolerance)

    def __repr__(self) -> str:
        fp8 = "" if not self.fp8_compute else f", fp8_compute from M={self.min_m_for_fp8()}"
        if self.compressed_tensors:
            return (f"AWQConfig(compressed-tensors {'asymmetric' if self.zero_point else 'symmetric'}, bits="
                    f"{self.weight_bits}, group_size={self.group_size}{', actorder group' if self.act_order else ''}, "
                    f"targets={self.targets}, "
                    f"ignore={self.modules_to_not_convert}{fp8})")
        return f"AWQConfig(bits={self.weight_bits}, group_size={self.group_size}, skip={self.modules_to_not_convert}{fp8})"

    @property
    def compressed_tensors(self) -> bool:
        """Whether the checkpoint's tensors are compressed-tensors' (``weight_packed``, ...), not AutoAWQ's."""
        return self.checkpoint_format == ct.CT_METHOD

    def shard_problems(self, parts: list[int], whole_parts: list[int], in_rank: int, in_total: int) -> list[str]:
        """int4 packing (8 output columns and 8 inputs per word on each rank), whole groups of inputs per rank (not
        with ``act_order``: its inputs are regrouped on each rank), and with ``fp8_compute`` both sizes in multiples of
        16 (the core's TP advice asks this)."""
        from fvq_awq.method import _problems

        return _problems(parts, in_rank, -1 if self.act_order else self.group_size, bool(self.min_m_for_fp8()))

    def min_m_for_fp8(self) -> int:
        """The rows from which calls take the fp8 route; 0 when ``fp8_compute`` is off."""
        if not self.fp8_compute:
            return 0
        from fvq_awq.fp8_compute import FP8_COMPUTE_MIN_M

        return self.fp8_compute_min_m or FP8_COMPUTE_MIN_M

    @classmethod
    def get_name(cls) -> str:
        return "awq"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 80  # the Triton kernels use bf16 tensor-core dots

    @classmethod
    def cpu_support(cls) -> str | None:
        return "vectorised int4 unpack + de-quantize to float32, then torch matmul"

    @staticmethod
    def get_config_filenames() -> list[str]:
        return ["quant_config.json", "quantize_config.json"]  # AutoAWQ's own files (as vLLM reads them)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AWQConfig:
        if ct.is_compressed_tensors(config):
            self = cls(**ct.parse(config), fp8_compute=_typed(config, ["fp8_compute"], False, bool),
                       fp8_compute_min_m=_typed(config, ["fp8_compute_min_m"], None, int))
            self.group_size_assumed = False  # (a group strategy always gives its size)
            return self
        self = cls(
            weight_bits=_typed(config, ["bits", "w_bit"], 4, int),
            group_size=_typed(config, ["group_size", "q_group_size"], 128, int),
            zero_point=_typed(config, ["zero_point"], True, bool),
            modules_to_not_convert=cls.skip_list_from(config),
            version=_typed(config, ["version"], "gemm", str),
            fp8_compute=_typed(config, ["fp8_compute"], False, bool),
            fp8_compute_min_m=_typed(config, ["fp8_compute_min_m"], None, int),
        )
        # a checkpoint's config without group_size: AutoAWQ's and HF's default is assumed, and sizes it does not fit
        # say so (group_size_note), since the stored scales may mean another
        self.group_size_assumed = not any(key in config for key in ("group_size", "q_group_size"))
        # (the key it was read from, for hints naming it: AutoAWQ's quant_config.json says q_group_size)
        self.group_size_key = next((key for key in ("group_size", "q_group_size") if key in config), "group_size")
        return self

    def group_size_note(self) -> str:
        """For messages about group alignment: that the config did not give group_size, so 128 was assumed."""
        if not getattr(self, "group_size_assumed", False):
            return ""
        return (" (the layers' config has no group_size, so AutoAWQ's default 128 was assumed: if the checkpoint was "
                "quantized with another, give that group_size — in_features / the rows of its scales tensor — in the "
                "quantization_config the layers are built from: the checkpoint's config.json, or the dict given to "
                "resolve_quant_config(hf_config=...) for a checkpoint without one or loaded as one file)")

    def to_dict(self) -> dict[str, Any]:
        if self.compressed_tensors:
            out = ct.to_section(self.group_size, not self.zero_point, self.targets or ["Linear"],
                                self.modules_to_not_convert, self.act_order)
        else:
            out = {"quant_method": "awq", "bits": self.weight_bits, "group_size": self.group_size,
                   "zero_point": self.zero_point, "version": self.version,
                   "modules_to_not_convert": list(self.modules_to_not_convert)}
        if self.fp8_compute:  # (a runtime choice: written only when made, so AutoAWQ-format sections stay as they are)
            out["fp8_compute"] = True
            if self.fp8_compute_min_m is not None:
                out["fp8_compute_min_m"] = self.fp8_compute_min_m
        return out

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None) -> str | None:
        """``awq`` for a compressed-tensors section of the W4A16 family (``ct.is_w4a16``), which from_config reads or
        refuses naming the setting its kernels cannot run; other compressed-tensors sections are other plugins' —
        unless awq is asked for by name and a config group holds 4-bit integer weights (another format, quantized
        activations, a second scheme): from_config then says which field it cannot read, not "quantized with
        'fp8'"."""
        if user_quant not in (None, "awq", ct.CT_METHOD):
            return None
        if ct.is_w4a16(hf_quant_cfg) or (user_quant == "awq" and ct.has_int4_group(hf_quant_cfg)):
            return "awq"
        return None

    def skip_list_key(self) -> str:
        return "ignore" if self.compressed_tensors else "modules_to_not_convert"

    def stored_tensor_hints(self, stored: dict[str, tuple[torch.dtype | None, tuple[int, ...]]]) -> list[str]:
        """For a failed load: a group size that every quantized layer's stored scales and zero points imply, other
        than the config's (:meth:`group_size_hint`: once, where each of those tensors' own line gives only its
        shapes); and of a compressed-tensors config, zero points stored where the config says symmetric, or none
        where it says asymmetric, and a ``weight_g_idx`` against ``actorder`` — each the config key and the value the
        tensors imply (else the load lists only unexpected or missing tensors)."""
        hints = self.group_size_hint(stored)
        if not self.compressed_tensors:
            return hints
        packed = sorted(n for n in stored if n.endswith(".weight_packed"))
        zeros = sorted(n for n in stored if n.endswith(".weight_zero_point"))
        g_idx = sorted(n for n in stored if n.endswith(".weight_g_idx"))
        def some(names: list[str], what: str) -> str:
            return f"{len(names)} {what} tensor(s), e.g. {names[0]!r}" if names else ""

        def none_of(what: str) -> str:
            return f"no {what} tensor beside its {len(packed)} weight_packed tensor(s)"

        # (condition, what the checkpoint stores, what its config declares, the key to set, the value the tensors imply)
        rules = [
            (zeros and not self.zero_point, some(zeros, "weight_zero_point") + " (asymmetric weights, W4A16_ASYM)",
             "symmetric weights", "symmetric", "false"),
            (packed and not zeros and self.zero_point, none_of("weight_zero_point") + " (symmetric weights, W4A16)",
             "asymmetric weights", "symmetric", "true"),
            (g_idx and not self.act_order, some(g_idx, "weight_g_idx") + " (activation ordering 'group': each input's "
             "group)", "contiguous groups", "actorder", '"group"'),
            (packed and not g_idx and self.act_order, none_of("weight_g_idx") + " (contiguous groups)",
             "actorder 'group'", "actorder", '"weight" (or null)'),
        ]
        return hints + [f"the checkpoint stores {found}, but its compressed-tensors config declares {declared}: set "
                        f"config_groups.<group>.weights.{key} to {value}" for applies, found, declared, key, value in rules
                        if applies]  # (where: the loader says, as it knows whether a config.json was read)

    def group_size_hint(self, stored: dict[str, tuple[torch.dtype | None, tuple[int, ...]]]) -> list[str]:
        """One line where the stored scales and zero points of every quantized layer have the rows (compressed-tensors:
        columns) of one group size that is not the config's (``fvq_awq.loading.stored_group_sizes``): the config key,
        the value configured and the value the tensors imply — or, for a group size the AWQ kernels do not run, that
        the checkpoint is to be quantized again. Empty otherwise (layers that disagree: their own lines say what each
        tensor's rows mean)."""
        from fvq_awq.loading import stored_group_sizes

        found = stored_group_sizes(stored, self.compressed_tensors)
        if found is None or self.group_size in found[0]:
            return []
        sizes, (name, shape, in_features), modules = found
        runnable = (*ct.CT_GROUP_SIZES, -1) if self.compressed_tensors else SUPPORTED_GROUP_SIZES
        # (every layer of one group, whatever its size: -1, or that size; the size, as the checkpoint's config said)
        implied = max(sizes & set(runnable), default=max(sizes))
        ct_format = self.compressed_tensors
        unit = "columns" if ct_format else "rows"
        tensors = "weight_scale and weight_zero_point" if ct_format else "scales and qzeros"
        groups = (f"1 {unit[:-1]} each (one group over the whole input)" if implied == -1 else
                  f"in_features / {implied} {unit}")
        key = "group_size" if ct_format else getattr(self, "group_size_key", "group_size")
        if ct_format:
            said = ("the compressed-tensors config declares " + ("strategy 'channel' (one group over the whole input)"
                                                                  if self.group_size == -1 else str(self.group_size)))
        elif getattr(self, "group_size_assumed", False):
            said = f"the awq config gives none, so AutoAWQ's default {self.group_size} was assumed"
        else:
            said = f"the awq config says {self.group_size}"
        head = (f"{key}: {said}, but the stored {tensors} of every one of the checkpoint's {modules} quantized "
                f"layer(s) have {groups} (e.g. {name!r} {shape} at in_features {in_features}): it was quantized with "
                f"group_size {implied}, which is why each of those tensors is refused below")
        if implied not in runnable:
            return [f"{head}; the AWQ kernels do not run that group size (they run "
                    f"{', '.join(map(str, runnable))}): quantize the float model again with one of those"]
        if ct_format:
            fix = ("set config_groups.<group>.weights.strategy to 'channel' and group_size to null" if implied == -1
                   else f"set config_groups.<group>.weights.group_size to {implied}"
                   + ("" if self.group_size != -1 else " and strategy to 'group'"))
        else:
            fix = f"set \"{key}\": {implied} in the quantization_config"
        return [f"{head}; {fix}"]

    def skip_entry_matches(self, prefix: str) -> bool:
        """AWQ's skip list matches substrings of module names: AutoAWQ's writer leaves a linear unquantized when
        ``any(entry in name)``, and vLLM's and SGLang's ``is_layer_skipped_awq`` and transformers read it the same way,
        so an entry ``mlp.gate`` (a MoE router) also covers ``mlp.gate_proj`` in checkpoints in the wild.
        compressed-tensors' ``ignore`` names whole modules, or those an ``re:`` pattern matches at the start of their
        name (``ignore_entry``: the rule fvq quantize and fp8 use), as its writer and vLLM match it."""
        if self.compressed_tensors:
            return ignore_entry(self.modules_to_not_convert, prefix) is not None
        return any(entry in prefix for entry in self.modules_to_not_convert if entry)

    def is_layer_targeted(self, layer: torch.nn.Module, prefix: str) -> bool:
        """Whether the compressed-tensors config groups quantize linear ``layer`` named ``prefix``: by its class
        (``Linear``: every one), its name or an ``re:`` pattern, a fused layer through its checkpoint modules
        (``fused_layer_matches``), by the rule fvq quantize and fp8 use (``GroupTargets``). A layer no group targets
        is refused at build unless ``ignore`` names it (``get_quant_method``). Always true for AutoAWQ configs."""
        targets = self._matcher
        if targets is None:
            return True
        if targets.by_class(layer) is not None:
            return True
        return fused_layer_matches(prefix, self.packed_modules_mapping, lambda name: targets.naming(name) is not None,
                                   "config_groups targets")

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from fvq_awq.method import AWQLinearMethod

        if not self.compressed_tensors:
            return self.linear_method_or_skip(layer, prefix, lambda: AWQLinearMethod(self))
        from fvq_awq.ct_method import CompressedTensorsW4A16Method

        def make() -> QuantizeMethodBase:
            refused = ignore_class_error(layer, prefix, self.modules_to_not_convert)
            if refused is not None:
                raise refused
            if self.is_layer_targeted(layer, prefix):
                return CompressedTensorsW4A16Method(self)
            raise untargeted_layer_error(layer, prefix, self._matcher, self.modules_to_not_convert, self.packed_modules_mapping)

        return self.linear_method_or_skip(layer, prefix, make)

    def uses_calibration(self) -> bool:
        """True: with activations, each group's clipping range is searched on them (RTN without). False for
        compressed-tensors symmetric weights, written by round-to-nearest (``quantizer.symmetric_codes``)."""
        return self.zero_point

    def quantize_shape_problem(self, shape: tuple[int, ...]) -> str | None:
        """The group and packing rules a float ``[out, in]`` weight breaks with this group size, or None."""
        from fvq_awq.quantizer import shape_problems

        out, k = shape
        return "; ".join(shape_problems(out, k, self.group_size)) or None

    def quantize_weight(self, weight: torch.Tensor, *, prefix: str = "",
                        activations: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Float ``[out, in]`` → ``{"qweight", "qzeros", "scales"}`` (RTN, or activation-aware with data); for
        compressed-tensors, its ``weight_packed``, ``weight_scale``, ``weight_shape`` (and asymmetric,
        ``weight_zero_point``: the same codes as AutoAWQ's)."""
        from fvq_awq import quantizer

        if not self.compressed_tensors:
            return quantizer.quantize_weight(weight, activations, group_size=self.group_size, prefix=prefix)
        if self.act_order:
            raise ConfigError("AWQ config: act_order (compressed-tensors actorder 'group') is read from checkpoints; "
                              "the quantizer writes contiguous groups (actorder null): leave act_order out")
        from fvq_awq.ct_format import checkpoint_tensors

        if self.zero_point:
            codes, scales, zeros = quantizer.quantize_codes(weight, activations, group_size=self.group_size,
                                                            prefix=prefix)
            return checkpoint_tensors(codes, scales, zeros)
        codes, scales = quantizer.symmetric_codes(weight, group_size=self.group_size, prefix=prefix)
        return checkpoint_tensors(codes, scales, None)


def _typed(config: dict[str, Any], keys: list[str], default: Any, kind: type) -> Any:
    """The first of ``keys`` in ``config`` (else ``default``); ConfigError naming the key when its value is not a
    ``kind`` (``int("abc")`` would raise a bare ValueError, ``bool("false")`` be True), and naming both where two of
    the spellings (``group_size`` and AutoAWQ's ``q_group_size``) disagree: the first had been taken silently."""
    present = [k for k in keys if k in config]
    if not present:
        return default
    key = present[0]
    if any(config[k] != config[key] for k in present[1:]):
        given = ", ".join(f"{k}={config[k]!r}" for k in present)
        raise ConfigError(f"AWQ config: {given} are one setting spelled {len(present)} ways, with different values; "
                          "keep one (the one the checkpoint was quantized with)")
    value = config[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        example = "" if default is None else f" (e.g. {default!r})"
        raise ConfigError(f"AWQ config: {key} must be {'an' if kind is int else 'a'} {kind.__name__}{example}, "
                          f"found {type(value).__name__} {value!r}")
    return value
