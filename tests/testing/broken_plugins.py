"""Deliberately broken quantization plugins (and one correct one) the conformance suite must judge.

Importable by name (the tests put this folder on sys.path) so spawned
tensor-parallel ranks can re-register them. Each is the unquantized method with
one realistic bug.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fvq_unquantized.method import UnquantizedConfig, UnquantizedLinearMethod
from torch.nn import Parameter

from fastvideo_quant import plugins
from fastvideo_quant.errors import ConfigError, MethodUnavailableError
from fastvideo_quant.parameter import ChannelQuantScaleParameter, ModelWeightParameter, set_weight_attrs
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization import LinearMethodBase, QuantizationConfig, Tolerance
from fastvideo_quant.testing.conformance import ConformanceFailure


class Plugin:
    """A plugin object registering one (config, method) pair."""

    def __init__(self, config_cls: type, method_cls: type, v2: bool) -> None:
        self.config_cls, self.method_cls, self.v2 = config_cls, method_cls, v2

    @hookimpl
    def register_quantization_methods(self, register) -> None:
        if self.method_cls is None:  # bug: the method classes are not registered
            register(self.config_cls)
        else:
            register(self.config_cls, self.method_cls, weight_loader_v2=self.v2)


def _config(name: str, method_cls: type, attr: str) -> type:
    def get_name(cls) -> str:
        return name

    def get_quant_method(self, layer, prefix):
        return method_cls()

    def to_dict(self):
        return {"quant_method": name}

    return type(attr, (UnquantizedConfig,), {
        "get_name": classmethod(get_name), "get_quant_method": get_quant_method, "to_dict": to_dict,
        "__module__": __name__,
        # (one bound for every dtype, as a plugin states it before per-dtype bounds: each toy's bug is judged by it;
        # toy_bf16_inside_float32 keeps the unquantized method's per-dtype bounds)
        "tolerance": Tolerance(max_rel_error=1e-2)})


class OkMethod(UnquantizedLinearMethod):
    """Correct."""


class BiasIgnoredMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.weight)  # bug: bias dropped


class WrongDtypeMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        return F.linear(x.float(), layer.weight.float(), None if bias is None else bias.float())  # bug: float32 out


class Bf16InsideFloat32Method(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        b = None if bias is None else bias.to(torch.bfloat16)  # bug: float16 and float32 inputs computed in bfloat16
        return F.linear(x.to(torch.bfloat16), layer.weight.to(torch.bfloat16), b).to(x.dtype)


class Bf16InGradModeMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        if torch.is_grad_enabled() and x.requires_grad:  # bug: this path computes, and returns, bfloat16
            return F.linear(x.bfloat16(), layer.weight.bfloat16(), None if bias is None else bias.bfloat16())
        return F.linear(x, layer.weight, bias)


class PlainAttributeMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        layer.weight_t = layer.weight.data.t().contiguous()  # bug: a plain attribute; .to(device) leaves it

    def apply(self, layer, x, bias=None):
        out = x @ layer.weight_t
        return out + bias if bias is not None else out


class UnguardedProcessingMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        layer.register_buffer("weight_scale", torch.ones(layer.weight.shape[0], dtype=layer.weight.dtype))

    def apply(self, layer, x, bias=None):  # bug: before processing, a bare AttributeError (no weight_scale yet)
        return F.linear(x, layer.weight * layer.weight_scale[:, None], bias)


class _CustomLoaderMethod(UnquantizedLinearMethod):
    """A v1 method with its own weight loader (the bug is in ``_load``)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        # zeros, not empty: rows a buggy loader never writes must not hold NaN/inf garbage, which the unquantized
        # validate_loaded_weights would refuse first (at random) before the check each toy's test expects
        weight = Parameter(torch.zeros(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
                           requires_grad=False)
        set_weight_attrs(weight, {"output_dim": 0, "input_dim": 1, "weight_loader": self._load})
        layer.register_parameter("weight", weight)

    @staticmethod
    def _load(param, loaded, shard_id=None):
        raise NotImplementedError


class NoNarrowMethod(_CustomLoaderMethod):
    @staticmethod
    def _load(param, loaded, shard_id=None):
        param.data.copy_(loaded[: param.shape[0], : param.shape[1]])  # bug: rows of rank 0 on every rank


class IgnoresShardIdMethod(_CustomLoaderMethod):
    @staticmethod
    def _load(param, loaded, shard_id=None):
        param.data[: loaded.shape[0]].copy_(loaded)  # bug: every shard lands at offset 0


class SilentReshapeMethod(_CustomLoaderMethod):
    @staticmethod
    def _load(param, loaded, shard_id=None):
        param.data.copy_(loaded.reshape(param.shape))  # bug: no shape check, error does not name the shape


class LoaderRaisesMethod(_CustomLoaderMethod):
    @staticmethod
    def _load(param, loaded, shard_id=None):
        raise ValueError("unsupported checkpoint layout")  # bug: refuses every tensor


class ClampingValidateMethod(UnquantizedLinearMethod):
    def validate_loaded_weights(self, layer):
        layer.weight.data.clamp_(-0.05, 0.05)  # bug: "validation" that clips outliers in place


class RaisingProcessingMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        raise RuntimeError("repack failed")  # bug: fails on every layer


class RefusingValidateMethod(UnquantizedLinearMethod):
    def validate_loaded_weights(self, layer):
        from fastvideo_quant.errors import WeightLoadError

        if layer.weight.dtype != torch.float16:  # bug: refuses the dtype its own create_weights used
            raise WeightLoadError(f"layer {layer.prefix!r}: tensor 'weight': expected float16, found {layer.weight.dtype}")


class ValidateOnceMethod(UnquantizedLinearMethod):
    def __init__(self):
        self.seen = set()

    def validate_loaded_weights(self, layer):
        if id(layer) in self.seen:  # bug: a second validation (a retried load) is refused
            raise RuntimeError("layer already validated")
        self.seen.add(id(layer))


class PlainParamsMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        weight = Parameter(torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
                           requires_grad=False)  # bug: registered v2, but not a BasevLLMParameter
        set_weight_attrs(weight, {"output_dim": 0, "input_dim": 1, **extra_weight_attrs})
        layer.register_parameter("weight", weight)


class NoneLoaderMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        from fastvideo_quant.parameter import ModelWeightParameter

        weight = torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype)
        # bug: the weight_loader given in extra_weight_attrs is not passed on
        layer.register_parameter("weight", ModelWeightParameter(data=weight, output_dim=0, input_dim=1,
                                                                weight_loader=None))


class CreateWeightsRaisesMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, *args, **kwargs):
        raise RuntimeError("packed layout needs input_size % 1024 == 0")  # bug: refuses every layer the suite builds


class NoLoaderParamMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        from fastvideo_quant.parameter import ModelWeightParameter

        weight = torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype)
        layer.register_parameter("weight", ModelWeightParameter(data=weight, output_dim=0, input_dim=1))  # bug


class WrongSignatureMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, a, b, c):  # bug: not the signature layers call
        raise AssertionError("never called: no layer can call it")


class RenamedArgsMethod(UnquantizedLinearMethod):
    # bug: the right order under other names (layers call it by keyword)
    def create_weights(self, layer, in_size, out_sizes, input_size, output_size, params_dtype, **extra_weight_attrs):
        super().create_weights(layer, in_size, out_sizes, input_size, output_size, params_dtype, **extra_weight_attrs)


class PlainScaleMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra_weight_attrs)
        layer.weight_scale = torch.ones(sum(output_partition_sizes), 1)  # bug: a plain attribute, not a Parameter


class BufferWeightMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra_weight_attrs)
        weight = layer._parameters.pop("weight")
        layer.register_buffer("weight", weight.data)  # bug: a buffer has no weight loader; the checkpoint's weight
        # then reads as a tensor no parameter takes


class PlainScaleV2Method(PlainScaleMethod):
    """The same bug in a method registered with weight_loader_v2=True (whose fix is a parameter class)."""


class Int8OnlyMethod(LinearMethodBase):
    """int8 weights with per-row scales: it loads checkpoints that quantize_weight wrote, never float ones."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        rows = sum(output_partition_sizes)
        weight = Parameter(torch.zeros(rows, input_size_per_partition, dtype=torch.int8), requires_grad=False)
        set_weight_attrs(weight, {"output_dim": 0, "input_dim": 1, **extra_weight_attrs})
        scale = Parameter(torch.ones(rows, 1), requires_grad=False)
        set_weight_attrs(scale, {"output_dim": 0, **extra_weight_attrs})
        layer.register_parameter("weight", weight)
        layer.register_parameter("weight_scale", scale)

    def apply(self, layer, x, bias=None):
        return F.linear(x, self.dequantize_weight(layer).to(x.dtype), bias)

    def dequantize_weight(self, layer):
        return layer.weight.float() * layer.weight_scale.float()


class FloatWeightInt8Method(Int8OnlyMethod):
    """Bug: creates the weight in params_dtype although quantize_weight writes int8."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra_weight_attrs)
        layer.weight.data = layer.weight.data.to(params_dtype)


class Fp16ScaleInt8Method(Int8OnlyMethod):
    """Bug: creates the per-row scales in float16 although quantize_weight writes them in float32, so the load rounds
    every scale (precision only: within the int8 method's error, so no accuracy check sees it)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra_weight_attrs)
        layer.weight_scale.data = layer.weight_scale.data.half()


class FullRowsScaleMethod(Int8OnlyMethod):
    """Bug: sizes the per-row scales by the whole layer's output_size, not this rank's rows (right at TP=1 only)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra_weight_attrs)
        layer.weight_scale.data = torch.ones(output_size, 1)


class NoApplyMethod(LinearMethodBase):  # bug: apply() not implemented, so the class is abstract
    create_weights = UnquantizedLinearMethod.create_weights


class QuantizedLookingMethod(LinearMethodBase):
    """A method that is not the unquantized one (as a real quantized method is not)."""

    create_weights = UnquantizedLinearMethod.create_weights
    apply = UnquantizedLinearMethod.apply
    dequantize_weight = UnquantizedLinearMethod.dequantize_weight


class NoSkipListConfig(UnquantizedConfig):
    """Bug: from_config/to_dict drop modules_to_not_convert and get_quant_method never skips (the docs' old way)."""

    @classmethod
    def get_name(cls) -> str:
        return "toy_no_skip_list"

    def get_quant_method(self, layer, prefix):
        return QuantizedLookingMethod()

    def to_dict(self):
        return {"quant_method": "toy_no_skip_list"}


class SkipListConfig(NoSkipListConfig):
    """Right: the skip list round-trips and skipped layers get the unquantized method."""

    @classmethod
    def get_name(cls) -> str:
        return "toy_skip_list"

    @classmethod
    def from_config(cls, config):
        cfg = cls()
        cfg.modules_to_not_convert = cls.skip_list_from(config)
        return cfg

    def to_dict(self):
        return {"quant_method": "toy_skip_list", "modules_to_not_convert": list(self.modules_to_not_convert)}

    def get_quant_method(self, layer, prefix):
        return self.linear_method_or_skip(layer, prefix, QuantizedLookingMethod)


OkConfig = _config("toy_ok", OkMethod, "OkConfig")
AbstractMethodConfig = _config("toy_abstract_method", NoApplyMethod, "AbstractMethodConfig")
BiasIgnoredConfig = _config("toy_bias_ignored", BiasIgnoredMethod, "BiasIgnoredConfig")
WrongDtypeConfig = _config("toy_wrong_dtype", WrongDtypeMethod, "WrongDtypeConfig")
NoNarrowConfig = _config("toy_no_narrow", NoNarrowMethod, "NoNarrowConfig")
IgnoresShardIdConfig = _config("toy_ignores_shard_id", IgnoresShardIdMethod, "IgnoresShardIdConfig")
SilentReshapeConfig = _config("toy_silent_reshape", SilentReshapeMethod, "SilentReshapeConfig")
PlainParamsConfig = _config("toy_v2_plain_params", PlainParamsMethod, "PlainParamsConfig")
UnregisteredMethodConfig = _config("toy_config_only", OkMethod, "UnregisteredMethodConfig")
PlainAttributeConfig = _config("toy_plain_attribute", PlainAttributeMethod, "PlainAttributeConfig")
UnguardedProcessingConfig = _config("toy_unguarded_processing", UnguardedProcessingMethod, "UnguardedProcessingConfig")
LoaderRaisesConfig = _config("toy_loader_raises", LoaderRaisesMethod, "LoaderRaisesConfig")
ClampingValidateConfig = _config("toy_clamping_validate", ClampingValidateMethod, "ClampingValidateConfig")
RefusingValidateConfig = _config("toy_refusing_validate", RefusingValidateMethod, "RefusingValidateConfig")
RaisingProcessingConfig = _config("toy_raising_processing", RaisingProcessingMethod, "RaisingProcessingConfig")
ValidateOnceConfig = _config("toy_validate_once", ValidateOnceMethod, "ValidateOnceConfig")
CreateWeightsRaisesConfig = _config("toy_create_weights_raises", CreateWeightsRaisesMethod, "CreateWeightsRaisesConfig")
NoLoaderParamConfig = _config("toy_no_loader_param", NoLoaderParamMethod, "NoLoaderParamConfig")
NoneLoaderConfig = _config("toy_none_loader", NoneLoaderMethod, "NoneLoaderConfig")


WrongSignatureConfig = _config("toy_wrong_signature", WrongSignatureMethod, "WrongSignatureConfig")
RenamedArgsConfig = _config("toy_renamed_args", RenamedArgsMethod, "RenamedArgsConfig")


class PlainScaleConfig(_config("toy_plain_scale", PlainScaleMethod, "_PlainScaleBase")):
    def quantize_weight(self, weight, *, prefix="", activations=None):
        return {"weight": weight.clone(), "weight_scale": torch.ones(weight.shape[0], 1)}


PlainScaleV2Config = _config("toy_plain_scale_v2", PlainScaleV2Method, "PlainScaleV2Config")


class Int8OnlyConfig(_config("toy_int8_only", Int8OnlyMethod, "_Int8OnlyBase")):
    """Bug: leaves online_quantization True (the default) although its layers take int8 tensors only."""

    weight_rel_error = 0.0125  # per-row int8 (the unquantized base class declares its float weight's 1e-6)

    def quantize_weight(self, weight, *, prefix="", activations=None):
        scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        return {"weight": torch.round(weight.float() / scale).clamp(-127, 127).to(torch.int8), "weight_scale": scale}


def _int8_checkpoint_config(name: str, method_cls: type, attr: str, doc: str | None = None) -> type:
    """The config class ``attr`` (a module attribute of that name, so ranks can unpickle it) of method ``name``: an
    int8-only method that declares it cannot quantize on load and writes Int8OnlyConfig's checkpoints."""
    return type(attr, (_config(name, method_cls, f"_{attr}Base"),), {
        "online_quantization": False, "quantize_weight": Int8OnlyConfig.quantize_weight,
        "weight_rel_error": Int8OnlyConfig.weight_rel_error, "__doc__": doc, "__module__": __name__})


