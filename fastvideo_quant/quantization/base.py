"""The quantization contract: configs, methods and the linear-method interface.

The names and signatures follow vLLM's ``quantization/base_config.py`` so code
written against vLLM/FastVideo ports unchanged; the additions (``to_dict``,
``tolerance``, ``cpu_support``, ``unavailable_reason``, ``quantize_weight``,
``uses_calibration``, ``dequantize_weight``) are what the conformance suite and ``fvq quantize`` need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.autograd.forward_ad as _forward_ad

from fastvideo_quant.errors import (
    ONE_SCHEME_PER_LAYER,
    ConfigError,
    FastVideoQuantError,
    ModelStateError,
    PluginError,
    WeightLoadError,
)

#: Fused module → the checkpoint modules it is made of (Hugging Face names; vLLM's convention).
DEFAULT_PACKED_MODULES_MAPPING: dict[str, list[str]] = {
    "qkv_proj": ["q_proj", "k_proj", "v_proj"],
    "gate_up_proj": ["gate_proj", "up_proj"],
}


def packed_part_of(mapping: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Checkpoint module → the fused module it is loaded into: the inverse of ``mapping``
    (:data:`DEFAULT_PACKED_MODULES_MAPPING` when None), e.g. ``{"q_proj": "qkv_proj", ..., "up_proj": "gate_up_proj"}``.
    Read from names alone (``fvq quantize``), so a part listed under two fused modules is refused before this
    (``quantize.plan.merged_packed_mapping``); the loader, which has the model, takes such a mapping."""
    mapping = DEFAULT_PACKED_MODULES_MAPPING if mapping is None else mapping
    return {part: fused for fused, parts in mapping.items() for part in parts}


def as_model_shows(module: str, mapping: dict[str, list[str]] | None = None) -> str:
    """``module`` as the model shows it: the fused module's name (``blocks.0.attn.qkv_proj``) for a part of a fused
    group (``blocks.0.attn.q_proj``; ``mapping`` as :func:`packed_part_of` takes it), else ``module`` itself — the
    layer a checkpoint module loads into, what ``modules_to_not_convert`` and ``--skip`` must name."""
    parent, dot, leaf = module.rpartition(".")
    fused = packed_part_of(mapping).get(leaf)
    return f"{parent}{dot}{fused}" if fused else module


class _ReadOnlyDict(dict):
    """``Tolerance.dtypes``: a dict (``dataclasses.asdict``, ``json`` and ``==`` take it) that refuses changes."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Tolerance.dtypes is read-only (a class attribute configs share): build another Tolerance, e.g. "
                        "dataclasses.replace(tol, dtypes={**tol.dtypes, torch.float16: Tolerance(...)})")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self):  # (pickle and copy rebuild it whole: item by item would be refused)
        return (type(self), (dict(self),))


@dataclasses.dataclass(frozen=True, repr=False)
class Tolerance:
    """The accuracy a method promises for ``apply`` against a float32 reference.

    The reference is ``x.float() @ dequantize_weight(layer).T + bias`` in float32,
    so the error measured is the method's own (activation quantization, low
    precision accumulation), not the weight rounding it chose on purpose.
    ``max_rel_error`` bounds ``||out - ref|| / ||ref||``; ``min_sqnr_db`` bounds
    ``20 log10(||ref|| / ||out - ref||)``. Either may be None (not checked).

    ``dtypes`` states other bounds for some activation dtypes, e.g.
    ``Tolerance(max_rel_error=1e-2, dtypes={torch.float32: Tolerance(max_rel_error=1e-5)})``: float32 inputs are
    held to 1e-5, the other dtypes to 1e-2. One bound wide enough for bfloat16's rounding (2e-3) passes a float32 or
    float16 path that computes in bfloat16; a bound per dtype does not. Each value is a ``Tolerance`` with a bound
    and no ``dtypes`` of its own. :meth:`for_dtype` gives the bound for one dtype.
    """

    max_rel_error: float | None = None
    min_sqnr_db: float | None = None
    dtypes: Mapping[torch.dtype, Tolerance] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.dtypes, Mapping):
            raise TypeError(f"Tolerance.dtypes must be a dict of torch.dtype -> Tolerance, found "
                            f"{type(self.dtypes).__name__} {self.dtypes!r}")
        for dtype, tol in self.dtypes.items():
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise TypeError(f"Tolerance.dtypes: key {dtype!r} is not a floating-point torch.dtype (e.g. "
                                "torch.float32)")
            if not isinstance(tol, Tolerance):
                raise TypeError(f"Tolerance.dtypes[{dtype}]: expected a Tolerance, found {type(tol).__name__} {tol!r}")
            if tol.dtypes:
                raise ValueError(f"Tolerance.dtypes[{dtype}] has dtypes of its own ({tol!r}): give one bound per "
                                 "dtype")
            if tol.max_rel_error is None and tol.min_sqnr_db is None:
                raise ValueError(f"Tolerance.dtypes[{dtype}] states no bound (max_rel_error and min_sqnr_db are "
                                 "None): leave the dtype out to use the outer bound")
        # (read-only, and a copy: a subclass editing its parent's bounds in place, or the caller's dict changing later,
        # would change a class attribute other configs share, unchecked)
        object.__setattr__(self, "dtypes", _ReadOnlyDict(self.dtypes))

    def for_dtype(self, dtype: torch.dtype) -> Tolerance:
        """The bound ``apply`` on ``dtype`` inputs is held to: ``dtypes[dtype]``, else the outer bound."""
        return self.dtypes.get(dtype) or Tolerance(self.max_rel_error, self.min_sqnr_db)

    def unbounded(self, dtypes) -> list[torch.dtype]:
        """Those of ``dtypes`` held to no bound (neither a ``dtypes`` entry nor an outer bound)."""
        return [d for d in dtypes if self.for_dtype(d) == Tolerance()]

    def __repr__(self) -> str:
        text = f"Tolerance(max_rel_error={self.max_rel_error!r}, min_sqnr_db={self.min_sqnr_db!r}"
        if self.dtypes:
            text += ", dtypes={" + ", ".join(f"{d}: {t!r}" for d, t in self.dtypes.items()) + "}"
        return text + ")"


def weights_processed(layer: torch.nn.Module) -> bool:
    """Whether ``layer``'s weights were processed: its method's ``process_weights_after_loading`` returned on it
    (called by the loader or directly), so its parameters are in the kernel format ``apply`` reads.

    False for a layer built, or being loaded or processed, and again after a rebuild (``to_empty`` from meta). A
    method's ``apply`` refuses an unprocessed layer with ``raise not_processed_error(layer)``
    (:mod:`fastvideo_quant.layers.base`).
    """
    return bool(getattr(layer, "_fvq_weights_processed", False))


def mark_processed(layer: torch.nn.Module) -> None:
    """Record that ``layer``'s weights are in the kernel format (what :func:`weights_processed` reads)."""
    layer._fvq_weights_processed = True


