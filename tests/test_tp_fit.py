"""``tp_fit(model, sizes)``: the TP sizes at which every linear layer of a model splits, checked on the model built at
TP=1 on the meta device — what a build at each size would refuse, all layers at once. (Was: only the first layer
that did not split, whose advice knew itself: "TP sizes that keep this layer aligned: [1, 2, 4]", then the next layer
failed at 4.)"""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.demo.model import DemoConfig, DemoDiT
from fastvideo_quant.distributed import building_as
from fastvideo_quant.errors import ShardingError
from fastvideo_quant.layers.linear import TPFit, tp_fit
from fastvideo_quant.quantization import resolve_quant_config

#: attention 512 wide (8 query / 4 KV heads), MLP 768: under AWQ group 128 the attention output splits up to 4 ways,
#: the MLP's down projection 2 (768 / 4 = 192 inputs is no whole number of groups).
CFG = DemoConfig(hidden_size=512, num_heads=8, num_kv_heads=4, intermediate_size=768, num_layers=2, in_channels=32,
                 num_tokens=16)
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
       "modules_to_not_convert": ["patch_embed", "proj_out"]}
FP8_BLOCK = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
             "is_checkpoint_fp8_serialized": True}
SIZES = (1, 2, 3, 4, 8, 16)


def _model(section: dict | None) -> DemoDiT:
    config = None if section is None else resolve_quant_config(hf_config={"quantization_config": section})
    with torch.device("meta"):
        return DemoDiT(CFG, torch.bfloat16, config)


@pytest.mark.parametrize("section", [None, AWQ, FP8_BLOCK], ids=["unquantized", "awq-g128", "fp8-block-128"])
def test_the_sizes_that_fit_are_the_sizes_a_build_accepts(section):
    """For every size checked, a build of the same model as TP rank 0 of that size (building_as, no process group
    needed on meta) succeeds exactly where tp_fit says it fits, and where it does not, the layer a build stops at is
    among those tp_fit names."""
    fit = tp_fit(_model(section), SIZES)
    assert isinstance(fit, TPFit) and sorted([*fit.fits, *fit.problems]) == list(SIZES)
    config = None if section is None else resolve_quant_config(hf_config={"quantization_config": section})
    for tp in SIZES:
        with building_as(0, tp), torch.device("meta"):
            try:
                DemoDiT(CFG, torch.bfloat16, config)
            except (ShardingError, ValueError) as exc:
                assert tp in fit.problems, (tp, exc)
                assert any(line.split(" ", 1)[0].strip("'") in str(exc) for line in fit.problems[tp]), (exc, fit)
            else:
                assert tp in fit.fits, (tp, fit.problems.get(tp))


def test_every_layer_that_does_not_split_is_named_with_its_reason():
    fit = tp_fit(_model(AWQ), SIZES)
    assert fit.fits == [1, 2]
    assert fit.problems[4] == [
        f"'blocks.{i}.mlp.down_proj' (RowParallelLinear): awq: input size per rank 192 is not a multiple of group_size 128"
        for i in range(2)]
    assert {line.split(" ", 1)[0] for line in fit.problems[8]} == {
        f"'blocks.{i}.attn.o_proj'" for i in range(2)} | {f"'blocks.{i}.mlp.down_proj'" for i in range(2)}
    assert fit.problems[3][0] == "'blocks.0.attn.qkv_proj' (QKVParallelLinear): its 8 query / 4 KV heads do not split 3 ways"
    assert str(fit).splitlines()[0] == "TP sizes at which every linear layer splits: [1, 2]"
    # unquantized, only the heads rule out a size
    plain = tp_fit(_model(None), SIZES)
    assert plain.fits == [1, 2, 4, 8] and set(plain.problems) == {3, 16}


def test_fp8_blocks_are_checked_per_layer():
    """Whole 128 x 128 blocks per rank: KV parts of 256 rows split 2 ways, not 4 (64 rows a rank)."""
    fit = tp_fit(_model(FP8_BLOCK), (1, 2, 4, 8))
    assert fit.fits == [1, 2]
    assert fit.problems[4][0] == ("'blocks.0.attn.qkv_proj' (QKVParallelLinear): fp8: output shard 1 has 64 rows per "
                                  "rank (of 256), not a multiple of bn=128")
    assert all(": fp8: " in line for line in fit.problems[8]), fit.problems[8]


def test_a_rule_that_raises_leaves_the_size_unchecked_not_refused(monkeypatch):
    """A plugin whose shard_problems raises: the sizes stay among those that fit (nothing was found against them), and
    each layer it could not be asked about is listed as not checked (was: every size refused, TP=1 included)."""
    from fvq_awq import AWQConfig

    def broken(self, *sizes):
        raise RuntimeError("no rule")

    model = _model(AWQ)
    monkeypatch.setattr(AWQConfig, "shard_problems", broken)
    fit = tp_fit(model, (1, 2))
    assert fit.fits == [1, 2] and fit.problems == {}
    assert fit.unchecked[1][0].endswith("AWQConfig.shard_problems raised RuntimeError: no rule"), fit.unchecked
    assert "TP size 1: not checked: " in str(fit)


@pytest.mark.parametrize("sizes", [(0, 1), (1.5, 2), ("2",), (True,)])
def test_sizes_must_be_positive_integers(sizes):
    with pytest.raises(ValueError, match=r"tp_fit: TP sizes must be positive integers, found "):
        tp_fit(_model(None), sizes)