Int8OnlyDeclaredConfig = _int8_checkpoint_config("toy_int8_only_declared", Int8OnlyMethod, "Int8OnlyDeclaredConfig",
                                                 "Right: the same method, declaring that it cannot quantize on load.")
FloatWeightInt8Config = _int8_checkpoint_config("toy_float_weight_int8", FloatWeightInt8Method, "FloatWeightInt8Config")
Fp16ScaleInt8Config = _int8_checkpoint_config("toy_fp16_scale", Fp16ScaleInt8Method, "Fp16ScaleInt8Config")
FullRowsScaleConfig = _int8_checkpoint_config("toy_full_rows_scale", FullRowsScaleMethod, "FullRowsScaleConfig")


def _clip_by_calibration(weight, activations):
    """A per-column weight clip chosen from the inputs' magnitude (a stand-in for a calibrated search)."""
    if activations is None:
        return weight.clone()
    limit = weight.abs().amax(dim=0) * (0.5 + 0.5 * activations.abs().mean(dim=0) / activations.abs().mean())
    return torch.minimum(torch.maximum(weight, -limit), limit)


class ReadsCalibrationConfig(_config("toy_reads_calibration", OkMethod, "_ReadsCalibrationBase")):
    """Bug: declares that quantize_weight ignores activations (so fvq quantize refuses --calibration), but reads them."""

    def uses_calibration(self):
        return False

    def quantize_weight(self, weight, *, prefix="", activations=None):
        return {"weight": _clip_by_calibration(weight, activations)}


class CalibrationDeclaredConfig(_config("toy_calibration_declared", OkMethod, "_CalibrationDeclaredBase")):
    """Right: the same quantize_weight, declaring that it reads activations."""

    def uses_calibration(self):
        return True

    quantize_weight = ReadsCalibrationConfig.quantize_weight


class NeedsCalibrationConfig(_config("toy_needs_calibration", OkMethod, "_NeedsCalibrationBase")):
    """Right: a setting that needs calibration (as fp8's static activation scheme does for input_scale), declared."""

    def uses_calibration(self):
        return True

    def requires_calibration(self):
        return True

    def quantize_weight(self, weight, *, prefix="", activations=None):
        if activations is None:
            raise ConfigError(f"toy_needs_calibration {prefix}: needs calibration activations [tokens, in]")
        return {"weight": _clip_by_calibration(weight.float(), activations)}


class RequiresUndeclaredConfig(NeedsCalibrationConfig):
    """Bug: cannot quantize without activations, but requires_calibration() is False (fvq quantize would fail at the
    first tensor instead of refusing the run before reading)."""

    @classmethod
    def get_name(cls):
        return "toy_requires_undeclared"

    def to_dict(self):
        return {"quant_method": "toy_requires_undeclared"}

    def requires_calibration(self):
        return False


class RequiresNeedlesslyConfig(CalibrationDeclaredConfig):
    """Bug: requires_calibration() True, but quantize_weight runs without activations (fvq quantize would refuse runs
    that work)."""

    @classmethod
    def get_name(cls):
        return "toy_requires_needlessly"

    def to_dict(self):
        return {"quant_method": "toy_requires_needlessly"}

    def requires_calibration(self):
        return True


class NeedsCalibrationUndeclaredConfig(NeedsCalibrationConfig):
    """Bug: needs calibration activations, but declares that quantize_weight ignores them."""

    @classmethod
    def get_name(cls):
        return "toy_needs_calibration_undeclared"

    def to_dict(self):
        return {"quant_method": "toy_needs_calibration_undeclared"}

    def uses_calibration(self):
        return False


class RefusesActivationsConfig(_config("toy_refuses_activations", OkMethod, "_RefusesActivationsBase")):
    """Bug: declares nothing (fvq quantize passes --calibration), but refuses activations shaped [tokens, in]."""

    def quantize_weight(self, weight, *, prefix="", activations=None):
        if activations is not None and activations.shape[0] != weight.shape[1]:  # bug: expects [in, tokens]
            raise ValueError(f"{prefix}: activations must be [in_features, tokens], found {list(activations.shape)}")
        return {"weight": weight.clone()}


class NoQuantizeWeightConfig(_config("toy_no_quantize_weight", OkMethod, "_NoQuantizeWeightBase")):
    """Not a bug for the calibration check: a config that cannot write checkpoints (the base quantize_weight)."""

    quantize_weight = QuantizationConfig.quantize_weight


class NoToDictConfig(_config("toy_no_to_dict", OkMethod, "_NoToDictBase")):
    def to_dict(self):  # bug: the base class's, which raises NotImplementedError
        return QuantizationConfig.to_dict(self)


class SortedSkipConfig(_config("toy_sorted_skip", OkMethod, "_SortedSkipBase")):
    """Right: from_config normalises its skip list (None as [], sorted, deduplicated) and its dtype name ("bf16" as
    "bfloat16"), so to_dict() writes another value than the one given, meaning the same."""

    @classmethod
    def from_config(cls, config):
        cfg = cls()
        cfg.modules_to_not_convert = sorted(set(config.get("modules_to_not_convert") or []))
        cfg.dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(config.get("dtype", "fp16"), config.get("dtype"))
        return cfg

    def to_dict(self):
        return {"quant_method": "toy_sorted_skip", "modules_to_not_convert": list(self.modules_to_not_convert),
                "dtype": self.dtype}


class NeedsKeyConfig(_config("toy_needs_key", OkMethod, "_NeedsKeyBase")):
    """Not a bug: from_config needs a key ({} is refused), so a test class or fvq check must pass it."""

    @classmethod
    def from_config(cls, config):
        if "bits" not in config:
            raise ConfigError("toy_needs_key config: 'bits' is required (4 or 8)")
        return super().from_config(config)


