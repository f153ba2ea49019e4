"""Model code written as FastVideo's and vLLM's models write it — keyword constructors, a ``load_weights`` loop over
``stacked_params_mapping`` with shard ids ``"q"``/``"k"``/``"v"`` and ``0``/``1``, ``forward`` returning ``(out,
bias)`` — runs unchanged on these layers (docs/guide/porting.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER = 64, 4, 2, 16, 96


class Attention(torch.nn.Module):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(hidden_size=HIDDEN, head_size=HEAD_DIM, total_num_heads=HEADS,
                                          total_num_kv_heads=KV_HEADS, bias=False, quant_config=None,
                                          prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(input_size=HEADS * HEAD_DIM, output_size=HIDDEN, bias=False,
                                        quant_config=None, prefix=f"{prefix}.o_proj")
        self.q_size = self.qkv_proj.num_heads * HEAD_DIM
        self.kv_size = self.qkv_proj.num_kv_heads * HEAD_DIM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        rep = HEADS // KV_HEADS
        k, v = k.repeat_interleave(rep, dim=-1), v.repeat_interleave(rep, dim=-1)
        out, _ = self.o_proj(q * torch.sigmoid(k) + v)  # (stands in for attention: every part is used)
        return out


class MLP(torch.nn.Module):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(input_size=HIDDEN, output_sizes=[INTER] * 2, bias=False,
                                                       quant_config=None, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(input_size=INTER, output_size=HIDDEN, bias=False, quant_config=None,
                                           prefix=f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        gate, up = gate_up.chunk(2, dim=-1)
        out, _ = self.down_proj(input_=F.silu(gate) * up)
        return out


class Block(torch.nn.Module):
    stacked_params_mapping = [  # (param_name, shard_name, shard_id), as the models declare it
        (".qkv_proj", ".q_proj", "q"), (".qkv_proj", ".k_proj", "k"), (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0), (".gate_up_proj", ".up_proj", 1),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = Attention("self_attn")
        self.mlp = MLP("mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.self_attn(x)
        return h + self.mlp(h)

    def load_weights(self, weights) -> set[str]:
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            for param_name, shard_name, shard_id in self.stacked_params_mapping:
                if shard_name in name:
                    name = name.replace(shard_name, param_name)
                    param = params[name]
                    param.weight_loader(param, tensor, shard_id)
                    break
            else:
                param = params[name]
                param.weight_loader(param, tensor)
            loaded.add(name)
        return loaded


def _reference(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    q, k, v = (F.linear(x, w[f"self_attn.{p}_proj.weight"]) for p in "qkv")
    rep = HEADS // KV_HEADS
    k, v = k.repeat_interleave(rep, dim=-1), v.repeat_interleave(rep, dim=-1)
    h = x + F.linear(q * torch.sigmoid(k) + v, w["self_attn.o_proj.weight"])
    gate, up = F.linear(h, w["mlp.gate_proj.weight"]), F.linear(h, w["mlp.up_proj.weight"])
    return h + F.linear(F.silu(gate) * up, w["mlp.down_proj.weight"])


def test_a_block_written_as_the_models_write_it_loads_and_runs():
    gen = torch.Generator().manual_seed(0)
    shapes = {"self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN), "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
              "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
              "mlp.gate_proj.weight": (INTER, HIDDEN), "mlp.up_proj.weight": (INTER, HIDDEN),
              "mlp.down_proj.weight": (HIDDEN, INTER)}
    w = {n: torch.randn(*s, generator=gen) / s[1] ** 0.5 for n, s in shapes.items()}
    block = Block()
    assert block.load_weights(w.items()) == {"self_attn.qkv_proj.weight", "self_attn.o_proj.weight",
                                             "mlp.gate_up_proj.weight", "mlp.down_proj.weight"}
    x = torch.randn(3, 5, HIDDEN, generator=gen)
    torch.testing.assert_close(block(x), _reference(w, x), rtol=1e-5, atol=1e-5)


def test_the_embedding_and_kv_cache_hooks_answer_as_fastvideos_base_classes_do():
    """FastVideo's (and vLLM's) ``QuantizeMethodBase.embedding``, ``method_has_implemented_embedding`` and
    ``QuantizationConfig.get_cache_scale`` exist here too: no method here has quantized embeddings or KV-cache
    scales, and the answers say so instead of an AttributeError."""
    import pytest

    from fastvideo_quant.quantization import QUANTIZATION_METHODS, get_quantization_config
    from fastvideo_quant.quantization.base import method_has_implemented_embedding

    for name in QUANTIZATION_METHODS:
        config = get_quantization_config(name)()  # (each built-in config has defaults)
        assert config.get_cache_scale("blocks.0.attn.k_proj.k_scale") is None, name
        layer = RowParallelLinear(input_size=256, output_size=256, bias=False, quant_config=config, prefix="o_proj")
        method = layer.quant_method
        assert not method_has_implemented_embedding(type(method)), name
        with pytest.raises(NotImplementedError, match=rf"{type(method).__name__}\.embedding: .*linear layers only"):
            method.embedding(layer, torch.tensor([0, 1]))

    class WithEmbedding(type(RowParallelLinear(input_size=8, output_size=8, quant_config=None).quant_method)):
        def embedding(self, layer, ids):
            return layer.weight[ids]

    assert method_has_implemented_embedding(WithEmbedding)
    assert not method_has_implemented_embedding(object)  # (no embedding at all: as FastVideo's answers)
