"""A small model of our layers, loaded from a checkpoint written per method, for the module-state tests
(copy.deepcopy, state_dict round trips, dtype casts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear, RowParallelLinear
from fastvideo_quant.loader import load_checkpoint

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 64, 4, 2, 16

#: (id, method config dict) of each plugin that runs on CPU; configs are the checkpoint's, as ``fvq quantize`` writes
METHODS: dict[str, dict[str, Any]] = {
    "unquantized": {"quant_method": "unquantized"},
    "int8": {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": 0.0},
    "int8-online": {"quant_method": "int8"},
    "fp8-tensor": {"quant_method": "fp8"},
    "fp8-channel": {"quant_method": "fp8", "weight_scale_strategy": "channel"},
    "fp8-block": {"quant_method": "fp8", "weight_block_size": [16, 16]},
    "fp8-online": {},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"},
}

#: Methods that read a float checkpoint and quantize it when the weights are processed.
ONLINE = {"int8-online", "fp8-online"}


def config(method: str):
    from fastvideo_quant.plugins import ensure_registered

    for name, module in (("int8", "fvq_int8.hooks"), ("fp8", "fvq_fp8.hooks"), ("awq", "fvq_awq.hooks")):
        ensure_registered(name, module)
    if method == "unquantized":
        return None
    if method.startswith("int8"):
        from fvq_int8.config import Int8Config as cls
    elif method.startswith("fp8"):
        from fvq_fp8.config import Fp8Config as cls
    else:
        from fvq_awq.config import AWQConfig as cls
    return cls.from_config(METHODS[method])


class Net(torch.nn.Module):
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self, quant_config, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(HIDDEN, HEAD_DIM, HEADS, KV_HEADS, bias=True, params_dtype=dtype,
                                          quant_config=quant_config, prefix="qkv_proj")
        qkv_out = (HEADS + 2 * KV_HEADS) * HEAD_DIM
        self.o_proj = RowParallelLinear(qkv_out, HIDDEN, bias=True, params_dtype=dtype, quant_config=quant_config,
                                        prefix="o_proj")
        self.out = ReplicatedLinear(HIDDEN, HIDDEN, bias=False, params_dtype=dtype, quant_config=quant_config,
                                    prefix="out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.qkv_proj(x)
        h, _ = self.o_proj(h)
        return self.out(h)[0]


def _float_weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    qkv_out = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    shapes = {"q_proj": (HEADS * HEAD_DIM, HIDDEN), "k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
              "v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "o_proj": (HIDDEN, qkv_out), "out": (HIDDEN, HIDDEN)}
    return {name: torch.randn(*shape, generator=g) * 0.1 for name, shape in shapes.items()}


def write_checkpoint(method: str, path: Path, seed: int = 0) -> Path:
    """A checkpoint of :class:`Net` in ``method``'s on-disk format (``quantize_weight`` of each weight)."""
    cfg = config(method)
    g = torch.Generator().manual_seed(seed + 100)
    tensors: dict[str, torch.Tensor] = {}
    for name, weight in _float_weights(seed).items():
        online = cfg is None or method in ONLINE  # these load the float checkpoint and quantize it while processing
        quantized = {"weight": weight} if online else cfg.quantize_weight(weight, prefix=name)
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in quantized.items()})
        if name != "out":
            tensors[f"{name}.bias"] = torch.randn(weight.shape[0], generator=g) * 0.1
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def checkpoint_maker(root: Path):
    """``get(method, seed=0)``: the checkpoint of ``method`` and ``seed`` under ``root``, written on first use."""
    made: dict[tuple[str, int], Path] = {}

    def get(method: str, seed: int = 0) -> Path:
        if (method, seed) not in made:
            made[method, seed] = write_checkpoint(method, root / f"{method}-{seed}", seed)
        return made[method, seed]

    return get


def loaded(method: str, path: Path, dtype: torch.dtype = torch.float32) -> Net:
    model = Net(config(method), dtype)
    load_checkpoint(model, path)
    return model


def inputs(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(7)).to(dtype)