class UnavailableConfig(_config("toy_unavailable", NoApplyMethod, "_UnavailableBase")):
    """Not a bug: a method whose dependency is missing here. Its tests skip; a layer is never built (one would fail:
    NoApplyMethod is abstract), so building its subject up front must not fail either."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "needs the toy-accelerator package, which is not installed (pip install toy-accelerator)"

class ConfigUnavailableConfig(_config("toy_config_unavailable", OkMethod, "_ConfigUnavailableBase")):
    """Not a bug: a config asking for a backend missing here (as int8's fvq_backend 'triton' without triton). Its
    tests skip, like a method whose dependency is missing."""

    @classmethod
    def from_config(cls, config):
        if config.get("backend") == "accel":
            raise MethodUnavailableError("toy: backend 'accel' needs the toy-accelerator package, which is not "
                                         "installed (pip install toy-accelerator)")
        return super().from_config(config)


class StoredUnderAnotherNameConfig(_config("toy_stored_elsewhere", OkMethod, "_StoredElsewhereBase")):
    """Bug: declares the checkpoint key ``toy_stored`` in quantized_checkpoint_keys but keeps the setting as
    ``self.stored`` without overriding reads_quantized_checkpoint(), so the loader cannot tell its modes apart."""

    quantized_checkpoint_keys = {"toy_stored": True}

    @classmethod
    def from_config(cls, config):
        cfg = super().from_config(config)
        cfg.stored = bool(config.get("toy_stored", False))
        return cfg

    def to_dict(self):
        return {"quant_method": self.get_name(), "toy_stored": True}


class StoredDeclaredConfig(StoredUnderAnotherNameConfig):
    """Right: the same config, answering from its own attribute."""

    @classmethod
    def get_name(cls) -> str:
        return "toy_stored_declared"

    def reads_quantized_checkpoint(self) -> bool:
        return self.stored


class InputMutatingMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        s = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)  # dynamic per-token activation scaling ...
        out = F.linear(x.div_(s), layer.weight) * s  # bug: ... in place on the caller's tensor
        return out + bias if bias is not None else out


class InputMutatingLargeMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        if x.reshape(-1, x.shape[-1]).shape[0] > 16:  # bug: a large-batch path scaling the caller's tensor in place
            s = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)
            return F.linear(x.div_(s), layer.weight) * s + (0 if bias is None else bias)
        return F.linear(x, layer.weight, bias)


class InputMutating3dMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        out = F.linear(x, layer.weight, bias)
        if x.dim() > 2:
            x.zero_()  # bug: a 3-D path reusing the caller's tensor as scratch after computing
        return out


class InputMutatingNoBiasMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        out = F.linear(x, layer.weight, bias)
        if bias is None:
            x.mul_(1.0001)  # bug: the bias-less path scales the caller's tensor
        return out


class ViewOnlyMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        out = F.linear(x.view(-1, x.shape[-1]), layer.weight, bias)  # bug: view() refuses a non-contiguous input
        return out.view(*x.shape[:-1], -1)


class UnscaledDequantMethod(UnquantizedLinearMethod):
    def dequantize_weight(self, layer):
        return layer.weight.detach().float() * 0.5  # bug: a scale dropped (or applied twice) in the reference weight


class GemvPathMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        if x.numel() == x.shape[-1]:  # the single-token (decode) fast path: bug: forgets the bias
            return torch.mv(layer.weight.to(x.dtype), x.reshape(-1)).reshape(*x.shape[:-1], -1)
        return F.linear(x, layer.weight, bias)


class TiledMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] <= 16:
            return F.linear(x, layer.weight, bias)
        out = x2.new_zeros(x2.shape[0], layer.weight.shape[0])
        for start in range(0, x2.shape[0] - 15, 16):  # tiles of 16 rows: bug: the last partial tile is dropped
            out[start:start + 16] = F.linear(x2[start:start + 16], layer.weight, bias)
        return out.reshape(*x.shape[:-1], -1)


class KeepsCopyMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        # a transposed copy for the kernel: bug: the checkpoint-format weight is kept next to it
        layer.register_buffer("weight_t", layer.weight.data.t().contiguous())

    def apply(self, layer, x, bias=None):
        if "weight_t" not in layer._buffers:
            return super().apply(layer, x, bias)
        out = x @ layer.weight_t
        return out + bias if bias is not None else out


class KeepsFlatCopyMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        # bug: a flat copy (a kernel's 1-D operand) registered, the checkpoint-format weight kept next to it
        layer.register_buffer("weight_flat", layer.weight.data.flatten().clone())


class KeepsTiledCopyMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        # bug: a [rows / 16, 16, in] tiled copy for a kernel, the checkpoint-format weight kept next to it
        w = layer.weight.data
        layer.register_buffer("weight_tiles", w.reshape(w.shape[0] // 16, 16, w.shape[1]).clone())


def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return (w / s).round().clamp(-127, 127).to(torch.int8), s


class PaddedInt8Method(UnquantizedLinearMethod):
    """Correct: int8 on load, one scale per row, the rows padded to a multiple of 256 (a kernel's tile): the layer
    holds a little more than the bfloat16 weight's bytes (1.02x for 128 rows), but no copy of it."""

    def process_weights_after_loading(self, layer) -> None:
        w = layer.weight.detach().float()
        q, s = _int8_rows(torch.cat([w, w.new_zeros((-w.shape[0]) % 256, w.shape[1])]))
        del layer.weight
        layer.register_parameter("weight", Parameter(q, requires_grad=False))
        layer.register_buffer("weight_scale", s)

    def dequantize_weight(self, layer) -> torch.Tensor:
        return (layer.weight.float() * layer.weight_scale)[: sum(layer.output_partition_sizes)]

    def apply(self, layer, x, bias=None):
        return F.linear(x, self.dequantize_weight(layer).to(x.dtype), bias)


def _hadamard(n: int) -> torch.Tensor:
    """An orthonormal [n, n] Hadamard matrix (Sylvester's construction) for a power of two, else the identity."""
    if n & (n - 1):
        return torch.eye(n)
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)])
    return h / n ** 0.5


class RotatedInt8Method(PaddedInt8Method):
    """Correct: int8 on load of the weight rotated over its inputs (QuaRot-style), the [in, in] rotation kept as a
    buffer in the layer's dtype: the layer holds more than the float weight's bytes, but no copy of it."""

    def process_weights_after_loading(self, layer) -> None:
        w = layer.weight.detach().float()
        h = _hadamard(w.shape[1]).to(w.device)
        q, s = _int8_rows(w @ h)
        del layer.weight
        layer.register_parameter("weight", Parameter(q, requires_grad=False))
        layer.register_buffer("weight_scale", s)
        layer.register_buffer("rotation", h.to(layer.params_dtype))

    def dequantize_weight(self, layer) -> torch.Tensor:
        return (layer.weight.float() * layer.weight_scale) @ layer.rotation.float().T


class KeepsFloatInt8Method(PaddedInt8Method):
    def process_weights_after_loading(self, layer) -> None:
        q, s = _int8_rows(layer.weight.detach().float())
        layer.register_buffer("weight_q", q)  # bug: the float checkpoint weight is kept next to the int8 one
        layer.register_buffer("weight_scale", s)

    def dequantize_weight(self, layer) -> torch.Tensor:
        return layer.weight_q.float() * layer.weight_scale


PaddedInt8Config = _config("toy_padded_int8", PaddedInt8Method, "PaddedInt8Config")
PaddedInt8Config.weight_rel_error = 0.0125  # int8 round-to-nearest, one scale per row
RotatedInt8Config = _config("toy_rotated_int8", RotatedInt8Method, "RotatedInt8Config")
RotatedInt8Config.weight_rel_error = 0.0125
KeepsFloatInt8Config = _config("toy_keeps_float_int8", KeepsFloatInt8Method, "KeepsFloatInt8Config")
KeepsFloatInt8Config.weight_rel_error = 0.0125


class LooseBarConfig(_config("toy_loose_bar", OkMethod, "_LooseBarBase")):
    weight_rel_error = 0.05  # bug: an exact method declaring 5%: a scale 5% off would pass


class QuantizeInPlaceConfig(_config("toy_quantize_in_place", OkMethod, "_QuantizeInPlaceBase")):
    def quantize_weight(self, weight, *, prefix="", activations=None):
        w = weight.float()  # the caller's own tensor when it is float32
        limit = 3 * w.std()
        return {"weight": w.clamp_(-limit, limit)}  # bug: outliers clipped in the caller's weight


class NumpyQuantizeConfig(_config("toy_numpy_quantize", OkMethod, "_NumpyQuantizeBase")):
    def quantize_weight(self, weight, *, prefix="", activations=None):
        return {"weight": torch.from_numpy(weight.numpy().copy())}  # bug: numpy has no bfloat16


class DetachedWeightMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        # bug: the weight leaves the autograd graph, so model.requires_grad_(True) trains nothing here and says nothing
        return F.linear(x, layer.weight.detach(), bias)


class TrainableScaleMethod(UnquantizedLinearMethod):
    def process_weights_after_loading(self, layer):
        # bug: torch's Parameter defaults to requires_grad=True, so the scale trains with a LoRA's optimizer
        layer.weight_scale = Parameter(torch.ones(layer.weight.shape[0], dtype=torch.float32, device=layer.weight.device))

    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.weight * layer.weight_scale[:, None].to(layer.weight.dtype), bias)


class SmallMDetachedMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        # bug: the small-M path reads weight.data, so a weight that requires grad trains on one path and not the other
        rows = x.reshape(-1, x.shape[-1]).shape[0]
        return F.linear(x, layer.weight.data if rows <= 4 else layer.weight, bias)


class OutArgMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        out = x.new_empty(*x.shape[:-1], layer.weight.shape[0])
        torch.matmul(x, layer.weight.t(), out=out)  # bug: out= cannot be recorded by autograd
        return out + bias if bias is not None else out


class SettingDroppedConfig(_config("toy_setting_dropped", OkMethod, "_SettingDroppedBase")):
    """Bug: from_config reads 'bits' (so it is no unread key) but keeps the default."""

    bits = 8

    @classmethod
    def from_config(cls, config):
        cfg = super().from_config(config)
        if config.get("bits", 8) not in (4, 8):
            raise ConfigError("toy_setting_dropped: bits must be 4 or 8")
        return cfg  # (cfg.bits = config.get("bits", 8) forgotten)

    def to_dict(self):
        return {"quant_method": "toy_setting_dropped", "bits": self.bits}


class _NoKvReplicaWeight(ModelWeightParameter):
    def load_qkv_weight(self, loaded_weight, **kwargs):
        # bug: a k/v shard is never replicated (num_heads is the number of ranks sharing one KV head)
        super().load_qkv_weight(loaded_weight, **{**kwargs, "num_heads": 1})


class NoKvReplicaMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        layer.register_parameter("weight", _NoKvReplicaWeight(
            data=torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
            output_dim=0, input_dim=1, weight_loader=extra_weight_attrs["weight_loader"]))


class ReusedOutputMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        shape = (*x.shape[:-1], layer.weight.shape[0])
        buf = layer.__dict__.get("_out")
        if buf is None or buf.shape != shape or buf.dtype != x.dtype:
            buf = layer.__dict__["_out"] = x.new_empty(shape)  # bug: one output buffer, written by every call
        buf.copy_(F.linear(x, layer.weight, bias))
        return buf


InputMutatingConfig = _config("toy_input_mutating", InputMutatingMethod, "InputMutatingConfig")
InputMutatingLargeConfig = _config("toy_input_mutating_large", InputMutatingLargeMethod, "InputMutatingLargeConfig")
InputMutating3dConfig = _config("toy_input_mutating_3d", InputMutating3dMethod, "InputMutating3dConfig")
InputMutatingNoBiasConfig = _config("toy_input_mutating_nobias", InputMutatingNoBiasMethod, "InputMutatingNoBiasConfig")
ViewOnlyConfig = _config("toy_view_only", ViewOnlyMethod, "ViewOnlyConfig")
UnscaledDequantConfig = _config("toy_unscaled_dequant", UnscaledDequantMethod, "UnscaledDequantConfig")
GemvPathConfig = _config("toy_gemv_path", GemvPathMethod, "GemvPathConfig")
TiledConfig = _config("toy_tiled", TiledMethod, "TiledConfig")
KeepsCopyConfig = _config("toy_keeps_copy", KeepsCopyMethod, "KeepsCopyConfig")
KeepsFlatCopyConfig = _config("toy_keeps_flat_copy", KeepsFlatCopyMethod, "KeepsFlatCopyConfig")
KeepsTiledCopyConfig = _config("toy_keeps_tiled_copy", KeepsTiledCopyMethod, "KeepsTiledCopyConfig")
OutArgConfig = _config("toy_out_arg", OutArgMethod, "OutArgConfig")
SmallMDetachedConfig = _config("toy_small_m_detached", SmallMDetachedMethod, "SmallMDetachedConfig")
TrainableScaleConfig = _config("toy_trainable_scale", TrainableScaleMethod, "TrainableScaleConfig")
BufferWeightConfig = _config("toy_buffer_weight", BufferWeightMethod, "BufferWeightConfig")
DetachedWeightConfig = _config("toy_detached_weight", DetachedWeightMethod, "DetachedWeightConfig")
NoKvReplicaConfig = _config("toy_no_kv_replica", NoKvReplicaMethod, "NoKvReplicaConfig")
ReusedOutputConfig = _config("toy_reused_output", ReusedOutputMethod, "ReusedOutputConfig")


class RowwiseOnLoadMethod(UnquantizedLinearMethod):
    """Correct: the checkpoint holds float weights and each layer rounds its own to int8 on load, with one scale per
    output row over the inputs it holds (a row-parallel rank's scale spans only its slice of the inputs)."""

    def process_weights_after_loading(self, layer) -> None:
        w = layer.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        layer.weight.data = ((w / scale).round().clamp(-127, 127) * scale).to(layer.weight.dtype)


class _RowwiseOnLoadBase(UnquantizedConfig):
    weight_rel_error = 0.0125  # int8 round-to-nearest, one scale per row
    tolerance = Tolerance(max_rel_error=1e-2)  # (the outputs at TP hold each rank's own rounding, not the float32 bound)


RowwiseOnLoadConfig = type("RowwiseOnLoadConfig", (_RowwiseOnLoadBase,), {
    "get_name": classmethod(lambda cls: "toy_rowwise_on_load"),
    "get_quant_method": lambda self, layer, prefix: RowwiseOnLoadMethod(),
    "to_dict": lambda self: {"quant_method": "toy_rowwise_on_load"}, "__module__": __name__})


class PerTensorOnLoadMethod(UnquantizedLinearMethod):
    """Correct: the checkpoint holds float weights and each layer rounds its own to int8 on load with one scale over
    all it holds (as vLLM's fp8 online quantization does): ranks sharing a KV head hold different q rows, so their
    scales, and their k and v rows, differ slightly."""

    def process_weights_after_loading(self, layer) -> None:
        w = layer.weight.detach().float()
        scale = w.abs().amax().clamp(min=1e-12) / 127
        layer.weight.data = ((w / scale).round().clamp(-127, 127) * scale).to(layer.weight.dtype)


class _PerTensorOnLoadBase(UnquantizedConfig):
    weight_rel_error = 0.02  # int8 round-to-nearest, one scale per layer
    tolerance = Tolerance(max_rel_error=1e-2)  # (the outputs at TP hold each rank's own rounding, not the float32 bound)


PerTensorOnLoadConfig = type("PerTensorOnLoadConfig", (_PerTensorOnLoadBase,), {
    "get_name": classmethod(lambda cls: "toy_pertensor_on_load"),
    "get_quant_method": lambda self, layer, prefix: PerTensorOnLoadMethod(),
    "to_dict": lambda self: {"quant_method": "toy_pertensor_on_load"}, "__module__": __name__})


class _FirstReplicaOnlyWeight(ModelWeightParameter):
    def load_qkv_weight(self, loaded_weight, **kwargs):
        if kwargs["shard_id"] != "q" and self.tp_rank % kwargs["num_heads"]:
            return  # bug: only the first of the ranks sharing a KV head loads it; the others keep zeros
        super().load_qkv_weight(loaded_weight, **kwargs)


