"""A layer's prefix (what modules_to_not_convert matches) against its path in the model (what the loader matches)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization.selection import resolve_quant_config


class Block(torch.nn.Module):
    def __init__(self, qc, attn_prefix: str = "blocks.0.attn.qkv_proj", embed_prefix: str = "") -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(32, 8, 4, 4, bias=False, quant_config=qc, prefix=attn_prefix)
        self.embed = ReplicatedLinear(32, 256, quant_config=qc, prefix=embed_prefix)


class Net(torch.nn.Module):
    def __init__(self, qc, **prefixes) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(qc, **prefixes)])


def _checkpoint(path, attn: str = "blocks.0.attn") -> None:
    tensors = {f"{attn}.{n}_proj.weight": torch.randn(32, 32) for n in "qkv"}
    tensors |= {"blocks.0.embed.weight": torch.randn(256, 32), "blocks.0.embed.bias": torch.randn(256)}
    save_file(tensors, str(path / "model.safetensors"))


def test_quantized_layers_whose_prefix_is_not_their_path_are_refused_together(tmp_path) -> None:
    _checkpoint(tmp_path, attn="blocks.0")
    model = Net(resolve_quant_config("fp8"))
    model.blocks[0].embed.bias.data.fill_(0.5)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert "2 quantized layer(s) were built with a prefix that is not their path in the model" in text
    assert ("layer at path 'blocks.0.qkv_proj' (QKVParallelLinear) was built with prefix 'blocks.0.attn.qkv_proj': "
            "build it with prefix='blocks.0.qkv_proj'") in text
    assert ("layer at path 'blocks.0.embed' (ReplicatedLinear) was built with no prefix (prefix=''): build it with "
            "prefix='blocks.0.embed'") in text
    assert "modules_to_not_convert" in text
    assert bool((model.blocks[0].embed.bias == 0.5).all())


def test_unquantized_layer_at_the_wrong_path_gets_a_hint_naming_its_prefix(tmp_path) -> None:
    _checkpoint(tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Net(None, embed_prefix="blocks.0.embed"), tmp_path)
    assert ("layer at path 'blocks.0.qkv_proj' (QKVParallelLinear) was built with prefix 'blocks.0.attn.qkv_proj', "
            "but checkpoint tensors are matched by the module path (blocks.0.qkv_proj.<parameter>); if the checkpoint "
            "names the layer 'blocks.0.attn.qkv_proj', place it at that path in the model") in str(err.value)


def test_unquantized_layers_with_another_prefix_load_when_their_tensors_are_there(tmp_path) -> None:
    _checkpoint(tmp_path, attn="blocks.0")
    load_checkpoint(Net(None), tmp_path)


class Fused(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_qkv = QKVParallelLinear(32, 8, 4, 4, bias=False, prefix="attn.to_qkv")
        self.ff_in = MergedColumnParallelLinear(32, [64, 64], bias=False, prefix="attn.ff_in")


def test_fused_layer_without_a_mapping_suggests_the_entry_in_shard_order(tmp_path) -> None:
    tensors = {f"attn.to_{n}.weight": torch.randn(32, 32) for n in "vkq"}
    tensors |= {"attn.ff_up.weight": torch.randn(64, 32), "attn.ff_gate.weight": torch.randn(64, 32)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = torch.nn.Module()
    model.attn = Fused()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert ("layer 'attn.to_qkv' is a fused QKVParallelLinear and the checkpoint stores its parts separately as "
            "'to_k', 'to_q', 'to_v': tell the loader which checkpoint modules it fuses with packed_modules_mapping = "
            "{'to_qkv': ['to_q', 'to_k', 'to_v']}") in text
    assert "packed_modules_mapping = {'ff_in': ['ff_gate', 'ff_up']}" in text
    # the fix first, before the tensor-by-tensor lines it explains (it was the last of them)
    lines = [line.strip() for line in text.splitlines()[1:]]
    assert lines[0].startswith("layer 'attn.") and lines[1].startswith("layer 'attn."), lines


def test_a_sub_model_whose_layers_carry_the_outer_models_path_loads(tmp_path) -> None:
    """The transformer of a pipeline, built with prefixes from the pipeline's root and loaded from its own checkpoint
    (keyed from the transformer): the prefix ends with the path, and skip-list patterns matching whole dotted
    components (int8's rule) match it alike."""
    _checkpoint(tmp_path, attn="blocks.0")
    qc = resolve_quant_config("int8")
    qc.modules_to_not_convert = ["blocks.0.embed"]
    model = Net(qc, attn_prefix="transformer.blocks.0.qkv_proj", embed_prefix="transformer.blocks.0.embed")
    load_checkpoint(model, tmp_path)
    assert model.blocks[0].qkv_proj.weight.dtype == torch.int8
    assert model.blocks[0].embed.weight.dtype == torch.float32  # the skip list matched the longer prefix


def test_a_sub_model_prefix_a_whole_name_skip_list_does_not_match_is_refused(tmp_path) -> None:
    """fp8 matches skip-list names whole (as vLLM and compressed-tensors read them): 'blocks.0.embed' does not name
    'transformer.blocks.0.embed', so the layer was built to quantize on load what the skip list leaves in float —
    silently, since a float checkpoint loads into online fp8 layers. Refused before anything is read."""
    _checkpoint(tmp_path, attn="blocks.0")
    qc = resolve_quant_config("fp8")
    qc.modules_to_not_convert = ["blocks.0.embed"]
    model = Net(qc, attn_prefix="transformer.blocks.0.qkv_proj", embed_prefix="transformer.blocks.0.embed")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, tmp_path)
    msg = str(info.value)
    assert "the skip list (ignored_layers) skips 'blocks.0.embed', the checkpoint's name for it, but matches 'fp8' " \
           "entries to whole names, so for the prefix it decided otherwise and built it quantized: build it with " \
           "prefix='blocks.0.embed'" in msg, msg
    assert "qkv_proj" not in msg.split("\n", 1)[1], msg  # (its prefix decides as its path does)
    model = Net(qc, attn_prefix="blocks.0.qkv_proj", embed_prefix="blocks.0.embed")
    load_checkpoint(model, tmp_path)
    assert model.blocks[0].embed.weight.dtype == torch.float32


def test_a_prefix_that_only_ends_like_the_path_within_a_name_is_refused(tmp_path) -> None:
    _checkpoint(tmp_path, attn="blocks.0")
    model = Net(resolve_quant_config("fp8"), attn_prefix="xblocks.0.qkv_proj", embed_prefix="blocks.0.embed")
    with pytest.raises(CheckpointError, match="was built with prefix 'xblocks.0.qkv_proj'"):
        load_checkpoint(model, tmp_path)