def _recording(process: Callable[[QuantizeMethodBase, torch.nn.Module], None]):
    """``process`` (a method class's ``process_weights_after_loading``), recording the layer as processed once it
    returns, and the attributes it set on the layer (``_fvq_processing_attrs``, also when it raises): a layer whose
    tensors are discarded (moved to meta) drops them when it is rebuilt."""

    @functools.wraps(process)
    def process_weights_after_loading(self: QuantizeMethodBase, layer: torch.nn.Module) -> None:
        if weights_processed(layer):
            _refuse_processed_again(self, layer)
        before = set(vars(layer))
        try:
            with _outside_inference_mode(layer):
                process(self, layer)
        finally:
            added = set(vars(layer)) - before - {"_fvq_processing_failed", "_fvq_processing_attrs"}
            layer._fvq_processing_attrs = tuple(sorted({*getattr(layer, "_fvq_processing_attrs", ()), *added}))
        mark_processed(layer)

    process_weights_after_loading._fvq_records = True
    return process_weights_after_loading


def _outside_inference_mode(layer: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Processing a layer of ordinary tensors leaves ``torch.inference_mode()`` (a load under it, as inference servers
    do): the kernel-format tensors it makes are then ordinary too. Made inside, they were inference tensors, which a
    later backward ("Inference tensors cannot be saved for backward") and ``load_state_dict`` ("Inplace update to
    inference tensor outside InferenceMode") refused, where a float layer loaded so works. A layer built under
    inference mode (its tensors inference tensors) is processed as it is."""
    if not torch.is_inference_mode_enabled():
        return contextlib.nullcontext()
    tensors = [*layer._parameters.values(), *layer._buffers.values()]
    if any(t is not None and t.is_inference() for t in tensors):
        return contextlib.nullcontext()
    return torch.inference_mode(False)


def _refuse_processed_again(method: QuantizeMethodBase, layer: torch.nn.Module) -> None:
    name = getattr(layer, "prefix", "") or type(layer).__name__
    raise ModelStateError(
        f"{type(method).__name__}.process_weights_after_loading: layer {name!r} is already processed (its tensors are "
        "in the kernel format, which the checkpoint-format conversion cannot read again); process each layer once - "
        "fastvideo_quant.loader.process_weights_after_loading(model) skips processed layers"
    )


class QuantizeMethodBase(ABC):
    """Creates a layer's weights, runs it, and post-processes the loaded weights."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's ``process_weights_after_loading`` (its own, or a mixin's that comes first in its MRO) records,
        when it returns, that the layer is processed (``layer._fvq_weights_processed``), however it is called: by the
        loader, or directly as vLLM's loader loop does. A model-wide process then skips the layer, a later load into
        it is refused and its state_dict says it is in the kernel format. A call that raises records nothing."""
        super().__init_subclass__(**kwargs)
        found = getattr(cls, "process_weights_after_loading", None)  # (its own, or one a mixin earlier in the MRO
        if callable(found) and not getattr(found, "_fvq_records", False):  # than any method class brings)
            cls.process_weights_after_loading = _recording(found)

    @abstractmethod
    def create_weights(self, layer: torch.nn.Module, *weight_args: Any, **extra_weight_attrs: Any) -> None:
        """Create the weights of ``layer`` and register them on it."""

    @abstractmethod
    def apply(self, layer: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Apply the layer's weights to the input."""

    def validate_loaded_weights(self, layer: torch.nn.Module) -> Warning | None:
        """Check the loaded (checkpoint-format) weights of ``layer`` before anything is converted.

        Called by the loader (:func:`fastvideo_quant.loader.process_weights_after_loading`) for
        every layer after all tensors are loaded and before any layer's
        ``process_weights_after_loading``: the loader collects every layer's failure into one
        error and processes no layer when there is one, so a bad tensor never leaves a model
        half-processed. Raise :class:`~fastvideo_quant.errors.WeightLoadError` naming the layer
        prefix and the tensor, what was expected and what was found (a non-finite or
        non-positive scale, a parameter never loaded, an unsupported format code).

        Return a :class:`Warning` instance (not raised) for loaded tensors that are suspect but loadable — fp8 scales
        implying implausibly large weights: once every layer has passed, the loader issues one warning of each class
        returned, the first layer's message naming the others that returned that class (a load of many layers warns
        once, and a failed load not at all). Default: nothing to check.

        Must not modify the layer.
        """
        return None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Turn the loaded (checkpoint-format) weights into the kernel format. Default: nothing.

        Runs after ``validate_loaded_weights`` passed on every layer of the model; a failure
        that validation could have seen belongs there, since an exception here leaves the
        model partly converted (the loader then says which layers were, and the model must be
        rebuilt). Once it returns, the layer is recorded as processed (``__init_subclass__``), and a second call on it
        is a ModelStateError.
        """
        if weights_processed(layer):
            _refuse_processed_again(self, layer)
        mark_processed(layer)

    process_weights_after_loading._fvq_records = True  # (it records itself)

    def state_dict_problem(self, layer: torch.nn.Module, state_dict: dict[str, Any], prefix: str) -> str | None:
        """Why the kernel-format tensors under ``prefix`` in ``state_dict`` (saved from a processed layer) cannot go
        into the processed ``layer`` — what torch's shape check cannot see, such as an index a kernel reads memory
        through — or None when they can. Called by ``LinearBase`` in ``load_state_dict`` before anything of the layer
        is copied; a problem is raised as a :class:`~fastvideo_quant.errors.ModelStateError` naming the layer. Name the
        tensor, what was expected and what was found. Must not modify anything. Default: nothing to check."""
        return None

    def embedding(self, layer: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Gather rows of ``layer``'s weight (vLLM's and FastVideo's hook for quantized embeddings). This library
        quantizes linear layers only: no method here implements it (:func:`method_has_implemented_embedding`)."""
        raise NotImplementedError(
            f"{type(self).__name__}.embedding: fastvideo_quant quantizes linear layers only; build embeddings "
            "unquantized (torch.nn.Embedding), or give this method an embedding() of its own")


def method_has_implemented_embedding(method_class: type[QuantizeMethodBase]) -> bool:
    """Whether ``method_class`` overrides :meth:`QuantizeMethodBase.embedding` (what vLLM's and FastVideo's embedding
    layers ask before quantizing an embedding)."""
    found = inspect.getattr_static(method_class, "embedding", None)
    return found is not None and found is not QuantizeMethodBase.__dict__["embedding"]


class LinearMethodBase(QuantizeMethodBase):
    """A quantization method for linear layers."""

    @abstractmethod
    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        """Create the weights of one tensor-parallel shard of a linear layer.

        :param input_size_per_partition: this rank's input size.
        :param output_partition_sizes: this rank's output size for each fused
            shard (q, k, v or gate, up); their sum is the rank's output size.
        :param input_size: the unsharded input size.
        :param output_size: the unsharded output size.
        :param params_dtype: the model's dtype (the activation dtype).
        :param extra_weight_attrs: attributes set on every parameter; always
            holds ``weight_loader``.
        """

    @abstractmethod
    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Compute ``x @ W.T (+ bias)`` with the layer's weights; output dtype is ``x.dtype``."""

    def dequantize_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        """This rank's weight as float32 ``[out, in]``, after ``process_weights_after_loading``.

        The conformance suite compares ``apply`` with a float32 matmul of this.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.dequantize_weight is not implemented; the conformance "
            "suite needs it to check apply() against a float32 reference"
        )


def _guarded_from_config(build: Callable[..., QuantizationConfig]):
    """A config class's own ``from_config``, with an exception other than ours (a ``KeyError`` on a key it expects)
    made that plugin's PluginError: named, with where it was raised, wherever a config is built."""

    @functools.wraps(build)
    def from_config(cls: type[QuantizationConfig], config: dict[str, Any]) -> QuantizationConfig:
        try:
            return build(cls, config)
        except FastVideoQuantError:
            raise
        except Exception as exc:
            from fastvideo_quant.plugins.failures import exception_line
            from fastvideo_quant.plugins.manager import owner_while_loading

            keys = sorted(config) if isinstance(config, dict) else config  # (keys only: a KeyTracker counts reads)
            raise PluginError(
                f"{cls.__name__}.from_config of {owner_while_loading(cls)} raised "
                f"{exception_line(exc, {cls.__module__.split('.')[0]})} on a section with keys {keys}; a config it "
                "refuses should raise fastvideo_quant.errors.ConfigError naming the key and what it expects"
            ) from exc

    from_config._fvq_guarded = True
    return from_config


class QuantizationConfig(ABC):
    """A quantization method's configuration, as read from a checkpoint or a flag.

    A plugin subclasses this and registers it; ``get_name()`` is the method's name.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``from_config`` raises only our errors: another exception from it is the plugin's
        PluginError naming the class, the plugin and where it was raised (it was a bare traceback out of
        ``fvq quantize`` and the loader)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("from_config")
        if isinstance(own, classmethod) and not getattr(own.__func__, "_fvq_guarded", False):
            cls.from_config = classmethod(_guarded_from_config(own.__func__))

    #: Accuracy ``apply`` promises against the float32 reference of the de-quantized weights.
    tolerance: ClassVar[Tolerance] = Tolerance(max_rel_error=1e-2)
    #: Bound on ``||dequantize_weight - float weight|| / ||float weight||`` after ``quantize_weight`` and a load, on
    #: Gaussian weights: the method's own rounding error, measured, plus a margin. The conformance suite's
    #: weight-fidelity checks use it (``fvq check`` included); None leaves them at a loose default it reports.
    weight_rel_error: ClassVar[float | None] = None
    #: Whether ``apply`` traces under ``torch.compile(fullgraph=True)``, in no-grad and grad mode (no graph breaks;
    #: custom ops registered with ``torch.library``; ops without a derivative wrapped in an autograd function). The
    #: conformance suite compiles ``apply`` and compares it with eager when True (``fvq check`` included), and skips
    #: that check, saying so, when False.
    supports_torch_compile: ClassVar[bool] = False
    #: Whether ``from_config({})`` layers can load a float checkpoint and quantize it on load. A method
    #: that needs calibration or an offline search (AWQ) sets False: selecting it by name for a float
    #: checkpoint is then an error that says to run ``fvq quantize`` first.
    online_quantization: ClassVar[bool] = True
    #: Keys that say how a checkpoint's tensors are stored (not how to quantize them), with their value in the
    #: checkpoint ``quantize_weight`` writes: fp8's ``{"is_checkpoint_fp8_serialized": True}``. ``fvq quantize``
    #: builds the config with them set, and refuses an option giving another value (it would be ignored).
    quantized_checkpoint_keys: ClassVar[dict[str, Any]] = {}
    #: Keys that checkpoints of this format carry and ``from_config`` deliberately does not read (transformers'
    #: private ``_load_in_8bit``, AutoAWQ's ``modules_to_fuse``). A checkpoint key that is not read but is a close
    #: match of one that is, is refused as a misspelling; a key listed here never is.
    unread_checkpoint_keys: ClassVar[frozenset[str]] = frozenset()
    #: Keys ``from_config`` reads that choose how loaded layers compute, not what ``quantize_weight`` writes (AWQ's
    #: ``fp8_compute``): a load-time choice, set when loading. ``fvq quantize`` refuses them as options, since writing
    #: one into a checkpoint's ``quantization_config`` would impose it on everyone who loads that checkpoint.
    load_time_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        # Maps a fused module to the checkpoint modules it is made of, so a skip list written
        # with checkpoint names (q_proj, ...) also matches the fused layer (qkv_proj). A model
        # whose fused modules have other names sets this itself.
        self.packed_modules_mapping: dict[str, list[str]] = {k: list(v) for k, v in DEFAULT_PACKED_MODULES_MAPPING.items()}
        # Layer name prefixes (or exact names) left unquantized.
        self.modules_to_not_convert: list[str] = []

    def uses_calibration(self) -> bool | None:
        """Whether ``quantize_weight`` reads its ``activations`` (calibration inputs) with this config's settings.

        True: it reads them (AWQ's clip search; fp8's ``input_scale`` with ``activation_scheme`` static). False: it
        ignores them, and ``fvq quantize --calibration`` refuses the method, since the file would change nothing.
        None (the default): not declared; ``fvq quantize`` passes them as given. An instance method because a
        setting may decide it; the conformance suite checks the declaration (``test_calibration_declared``).
        """
        return None

    def requires_calibration(self) -> bool:
        """Whether ``quantize_weight`` cannot run without ``activations`` with this config's settings (fp8 with
        ``activation_scheme`` static: its ``input_scale`` comes from them). True: ``fvq quantize`` without
        ``--calibration`` is refused before any tensor is read, and ``uses_calibration()`` must be True too. The
        conformance suite checks it against ``quantize_weight`` called without activations."""
        return False

    def quantize_shape_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why ``quantize_weight`` cannot quantize a float weight of this ``[out, in]`` shape with this config's
        settings (the rules it breaks, and settings under which it fits where some would), or None when it can.

        ``fvq quantize`` asks it for every weight it plans to quantize before quantizing any, so an operator meets all
        such modules in one error instead of one per run. The default, None, means every 2-D shape is quantizable
        (or that ``quantize_weight`` alone finds out). AWQ's group and packing rules are an example."""
        return None

    def reads_quantized_checkpoint(self) -> bool:
        """Whether layers built with this config load tensors stored quantized (what ``quantize_weight`` writes),
        rather than float weights they quantize on load.

        The loader asks it to tell a checkpoint stored quantized from layers built to quantize on load, in one error
        before any tensor is read. Default: every :attr:`quantized_checkpoint_keys` key, read as this config's
        attribute of that name, has its value there (True for a method without such keys). A config that keeps the
        setting under another attribute name overrides this.
        """
        return all(getattr(self, key, value) == value for key, value in self.quantized_checkpoint_keys.items())

    # --- identity and capability -------------------------------------------------
    @classmethod
    @abstractmethod
    def get_name(cls) -> str:
        """The method's name, e.g. ``"fp8"``; what ``quant_method`` says in a checkpoint."""

    @classmethod
    @abstractmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        """Activation dtypes ``apply`` accepts."""

    @classmethod
    @abstractmethod
    def get_min_capability(cls) -> int:
        """Minimum CUDA compute capability times ten (e.g. 89 for sm_89)."""

    @classmethod
    def cpu_support(cls) -> str | None:
        """How the method runs on CPU (one line), or None when it cannot."""
        return None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the method cannot run in this environment (missing dependency), with the fix; None if it can."""
        return None

    @staticmethod
    @abstractmethod
    def get_config_filenames() -> list[str]:
        """Files in a checkpoint directory that hold this method's config (besides config.json)."""

    # --- construction --------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> QuantizationConfig:
        """Build the config from a checkpoint's quantization-config dict."""

    def to_dict(self) -> dict[str, Any]:
        """The quantization-config dict a checkpoint stores; ``from_config(to_dict())`` round-trips."""
        raise NotImplementedError(f"{type(self).__name__}.to_dict is not implemented")

    def __repr__(self) -> str:
        """``Fp8Config(method='fp8', config={...to_dict()})``: what a log line or a debugger shows. A config with both
        modes (``quantized_checkpoint_keys``) also says which one it is in, ``checkpoint='pre-quantized'`` or
        ``checkpoint='float, quantized on load'``, since ``to_dict()`` (what ``quantize_weight`` writes) is the same
        for both. Never raises: a ``to_dict`` that fails (a plugin bug) is shown as such."""
        try:
            config = repr(self.to_dict())
        except Exception as exc:  # noqa: BLE001 - repr must not raise
            config = f"<to_dict() raised {type(exc).__name__}: {exc}>"
        try:
            method = repr(self.get_name())
        except Exception as exc:  # noqa: BLE001
            method = f"<get_name() raised {type(exc).__name__}>"
        return f"{type(self).__name__}(method={method}, {self._repr_mode()}config={config})"

    def _repr_mode(self) -> str:
        """``checkpoint='...', `` for a config with both modes, else nothing (never raises)."""
        if not self.quantized_checkpoint_keys:
            return ""
        try:
            mode = "pre-quantized" if self.reads_quantized_checkpoint() else "float, quantized on load"
        except Exception as exc:  # noqa: BLE001 - repr must not raise
            mode = f"<reads_quantized_checkpoint() raised {type(exc).__name__}>"
        return f"checkpoint={mode!r}, "

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None) -> str | None:
        """Claim a checkpoint written for another method name (return our name), or None."""
        return None

    @staticmethod
    def get_from_keys(config: dict[str, Any], keys: list[str]) -> Any:
        """The value of the first of ``keys`` present in ``config``; ConfigError naming them all if none."""
        for key in keys:
            if key in config:
                return config[key]
        raise ConfigError(f"quantization config has none of the keys {keys}; found keys {sorted(config)}")

    @staticmethod
    def get_from_keys_or(config: dict[str, Any], keys: list[str], default: Any) -> Any:
        """Like ``get_from_keys`` with a default when no key is present."""
        for key in keys:
            if key in config:
                return config[key]
        return default

    @staticmethod
    def get_bool(config: dict[str, Any], key: str, default: bool | None, what: str) -> bool | None:
        """``config[key]`` as a JSON boolean (``default`` when absent or null); a ConfigError naming ``what`` (the
        method's config), the key and the value found for anything else. ``"false"`` (a string) is truthy: read
        with ``bool()`` or ``if config.get(key)``, it turned a setting on that the config turns off."""
        value = config.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{what}: {key} must be true or false (a JSON boolean), found {type(value).__name__} "
                              f"{value!r}")
        return value

    @staticmethod
    def skip_list_from(config: dict[str, Any], *method_keys: str) -> list[str]:
        """The layers a checkpoint leaves unquantized, from every key that may hold them.

        Hugging Face writes ``modules_to_not_convert``, vLLM ``ignored_layers``, and some
        methods their own key (bitsandbytes: ``llm_int8_skip_modules``); a config may carry
        several. Returns their union in order, without repeats.
        """
        keys = (*method_keys, "ignored_layers", "modules_to_not_convert")
        found = []
        for key in keys:
            value = config.get(key) or []
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"quantization config key {key!r} must be a list of module names, found {value!r}")
            found.extend(value)
        return list(dict.fromkeys(found))

    # --- per layer -----------------------------------------------------------------
    @abstractmethod
    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """The method for ``layer`` named ``prefix``; None for a layer kind this config does not handle."""

    def get_cache_scale(self, name: str) -> str | None:
        """The parameter name a checkpoint's KV-cache scale ``name`` loads into (vLLM's and FastVideo's loader hook);
        None: no method here has KV-cache scales."""
        return None

    def linear_method_or_skip(
        self, layer: torch.nn.Module, prefix: str, make: Callable[[], QuantizeMethodBase]
    ) -> QuantizeMethodBase | None:
        """The usual ``get_quant_method``: None for a layer that is not linear, the unquantized
        method for a skipped one (``is_layer_skipped``), else ``make()``."""
        from fastvideo_quant.layers.linear import LinearBase

        if not isinstance(layer, LinearBase):
            return None
        if self.is_layer_skipped(prefix):
            from fvq_unquantized import UnquantizedLinearMethod

            return UnquantizedLinearMethod()
        return make()

    def is_layer_skipped(self, prefix: str) -> bool:
        """True when ``prefix`` matches ``modules_to_not_convert``, directly or through a fused module.

        A fused layer (``...qkv_proj``) is skipped when all its checkpoint modules match, or none does and its own
        name matches; skipping only some of them is an error, since one shard cannot be quantized differently from
        the others (under substring matching, AWQ's ``mlp.gate`` matches ``gate_up_proj`` and ``gate_proj`` but not
        ``up_proj``: the checkpoint's modules decide).
        """
        return fused_layer_matches(prefix, self.packed_modules_mapping, self.skip_entry_matches, self.skip_list_key())

    def shard_problems(self, parts: list[int], whole_parts: list[int], in_rank: int, in_total: int) -> list[str]:
        """Why this method cannot hold a layer's shard of these sizes — ``parts``: each fused part's output rows on a
        rank (of ``whole_parts``), ``in_rank``: its input features (of ``in_total``) — one line a rule broken, or [].
        The layers ask it for every TP size when one does not divide, so that the TP sizes they list work with the
        method too (AWQ: 8 columns per int32 and whole groups; fp8 blocks: whole blocks). Default: no rule."""
        return []

    def skip_list_key(self) -> str:
        """The key this config's checkpoint format keeps its skip list under, for messages that tell a user to edit
        it (``modules_to_not_convert``; fp8: ``ignored_layers``, compressed-tensors' ``ignore``)."""
        return "modules_to_not_convert"

    def skip_entry_key(self, entry: str) -> str:
        """The key the skip-list ``entry`` was given under, for a message about that entry (a misspelling). Default:
        :meth:`skip_list_key`; a config that reads several keys and knows which one held the entry says that one."""
        return self.skip_list_key()

    def stored_tensor_hints(self, stored: dict[str, tuple[torch.dtype | None, tuple[int, ...]]]) -> list[str]:
        """For a load into layers of this config that failed: lines saying what the checkpoint's tensors
        (``stored``: every tensor's name → (dtype, shape)) imply about this method's settings where they contradict
        them (per-channel scales under a per-tensor config), naming the config key and the value to set — not where:
        the loader says after them where the setting is for this load (``loader.config_source.where_to_set``). The
        loader puts them first in its CheckpointError, once a config; one that raises is left out. Default: none."""
        return []

    def skip_entry_matches(self, prefix: str) -> bool:
        """Whether an entry of ``modules_to_not_convert`` names the module ``prefix``. By default an entry matches
        whole dotted components (vLLM's rule for most formats); a format whose readers and writers match otherwise
        overrides this (AWQ: substrings)."""
        return matches_module_patterns(prefix, self.modules_to_not_convert)

    # --- quantizing checkpoints (used by `fvq quantize`) ------------------------------
    def quantize_weight(
        self, weight: torch.Tensor, *, prefix: str = "", activations: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Quantize one float ``[out, in]`` weight into this method's checkpoint tensors.

        Returns ``{suffix: tensor}`` (``{"weight": ..., "weight_scale": ...}``) stored
        as ``f"{prefix}.{suffix}"``. ``activations`` (``[tokens, in]``) are calibration
        inputs for methods that use them (say which with :meth:`uses_calibration`).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot quantize checkpoints")


def states_tolerance(config_cls: type[QuantizationConfig]) -> bool:
    """Whether ``config_cls`` or a base other than :class:`QuantizationConfig` sets ``tolerance`` (a subclass of a
    plugin's config states that plugin's bounds); False where QuantizationConfig's default, which no measurement of the
    method chose, is what holds (the conformance suite fails that, ``[contract: apply: tolerance declared]``)."""
    owner = next((c for c in config_cls.__mro__ if "tolerance" in vars(c)), QuantizationConfig)
    return owner is not QuantizationConfig


def fused_parts(prefix: str, mapping: dict[str, list[str]]) -> list[str] | None:
    """The checkpoint modules a fused layer is made of (``a.qkv_proj`` → ``a.q_proj``, ...; the config's
    ``packed_modules_mapping``), or None for a layer the mapping does not name."""
    leaf = prefix.rpartition(".")[2]
    parts = mapping.get(leaf)
    if not parts:
        return None
    base = prefix[: len(prefix) - len(leaf)]
    return [base + part for part in parts]


def fused_layer_matches(prefix: str, mapping: dict[str, list[str]], matches: Callable[[str], bool], what: str) -> bool:
    """Whether ``matches`` (a skip list's or a target list's rule, ``what`` naming that list in messages) holds for
    layer ``prefix``. A fused layer matches when all its checkpoint modules do, or none does and its own name does;
    some but not all is a ConfigError naming both sets, since one layer holds one scheme (vLLM's rule for fused
    layers: under AWQ's substring matching ``mlp.gate`` names ``gate_proj`` and not ``up_proj``, and the checkpoint's
    modules decide)."""
    direct = matches(prefix)
    parts = fused_parts(prefix, mapping)
    if parts is None:
        return direct
    hits = [matches(part) for part in parts]
    if any(hits) and not all(hits):
        named = [p for p, hit in zip(parts, hits, strict=True) if hit]
        other = [p for p, hit in zip(parts, hits, strict=True) if not hit]
        raise ConfigError(
            f"layer {prefix!r} fuses the checkpoint modules {parts}, but {what} names {named} and not {other}: "
            f"{ONE_SCHEME_PER_LAYER}. Name all of them or none (or build the model with those modules unfused)"
        )
    return all(hits) or direct


def matches_module_patterns(prefix: str, patterns: list[str]) -> bool:
    """vLLM's rule: a pattern matches a layer whose dotted name contains it as whole components."""
    padded = f".{prefix}."
    return any(f".{p.strip('.')}." in padded for p in patterns if p)


#: The fix a corrupt float tensor calls for.
REEXPORT = ("The checkpoint is corrupt or was written by a broken export; re-export the tensor (a layer with it would "
            "output NaN/inf)")


def needs_autograd(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``apply`` must run where autograd sees it: grad mode on and the input or the bias requiring grad (a
    quantized kernel has no derivative of its own; see :func:`straight_through_grads`), or inside a forward-mode AD
    level (``torch.func.jvp``/``jacfwd``, ``torch.autograd.forward_ad.dual_level``), whose dual tensors do not require
    grad: there a method's Function gives the tangent (:func:`straight_through_tangent`), where the kernel's ops gave
    a zero or wrong one, or none, without an error."""
    return ((torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)))
            or _forward_ad._current_level >= 0)


def forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (``torch.func.jvp``/``jacfwd``, ``forward_ad.dual_level``): a method's
    ``apply`` then takes its Function with a ``jvp`` — a separate class, as dynamo refuses to trace an
    ``autograd.Function`` that defines one ("Unsupported custom jvp"), which the grad-mode Function must be."""
    return _forward_ad._current_level >= 0


def check_frozen_storage(layer: torch.nn.Module, method_label: str, layer_name: str) -> None:
    """In grad mode, a :class:`~fastvideo_quant.errors.ModelStateError` when one of a quantized layer's tensors other
    than ``bias`` — its parameters and buffers: the codes and their scales — requires grad. A method's backward
    reaches the input and the bias only (:func:`straight_through_grads`), so such a tensor's ``.grad`` would stay
    ``None`` and an optimizer would skip it without a word — the state ``model.requires_grad_(True)`` leaves an fp8
    layer in — or, where a path records through the de-quantization, get a gradient on one path and not another. For a
    method's eager ``apply``: a walk of the layer's few tensors, and nothing at all outside grad mode."""
    if not torch.is_grad_enabled():
        return
    for kind, tensors in (("parameter", layer._parameters), ("buffer", layer._buffers)):
        for name, t in tensors.items():
            if t is not None and t.requires_grad and name != "bias":
                raise ModelStateError(
                    f"{method_label} layer {layer_name!r}: {kind} {name!r} ({t.dtype}, shape {tuple(t.shape)}) requires "
                    f"grad, but a quantized layer's {name} gets no gradient (the backward reaches the input and the "
                    "bias only), so an optimizer would leave it unchanged. Freeze it "
                    f"(layer.{name}.requires_grad_(False)); to train the rest of a model, turn grads off everywhere "
                    "(model.requires_grad_(False)) and on for what trains, e.g. the unquantized layers, norms or an "
                    "adapter"
                )


def no_rows_output(x2: torch.Tensor, out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``apply``'s ``[0, out_features]`` output for a 2-D input of no rows (a kernel launch would be empty), in
    ``x2``'s dtype. Where autograd records (:func:`needs_autograd`) it stays in the graph, as ``F.linear``'s does: a
    backward over an empty micro-batch gives ``x`` an empty gradient and the bias a zero one, where a new empty
    tensor would fail with "element 0 of tensors does not require grad"."""
    if not needs_autograd(x2, bias):
        return x2.new_empty((0, out_features))
    out = x2.sum(-1, keepdim=True).expand(0, out_features).contiguous()
    return out if bias is None else out + bias.to(out.dtype)


def straight_through_grads(grad: torch.Tensor, weight: torch.Tensor, need_x: bool, need_bias: bool,
                           bias_dtype: torch.dtype | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The backward of a quantized linear, straight through the activation's quantization to the de-quantized
    ``weight`` (float32 ``[out, in]``), as ``F.linear`` on it computes: ``grad_x = grad @ W`` in ``grad``'s dtype and
    ``grad_bias = grad`` summed over the rows, in ``bias_dtype``. For a method's ``autograd.Function.backward``."""
    grad_x = (grad.float() @ weight).to(grad.dtype) if need_x else None
    grad_bias = grad.float().reshape(-1, grad.shape[-1]).sum(0).to(bias_dtype) if need_bias else None
    return grad_x, grad_bias


def straight_through_linear_op(qualname: str, forward: Callable[..., torch.Tensor],
                              dequantize: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A method's forward as one ``torch.library`` custom op ``qualname`` with :func:`straight_through_grads` as its
    derivative: ``forward(x2, bias, weight, *rest)`` gives ``[M, out_features]`` in ``x2``'s dtype for a 2-D ``x2``
    and an optional ``bias``, ``weight`` being ``[out_features, ...]``; ``dequantize(weight, *rest)`` gives the
    float32 ``[out, in]`` weight the backward multiplies by. ``forward``'s type hints are the op's schema
    (``torch.library.custom_op``); ``forward`` itself stays a plain function for eager calls.

    For a method's ``apply`` where :func:`takes_linear_op` says: while ``torch.export`` traces, while
    ``torch.compile`` traces in grad mode, and under ``torch.func.vmap`` (:func:`register_row_batching`). Export
    traces through an ``autograd.Function`` and keeps only its forward's ops (pytorch/pytorch#106388): a backward
    through the exported program then failed (an op with no derivative) or was silently wrong (a rounding op's zero
    derivative). dynamo traced the Function's forward into a subgraph and, with a dynamic token count, failed on a
    tensor sized by it ("lift_tracked_freevar_to_input should not be called on root SubgraphTracer"). As one node, the
    op keeps this backward in the program or graph, and a device's branches on the token count run inside it at run
    time instead of becoming guards. The op has no forward-mode derivative, and torch's custom-op autograd refuses
    ``torch.func.grad`` ("must override the setup_context staticmethod"): there the methods' Functions run."""
    op = torch.library.custom_op(qualname, mutates_args=())(forward)

    @op.register_fake
    def _(x2: torch.Tensor, bias: torch.Tensor | None, weight: torch.Tensor, *rest: object) -> torch.Tensor:
        return x2.new_empty((x2.shape[0], weight.shape[0]))

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _, bias, *state = inputs
        slots = [i for i, a in enumerate(state) if isinstance(a, torch.Tensor)]
        ctx.save_for_backward(*(state[i] for i in slots))
        ctx.state, ctx.slots = [None if i in slots else a for i, a in enumerate(state)], slots
        ctx.bias_dtype = None if bias is None else bias.dtype

    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        state = list(ctx.state)
        for i, t in zip(ctx.slots, ctx.saved_tensors, strict=True):
            state[i] = t
        grad_x, grad_bias = straight_through_grads(grad, dequantize(*state), ctx.needs_input_grad[0],
                                                   ctx.needs_input_grad[1], ctx.bias_dtype)
        return (grad_x, grad_bias, *(None for _ in state))

    op.register_autograd(backward, setup_context=setup_context)

    register_row_batching(op, qualname, x_arg=0, bias_arg=1, two_d=True)
    return op


def register_row_batching(op: Any, qualname: str, *, x_arg: int, bias_arg: int, two_d: bool) -> None:
    """Give the custom op ``op`` (a linear layer's forward: argument ``x_arg`` the input ``[..., in]``, ``bias_arg`` an
    optional bias ``[out]``, the output ``[..., out]``) a ``torch.func.vmap`` batching rule: a batch of inputs is one
    call on all their rows (``two_d``: the op takes a 2-D input only, so the batch is folded into its rows), and a
    batched bias — one per item — is added after it, in float32. Any other argument batched (the layer's quantized
    tensors: ``functional_call`` with stacked parameters, model ensembling) is a ``ValueError`` naming it."""

    def rule(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[torch.Tensor, int]:
        others = [i for i, d in enumerate(in_dims) if d is not None and i not in (x_arg, bias_arg)]
        if others:
            raise ValueError(
                f"{qualname} under torch.func.vmap: argument {others[0]} (one of the layer's quantized tensors) is "
                "batched — vmap over a layer's weights (e.g. functional_call with stacked parameters, model "
                "ensembling) is not supported; batch the input (and the bias) only")
        x, bias, x_dim, bias_dim = args[x_arg], args[bias_arg], in_dims[x_arg], in_dims[bias_arg]
        rows = x.movedim(x_dim, 0) if x_dim is not None else x.unsqueeze(0).expand(info.batch_size, *x.shape)
        call = list(args)
        call[x_arg] = rows.reshape(-1, rows.shape[-1]).contiguous() if two_d else rows
        call[bias_arg] = None if bias_dim is not None else bias
        out = op(*call)
        if two_d:
            out = out.view(*rows.shape[:-1], out.shape[-1])
        if bias_dim is not None:
            per_item = bias.movedim(bias_dim, 0).float()
            out = (out.float() + per_item.view(per_item.shape[0], *([1] * (out.dim() - 2)), -1)).to(out.dtype)
        return out, 0

    op.register_vmap(rule)


def takes_linear_op(x2: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a method's ``apply`` calls its :func:`straight_through_linear_op` instead of its eager paths: while
    ``torch.export`` traces, while ``torch.compile`` traces in grad mode (:func:`needs_autograd`), and under
    ``torch.func.vmap`` (:func:`batched`) — not in a forward-mode AD level (the op has no forward derivative: the
    methods' Functions with a ``jvp`` do that). Under ``vmap(grad(f))`` (per-sample gradients) the input is ``grad``'s
    wrapper of a batched tensor: the methods' Functions run, and their forwards see the batched one (torch's custom-op
    autograd refuses ``torch.func.grad``: "must override the setup_context staticmethod")."""
    if torch.compiler.is_compiling():
        return (torch.compiler.is_exporting() or needs_autograd(x2, bias)) and not forward_ad_active()
    if _functorch_level() is None:  # (the eager hot path: no torch.func transform, ~0.2 µs in all)
        return False
    return batched(x2, bias) and not forward_ad_active()


def batched(x2: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether ``x2`` or ``bias`` is a ``torch.func.vmap`` batched tensor, in eager code (not while compiling, where
    dynamo would not trace the check): a method then calls its :func:`straight_through_linear_op`, whose batching
    rule makes the batch one call on all its rows — the eager CUDA paths hand a batched tensor to a kernel launch, and
    bitsandbytes' ops have no batching rule. On the eager hot path (no torch.func transform) ~0.15 µs: one query of
    functorch's level before any tensor is asked."""
    if torch.compiler.is_compiling() or _functorch_level() is None:
        return False
    return _is_batched(x2) or (bias is not None and _is_batched(bias))


_functorch_level = torch._C._functorch.maybe_current_level  # (None outside every torch.func transform)
_is_batched = torch._C._functorch.is_batchedtensor


def straight_through_tangent(x_tangent: torch.Tensor | None, bias_tangent: torch.Tensor | None, weight: torch.Tensor,
                             out_shape: torch.Size, out_dtype: torch.dtype) -> torch.Tensor:
    """The forward-mode derivative (``jvp``) matching :func:`straight_through_grads`: ``x_tangent @ W.T`` (plus the
    bias's tangent) of the de-quantized ``weight`` (float32 ``[out, in]``), in ``out_dtype``; zeros where neither the
    input nor the bias has a tangent (the quantized tensors get none, as in the backward). For a method's
    ``autograd.Function.jvp``."""
    if x_tangent is None:
        tangent = torch.zeros(out_shape, dtype=torch.float32, device=weight.device)
    else:
        tangent = x_tangent.float() @ weight.t()
    if bias_tangent is not None:
        tangent = tangent + bias_tangent.float()
    return tangent.to(out_dtype)


def act_dtype_error(method_label: str, layer_name: str, x: torch.Tensor,
                    supported: tuple[torch.dtype, ...]) -> TypeError:
    """The error a method's ``apply`` raises for an activation whose dtype is not one of its config's
    ``get_supported_act_dtypes()`` (an integer input would come back truncated): TypeError, as torch raises for a
    wrong dtype, naming the layer, the dtype found and the ones supported."""
    return TypeError(f"{method_label} layer {layer_name!r}: input dtype {x.dtype} is not supported; expected one of "
                     f"{', '.join(map(str, supported))} (get_supported_act_dtypes()); cast the input, e.g. "
                     f"x.to({supported[0]})")


def check_finite(layer: torch.nn.Module, name: str, method_label: str, bad: torch.Tensor | None = None) -> None:
    """WeightLoadError when the float tensor ``layer.<name>`` (a weight, a bias) holds NaN or inf; for a method's
    ``validate_loaded_weights`` (:func:`check_entries` words it). Absent (``None``) and integer tensors pass.
    ``bad`` is the mask of non-finite entries where ``isfinite`` cannot tell (float8_e4m3fn's NaN bit pattern).
    A parameter a method created NaN (attribute ``nan_until_loaded``), still all NaN and not written by
    ``load_checkpoint``, is reported as never loaded, not as a corrupt checkpoint.
    """
    t = getattr(layer, name, None)
    if bad is None:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or all_finite(t.detach()):
            return
        bad = ~torch.isfinite(t.detach())
        if (getattr(t, "nan_until_loaded", False) and name not in vars(layer).get("_fvq_loaded_shards", {})
                and bool(torch.isnan(t.detach()).all())):  # (as the method created it, and load_checkpoint wrote none)
            check_entries(layer, name, method_label, bad, expected="finite", show_value=False,
                          found="that are NaN, as the method creates it until a checkpoint tensor is loaded into "
                                "it: it was never loaded (a load with strict=False that lacked it, or processing with "
                                "no load at all)",
                          fix="Load a checkpoint that holds it before processing the layer")
    check_entries(layer, name, method_label, bad, expected="finite", found="that are NaN or inf", fix=REEXPORT)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of float ``t`` is finite, from its min and max (NaN propagates into both; one reduction
    with no mask: ~35x faster than ``isfinite(t).all()`` on a CPU core, which was most of a float model's load)."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_entries(layer: torch.nn.Module, name: str, method_label: str, bad: torch.Tensor, *, expected: str,
                  found: str = "that are not", fix: str, show_value: bool = True) -> None:
    """WeightLoadError when mask ``bad`` (shaped like ``layer.<name>``) marks any entry: the one check of loaded
    values that every method's ``validate_loaded_weights`` words its own way — "expected every entry ``expected``,
    found N of M ``found``", then ``fix``. The message names the layer's tensor and the first bad entry (index and
    value), and where that entry is in the checkpoint when that is another tensor or index
    (:func:`fastvideo_quant.layers.locate.checkpoint_location`: a fused layer's part, this rank's slice); where that
    cannot be told, the fused part it belongs to (``shard 'k'``). The details are worked out only for the error.
    """
    if not bool(bad.any()):
        return
    from fastvideo_quant.layers.locate import checkpoint_location, fused_part

    t = getattr(layer, name).detach()
    first = tuple(int(i) for i in bad.nonzero()[0])
    prefix = getattr(layer, "prefix", "") or type(layer).__name__
    at, shard = f"{list(first)}", ""
    located = checkpoint_location(layer, name, first)
    if located is not None:
        tensor, index = located
        if tensor != f"{prefix}.{name}" or index not in ((), first):  # said only where it is somewhere else
            at += f" (checkpoint tensor {tensor!r}" + (f" {list(index)})" if index else ")")
    elif (part := fused_part(layer, name, first)) is not None:
        shard = f" shard {part!r}"
    entry = t[first]  # (an integer tensor's entry as an int: "= 2", not "= 2.0")
    value = f" = {entry.float().item() if entry.is_floating_point() else entry.item()}" if show_value else ""
    raise WeightLoadError(
        f"{method_label} layer {prefix!r}: tensor '{prefix}.{name}'{shard} ({t.dtype}, shape {tuple(t.shape)}): expected "
        f"every entry {expected}, found {int(bad.sum())} of {t.numel()} {found}, the first at {at}{value}. {fix}"
    )
