"""The int8 (LLM.int8()) quantization config: Hugging Face's bitsandbytes 8-bit convention.

Two ways in:

* ``{"quant_method": "bitsandbytes", "load_in_8bit": true, "llm_int8_threshold": 6.0,
  "llm_int8_skip_modules": [...]}`` — what ``transformers.BitsAndBytesConfig.to_dict()``
  writes next to a checkpoint saved in 8 bit, so the weights are read as bitsandbytes
  int8 (``weight`` + ``SCB`` + ``weight_format``). A missing threshold is 6.0, HF's default.
* our short name ``int8`` (``{"quant_method": "int8"}`` or ``--quantization int8``) — a
  float checkpoint quantized while loading, with threshold 0 (pure W8A8, the GPU fast path)
  unless ``llm_int8_threshold`` says otherwise. ``load_in_8bit: true`` may be given here too (HF's
  spelling, e.g. ``fvq quantize --option load_in_8bit=true``); ``false``, or ``load_in_4bit: true``, is refused.

``fvq_serialized`` (bool) overrides which of the two the checkpoint is; ``fvq_backend``
(``auto`` | ``bitsandbytes`` | ``triton``) forces a kernel (benchmarks, tests): a load-time key
(``resolve_quant_config(..., load_options={"fvq_backend": "triton"})``), which ``fvq quantize`` refuses.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
from typing import Any, ClassVar

import torch

from fastvideo_quant.errors import ConfigError, MethodUnavailableError
from fastvideo_quant.quantization.base import QuantizationConfig, QuantizeMethodBase, Tolerance
from fvq_int8 import format as fmt

# fastvideo-quant is installed from its source checkout (it is not on PyPI), so the extra is named as the README does.
INSTALL_HINT = "pip install 'bitsandbytes>=0.46' (or, from the fastvideo-quant source checkout: pip install -e \".[int8]\")"
BACKENDS = ("auto", "bitsandbytes", "triton")
HF_DEFAULT_THRESHOLD = 6.0  # transformers.BitsAndBytesConfig(llm_int8_threshold=6.0)


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes is installed: found by name, or its distribution is (checked without importing it; tests
    patch this). Whether it imports is :func:`fvq_int8.bnb_path.import_problem`."""
    try:
        if importlib.util.find_spec("bitsandbytes") is not None:
            return True
    except (ImportError, ValueError):  # found, but its spec cannot be read: installed, and import_problem says why
        return True
    try:
        md.distribution("bitsandbytes")  # installed, yet not importable by name (blocked in sys.modules, say)
    except md.PackageNotFoundError:
        return False
    return True