class FirstReplicaOnlyMethod(PerTensorOnLoadMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        layer.register_parameter("weight", _FirstReplicaOnlyWeight(
            data=torch.zeros(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
            output_dim=0, input_dim=1, weight_loader=extra_weight_attrs["weight_loader"]))


FirstReplicaOnlyConfig = type("FirstReplicaOnlyConfig", (_PerTensorOnLoadBase,), {
    "get_name": classmethod(lambda cls: "toy_first_replica_only"),
    "get_quant_method": lambda self, layer, prefix: FirstReplicaOnlyMethod(),
    "to_dict": lambda self: {"quant_method": "toy_first_replica_only"}, "__module__": __name__})


class OffApplyMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.weight * 1.2, bias)  # bug: a scale 20% off in the kernel, not in dequantize_weight


class LooseToleranceConfig(_config("toy_loose_tolerance", OffApplyMethod, "_LooseToleranceBase")):
    tolerance = Tolerance(max_rel_error=100)  # bug: so loose that the 20%-off apply passes the accuracy checks


class LooseSqnrConfig(_config("toy_loose_sqnr", OkMethod, "_LooseSqnrBase")):
    tolerance = Tolerance(min_sqnr_db=10.0)  # bug: an exact method allowing a relative error of 0.32


class Bf16InsideFloat32Config(_config("toy_bf16_inside_float32", Bf16InsideFloat32Method, "_Bf16InsideFloat32Base")):
    tolerance = UnquantizedConfig.tolerance  # (1e-2 for bfloat16, 1e-3 for float16, 1e-5 for float32)


class Bf16InGradModeConfig(_config("toy_bf16_in_grad_mode", Bf16InGradModeMethod, "_Bf16InGradModeBase")):
    tolerance = UnquantizedConfig.tolerance  # (a float32 bound of 1e-5)


class Float32OnlyConfig(_config("toy_float32_only", OkMethod, "_Float32OnlyBase")):
    """Bug: exact in the only dtype it declares, yet keeps a 1e-2 made for bfloat16 rounding."""

    @classmethod
    def get_supported_act_dtypes(cls):
        return [torch.float32]


class TightBarConfig(_config("toy_tight_bar", OkMethod, "_TightBarBase")):
    """Checkpoints rounded to int8 levels per row (stored as float): measured 0.007, declared a little below it."""

    weight_rel_error = 0.005

    def quantize_weight(self, weight, *, prefix="", activations=None):
        q, s = _int8_rows(weight.float())
        return {"weight": q.float() * s}


class PlainV1Method(Int8OnlyMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        rows = sum(output_partition_sizes)  # bug: plain Parameters, registered v1, given no set_weight_attrs
        layer.register_parameter("weight", Parameter(torch.zeros(rows, input_size_per_partition, dtype=torch.int8),
                                                     requires_grad=False))
        layer.register_parameter("weight_scale", Parameter(torch.ones(rows, 1), requires_grad=False))


PlainV1Config = _config("toy_plain_v1", PlainV1Method, "PlainV1Config")
PlainV1Config.quantize_weight = Int8OnlyConfig.quantize_weight


class SwappedDimsMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        weight = torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype)
        # bug: an [out, in] weight declared with the dims swapped (input_dim=0, output_dim=1)
        layer.register_parameter("weight", ModelWeightParameter(data=weight, input_dim=0, output_dim=1,
                                                                weight_loader=extra_weight_attrs["weight_loader"]))


class NoOutputDimMethod(UnquantizedLinearMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        weight = Parameter(torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
                           requires_grad=False)
        set_weight_attrs(weight, {"input_dim": 1, **extra_weight_attrs})  # bug: no output_dim (v1)
        layer.register_parameter("weight", weight)


NoOutputDimConfig = _config("toy_no_output_dim", NoOutputDimMethod, "NoOutputDimConfig")


class ScaleDimMethod(Int8OnlyMethod):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs):
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra_weight_attrs)
        scale = Parameter(torch.ones(sum(output_partition_sizes)), requires_grad=False)
        set_weight_attrs(scale, {"output_dim": 1, **extra_weight_attrs})  # bug: a 1-D scale [out] given output_dim=1
        layer.weight_scale = scale

    def dequantize_weight(self, layer):
        return layer.weight.float() * layer.weight_scale.float()[:, None]


class ScaleDimConfig(_config("toy_scale_dim", ScaleDimMethod, "_ScaleDimBase")):
    online_quantization = False
    weight_rel_error = Int8OnlyConfig.weight_rel_error

    def quantize_weight(self, weight, *, prefix="", activations=None):
        out = Int8OnlyConfig.quantize_weight(self, weight, prefix=prefix)
        return {"weight": out["weight"], "weight_scale": out["weight_scale"].reshape(-1)}


SwappedDimsConfig = _config("toy_swapped_dims", SwappedDimsMethod, "SwappedDimsConfig")


class OverStrictShardsConfig(_config("toy_over_strict_shards", OkMethod, "OverStrictShardsBase")):
    """Bug: shard_problems refuses inputs that are not multiples of 1024, which create_weights never required."""

    def shard_problems(self, parts, whole_parts, in_rank, in_total):
        return [f"input size per rank {in_rank} is not a multiple of 1024"] if in_rank % 1024 else []


class OldQuantizeSignatureConfig(_config("toy_old_quantize_signature", OkMethod, "_OldQuantizeSignatureBase")):
    def quantize_weight(self, weight):  # bug: the signature of docs/plugins.md's old example; called with prefix=
        return {"weight": weight.clone()}


class KwargsQuantizeSignatureConfig(_config("toy_kwargs_quantize_signature", OkMethod, "_KwargsSignatureBase")):
    def quantize_weight(self, weight, **kwargs):  # right: **kwargs takes prefix= and activations=
        return {"weight": weight.clone()}


class NoSuperInitConfig(_config("toy_no_super_init", OkMethod, "_NoSuperInitBase")):
    def __init__(self):  # bug: no super().__init__(), so no packed_modules_mapping / modules_to_not_convert
        self.bits = 8

    def get_quant_method(self, layer, prefix):
        return self.linear_method_or_skip(layer, prefix, OkMethod)


class GetQuantMethodTypoConfig(_config("toy_get_quant_method_typo", OkMethod, "_GetQuantMethodTypoBase")):
    def get_quant_method(self, layer, prefix):
        return self.linear_method_or_skip(layer, prefix, lambda: OkMethdo())  # bug: a typo  # noqa: F821


class ApplyWithoutBiasMethod(UnquantizedLinearMethod):
    def apply(self, layer, x):  # bug: no bias; the layers call apply(layer, x, bias)
        return F.linear(x, layer.weight)


ApplyWithoutBiasConfig = _config("toy_apply_without_bias", ApplyWithoutBiasMethod, "ApplyWithoutBiasConfig")


class _TorchOnlyConfig(QuantizationConfig):
    """What the toys written on QuantizationConfig itself share: bfloat16 and float32, any device, no config file (and
    no tolerance: each states its own, or, as the bug it is, none)."""

    @classmethod
    def get_supported_act_dtypes(cls):
        return [torch.bfloat16, torch.float32]

    @classmethod
    def get_min_capability(cls):
        return 0

    @classmethod
    def cpu_support(cls):
        return "native: torch.nn.functional.linear"

    @staticmethod
    def get_config_filenames():
        return []


class NoToleranceConfig(_TorchOnlyConfig):
    """Bug: states no tolerance, so QuantizationConfig's 1e-2 holds in every dtype, and its float32 path computes in
    bfloat16 (~2e-3 off), which that bound passes."""

    weight_rel_error = 1e-6

    @classmethod
    def get_name(cls):
        return "toy_no_tolerance"

    @classmethod
    def from_config(cls, config):
        return cls()

    def to_dict(self):
        return {"quant_method": "toy_no_tolerance"}

    def get_quant_method(self, layer, prefix):
        from fastvideo_quant.layers.linear import LinearBase

        return Bf16InsideFloat32Method() if isinstance(layer, LinearBase) else None

    def quantize_weight(self, weight, *, prefix="", activations=None):
        return {"weight": weight}


