"""A fused layer's parameter that holds one tensor for all its parts (no output_dim, no slot per part: a vLLM-style
act-order g_idx) is written whole by each part: parts that differ left the last one's values, silently, and the other
parts computed with them (a vLLM method porter's review: q 0.28, k 0.31 relative error). load_checkpoint refuses
them before anything is written; parts that agree load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from toy_method import ToyConfig

from fastvideo_quant.errors import CheckpointError
from fastvideo_quant.layers.linear import QKVParallelLinear
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.parameter import BasevLLMParameter, ModelWeightParameter
from fastvideo_quant.plugins import hookimpl, register_plugin, unregister_plugin
from fastvideo_quant.quantization import resolve_quant_config
from fastvideo_quant.quantization.base import LinearMethodBase


class WholeIndexMethod(LinearMethodBase):
    """A float weight and an input permutation ``perm`` [in] that every part writes whole (v2, no output_dim)."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra):
        loader = extra["weight_loader"]
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype), input_dim=1,
            output_dim=0, weight_loader=loader))
        layer.register_parameter("perm", BasevLLMParameter(
            data=torch.empty(input_size_per_partition, dtype=torch.int64), weight_loader=loader))

    def apply(self, layer, x, bias=None):
        return F.linear(x[..., layer.perm], layer.weight, bias)


class WholeIndexConfig(ToyConfig):
    @classmethod
    def get_name(cls) -> str:
        return "test-whole-index"

    def get_quant_method(self, layer, prefix):
        return WholeIndexMethod()


class Plugin:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(WholeIndexConfig, WholeIndexMethod, weight_loader_v2=True)


@pytest.fixture
def model():
    register_plugin(Plugin(), name="whole-index")
    try:
        m = torch.nn.Module()
        m.qkv_proj = QKVParallelLinear(16, 4, 2, bias=False, quant_config=resolve_quant_config("test-whole-index"),
                                       params_dtype=torch.float32, prefix="qkv_proj")
        yield m
    finally:
        unregister_plugin("whole-index")


def _checkpoint(path, perms: dict[str, torch.Tensor]) -> None:
    tensors = {f"{n}_proj.weight": torch.randn(8, 16) for n in "qkv"}
    tensors |= {f"{n}_proj.perm": p.clone() for n, p in perms.items()}
    save_file(tensors, str(path / "model.safetensors"))


def test_parts_that_differ_are_refused_before_anything_is_written(model, tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    _checkpoint(tmp_path, {n: torch.randperm(16, generator=g) for n in "qkv"})
    model.qkv_proj.weight.data.fill_(0.5)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path)
    text = str(err.value)
    assert ("parameter 'qkv_proj.perm' holds one tensor for every part of its fused layer (it has no output_dim: each "
            "part's tensor is written whole), but the checkpoint's parts differ: 'q_proj.perm' in model.safetensors "
            "(shard 'q') against 'k_proj.perm' in model.safetensors (shard 'k'), 'v_proj.perm' in model.safetensors "
            "(shard 'v'); the part read last would be kept") in text, text
    assert bool((model.qkv_proj.weight == 0.5).all())


def test_parts_that_agree_load(model, tmp_path) -> None:
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    _checkpoint(tmp_path, {n: perm for n in "qkv"})
    load_checkpoint(model, tmp_path)
    assert torch.equal(model.qkv_proj.perm, perm)