class Int8Config(QuantizationConfig):
    """LLM.int8(): int8 weights with one absmax per output row, int8 activations per token."""

    # Measured on CPU and H100 (docs/methods/int8.md): per-token int8 activations give
    # ||out-ref||/||ref|| of 0.6-1.0% against float32 of the dequantized weight on
    # Gaussian inputs (K 64..13824); 2.5% is headroom over those Gaussian inputs only. It does
    # not cover outlier-heavy activations at threshold 0: two x40 outlier columns give 3.25e-2
    # there, against ~3e-3 at llm_int8_threshold 6 (docs/methods/int8.md), which such activations need.
    tolerance: ClassVar[Tolerance] = Tolerance(max_rel_error=2.5e-2)
    # The kernel backend is chosen when loading (the tensors are bitsandbytes' whichever runs them): fvq quantize refuses
    # it as an option; resolve_quant_config(load_options={"fvq_backend": ...}) and the conformance goldens take it.
    load_time_keys: ClassVar[tuple[str, ...]] = ("fvq_backend",)
    # Weight rounding measured 0.0071 (per-row absmax) on the suite's Gaussian weights.
    weight_rel_error: ClassVar[float] = 0.0125
    supports_torch_compile: ClassVar[bool] = True  # bitsandbytes' ops (CPU); one custom op, fvq_int8::linear
    # quantize_weight writes int8 weight + SCB: the checkpoint is pre-quantized.
    quantized_checkpoint_keys: ClassVar[dict[str, Any]] = {"fvq_serialized": True}
    # transformers.BitsAndBytesConfig.to_dict() writes these too: its private copies of load_in_4bit/8bit, the
    # 4-bit settings and CPU offload (not read: 4-bit is refused through load_in_4bit).
    unread_checkpoint_keys: ClassVar[frozenset[str]] = frozenset({
        "_load_in_4bit", "_load_in_8bit", "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage", "bnb_4bit_quant_type",
        "bnb_4bit_use_double_quant", "llm_int8_enable_fp32_cpu_offload",
    })

    def __init__(self, threshold: float = 0.0, skip_modules: list[str] | None = None,
                 serialized: bool = False, backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not threshold >= 0:  # (NaN compares false)
            raise ConfigError(f"int8: llm_int8_threshold must be a number >= 0, found {threshold!r}")
        if backend not in BACKENDS:
            raise ConfigError(f"int8: fvq_backend must be one of {BACKENDS}, found {backend!r}")
        if backend == "triton" and threshold > 0:
            raise ConfigError(
                f"int8: fvq_backend 'triton' runs threshold 0 only, but llm_int8_threshold is {threshold}; "
                "the outlier decomposition runs through bitsandbytes (fvq_backend 'auto' or 'bitsandbytes')"
            )
        if backend == "triton" and importlib.util.find_spec("triton") is None:
            raise MethodUnavailableError(
                "int8: fvq_backend 'triton' needs the triton package, which is not installed; run "
                "pip install 'triton>=3.0' (or use fvq_backend 'auto' / 'bitsandbytes')"
            )
        self.threshold = float(threshold)
        self.serialized = bool(serialized)
        self.backend = backend
        self.modules_to_not_convert = list(skip_modules or [])

    # --- identity and capability ------------------------------------------------------
    @classmethod
    def get_name(cls) -> str:
        return "int8"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 75  # int8 tensor-core mma (Turing and newer)

    @classmethod
    def cpu_support(cls) -> str | None:
        return "bitsandbytes CPU ops (int8_vectorwise_quant + int8_scaled_mm / int8_mixed_scaled_mm)"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not bitsandbytes_installed():
            return f"the int8 method needs bitsandbytes (>= 0.46), which is not installed; run: {INSTALL_HINT}"
        from fvq_int8.bnb_path import import_problem  # (imports no bitsandbytes; import_problem does, once)

        problem = import_problem()
        if problem is None:
            return None
        return (f"the int8 method needs bitsandbytes (>= 0.46), which is installed but does not import: {problem}; "
                f"fix what that names, or reinstall it: {INSTALL_HINT}")

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Int8Config:
        method = str(config.get("quant_method", "int8")).lower()
        if method not in ("int8", "bitsandbytes"):
            raise ConfigError(f"int8: quant_method must be 'int8' or 'bitsandbytes', found {method!r}")
        # Worded for both ways a config arrives: a checkpoint's quantization_config and `fvq quantize --option`.
        if cls.get_bool(config, "load_in_4bit", False, "int8"):
            raise ConfigError(
                "int8: load_in_4bit=true asks for 4-bit bnb (bitsandbytes NF4/FP4), which is not supported by "
                "fastvideo-quant; the int8 method is 8-bit only (load_in_8bit=true). Use an 8-bit bitsandbytes checkpoint, "
                "drop load_in_4bit when quantizing, or use another method"
            )
        # HF's BitsAndBytesConfig key, read for the short name too: `--option load_in_8bit=true` just says 8 bit.
        load_in_8bit = cls.get_bool(config, "load_in_8bit", None, "int8")
        if load_in_8bit is False:
            raise ConfigError(
                "int8: load_in_8bit=false, but the int8 method is 8-bit (LLM.int8()) only; set load_in_8bit=true "
                "or leave it out"
            )
        if method == "bitsandbytes" and not load_in_8bit:
            raise ConfigError(
                "int8: a bitsandbytes quantization_config must set load_in_8bit=true; "
                f"found keys {sorted(config)}"
            )
        if cls.get_bool(config, "llm_int8_has_fp16_weight", False, "int8"):
            raise ConfigError("int8: llm_int8_has_fp16_weight=true (training mode) is not supported; set it false")
        default = HF_DEFAULT_THRESHOLD if method == "bitsandbytes" else 0.0
        threshold = config.get("llm_int8_threshold", default)
        serialized = cls.get_bool(config, "fvq_serialized", method == "bitsandbytes", "int8")
        return cls(threshold if threshold is not None else default, cls.skip_list_from(config, "llm_int8_skip_modules"),
                   serialized, config.get("fvq_backend", "auto"))

    def to_dict(self) -> dict[str, Any]:
        """The HF ``quantization_config`` of the checkpoint ``quantize_weight`` writes (always pre-quantized)."""
        out: dict[str, Any] = {
            "quant_method": "bitsandbytes",
            "load_in_8bit": True,
            "load_in_4bit": False,
            "llm_int8_threshold": self.threshold,
            "llm_int8_skip_modules": list(self.modules_to_not_convert) or None,
            "llm_int8_has_fp16_weight": False,
        }
        if self.backend != "auto":
            out["fvq_backend"] = self.backend
        return out

    def skip_list_key(self) -> str:
        """bitsandbytes keeps its skip list under ``llm_int8_skip_modules`` (what ``to_dict`` writes)."""
        return "llm_int8_skip_modules"

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None) -> str | None:
        # Claim every bitsandbytes config, so a 4-bit one gets from_config's clear refusal.
        if str(hf_quant_cfg.get("quant_method", "")).lower() == "bitsandbytes":
            return cls.get_name()
        return None

    # --- per layer --------------------------------------------------------------------
    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from fvq_int8.method import Int8LinearMethod

        return self.linear_method_or_skip(layer, prefix, lambda: Int8LinearMethod(self))

    def reads_quantized_checkpoint(self) -> bool:
        """True for a bitsandbytes checkpoint (``fvq_serialized``, kept as ``serialized``); False quantizes on load."""
        return self.serialized

    def uses_calibration(self) -> bool:
        """False: weight scales are per-row absmax and activations are quantized per token at run time."""
        return False

    def quantize_weight(self, weight: torch.Tensor, *, prefix: str = "",
                        activations: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """bitsandbytes' tensors for one layer: int8 ``weight``, float32 ``SCB``, uint8 ``weight_format``."""
        return fmt.checkpoint_tensors(weight)