class TwoModesMethod(LinearMethodBase):
    """Correct: int8 weights with a scale per row, read pre-quantized or quantized from float weights on load."""

    def __init__(self, serialized: bool) -> None:
        self.serialized = serialized

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        rows, loader = sum(output_partition_sizes), extra["weight_loader"]
        dtype = torch.int8 if self.serialized else params_dtype
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(rows, input_size_per_partition, dtype=dtype), input_dim=1, output_dim=0,
            weight_loader=loader))
        if self.serialized:
            layer.register_parameter("weight_scale", ChannelQuantScaleParameter(
                data=torch.empty(rows, dtype=torch.float32), output_dim=0, weight_loader=loader))

    def process_weights_after_loading(self, layer):
        if not self.serialized:
            q = TwoModesConfig.quantize_weight(None, layer.weight.data)
            layer.weight = Parameter(q["weight"], requires_grad=False)
            layer.weight_scale = Parameter(q["weight_scale"], requires_grad=False)
        else:
            layer.weight = Parameter(layer.weight.data, requires_grad=False)
            layer.weight_scale = Parameter(layer.weight_scale.data, requires_grad=False)

    def dequantize_weight(self, layer):
        return layer.weight.float() * layer.weight_scale[:, None]

    def apply(self, layer, x, bias=None):
        return F.linear(x, self.dequantize_weight(layer).to(x.dtype), bias)


class TwoModesConfig(_TorchOnlyConfig):
    """Correct: two modes told apart by quantized_checkpoint_keys, and a to_dict() that writes the mode it is in
    (from_config({}) is online: it writes toy_serialized false)."""

    tolerance = Tolerance(max_rel_error=2e-2, dtypes={torch.float32: Tolerance(max_rel_error=1e-5)})
    weight_rel_error = 1e-2
    quantized_checkpoint_keys = {"toy_serialized": True}

    @classmethod
    def get_name(cls):
        return "toy_two_modes"

    @classmethod
    def from_config(cls, config):
        self = cls()
        self.toy_serialized = bool(config.get("toy_serialized", False))
        return self

    def to_dict(self):
        return {"quant_method": "toy_two_modes", "toy_serialized": self.toy_serialized}

    def get_quant_method(self, layer, prefix):
        from fastvideo_quant.layers.linear import LinearBase

        return TwoModesMethod(self.toy_serialized) if isinstance(layer, LinearBase) else None

    def quantize_weight(self, weight, *, prefix="", activations=None):
        w = weight.float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
        return {"weight": torch.round(w / scale[:, None]).to(torch.int8), "weight_scale": scale}


class TwoModesForgetfulConfig(TwoModesConfig):
    """Bug: to_dict() leaves out the mode, so the checkpoint it writes loads in the online mode."""

    @classmethod
    def get_name(cls):
        return "toy_two_modes_forgetful"

    def to_dict(self):
        return {"quant_method": "toy_two_modes_forgetful"}


class RankOneRaisesMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        if layer.tp_rank == 1:  # bug: a rank-local tensor indexed with a global index (vLLM's g_idx in a row layer)
            raise IndexError("index 1 is out of bounds for dimension 0 with size 1")
        return F.linear(x, layer.weight, bias)


RankOneRaisesConfig = _config("toy_rank_one_raises", RankOneRaisesMethod, "RankOneRaisesConfig")


class NarrowOutputMethod(UnquantizedLinearMethod):
    def apply(self, layer, x, bias=None):
        out = F.linear(x, layer.weight, bias)
        return out[..., :-1]  # bug: one output feature short (an off-by-one in a kernel's output tile count)


NarrowOutputConfig = _config("toy_narrow_output", NarrowOutputMethod, "NarrowOutputConfig")


class IgnoresSkipListConfig(SkipListConfig):
    """Bug: the skip list round-trips, but get_quant_method never asks is_layer_skipped (vLLM's style)."""

    @classmethod
    def get_name(cls) -> str:
        return "toy_ignores_skip_list"

    def to_dict(self):
        return {**super().to_dict(), "quant_method": "toy_ignores_skip_list"}

    def get_quant_method(self, layer, prefix):
        from fastvideo_quant.layers.linear import LinearBase

        return QuantizedLookingMethod() if isinstance(layer, LinearBase) else None


