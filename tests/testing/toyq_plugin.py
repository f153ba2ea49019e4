"""toyq: a third-party plugin's own format (symmetric int4, one fp16 scale per output channel), with switchable bugs.

Format: ``qweight`` int32 ``[out, in/8]`` packed along the input dim (input ``8j+i`` of a row in bits ``4i..4i+3`` of
word ``j``), stored nibble = code + 8 (code -8..7); ``scales`` float16 ``[out]``; ``W[r, k] = (nibble - 8) * scale[r]``.

:data:`BUG` (set it with ``monkeypatch.setattr``; read at every call) makes writer and reader share one wrong convention,
so the plugin's own checkpoints still load right: ``"a"`` nibble order reversed, ``"b"`` scale stored as its reciprocal,
``"c"`` two's-complement nibbles (no +8), ``"d"`` packed along the output dim. Importable by name (the tests put this
folder on sys.path), so spawned tensor-parallel ranks re-register it; they import it afresh, so keep TP checks to
``BUG = ""``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.layers.base import not_processed_error, weights_processed
from fastvideo_quant.parameter import ChannelQuantScaleParameter, PackedvLLMParameter
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization import LinearMethodBase, QuantizationConfig, Tolerance

BUG = ""
SHIFTS = torch.arange(8, dtype=torch.int64) * 4


def _order() -> list[int]:
    """Nibble ``i`` of a word holds element ``8j + order[i]``."""
    return list(range(8))[::-1] if BUG == "a" else list(range(8))


def _pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """int codes ``[rows, n]`` (-8..7) -> int32 words ``[rows, n/8]``, packed along dim 1."""
    nib = (codes & 0xF) if BUG == "c" else (codes + 8)
    nib = nib.to(torch.int64).reshape(codes.shape[0], -1, 8)[..., _order()]
    words = (nib << SHIFTS).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_rows(q: torch.Tensor) -> torch.Tensor:
    nib = (q.to(torch.int64).unsqueeze(-1) >> SHIFTS.to(q.device)) & 0xF  # [rows, words, 8]: nibble i
    vals = torch.empty_like(nib)
    vals[..., _order()] = nib
    vals = vals.reshape(q.shape[0], -1)
    return torch.where(vals >= 8, vals - 16, vals) if BUG == "c" else vals - 8


def pack(codes: torch.Tensor) -> torch.Tensor:
    return _pack_rows(codes.T).T.contiguous() if BUG == "d" else _pack_rows(codes)


def unpack(q: torch.Tensor) -> torch.Tensor:
    return _unpack_rows(q.T).T if BUG == "d" else _unpack_rows(q)


class ToyqLinearMethod(LinearMethodBase):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs: Any) -> None:
        loader = extra_weight_attrs["weight_loader"]
        rows, cols = sum(output_partition_sizes), input_size_per_partition
        if BUG == "d":
            qweight = PackedvLLMParameter(data=torch.zeros(rows // 8, cols, dtype=torch.int32), output_dim=0,
                                          input_dim=1, packed_dim=0, packed_factor=8, weight_loader=loader)
        else:
            qweight = PackedvLLMParameter(data=torch.zeros(rows, cols // 8, dtype=torch.int32), output_dim=0,
                                          input_dim=1, packed_dim=1, packed_factor=8, weight_loader=loader)
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("scales", ChannelQuantScaleParameter(
            data=torch.full((rows,), float("nan"), dtype=torch.float16), output_dim=0, weight_loader=loader))

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if not weights_processed(layer):
            raise not_processed_error(layer)
        return F.linear(x, self.dequantize_weight(layer).to(x.dtype), bias)

    def dequantize_weight(self, layer) -> torch.Tensor:
        scale = layer.scales.data.float()
        return unpack(layer.qweight.data).float() * (1.0 / scale if BUG == "b" else scale)[:, None]


class ToyqConfig(QuantizationConfig):
    tolerance: ClassVar[Tolerance] = Tolerance(max_rel_error=1e-2)
    weight_rel_error: ClassVar[float] = 0.15
    supports_torch_compile: ClassVar[bool] = True
    online_quantization: ClassVar[bool] = False

    @classmethod
    def get_name(cls) -> str:
        return "toyq"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0

    @classmethod
    def cpu_support(cls) -> str | None:
        return "de-quantize, then F.linear"

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ToyqConfig:
        if config.get("bits", 4) != 4:
            raise ConfigError(f"toyq: bits must be 4, found {config['bits']!r}")
        cfg = cls()
        cfg.modules_to_not_convert = cls.skip_list_from(config)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": "toyq", "bits": 4, "modules_to_not_convert": list(self.modules_to_not_convert)}

    def get_quant_method(self, layer, prefix: str):
        return self.linear_method_or_skip(layer, prefix, ToyqLinearMethod)

    def uses_calibration(self) -> bool:
        return False

    def quantize_shape_problem(self, shape):
        out, inp = shape
        if inp % 8 or (BUG == "d" and out % 8):
            return "in_features (and with bug d out_features) must be multiples of 8"
        return None

    def quantize_weight(self, weight: torch.Tensor, *, prefix: str = "", activations=None) -> dict[str, torch.Tensor]:
        w = weight.float()
        s = (w.abs().amax(dim=1) / 7.0).clamp(min=1e-8).half()
        codes = torch.round(w / s.float()[:, None]).clamp(-8, 7).to(torch.int32)
        return {"qweight": pack(codes), "scales": (1.0 / s.float()).half() if BUG == "b" else s}


@hookimpl
def register_quantization_methods(register) -> None:
    register(ToyqConfig, ToyqLinearMethod, weight_loader_v2=True)
