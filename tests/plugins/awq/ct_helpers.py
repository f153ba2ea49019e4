"""compressed-tensors W4A16 checkpoints written for the AWQ tests without the plugin's code (its packing and
quantizer are under test): packed here from the format's definition (compressed-tensors ``pack_quantized.py``:
``pack_to_int32`` adds ``2^(bits-1) = 8`` to each signed code and puts value ``i`` of every 8 along the packed dim in
bits ``4i .. 4i+3``; the weight is packed along the input dim, the zero points along the output dim), quantized with
compressed-tensors' formulas (``calculate_qparams``: symmetric ``max|w| / 7.5``, asymmetric ``(max - min) / 15`` and
``z = -8 - min / s``; codes ``clamp(round(w / s) + z, -8, 7)``), scales stored in bf16 as llm-compressor writes them for
a bf16 model. Module level, so the spawned tensor-parallel ranks import them too."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, random_state_dict

CFG = DemoConfig(hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512, num_layers=2, in_channels=64)


def word(nibbles: list[int]) -> int:
    """Eight stored nibbles as one int32 (two's complement), nibble ``i`` in bits ``4i .. 4i+3``."""
    value = sum(n << (4 * i) for i, n in enumerate(nibbles))
    return value - (1 << 32) if value >= 1 << 31 else value


def pack_by_hand(stored: list[list[int]]) -> torch.Tensor:
    """Stored nibbles ``[rows][cols]`` → int32 ``[rows, cols/8]``, packed along the columns with Python ints."""
    return torch.tensor([[word(row[j:j + 8]) for j in range(0, len(row), 8)] for row in stored], dtype=torch.int32)


def pack(stored: torch.Tensor) -> torch.Tensor:
    """:func:`pack_by_hand` for tensors (vectorised: the demo checkpoints' layers); the tests check it against it."""
    words = (stored.long().reshape(stored.shape[0], -1, 8) << (4 * torch.arange(8))).sum(-1)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def tensors(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One module's checkpoint tensors from signed codes ``q [out, in]``, scales ``s [out, G]`` and signed zero points
    ``z [out, G]`` (None: symmetric, no tensor, as compressed-tensors omits it)."""
    out = {"weight_packed": pack(q + 8), "weight_scale": s,
           "weight_shape": torch.tensor(list(q.shape), dtype=torch.int64)}
    if z is not None:
        out["weight_zero_point"] = pack((z + 8).t()).t().contiguous()
    return out


def quantize(w: torch.Tensor, symmetric: bool, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """compressed-tensors' int4 quantization of ``w [out, in]``: signed codes, bf16 scales, signed zero points."""
    out, k = w.shape
    g = k if group == -1 else group
    wg = w.float().reshape(out, k // g, g)
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    if symmetric:
        s = (torch.maximum(-lo, hi) / 7.5).bfloat16()
        z = torch.zeros_like(lo)
    else:
        s = ((hi - lo) / 15).bfloat16()
        z = (-8 - lo / s.float()).round().clamp(-8, 7)
    q = (wg / s.float()[..., None] + z[..., None]).round().clamp(-8, 7).reshape(out, k)
    return q.to(torch.int64), s, z.to(torch.int64)


def dequantized(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(q - z) * s`` in float32 (exact: small integers times bf16 scales)."""
    g = q.shape[1] // s.shape[1]
    return (q - z.repeat_interleave(g, 1)).float() * s.float().repeat_interleave(g, 1)


def quantize_act_order(w: torch.Tensor, symmetric: bool, g_idx: torch.Tensor, groups: int):
    """compressed-tensors' int4 quantization of ``w [out, in]`` with activation ordering 'group': input ``k`` is in
    group ``g_idx[k]`` (any of ``groups``; one without inputs keeps scale 1 and zero point 0). Signed codes, bf16 scales
    ``[out, groups]``, signed zero points."""
    out, k = w.shape
    q = torch.zeros(out, k, dtype=torch.int64)
    s = torch.ones(out, groups, dtype=torch.bfloat16)
    z = torch.zeros(out, groups, dtype=torch.int64)
    for j in range(groups):
        cols = (g_idx == j).nonzero().squeeze(1)
        if cols.numel():
            q[:, cols], sj, zj = quantize(w[:, cols], symmetric, -1)
            s[:, j], z[:, j] = sj[:, 0], zj[:, 0]
    return q, s, z


def dequantized_act_order(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """``(q - z[g]) * s[g]`` per input in float32 (exact)."""
    g = g_idx.long()
    return (q - z[:, g]).float() * s.float()[:, g]


def gptq_g_idx(k: int, group: int, generator: torch.Generator) -> torch.Tensor:
    """GPTQ's ``weight_g_idx`` with actorder 'group' (llm-compressor ``gptq_quantize.py``): the inputs in a random
    activation order, the ``j``-th ``group`` of them in group ``j`` (each group exactly ``group`` inputs)."""
    perm = torch.randperm(k, generator=generator)
    g = torch.empty(k, dtype=torch.int32)
    g[perm] = (torch.arange(k) // group).to(torch.int32)
    return g


def uneven_g_idx(k: int, group: int, generator: torch.Generator) -> torch.Tensor:
    """A ``weight_g_idx`` giving groups uneven input counts (some none, some over ``group``): what the format allows."""
    return torch.randint(0, k // group, (k,), generator=generator, dtype=torch.int32)


def section(symmetric: bool = True, strategy: str = "group", group_size: int | None = 64, targets=("Linear",),
            ignore=("patch_embed",), **weights) -> dict:
    """The quantization_config llm-compressor writes for W4A16 (symmetric) / W4A16_ASYM, every field serialized."""
    args = {"num_bits": 4, "type": "int", "symmetric": symmetric, "group_size": group_size, "strategy": strategy,
            "block_structure": None, "dynamic": False, "actorder": None, "scale_dtype": None, "zp_dtype": None,
            "observer": "minmax", "observer_kwargs": {}, **weights}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": list(targets), "weights": args, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}},
            "global_compression_ratio": None, "ignore": list(ignore), "kv_cache_scheme": None, "sparsity_config": {},
            "transform_config": {}, "version": "0.12.2"}


def write_demo(path, config: dict, quantized=lambda module: module != "patch_embed",
               g_idx_of=gptq_g_idx) -> dict[str, torch.Tensor]:
    """A compressed-tensors checkpoint of the demo model: modules ``quantized(module)`` stored in int4 by the scheme of
    ``config``'s group_0; returns each quantized module's expected de-quantized weight (``{module: W}``). With actorder
    'group', each module's ``weight_g_idx`` is ``g_idx_of(in, group, generator)``, one per input (modules of one
    parent and input size share it, as fused parts must)."""
    weights = config["config_groups"]["group_0"]["weights"]
    group = -1 if weights["strategy"] == "channel" else weights["group_size"]
    stored, expected, orders, generator = {}, {}, {}, torch.Generator().manual_seed(7)
    for name, tensor in random_state_dict(CFG).items():
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and tensor.dim() == 2 and quantized(module) and weights.get("actorder") == "group":
            k = tensor.shape[1]
            g = orders.setdefault((module.rpartition(".")[0], k), g_idx_of(k, group, generator))
            q, s, z = quantize_act_order(tensor, weights["symmetric"], g, k // group)
            stored |= {f"{module}.{n}": v for n, v in tensors(q, s, None if weights["symmetric"] else z).items()}
            stored[f"{module}.weight_g_idx"] = g.clone()
            expected[module] = dequantized_act_order(q, s, z, g)
        elif leaf == "weight" and tensor.dim() == 2 and quantized(module):
            q, s, z = quantize(tensor, weights["symmetric"], group)
            stored |= {f"{module}.{k}": v for k, v in tensors(q, s, None if weights["symmetric"] else z).items()}
            expected[module] = dequantized(q, s, z)
        else:
            stored[name] = tensor
    path.mkdir(exist_ok=True)
    save_file(stored, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({**CFG.to_dict(), "quantization_config": config}))
    return expected


def load_demo(rank: int, world: int, path: str, x: torch.Tensor) -> dict:
    """The demo model of checkpoint ``path`` on this rank: its output for ``x`` and each AWQ layer's de-quantized
    weight (this rank's shard). A rank function for ``run_distributed`` (also called in-process at TP=1)."""
    from fastvideo_quant import plugins
    from fastvideo_quant.demo.model import DemoDiT
    from fastvideo_quant.loader import load_checkpoint
    from fastvideo_quant.quantization import resolve_quant_config

    plugins.ensure_registered("awq", "fvq_awq.hooks")
    model = DemoDiT(CFG, quant_config=resolve_quant_config(checkpoint=path))
    load_checkpoint(model, path)
    weights = {n: m.quant_method.dequantize_weight(m) for n, m in model.named_modules()
               if type(getattr(m, "quant_method", None)).__name__ == "CompressedTensorsW4A16Method"}
    with torch.no_grad():
        return {"out": model(x), "weights": weights}


def check_tp2_joins_tp1(path, x: torch.Tensor, what: str) -> None:
    """The demo checkpoint at ``path`` on 2 real gloo ranks against TP=1: every AWQ layer's shards join to TP=1's
    de-quantized weight bit for bit (row-parallel layers along the input, column / merged / QKV ones per fused part,
    ``proj_out`` replicated), and rank 0's output agrees with TP=1's within 2e-2 (the all-reduce's sums)."""
    from fastvideo_quant.testing.distributed import run_distributed

    tp1 = load_demo(0, 1, str(path), x)
    ranks = run_distributed(load_demo, 2, str(path), x, backend="gloo")
    for module, w in tp1["weights"].items():
        shards = [r["weights"][module] for r in ranks]
        if module == "proj_out":  # (replicated)
            assert torch.equal(shards[0], w) and torch.equal(shards[1], w), (what, module)
            continue
        if module.endswith(("o_proj", "down_proj")):
            joined = torch.cat(shards, dim=1)
        else:
            parts = {"qkv_proj": [256, 128, 128], "gate_up_proj": [512, 512]}[module.rpartition(".")[2]]
            halves = [s.split([p // 2 for p in parts]) for s in shards]
            joined = torch.cat([h[i] for i in range(len(parts)) for h in halves])
        assert torch.equal(joined, w), (what, module)
    out1, out2 = tp1["out"].float(), ranks[0]["out"].float()
    assert ((out2 - out1).norm() / out1.norm()).item() < 2e-2, what


def gpu_layers(model, expected: dict[str, torch.Tensor]):
    """``(name, layer, W on the GPU)`` for three of the demo model's AWQ layers (a fused QKV, a row-parallel layer,
    ``proj_out``), each layer's de-quantized weight first checked equal to ``expected``'s (``write_demo``'s)."""
    block = model.blocks[0]
    for name, layer, parts in [("blocks.0.attn.qkv_proj", block.attn.qkv_proj, ("q_proj", "k_proj", "v_proj")),
                               ("blocks.0.mlp.down_proj", block.mlp.down_proj, None), ("proj_out", model.proj_out, None)]:
        base = name.rpartition(".")[0]
        w = (torch.cat([expected[f"{base}.{p}"] for p in parts]) if parts else expected[name]).cuda()
        assert torch.equal(layer.quant_method.dequantize_weight(layer).float(), w.float()), name
        yield name, layer, w