PLUGINS = {
    "toy_ok": Plugin(OkConfig, OkMethod, True),
    "toy_loose_tolerance": Plugin(LooseToleranceConfig, OffApplyMethod, True),
    "toy_loose_sqnr": Plugin(LooseSqnrConfig, OkMethod, True),
    "toy_tight_bar": Plugin(TightBarConfig, OkMethod, True),
    "toy_float32_only": Plugin(Float32OnlyConfig, OkMethod, True),
    "toy_bf16_inside_float32": Plugin(Bf16InsideFloat32Config, Bf16InsideFloat32Method, True),
    "toy_bf16_in_grad_mode": Plugin(Bf16InGradModeConfig, Bf16InGradModeMethod, True),
    "toy_plain_v1": Plugin(PlainV1Config, PlainV1Method, False),
    "toy_rowwise_on_load": Plugin(RowwiseOnLoadConfig, RowwiseOnLoadMethod, True),
    "toy_pertensor_on_load": Plugin(PerTensorOnLoadConfig, PerTensorOnLoadMethod, True),
    "toy_first_replica_only": Plugin(FirstReplicaOnlyConfig, FirstReplicaOnlyMethod, True),
    # get_quant_method instantiates NoApplyMethod, which it does not register: register() refuses an abstract class.
    "toy_abstract_method": Plugin(AbstractMethodConfig, None, True),
    "toy_no_skip_list": Plugin(NoSkipListConfig, QuantizedLookingMethod, True),
    "toy_skip_list": Plugin(SkipListConfig, QuantizedLookingMethod, True),
    "toy_bias_ignored": Plugin(BiasIgnoredConfig, BiasIgnoredMethod, True),
    "toy_wrong_dtype": Plugin(WrongDtypeConfig, WrongDtypeMethod, True),
    "toy_no_narrow": Plugin(NoNarrowConfig, NoNarrowMethod, False),
    "toy_ignores_shard_id": Plugin(IgnoresShardIdConfig, IgnoresShardIdMethod, False),
    "toy_silent_reshape": Plugin(SilentReshapeConfig, SilentReshapeMethod, False),
    "toy_v2_plain_params": Plugin(PlainParamsConfig, PlainParamsMethod, True),
    "toy_config_only": Plugin(UnregisteredMethodConfig, None, True),
    "toy_plain_attribute": Plugin(PlainAttributeConfig, PlainAttributeMethod, True),
    "toy_unguarded_processing": Plugin(UnguardedProcessingConfig, UnguardedProcessingMethod, True),
    "toy_loader_raises": Plugin(LoaderRaisesConfig, LoaderRaisesMethod, False),
    "toy_clamping_validate": Plugin(ClampingValidateConfig, ClampingValidateMethod, True),
    "toy_refusing_validate": Plugin(RefusingValidateConfig, RefusingValidateMethod, True),
    "toy_raising_processing": Plugin(RaisingProcessingConfig, RaisingProcessingMethod, True),
    "toy_validate_once": Plugin(ValidateOnceConfig, ValidateOnceMethod, True),
    "toy_unavailable": Plugin(UnavailableConfig, None, True),  # (NoApplyMethod is abstract: register() refuses it)
    "toy_create_weights_raises": Plugin(CreateWeightsRaisesConfig, CreateWeightsRaisesMethod, True),
    "toy_no_loader_param": Plugin(NoLoaderParamConfig, NoLoaderParamMethod, True),
    "toy_config_unavailable": Plugin(ConfigUnavailableConfig, OkMethod, True),
    "toy_wrong_signature": Plugin(WrongSignatureConfig, WrongSignatureMethod, True),
    "toy_renamed_args": Plugin(RenamedArgsConfig, RenamedArgsMethod, True),
    "toy_plain_scale": Plugin(PlainScaleConfig, PlainScaleMethod, False),
    "toy_plain_scale_v2": Plugin(PlainScaleV2Config, PlainScaleV2Method, True),
    "toy_int8_only": Plugin(Int8OnlyConfig, Int8OnlyMethod, False),
    "toy_int8_only_declared": Plugin(Int8OnlyDeclaredConfig, Int8OnlyMethod, False),
    "toy_no_to_dict": Plugin(NoToDictConfig, OkMethod, True),
    "toy_reads_calibration": Plugin(ReadsCalibrationConfig, OkMethod, True),
    "toy_calibration_declared": Plugin(CalibrationDeclaredConfig, OkMethod, True),
    "toy_refuses_activations": Plugin(RefusesActivationsConfig, OkMethod, True),
    "toy_needs_calibration": Plugin(NeedsCalibrationConfig, OkMethod, True),
    "toy_needs_calibration_undeclared": Plugin(NeedsCalibrationUndeclaredConfig, OkMethod, True),
    "toy_requires_undeclared": Plugin(RequiresUndeclaredConfig, OkMethod, True),
    "toy_requires_needlessly": Plugin(RequiresNeedlesslyConfig, OkMethod, True),
    "toy_no_quantize_weight": Plugin(NoQuantizeWeightConfig, OkMethod, True),
    "toy_needs_key": Plugin(NeedsKeyConfig, OkMethod, True),
    "toy_stored_elsewhere": Plugin(StoredUnderAnotherNameConfig, OkMethod, True),
    "toy_none_loader": Plugin(NoneLoaderConfig, NoneLoaderMethod, True),
    "toy_stored_declared": Plugin(StoredDeclaredConfig, OkMethod, True),
    "toy_input_mutating": Plugin(InputMutatingConfig, InputMutatingMethod, True),
    "toy_input_mutating_large": Plugin(InputMutatingLargeConfig, InputMutatingLargeMethod, True),
    "toy_input_mutating_3d": Plugin(InputMutating3dConfig, InputMutating3dMethod, True),
    "toy_input_mutating_nobias": Plugin(InputMutatingNoBiasConfig, InputMutatingNoBiasMethod, True),
    "toy_view_only": Plugin(ViewOnlyConfig, ViewOnlyMethod, True),
    "toy_float_weight_int8": Plugin(FloatWeightInt8Config, FloatWeightInt8Method, False),
    "toy_unscaled_dequant": Plugin(UnscaledDequantConfig, UnscaledDequantMethod, True),
    "toy_gemv_path": Plugin(GemvPathConfig, GemvPathMethod, True),
    "toy_tiled": Plugin(TiledConfig, TiledMethod, True),
    "toy_keeps_copy": Plugin(KeepsCopyConfig, KeepsCopyMethod, True),
    "toy_keeps_flat_copy": Plugin(KeepsFlatCopyConfig, KeepsFlatCopyMethod, True),
    "toy_keeps_tiled_copy": Plugin(KeepsTiledCopyConfig, KeepsTiledCopyMethod, True),
    "toy_padded_int8": Plugin(PaddedInt8Config, PaddedInt8Method, True),
    "toy_rotated_int8": Plugin(RotatedInt8Config, RotatedInt8Method, True),
    "toy_keeps_float_int8": Plugin(KeepsFloatInt8Config, KeepsFloatInt8Method, True),
    "toy_loose_bar": Plugin(LooseBarConfig, OkMethod, True),
    "toy_quantize_in_place": Plugin(QuantizeInPlaceConfig, OkMethod, True),
    "toy_numpy_quantize": Plugin(NumpyQuantizeConfig, OkMethod, True),
    "toy_out_arg": Plugin(OutArgConfig, OutArgMethod, True),
    "toy_small_m_detached": Plugin(SmallMDetachedConfig, SmallMDetachedMethod, True),
    "toy_trainable_scale": Plugin(TrainableScaleConfig, TrainableScaleMethod, True),
    "toy_fp16_scale": Plugin(Fp16ScaleInt8Config, Fp16ScaleInt8Method, False),
    "toy_full_rows_scale": Plugin(FullRowsScaleConfig, FullRowsScaleMethod, False),
    "toy_buffer_weight": Plugin(BufferWeightConfig, BufferWeightMethod, True),
    "toy_detached_weight": Plugin(DetachedWeightConfig, DetachedWeightMethod, True),
    "toy_setting_dropped": Plugin(SettingDroppedConfig, OkMethod, True),
    "toy_sorted_skip": Plugin(SortedSkipConfig, OkMethod, True),
    "toy_no_kv_replica": Plugin(NoKvReplicaConfig, NoKvReplicaMethod, True),
    "toy_reused_output": Plugin(ReusedOutputConfig, ReusedOutputMethod, True),
    "toy_swapped_dims": Plugin(SwappedDimsConfig, SwappedDimsMethod, True),
    "toy_over_strict_shards": Plugin(OverStrictShardsConfig, OkMethod, True),
    "toy_scale_dim": Plugin(ScaleDimConfig, ScaleDimMethod, False),
    "toy_old_quantize_signature": Plugin(OldQuantizeSignatureConfig, OkMethod, True),
    "toy_kwargs_quantize_signature": Plugin(KwargsQuantizeSignatureConfig, OkMethod, True),
    "toy_no_super_init": Plugin(NoSuperInitConfig, OkMethod, True),
    "toy_ignores_skip_list": Plugin(IgnoresSkipListConfig, QuantizedLookingMethod, True),
    "toy_get_quant_method_typo": Plugin(GetQuantMethodTypoConfig, OkMethod, True),
    "toy_no_tolerance": Plugin(NoToleranceConfig, Bf16InsideFloat32Method, True),
    "toy_two_modes": Plugin(TwoModesConfig, TwoModesMethod, True),
    "toy_two_modes_forgetful": Plugin(TwoModesForgetfulConfig, TwoModesMethod, True),
    "toy_no_output_dim": Plugin(NoOutputDimConfig, NoOutputDimMethod, False),
    "toy_rank_one_raises": Plugin(RankOneRaisesConfig, RankOneRaisesMethod, True),
    "toy_narrow_output": Plugin(NarrowOutputConfig, NarrowOutputMethod, True),
    "toy_apply_without_bias": Plugin(ApplyWithoutBiasConfig, ApplyWithoutBiasMethod, True),
}

#: Entry-point target of the abstract-method toy (test_subject_failure.py installs it as a distribution).
ABSTRACT_METHOD_PLUGIN = PLUGINS["toy_abstract_method"]
#: Entry-point targets of toys installed with it (more entry points of the same distribution).
UNAVAILABLE_PLUGIN = PLUGINS["toy_unavailable"]
CREATE_WEIGHTS_RAISES_PLUGIN = PLUGINS["toy_create_weights_raises"]
CONFIG_UNAVAILABLE_PLUGIN = PLUGINS["toy_config_unavailable"]
WRONG_SIGNATURE_PLUGIN = PLUGINS["toy_wrong_signature"]
NEEDS_KEY_PLUGIN = PLUGINS["toy_needs_key"]
BIAS_IGNORED_PLUGIN = PLUGINS["toy_bias_ignored"]


@contextlib.contextmanager
def registered(toys: dict[str, Plugin]) -> Iterator[None]:
    """``toys`` registered (name → plugin) while inside, with this folder on sys.path: spawned tensor-parallel ranks
    inherit it and re-import the plugins by name."""
    here = str(Path(__file__).parent)
    sys.path.insert(0, here)
    for name, plugin in toys.items():
        plugins.register_plugin(plugin, name)
    try:
        yield
    finally:
        for name in toys:
            plugins.unregister_plugin(name)
        sys.path.remove(here)


def failure(check, *args) -> str:
    """The message of the ConformanceFailure ``check(*args)`` must raise."""
    with pytest.raises(ConformanceFailure) as info:
        check(*args)
    return str(info.value)
