"""A small video-DiT-style transformer built from our tensor-parallel layers, for ``fvq demo`` and tests.

Shapes follow a Wan/HunyuanVideo block scaled down: patchified latents are embedded
(``patch_embed``), each block is pre-norm attention (fused q/k/v, grouped-query heads,
``F.scaled_dot_product_attention``, output projection) and a gated MLP
(``down(silu(gate(x)) * up(x))``), and ``proj_out`` maps back to latent channels.

Checkpoint names are the unfused Hugging Face ones (``attn.q_proj``, ``attn.k_proj``,
``attn.v_proj``, ``mlp.gate_proj``, ``mlp.up_proj``), so loading goes through the
loader's packed-module mapping into ``qkv_proj`` and ``gate_up_proj``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo_quant.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from fastvideo_quant.quantization.base import QuantizationConfig


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo model; ``to_dict`` is what its checkpoint's config.json holds."""

    hidden_size: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 1536
    num_layers: int = 2
    in_channels: int = 64
    num_tokens: int = 256

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "fvq-demo-dit", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> DemoConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in fields})


class Attention(nn.Module):
    def __init__(self, cfg: DemoConfig, dtype: torch.dtype, quant_config: QuantizationConfig | None,
                 prefix: str) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads,
                                          bias=True, params_dtype=dtype, quant_config=quant_config,
                                          prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=True,
                                        params_dtype=dtype, quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.head_dim = cfg.head_dim
        self.num_heads = self.qkv_proj.num_heads  # this rank's heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv, _ = self.qkv_proj(x)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        repeat = self.num_heads // self.num_kv_heads  # grouped-query attention
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        out, _ = self.o_proj(out.transpose(1, 2).reshape(b, n, q_size))
        return out


class GatedMLP(nn.Module):
    def __init__(self, cfg: DemoConfig, dtype: torch.dtype, quant_config: QuantizationConfig | None,
                 prefix: str) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [cfg.intermediate_size] * 2, bias=False,
                                                       params_dtype=dtype, quant_config=quant_config,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=False, params_dtype=dtype,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        gate, up = gate_up.chunk(2, dim=-1)
        out, _ = self.down_proj(F.silu(gate) * up)
        return out


class DiTBlock(nn.Module):
    def __init__(self, cfg: DemoConfig, dtype: torch.dtype, quant_config: QuantizationConfig | None,
                 prefix: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=1e-6, dtype=dtype)
        self.attn = Attention(cfg, dtype, quant_config, f"{prefix}.attn")
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=1e-6, dtype=dtype)
        self.mlp = GatedMLP(cfg, dtype, quant_config, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DemoDiT(nn.Module):
    """Patch embedding, ``num_layers`` DiT blocks, output norm and projection; input ``[batch, tokens, in_channels]``."""

    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

    def __init__(self, cfg: DemoConfig, dtype: torch.dtype = torch.bfloat16,
                 quant_config: QuantizationConfig | None = None) -> None:
        super().__init__()
        self.config = cfg
        # patch_embed matches the default "embed" exclusion of `fvq quantize`, so it stays
        # unquantized and exercises modules_to_not_convert in every method's config.
        self.patch_embed = ReplicatedLinear(cfg.in_channels, cfg.hidden_size, bias=True, params_dtype=dtype,
                                            quant_config=quant_config, prefix="patch_embed")
        self.blocks = nn.ModuleList(DiTBlock(cfg, dtype, quant_config, f"blocks.{i}") for i in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(cfg.hidden_size, eps=1e-6, dtype=dtype)
        self.proj_out = ReplicatedLinear(cfg.hidden_size, cfg.in_channels, bias=True, params_dtype=dtype,
                                         quant_config=quant_config, prefix="proj_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.patch_embed(x)
        for block in self.blocks:
            h = block(h)
        out, _ = self.proj_out(self.norm_out(h))
        return out


def random_state_dict(cfg: DemoConfig, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Seeded weights under the checkpoint (unfused) names, scaled like a trained model's (std ~ 1/sqrt(fan_in))."""
    gen = torch.Generator().manual_seed(seed)

    def linear(name: str, out_features: int, in_features: int, bias: bool) -> dict[str, torch.Tensor]:
        w = torch.randn(out_features, in_features, generator=gen) * in_features**-0.5
        t = {f"{name}.weight": w.to(dtype)}
        if bias:
            t[f"{name}.bias"] = (torch.randn(out_features, generator=gen) * 0.02).to(dtype)
        return t

    def norm(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": (1 + 0.1 * torch.randn(cfg.hidden_size, generator=gen)).to(dtype),
                f"{name}.bias": (0.02 * torch.randn(cfg.hidden_size, generator=gen)).to(dtype)}

    kv = cfg.num_kv_heads * cfg.head_dim
    sd = linear("patch_embed", cfg.hidden_size, cfg.in_channels, True)
    for i in range(cfg.num_layers):
        p = f"blocks.{i}"
        sd |= norm(f"{p}.norm1") | norm(f"{p}.norm2")
        sd |= linear(f"{p}.attn.q_proj", cfg.num_heads * cfg.head_dim, cfg.hidden_size, True)
        sd |= linear(f"{p}.attn.k_proj", kv, cfg.hidden_size, True)
        sd |= linear(f"{p}.attn.v_proj", kv, cfg.hidden_size, True)
        sd |= linear(f"{p}.attn.o_proj", cfg.hidden_size, cfg.num_heads * cfg.head_dim, True)
        sd |= linear(f"{p}.mlp.gate_proj", cfg.intermediate_size, cfg.hidden_size, False)
        sd |= linear(f"{p}.mlp.up_proj", cfg.intermediate_size, cfg.hidden_size, False)
        sd |= linear(f"{p}.mlp.down_proj", cfg.hidden_size, cfg.intermediate_size, False)
    sd |= norm("norm_out") | linear("proj_out", cfg.in_channels, cfg.hidden_size, True)
    return sd
