"""``fvq quantize`` with a compressed-tensors config: its config groups' ``targets`` and its ``ignore`` list decide
which modules are quantized, each with its group's scheme; ``--skip`` / ``--include`` apply on top.

(Was: a compressed-tensors config could not be given at all — ``--option quant_method=compressed-tensors`` was
refused, and the section's keys were not options — and with that check lifted every linear weight was quantized
whatever the targets, under a config whose groups named only some: the checkpoint did not load, or ``quantize_weight``
failed at the first module no group named.)

The written checkpoint is checked against tensors computed here with the plugin's own ``quantize_weight`` per module,
and loaded through the loader into the demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from demo_checkpoints import tensors_of, write_demo_checkpoint
from safetensors.torch import save_file

from fastvideo_quant.cli import main
from fastvideo_quant.demo.model import DemoConfig, DemoDiT
from fastvideo_quant.errors import ConfigError
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config
from fastvideo_quant.quantize import QuantizeError, quantize_checkpoint

CFG = DemoConfig(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256, num_layers=2, in_channels=32,
                 num_tokens=16)
FLOAT = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False}
DYNAMIC = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True, "strategy": "token"}
LINEARS = [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                                                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def fp8_group(targets, strategy="channel", block=None) -> dict:
    weights = {**FLOAT, "strategy": strategy, **({"block_structure": list(block)} if block else {})}
    return {"targets": list(targets), "weights": weights, "input_activations": DYNAMIC}


def fp8_section(*groups, ignore=()) -> dict:
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {f"g{i}": g for i, g in enumerate(groups)}, "ignore": list(ignore)}


def every_linear(method: str, ignore: list[str]) -> dict:
    """A compressed-tensors section of ``method``'s scheme targeting every linear module, with ``ignore``."""
    if method == "fp8":
        return fp8_section(fp8_group(["Linear"]), ignore=ignore)
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ignore, "config_groups": {
        "group_0": {"targets": ["Linear"], "input_activations": None, "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}}}}


ATTN_ONLY = fp8_section(fp8_group(["re:.*attn.*"]))
#: attention per channel, the MLP in 64x64 blocks, proj_out (named by no group) left in float
TWO_SCHEMES = fp8_section(fp8_group(["re:.*attn.*"]), fp8_group(["re:.*mlp.*"], "block", (64, 64)))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_demo_checkpoint(tmp_path / "src", CFG)


def load(ckpt: Path) -> DemoDiT:
    model = DemoDiT(CFG, torch.float32, resolve_quant_config(checkpoint=ckpt))
    load_checkpoint(model, ckpt)
    return model


def methods(model: DemoDiT) -> dict[str, str]:
    return {n: type(m.quant_method).__name__ for n, m in model.named_modules() if hasattr(m, "quant_method")}


def written_section(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())["quantization_config"]


def check_round_trip(src: Path, dst: Path, method: str, section: dict, quantized: set[str]) -> DemoDiT:
    """The modules in ``quantized`` are stored as ``quantize_weight`` of the config built from ``section`` writes them
    (computed here, module by module), every other tensor as the source holds it; the checkpoint loads, its quantized
    layers de-quantize to the stored tensors' weights, and the model's output is the one of the same tensors written
    here without ``fvq quantize``."""
    source, out = tensors_of(src), tensors_of(dst)
    config = get_quantization_config(method).from_config(section)
    expected = {}
    for name, tensor in source.items():
        module = name.removesuffix(".weight")
        if module in quantized and name.endswith(".weight"):
            expected |= {f"{module}.{k}": v for k, v in config.quantize_weight(tensor, prefix=module).items()}
        else:
            expected[name] = tensor
    assert sorted(out) == sorted(expected)
    for name, tensor in expected.items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor), name
    model = load(dst)
    # the same tensors written without the writer under test, with the config fvq quantize wrote
    by_hand = dst.parent / f"{dst.name}-by-hand"
    by_hand.mkdir()
    save_file(expected, str(by_hand / "model.safetensors"))
    (by_hand / "config.json").write_text((dst / "config.json").read_text())
    reference = load(by_hand)
    x = torch.randn(1, CFG.num_tokens, CFG.in_channels, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    for layer_name, layer in model.named_modules():
        if getattr(layer, "quant_method", None) is not None and type(layer.quant_method).__name__ != \
                "UnquantizedLinearMethod":
            ref_layer = reference.get_submodule(layer_name)
            assert torch.equal(layer.quant_method.dequantize_weight(layer),
                               ref_layer.quant_method.dequantize_weight(ref_layer))
    return model


# --- targets followed ----------------------------------------------------------------------------------------------
def test_regex_targets_quantize_only_the_modules_they_name_and_the_rest_is_ignored_by_full_name(src, tmp_path):
    dst = tmp_path / "out"
    report = quantize_checkpoint(src, dst, "fp8", options=ATTN_ONLY)
    attn = {m for m in LINEARS if ".attn." in m}
    assert report.tensors_quantized == len(attn) == 8
    section = written_section(dst)
    assert section["config_groups"]["group_0"]["targets"] == ["re:.*attn.*"]
    mlp = [f"blocks.{i}.mlp.{p}" for i in range(2) for p in ("gate_up_proj", "gate_proj", "up_proj", "down_proj")]
    assert set(section["ignore"]) == {"patch_embed", "proj_out", *mlp}
    model = check_round_trip(src, dst, "fp8", ATTN_ONLY, attn)
    found = methods(model)
    assert {n for n, m in found.items() if m == "Fp8LinearMethod"} == {
        f"blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv_proj", "o_proj")}
    assert found["blocks.1.mlp.gate_up_proj"] == found["proj_out"] == "UnquantizedLinearMethod"
    # the float modules hold the source's weights exactly
    source = tensors_of(src)
    assert torch.equal(model.proj_out.weight.data, source["proj_out.weight"].float())


def test_groups_of_different_schemes_give_each_module_its_groups_scheme(src, tmp_path):
    dst = tmp_path / "out"
    quantize_checkpoint(src, dst, "fp8", options=TWO_SCHEMES)
    out = tensors_of(dst)
    assert out["blocks.0.attn.k_proj.weight_scale"].shape == (64, 1)  # per channel
    assert out["blocks.0.mlp.down_proj.weight_scale"].shape == (2, 4)  # [128, 256] in 64x64 blocks
    assert out["proj_out.weight"].dtype == torch.bfloat16 and "proj_out.weight_scale" not in out
    section = written_section(dst)
    assert list(section["config_groups"]) == ["g0", "g1"] and "proj_out" in section["ignore"]
    model = check_round_trip(src, dst, "fp8", TWO_SCHEMES, set(LINEARS))
    block = model.blocks[1]
    assert block.attn.qkv_proj.quant_method.quant_config.weight_scale_strategy == "channel"
    assert block.mlp.gate_up_proj.quant_method.quant_config.weight_block_size == (64, 64)
    assert methods(model)["proj_out"] == "UnquantizedLinearMethod"


def test_a_w4a16_config_for_awq_follows_its_targets(src, tmp_path):
    section = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": [], "config_groups": {
        "group_0": {"targets": ["re:.*mlp.*"], "input_activations": None,
                    "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}}}}
    dst = tmp_path / "out"
    quantize_checkpoint(src, dst, "awq", options=section)
    mlp = {m for m in LINEARS if ".mlp." in m}
    model = check_round_trip(src, dst, "awq", section, mlp)
    found = methods(model)
    assert found["blocks.0.mlp.gate_up_proj"] == "CompressedTensorsW4A16Method"
    assert found["blocks.0.attn.qkv_proj"] == found["proj_out"] == "UnquantizedLinearMethod"
    assert "blocks.0.attn.qkv_proj" in written_section(dst)["ignore"]


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_the_written_section_says_its_tensors_are_compressed_and_reads_back(src, tmp_path, method):
    """compressed-tensors defaults a missing quantization_status to "initialized", and transformers then builds float
    fake-quantized layers (no weight_packed, fp8 weights read as floats): the section written says "compressed", its
    format beside it, and this package's reader still takes it (the checkpoint loads, to the tensors written)."""
    section = ATTN_ONLY if method == "fp8" else {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": [], "config_groups": {"group_0": {
            "targets": ["re:.*attn.*"], "input_activations": None,
            "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}}}}
    dst = tmp_path / "out"
    quantize_checkpoint(src, dst, method, options=section)
    written = written_section(dst)
    assert written["quantization_status"] == "compressed"
    assert written["format"] == ("float-quantized" if method == "fp8" else "pack-quantized")
    check_round_trip(src, dst, method, section, {m for m in LINEARS if ".attn." in m})
    reread = get_quantization_config(method).from_config(written)
    assert reread.to_dict() == written


def test_skip_and_include_apply_on_top_of_the_targets(src, tmp_path):
    """--skip leaves a targeted module; --include quantizes one the default rule leaves (patch_embed) when a group
    targets it ("Linear"); the config's own ignore entries (a name, an re: pattern) are followed as compressed-tensors
    matches them."""
    section = fp8_section(fp8_group(["Linear"]), ignore=["proj_out", "re:blocks\\.1\\.mlp\\."])
    dst = tmp_path / "out"
    quantize_checkpoint(src, dst, "fp8", options=section, skip=["blocks.0.attn"], include=["patch_embed"])
    quantized = {"patch_embed", *(m for m in LINEARS if not m.startswith(("blocks.0.attn.", "blocks.1.mlp.")))}
    written = written_section(dst)
    assert {"proj_out", "blocks.0.attn.qkv_proj", "blocks.1.mlp.down_proj"} <= set(written["ignore"])
    assert "patch_embed" not in written["ignore"]
    check_round_trip(src, dst, "fp8", section, quantized)


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_an_re_ignore_entry_is_written_as_given_beside_the_names_it_matched(src, tmp_path, method):
    """The written ignore lists each float module by its full name and keeps the config's re: pattern as given, for
    both methods (docs/guide/cli.md). (Was: awq wrote the matched names and dropped the pattern; fp8 kept it.)"""
    ignore = ["proj_out", "re:blocks\\.1\\.mlp\\."]
    section = every_linear(method, ignore)
    dst = tmp_path / "out"
    quantize_checkpoint(src, dst, method, options=section)
    written = written_section(dst)["ignore"]
    assert written.count("re:blocks\\.1\\.mlp\\.") == 1 and written[-1] == "re:blocks\\.1\\.mlp\\."
    assert {"proj_out", "patch_embed", "blocks.1.mlp.down_proj", "blocks.1.mlp.gate_up_proj"} <= set(written)
    check_round_trip(src, dst, method, section, {m for m in LINEARS if not m.startswith("blocks.1.mlp.")})


def test_a_class_target_of_another_kind_beside_linear_decides_nothing(src, tmp_path):
    """A group targeting only a class that names no linear layer (Embedding) quantizes nothing here, and every linear
    module takes the "Linear" group's scheme — in fvq quantize as in the fp8 reader, which ask one rule (GroupTargets).
    (Was: every module refused, "class targets ['Embedding'] cannot be matched from a checkpoint name", while the fp8
    reader gave them the "Linear" group.)"""
    section = fp8_section(fp8_group(["Linear"]), fp8_group(["Embedding"], "tensor"))
    dst = tmp_path / "out"
    quantize_checkpoint(src, dst, "fp8", options=section)
    assert tensors_of(dst)["blocks.0.attn.k_proj.weight_scale"].shape == (64, 1)  # g0's per-channel scales
    check_round_trip(src, dst, "fp8", section, {*LINEARS, "proj_out"})
    reader = get_quantization_config("fp8").from_config(section)
    assert {reader.scheme_group_for(None, m).name for m in [*LINEARS, "proj_out"]} == {"g0"}


def test_linear_decides_before_a_linear_class_target_that_sorts_after_it(src, tmp_path):
    """Groups targeting "Linear" and "RowParallelLinear": class targets are tried in string order, so "Linear" names
    every module first — for a built layer of either class (the load) and for a checkpoint name alike. (Was: after
    the shared matcher, fvq quantize and fp8's quantize_weight refused every module as "whether a group targets it
    is not known", and the fp8 hints lost the modules' group, while the load gave them the "Linear" group.)"""
    from fastvideo_quant.layers.linear import ReplicatedLinear, RowParallelLinear

    section = fp8_section(fp8_group(["RowParallelLinear"], "tensor"), fp8_group(["Linear"]))
    dst = tmp_path / "out"
    quantize_checkpoint(src, dst, "fp8", options=section)
    assert tensors_of(dst)["blocks.0.attn.k_proj.weight_scale"].shape == (64, 1)  # g1's per-channel scales
    reader = get_quantization_config("fp8").from_config(section)
    assert {reader.scheme_group_for(None, m).name for m in [*LINEARS, "proj_out"]} == {"g1"}
    assert reader.target_of_module("proj_out")[0] == "Linear"
    for cls in (RowParallelLinear, ReplicatedLinear):
        layer = cls(64, 64, bias=False, quant_config=reader, prefix="blocks.0.attn.o_proj")
        assert reader.scheme_group_for(layer, "blocks.0.attn.o_proj").name == "g1"
    check_round_trip(src, dst, "fp8", section, {*LINEARS, "proj_out"})


def test_a_module_a_group_names_that_the_default_rule_leaves_is_noted(src, tmp_path):
    report = quantize_checkpoint(src, tmp_path / "out", "fp8", options=fp8_section(fp8_group(["re:.*attn.*",
                                                                                            "patch_embed"])))
    assert "patch_embed" in written_section(tmp_path / "out")["ignore"]
    assert "module(s) a config group names but the default rule leaves unquantized (listed in ignore): patch_embed; " \
           "--include them" in "\n".join(report.notes)


def test_the_config_is_given_on_the_command_line_with_config(src, tmp_path, capsys):
    dst = tmp_path / "out"
    assert main(["quantize", str(src), "--method", "fp8", "--config", json.dumps(ATTN_ONLY), "--out", str(dst),
                 "--no-progress"]) == 0
    assert "8 of 36 tensors quantized" in capsys.readouterr().out
    assert "proj_out" in written_section(dst)["ignore"]
    assert main(["quantize", str(src), "--method", "fp8", "--config", json.dumps(ATTN_ONLY), "--option",
                 "format=naive-quantized", "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "--config and --option both give 'format'" in capsys.readouterr().err
    # --config given twice is a usage error naming both (was: the second replaced the first silently)
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", str(src), "--method", "fp8", "--config", '{"activation_scheme": "static"}', "--config",
              '{"weight_scale_strategy": "channel"}', "--out", str(tmp_path / "o4"), "--no-progress"])
    assert exit_.value.code == 2 and not (tmp_path / "o4").exists()
    assert """argument --config: given twice, as '{"activation_scheme": "static"}' and '{"weight_scale_strategy": """ \
           """"channel"}'""" in capsys.readouterr().err
    # the groups alone are not a compressed-tensors config: the section's quant_method says the format
    assert main(["quantize", str(src), "--method", "fp8", "--option", f"config_groups={json.dumps(ATTN_ONLY['config_groups'])}",
                 "--out", str(tmp_path / "o3"), "--no-progress"]) == 1
    assert "config_groups is a key of compressed-tensors configs, read in a section whose quant_method is " \
           "'compressed-tensors'; give the whole section" in capsys.readouterr().err


# --- refusals ------------------------------------------------------------------------------------------------------
def refused(src: Path, tmp_path: Path, match: str, method: str = "fp8", error=QuantizeError, **kwargs) -> None:
    dst = tmp_path / "refused"
    with pytest.raises(error, match=match):
        quantize_checkpoint(src, dst, method, **kwargs)
    assert not dst.exists()


def test_include_of_a_module_no_group_targets_is_refused_naming_it_and_the_targets(src, tmp_path):
    refused(src, tmp_path, r"--include 'proj_out' matches module 'proj_out', which no config group of the "
            r"compressed-tensors config targets \(config_groups.g0.targets \['re:.\*attn.\*'\]\)", error=ConfigError,
            options=ATTN_ONLY, include=["proj_out"])


def test_include_of_a_module_the_config_ignores_is_refused(src, tmp_path):
    refused(src, tmp_path, r"module 'proj_out' matches --include \['proj_out'\] and the compressed-tensors config's "
            r"ignore entry 'proj_out'", error=ConfigError,
            options=fp8_section(fp8_group(["Linear"]), ignore=["proj_out"]), include=["proj_out"])


def test_class_targets_other_than_linear_are_refused_with_the_fp8_wording(src, tmp_path):
    by_class = fp8_section(fp8_group(["re:.*attn.*"]), fp8_group(["RowParallelLinear"], "tensor"))
    refused(src, tmp_path, r"module 'blocks.0.mlp.down_proj': no config group names it by name or 're:' pattern, and "
            r"class targets \['RowParallelLinear'\] cannot be matched from a checkpoint name", error=ConfigError,
            options=by_class)


def test_targets_naming_no_module_are_refused(src, tmp_path):
    refused(src, tmp_path, r"config_groups.g1.targets entry 're:.\*mlpp.\*' names no linear module. A target names a "
            r"module by its full name, or by an 're:' pattern .* compressed-tensors would skip such a target silently",
            options=fp8_section(fp8_group(["re:.*attn.*"]), fp8_group(["re:.*mlpp.*"], "tensor")))
    refused(src, tmp_path, r"entry 're:.\*qkv_proj' names no linear module: targets name the checkpoint's modules "
            r"\('blocks.0.attn.k_proj', 'blocks.0.attn.q_proj', 'blocks.0.attn.v_proj' and 3 more\), not the fused layer",
            options=fp8_section(fp8_group(["re:.*qkv_proj"])))


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_ignore_entries_naming_no_module_are_kept_as_given_and_noted(src, tmp_path, method):
    """llm-compressor's recipes write ignore ["lm_head"]; a DiT (or an LLM whose head is tied to its embeddings) stores
    no lm_head.weight. compressed-tensors drops such an entry silently, and matches ignore entries to classes too
    (Embedding): each is a note, and stays in the ignore written, so that a model that has the module (a tied lm_head)
    keeps it in float. (Was: refused, "ignore entry 'lm_head' names no module".)"""
    ignore = ["lm_head", "re:.*lm_head", "Embedding", "proj_out"]
    section = every_linear(method, ignore)
    dst = tmp_path / "out"
    report = quantize_checkpoint(src, dst, method, options=section)
    written = written_section(dst)["ignore"]
    assert written == ["patch_embed", "proj_out", "lm_head", "re:.*lm_head", "Embedding"]
    note = "\n".join(report.notes)
    assert "ignore entries ['lm_head', 're:.*lm_head'] name no module of the checkpoint" in note
    assert "['Embedding'] are class names of modules that are not linear layers" in note
    assert "kept in the written ignore as given" in note
    check_round_trip(src, dst, method, section, set(LINEARS))


def test_an_ignore_class_that_may_name_linear_layers_is_refused(src, tmp_path):
    """compressed-tensors would leave every layer of the class in float; which those are, names do not say."""
    refused(src, tmp_path, r"ignore entries \['Linear', 'RowParallelLinear'\] are class names that name linear "
            r"layers: compressed-tensors leaves every module of such a class in float",
            options=fp8_section(fp8_group(["Linear"]), ignore=["Linear", "RowParallelLinear", "Embedding"]))


def test_fused_parts_targeted_apart_are_refused(src, tmp_path):
    refused(src, tmp_path, r"modules \['k_proj', 'q_proj', 'v_proj'\] under 'blocks.0.attn' are fused into "
            r"'qkv_proj' when loaded, but only \['q_proj'\] would be quantized \(k_proj: no config group targets it",
            error=ConfigError, options=fp8_section(fp8_group(["re:.*q_proj"])))
    # the advice is to target them all, or --skip the fused name: --include of a module no group targets is refused
    # (was: "skip or include all of them together")
    with pytest.raises(ConfigError) as refusal:
        quantize_checkpoint(src, tmp_path / "advised", "fp8", options=fp8_section(fp8_group(["re:.*q_proj"])))
    advice = str(refusal.value).rpartition("; ")[2]
    assert advice == ("target all of them from a config group (e.g. an 're:' pattern naming q_proj, k_proj, v_proj: "
                      "'re:.*\\.(q_proj|k_proj|v_proj)$'), or leave them all in float: --skip 'blocks.0.attn.qkv_proj'")
    pattern = advice.split("'")[3]
    report = quantize_checkpoint(src, tmp_path / "advised", "fp8", options=fp8_section(fp8_group([pattern])))
    assert report.tensors_quantized == 6  # q, k and v of both blocks
    refused(src, tmp_path, r"\(q_proj: ignore entry 'blocks.0.attn.q_proj' of the compressed-tensors config\); have the "
            r"config's ignore name all of them or none \(the fused name 'blocks.0.attn.qkv_proj' names all\), or leave "
            r"them all in float: --skip 'blocks.0.attn.qkv_proj'", error=ConfigError,
            options=fp8_section(fp8_group(["Linear"]), ignore=["blocks.0.attn.q_proj"]))
    refused(src, tmp_path, r"'blocks.0.attn.qkv_proj' fuses modules that config groups of different schemes target: "
            r"'blocks.0.attn.k_proj': config_groups.g0; 'blocks.0.attn.q_proj': config_groups.g1",
            error=ConfigError, options=fp8_section(fp8_group(["Linear"]), fp8_group(["re:.*q_proj"], "tensor")))


def test_a_config_another_method_reads_is_refused_naming_it(src, tmp_path):
    refused(src, tmp_path, r"the compressed-tensors config given \(format 'float-quantized'\) is read by method 'fp8', "
            r"not 'awq'; pass --method fp8", method="awq", error=ConfigError, options=ATTN_ONLY)


@pytest.mark.parametrize("method", ["int8", "fp8"])
def test_a_config_no_method_reads_names_no_method_to_pass(src, tmp_path, method):
    """A W8A8 int-quantized config: fp8 claims every compressed-tensors section no other plugin claims (to say why it
    cannot read it), so int8 was told "read by method 'fp8' ...; pass --method fp8", which then refused it. The
    refusals are quoted instead, and no method is named to pass."""
    int8 = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": False, "strategy": "channel"}
    section = {"quant_method": "compressed-tensors", "format": "int-quantized", "ignore": [], "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": int8,
                    "input_activations": {**int8, "dynamic": True, "strategy": "token"}}}}
    dst = tmp_path / "refused"
    with pytest.raises(ConfigError) as refusal:
        quantize_checkpoint(src, dst, method, options=section)
    message = str(refusal.value)
    assert "pass --method" not in message and not dst.exists()
    assert "format 'int-quantized' of the section: fp8 reads 'float-quantized'" in message
    if method == "int8":
        assert "no installed method reads the compressed-tensors config given (format 'int-quantized')" in message
        assert "'int8': int8: quant_method must be 'int8' or 'bitsandbytes', found 'compressed-tensors'" in message


def test_a_written_config_whose_targets_miss_quantized_modules_is_refused(src, tmp_path, monkeypatch):
    """The round trip asks the config read back how each quantized module loads: a plugin whose to_dict wrote targets
    missing some would give a checkpoint whose quantized tensors do not load."""
    from fvq_fp8 import Fp8Config

    written = Fp8Config.to_dict

    def narrowed(self):
        section = written(self)
        for group in section.get("config_groups", {}).values():
            group["targets"] = ["re:.*o_proj"]
        return section

    monkeypatch.setattr(Fp8Config, "to_dict", narrowed)
    refused(src, tmp_path, r"read back, quantization_config .* does not build quantized modules as quantized layers "
            r"\(is_layer_skipped is False for them; building 'blocks.0.attn.k_proj' raised: compressed-tensors config: "
            r"no config group targets linear layer .*\['blocks.0.attn.k_proj', ", options=ATTN_ONLY)


def test_a_config_the_writer_cannot_follow_is_not_told_to_skip_one_module(src, tmp_path):
    """actorder 'group' is read from checkpoints, not written: AWQ's quantize_weight refuses it (a ConfigError) for
    every module alike, so the refusal names the setting and gives no '--skip <module>' (was: "Pass --skip
    blocks.0.attn.k_proj to leave it unquantized", which fixes nothing). Nothing is written."""
    section = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": [], "config_groups": {
        "group_0": {"targets": ["Linear"], "input_activations": None,
                    "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64,
                                "actorder": "group"}}}}
    with pytest.raises(QuantizeError) as err:
        quantize_checkpoint(src, tmp_path / "out", "awq", options=section)
    assert "act_order (compressed-tensors actorder 'group') is read from checkpoints" in str(err.value)
    assert "--skip" not in str(err.value) and not (tmp_path / "out").exists()
