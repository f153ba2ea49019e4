"""``fvq quantize`` through the CLI entry point: options the config does not read, patterns matching nothing,
an unusable --device, and the output's permissions. Each refusal leaves nothing at the destination."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
from demo_checkpoints import write_demo_checkpoint
from safetensors import safe_open
from safetensors.torch import save_file

from fastvideo_quant import plugins
from fastvideo_quant.cli import main
from fastvideo_quant.demo.model import DemoConfig
from fastvideo_quant.errors import ConfigError
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantize import quantize_checkpoint

CFG = DemoConfig(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128, num_layers=1,
                 in_channels=16, num_tokens=8)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_demo_checkpoint(tmp_path / "bf16", CFG)


def quantize(src: Path, dst: Path, *argv: str) -> int:
    return main(["quantize", str(src), "--out", str(dst), "--no-progress", *argv])


def written_config(dst: Path) -> dict[str, Any]:
    return json.loads((dst / "config.json").read_text())["quantization_config"]


# --- defect: --option keys the config does not read were dropped silently ----------------------------------------

def test_option_typo_is_refused_naming_key_method_plugin_and_accepted_keys(src, tmp_path, capsys):
    dst = tmp_path / "o24"
    assert quantize(src, dst, "--method", "fp8", "--option", "weight_scale_stratgy=channel") == 1
    err = capsys.readouterr().err
    assert "weight_scale_stratgy" in err and "method 'fp8'" in err and "distribution 'fastvideo-quant'" in err
    assert "did you mean 'weight_scale_strategy'" in err
    assert "Keys it reads: activation_scheme, fmt, ignored_layers" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not dst.exists()


@pytest.mark.parametrize("method", ["fp8", "int8", "awq"])
def test_unknown_option_key_is_refused_for_every_method(src, tmp_path, capsys, method):
    assert quantize(src, tmp_path / "q", "--method", method, "--option", "bogus_key=1") == 1
    err = capsys.readouterr().err
    assert "option bogus_key=1" in err and f"method {method!r}" in err and "does not read 'bogus_key'" in err
    assert not (tmp_path / "q").exists()


def test_int8_load_in_8bit_false_is_not_accepted_silently(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "int8", "--option", "load_in_8bit=false") == 1
    err = capsys.readouterr().err
    assert "option(s) load_in_8bit=false" in err and "method 'int8'" in err and "8-bit" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q").exists()


def test_alias_shadowed_by_another_key_given_is_refused(src, tmp_path, capsys):
    # AWQ reads group_size and its AutoAWQ alias q_group_size: different values for the two are refused, naming both.
    assert quantize(src, tmp_path / "q", "--method", "awq", "--option", "group_size=128",
                    "--option", "q_group_size=64") == 1
    assert "group_size=128, q_group_size=64 are one setting spelled 2 ways" in capsys.readouterr().err


def test_quant_method_option_is_refused(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "int8", "--option", "quant_method=int8") == 1
    assert "option 'quant_method'" in capsys.readouterr().err


def test_options_the_config_reads_still_work(src, tmp_path):
    assert quantize(src, tmp_path / "ch", "--method", "fp8", "--option", "weight_scale_strategy=channel",
                    "--option", 'ignored_layers=["proj_out"]') == 0
    section = written_config(tmp_path / "ch")
    assert section["weight_scale_strategy"] == "channel" and "proj_out" in section["ignored_layers"]
    with safe_open(str(tmp_path / "ch" / "model.safetensors"), framework="pt") as h:
        assert h.get_slice("blocks.0.attn.o_proj.weight_scale").get_shape() == [CFG.hidden_size, 1]
    # AutoAWQ spells version "GEMM"; the config writes "gemm": the same value, not an override.
    assert quantize(src, tmp_path / "awq", "--method", "awq", "--option", "version=GEMM", "--option",
                    "group_size=32") == 0
    assert written_config(tmp_path / "awq")["group_size"] == 32


def _toy_configs():
    """Config classes for the value check and for a from_config that reads its whole dict."""
    import toy_method

    class FixedModeConfig(toy_method.ToyConfig):
        """Reads ``mode`` but always writes mode "a": a value it overrides."""

        @classmethod
        def get_name(cls) -> str:
            return "toy-fixed"

        @classmethod
        def from_config(cls, config):
            self = super().from_config(config)
            self.mode = config.get("mode", "a")
            return self

        def to_dict(self):
            return {**super().to_dict(), "quant_method": "toy-fixed", "mode": "a"}

    class CopyingConfig(toy_method.ToyConfig):
        """Copies its whole dict (which keys it uses cannot be traced); keeps only skip_modules."""

        @classmethod
        def get_name(cls) -> str:
            return "toy-copying"

        @classmethod
        def from_config(cls, config):
            return super().from_config(dict(config))

        def to_dict(self):
            return {**super().to_dict(), "quant_method": "toy-copying"}

    class Plugin:
        @hookimpl
        def register_quantization_methods(self, register) -> None:
            register(FixedModeConfig, toy_method.ToyLinearMethod, weight_loader_v2=True)
            register(CopyingConfig, toy_method.ToyLinearMethod, weight_loader_v2=True)

    return Plugin()


@pytest.fixture
def toy_plugins():
    plugins.register_plugin(_toy_configs(), name="toy-cli")
    yield
    plugins.unregister_plugin("toy-cli")


def test_value_the_config_overrides_is_refused(src, tmp_path, toy_plugins, capsys):
    assert quantize(src, tmp_path / "q", "--method", "toy-fixed", "--option", "mode=b") == 1
    err = capsys.readouterr().err
    assert "option mode=\"b\"" in err and "ignores this value" in err and 'mode="a"' in err
    assert "(in-process)" in err
    assert not (tmp_path / "q").exists()
    assert quantize(src, tmp_path / "q", "--method", "toy-fixed", "--option", "mode=A") == 0


def test_config_reading_its_whole_dict_keeps_only_keys_it_writes(src, tmp_path, toy_plugins, capsys):
    assert quantize(src, tmp_path / "q", "--method", "toy-copying", "--option", "bogus=1") == 1
    assert "does not read 'bogus'" in capsys.readouterr().err
    # (a misspelling of a key it writes: the keys it reads are those, not "no keys")
    assert quantize(src, tmp_path / "q", "--method", "toy-copying", "--option", 'skip_module=["proj_out"]') == 1
    err = capsys.readouterr().err
    assert "does not read 'skip_module'" in err and "(did you mean 'skip_modules'?)" in err, err
    assert "Keys it reads: skip_modules" in err and "It reads no keys" not in err, err
    assert quantize(src, tmp_path / "q", "--method", "toy-copying", "--option", 'skip_modules=["proj_out"]') == 0
    assert "proj_out" in written_config(tmp_path / "q")["skip_modules"]


def test_python_api_refuses_unread_options_too(src, tmp_path):
    with pytest.raises(ConfigError, match=r"option group_sise=64: .*did you mean 'group_size'"):
        quantize_checkpoint(src, tmp_path / "q", "awq", options={"group_sise": 64})


# --- defect: --skip/--include patterns matching no module were recorded and reported as skipped ------------------

def test_skip_pattern_matching_no_module_is_refused_with_suggestions(src, tmp_path, capsys):
    dst = tmp_path / "q"
    assert quantize(src, dst, "--method", "int8", "--skip", "nosuchmodule", "--skip", "proj_ot",
                    "--skip", "mlp") == 1
    err = capsys.readouterr().err
    assert "--skip pattern(s) 'nosuchmodule', 'proj_ot' (did you mean 'proj_out'" in err
    assert "'mlp'" not in err.split("match no module")[0]
    assert "blocks.0.attn.o_proj" in err  # a few module names it could have meant
    assert not dst.exists()


def test_include_and_option_skip_list_patterns_are_checked_too(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "int8", "--include", "patch_embd") == 1
    assert "--include pattern(s) 'patch_embd' (did you mean 'patch_embed'" in capsys.readouterr().err
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--option", 'ignored_layers=["proj_ou"]') == 1
    assert "--option ignored_layers pattern(s) 'proj_ou'" in capsys.readouterr().err and not (tmp_path / "q").exists()


@pytest.mark.parametrize("argv", [["--skip", "norm1"], ["--include", "norm1"], ["--skip", "blocks.0.norm1"],
                                  ["--option", 'ignored_layers=["norm1"]']])
def test_skip_or_include_pattern_matching_no_linear_weight_is_refused(src, tmp_path, capsys, argv):
    """--include of a norm was refused (it would change nothing) while --skip of it was accepted silently."""
    assert quantize(src, tmp_path / "q", "--method", "fp8", *argv) == 1
    err = capsys.readouterr().err
    flag, pattern = ("--option ignored_layers", "norm1") if argv[0] == "--option" else argv
    assert f"{flag} pattern {pattern!r} matches module(s) 'blocks.0.norm1' (weight [64]" in err, err
    assert "none with a 2-D floating-point weight" in err and "would change nothing" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q").exists()


def test_skip_pattern_matching_linear_and_other_modules_is_accepted(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--skip", "blocks.0", "--skip", "norm_out",
                    "--include", "patch_embed") == 1  # norm_out: a norm's vectors only
    assert "--skip pattern 'norm_out' matches module(s) 'norm_out'" in capsys.readouterr().err
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--skip", "blocks.0", "--include", "patch_embed") == 0
    assert "blocks.0.attn.o_proj" in written_config(tmp_path / "q")["ignored_layers"]


def test_skip_pattern_that_matches_is_recorded(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "int8", "--skip", "proj_out") == 0
    assert re.search(r"left unquantized: .*\bproj_out\b", capsys.readouterr().out)
    assert "proj_out" in written_config(tmp_path / "q")["llm_int8_skip_modules"]


# --- defect: --device cuda without CUDA was a bare AssertionError traceback -------------------------------------

@pytest.mark.parametrize("device, expected", [
    ("cuda", "--device 'cuda': no CUDA device is visible"),
    ("cuda:0", "--device 'cuda:0': no CUDA device is visible"),
    ("gpu", "--device 'gpu' is not a device name"),
])
def test_unusable_device_is_a_usage_error(src, tmp_path, capsys, monkeypatch, device, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quantize(src, tmp_path / "q", "--method", "int8", "--device", device) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "q").exists()


def test_python_api_refuses_unusable_device(src, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device 'cuda': no CUDA device is visible"):
        quantize_checkpoint(src, tmp_path / "q", "int8", device="cuda")


# --- minor: output directories were mode 0700 whatever the umask ------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_permissions_follow_the_umask(src, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert quantize(src, tmp_path / "q", "--method", "int8", "--max-shard-size", "100KB") == 0
    finally:
        os.umask(old)
    dst = tmp_path / "q"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o777 & ~umask
    for f in dst.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


# --- follow-up: --device meta was a raw traceback; an unavailable backend a ~60-line dispatcher dump -------------

def test_meta_device_is_refused_in_one_line(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--device", "meta") == 2
    err = capsys.readouterr().err
    assert "--device 'meta'" in err and "no data" in err and "use --device cpu or cuda" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("device", ["mps", "xla"])
def test_unavailable_backend_is_one_short_line(src, tmp_path, capsys, device):
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--device", device) == 2
    err = capsys.readouterr().err
    assert f"--device {device!r} cannot be used here" in err and "use --device cpu or cuda" in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400 and "Facebook" not in err
    assert not (tmp_path / "q").exists()


def test_python_api_refuses_meta_device(src, tmp_path):
    with pytest.raises(ConfigError, match="device 'meta'.*no data"):
        quantize_checkpoint(src, tmp_path / "q", "fp8", device="meta")


# --- follow-up: int8's load_in_8bit, and a repeated --option key -------------------------------------------------

def test_int8_accepts_load_in_8bit_true(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "int8", "--option", "load_in_8bit=true") == 0
    assert written_config(tmp_path / "q")["load_in_8bit"] is True


def test_int8_load_in_4bit_names_the_option_not_a_checkpoint(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "int8", "--option", "load_in_4bit=true") == 1
    err = capsys.readouterr().err
    assert "option(s) load_in_4bit=true" in err and "4-bit" in err and "this checkpoint" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q").exists()


def test_repeated_option_key_is_a_usage_error(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--option", "weight_scale_strategy=channel",
                    "--option", "weight_scale_strategy=tensor") == 2
    err = capsys.readouterr().err
    assert "--option weight_scale_strategy is given twice" in err and '"channel"' in err and '"tensor"' in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q").exists()
    # the same value twice is harmless
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--option", "weight_scale_strategy=channel",
                    "--option", "weight_scale_strategy=channel") == 0


@pytest.mark.parametrize("first, second", [("32.0", "32"), ("32", "32.0"), ("3.2e1", "32")])
def test_repeated_option_key_with_equal_numbers_is_accepted(src, tmp_path, capsys, first, second):
    """6.0 and 6 are the same value once parsed: refused as 'given twice' though the help says only different values
    are. The integer spelling is kept (AWQ's group_size refuses a float)."""
    assert quantize(src, tmp_path / "q", "--method", "awq", "--option", f"group_size={first}",
                    "--option", f"group_size={second}") == 0, capsys.readouterr().err
    assert written_config(tmp_path / "q")["group_size"] == 32


def test_repeated_option_key_with_values_equal_only_loosely_is_refused(capsys):
    from fastvideo_quant.cli.quantize import collect_options

    for a, b in ((True, 1), ("6", 6), ([128, 128], [128]), ({"a": 1}, {"a": 1.5}), (None, 0)):
        with pytest.raises(ConfigError, match="is given twice"):
            collect_options([("k", a), ("k", b)])
    assert collect_options([("k", [128, 128.0]), ("k", [128.0, 128])]) == {"k": [128, 128]}  # (ints wherever given)
    assert collect_options([("k", [128.0, 128.0]), ("k", [128, 128])]) == {"k": [128, 128]}
    assert collect_options([("k", {"a": 1, "b": [2]}), ("k", {"b": [2.0], "a": 1.0})]) == {"k": {"a": 1, "b": [2]}}


# --- follow-up: --skip naming a fused module (the name the model and modules_to_not_convert use) ------------------

def test_skip_fused_module_name_skips_its_parts(src, tmp_path, capsys):
    dst = tmp_path / "q"
    assert quantize(src, dst, "--method", "fp8", "--skip", "blocks.0.attn.qkv_proj", "--skip", "gate_up_proj") == 0
    skipped = written_config(dst)["ignored_layers"]
    # Full names (the fused one too), never the patterns: vLLM's fp8 reader matches ignored_layers exactly.
    assert {"blocks.0.attn.qkv_proj", "blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj",
            "blocks.0.mlp.gate_up_proj", "blocks.0.mlp.gate_proj", "blocks.0.mlp.up_proj"} <= set(skipped)
    assert "gate_up_proj" not in skipped
    # each fused name followed by its parts, in the mapping's order (cli.md), not where the files list them
    at = skipped.index("blocks.0.attn.qkv_proj")
    assert skipped[at:at + 4] == ["blocks.0.attn.qkv_proj", "blocks.0.attn.q_proj", "blocks.0.attn.k_proj",
                                  "blocks.0.attn.v_proj"], skipped
    at = skipped.index("blocks.0.mlp.gate_up_proj")
    assert skipped[at:at + 3] == ["blocks.0.mlp.gate_up_proj", "blocks.0.mlp.gate_proj", "blocks.0.mlp.up_proj"], skipped
    with safe_open(str(dst / "model.safetensors"), framework="pt") as h:
        for part in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert h.get_slice(f"blocks.0.{part}.weight").get_dtype() == "BF16", part
        assert h.get_slice("blocks.0.attn.o_proj.weight").get_dtype() == "F8_E4M3"


def test_suggestions_never_propose_one_part_of_a_fused_group(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--skip", "blocks.0.attn.qkv") == 1
    err = capsys.readouterr().err
    assert "did you mean 'blocks.0.attn.qkv_proj'" in err
    named = re.findall(r"'([\w.]+)'", err)
    assert named and not [n for n in named if n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")]
    assert quantize(src, tmp_path / "q", "--method", "fp8", "--skip", "blocks.0.attn.v_proj") == 1
    assert "--skip 'blocks.0.attn.qkv_proj'" in capsys.readouterr().err


# --- follow-up: keys that say how a checkpoint is stored were read and then ignored -------------------------------

@pytest.mark.parametrize(("method", "option"), [("fp8", "is_checkpoint_fp8_serialized=false"),
                                                ("int8", "fvq_serialized=false")])
def test_storage_key_saying_float_is_refused(src, tmp_path, capsys, method, option):
    """fp8 and int8 always write quantized tensors: a key saying the checkpoint holds floats would be ignored."""
    assert quantize(src, tmp_path / "q", "--method", method, "--option", option) == 1
    err = capsys.readouterr().err
    key = option.partition("=")[0]
    assert f"option {option}" in err and f"method {method!r}" in err and f"has {key}=true" in err, err
    assert "would be ignored" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "q").exists()
    # The value the checkpoint has is accepted (it is what is written anyway).
    assert quantize(src, tmp_path / "ok", "--method", method, "--option", f"{key}=true") == 0


def test_fp8_static_activations_need_only_the_scheme_and_calibration(src, tmp_path):
    """activation_scheme=static with --calibration writes input_scale (amax/448) and loads back as static fp8,
    without also asking the user to say the output is serialized fp8."""
    from fastvideo_quant.demo.model import DemoDiT
    from fastvideo_quant.demo.run import load_model, write_calibration
    from fastvideo_quant.loader import load_checkpoint

    model = DemoDiT(CFG, torch.float32)
    load_checkpoint(model, src)
    x = torch.randn(2, CFG.num_tokens, CFG.in_channels)
    write_calibration(model, x, tmp_path / "calib.safetensors")
    assert quantize(src, tmp_path / "st", "--method", "fp8", "--option", "activation_scheme=static",
                    "--calibration", str(tmp_path / "calib.safetensors")) == 0
    assert written_config(tmp_path / "st")["activation_scheme"] == "static"
    with safe_open(str(tmp_path / "st" / "model.safetensors"), framework="pt") as h, \
            safe_open(str(tmp_path / "calib.safetensors"), framework="pt") as c:
        got = h.get_tensor("blocks.0.attn.o_proj.input_scale")
        want = c.get_tensor("blocks.0.attn.o_proj").float().abs().amax() / 448.0
    assert torch.allclose(got.float(), want, rtol=1e-6), (got, want)
    loaded = load_model(CFG, tmp_path / "st", torch.float32, torch.device("cpu"))
    assert loaded.blocks[0].attn.o_proj.quant_config.activation_scheme == "static"
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.1, rel


def test_fp8_static_without_calibration_says_which_flag(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "st", "--method", "fp8", "--option", "activation_scheme=static") == 1
    err = capsys.readouterr().err
    assert "needs calibration activations" in err and "--calibration FILE.safetensors" in err, err
    assert not (tmp_path / "st").exists()


# --- defect: --calibration for a method that ignores activations changed nothing, silently ---------------------

def test_calibration_for_a_method_ignoring_activations_is_refused_before_reading(tmp_path):
    """int8's quantize_weight never reads activations: refused before the source or the file is opened."""
    from fastvideo_quant.quantize import QuantizeError

    calib = tmp_path / "not-read.safetensors"
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(tmp_path / "no-such-src", tmp_path / "q", "int8", calibration=calib)
    msg = str(info.value)
    assert f"--calibration {str(calib)!r} (calibration=) for method 'int8' of plugin" in msg, msg
    assert "uses_calibration() is False" in msg and "does not read activations" in msg, msg
    assert "would change nothing" in msg and "Drop --calibration" in msg, msg
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize(("method", "shown"), [("int8", "'quant_method': 'bitsandbytes'"),
                                               ("fp8", "'activation_scheme': 'dynamic'")])
def test_calibration_ignored_by_the_method_is_a_cli_error(src, tmp_path, capsys, method, shown):
    """fp8 reads activations only for static scales: the message shows the config, so the setting is visible."""
    calib = _calibration(src, tmp_path / "calib.safetensors")
    assert quantize(src, tmp_path / "q", "--method", method, "--calibration", str(calib)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fvq quantize: error: --calibration {str(calib)!r}"), err
    assert f"method {method!r}" in err and "does not read activations" in err and shown in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "q").exists()


# --- operator review: bad inputs that crashed with a traceback or wrote an unloadable checkpoint ------------------

def _sharded(src: Path, tmp_path: Path) -> Path:
    """``src`` re-written in several shards with an index."""
    d = tmp_path / "sharded"
    from fastvideo_quant.checkpoint_writer import ShardWriter
    from fastvideo_quant.loader import read_tensor

    d.mkdir()
    writer = ShardWriter(d, 20_000)
    with safe_open(str(src / "model.safetensors"), framework="pt") as h:
        for name in h.keys():
            writer.add(name, h.get_tensor(name))
    writer.close()
    (d / "config.json").write_text((src / "config.json").read_text())
    assert read_tensor(d, "blocks.0.attn.q_proj.weight").shape[1] == CFG.hidden_size
    return d


def test_truncated_shard_is_named_by_quantize_and_load(src, tmp_path, capsys):
    from fastvideo_quant.demo.model import DemoDiT
    from fastvideo_quant.errors import CheckpointError
    from fastvideo_quant.loader import load_checkpoint

    d = _sharded(src, tmp_path)
    shard = sorted(d.glob("model-*.safetensors"))[1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    assert quantize(d, tmp_path / "q", "--method", "fp8") == 1
    err = capsys.readouterr().err
    assert f"checkpoint file {str(shard)!r} cannot be read as safetensors" in err and "truncated" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(CheckpointError, match=re.escape(shard.name)):
        load_checkpoint(DemoDiT(CFG, torch.float32), d)


def test_malformed_index_is_named(src, tmp_path, capsys):
    d = _sharded(src, tmp_path)
    (d / "model.safetensors.index.json").write_text('{"weight_map": \n')
    assert quantize(d, tmp_path / "q", "--method", "fp8") == 1
    err = capsys.readouterr().err
    assert "model.safetensors.index.json is not valid JSON" in err and "Traceback" not in err, err


def test_calibration_file_that_is_not_safetensors_is_named(src, tmp_path, capsys):
    # (groups of 32: the 64-wide model's linears do not split into AWQ's default groups of 128, refused first)
    assert quantize(src, tmp_path / "q", "--method", "awq", "--option", "group_size=32",
                    "--calibration", str(src / "config.json")) == 1
    err = capsys.readouterr().err
    assert f"calibration file {str(src / 'config.json')!r} cannot be read as safetensors" in err, err
    assert "Traceback" not in err and not (tmp_path / "q").exists()


def _calibration(src: Path, path: Path, **override: torch.Tensor) -> Path:
    acts = {}
    with safe_open(str(src / "model.safetensors"), framework="pt") as h:
        for name in h.keys():
            t = h.get_slice(name)
            if name.endswith(".weight") and len(t.get_shape()) == 2 and "embed" not in name:
                acts[name[: -len(".weight")]] = torch.randn(2, 4, t.get_shape()[1])
    acts.update(override)
    save_file(acts, str(path))
    return path


def test_calibration_nan_or_wrong_width_is_refused_naming_the_module(src, tmp_path, capsys):
    bad = torch.randn(2, 4, CFG.hidden_size)
    bad[1, 2, 5] = float("nan")
    calib = _calibration(src, tmp_path / "nan.safetensors", **{"blocks.0.attn.o_proj": bad})
    for method, extra in (("fp8", ["--option", "activation_scheme=static"]), ("awq", ["--option", "group_size=32"])):
        assert quantize(src, tmp_path / "q", "--method", method, *extra, "--calibration", str(calib)) == 1
        err = capsys.readouterr().err
        assert "tensor 'blocks.0.attn.o_proj'" in err and "expected finite activations, found 1 of" in err, err
        assert "[token 6, channel 5]" in err and not (tmp_path / "q").exists(), err
    calib = _calibration(src, tmp_path / "wide.safetensors", **{"blocks.0.attn.o_proj": torch.randn(4, 7)})
    assert quantize(src, tmp_path / "q", "--method", "awq", "--option", "group_size=32", "--calibration", str(calib)) == 1
    err = capsys.readouterr().err
    assert "tensor 'blocks.0.attn.o_proj'" in err and f"expected floating-point [..., {CFG.hidden_size}]" in err, err


def test_calibration_key_naming_no_module_is_named_with_a_suggestion(src, tmp_path, capsys):
    """A typo in a key (o_projj) was ignored: for AWQ, whose file is optional, the module was quantized without it.
    In place of the module's own key it is refused with the close name; beside it (or a module without tensors, an
    activation that hooks on every module record: the checkpoint cannot tell them apart) it is noted, not refused."""
    calib = _calibration(src, tmp_path / "typo.safetensors", **{"blocks.0.attn.o_projj": torch.randn(3, CFG.hidden_size)})
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(calib))
    del tensors["blocks.0.attn.o_proj"]
    save_file(tensors, str(tmp_path / "typo_only.safetensors"))
    assert quantize(src, tmp_path / "q", "--method", "awq", "--option", "group_size=32", "--calibration",
                    str(tmp_path / "typo_only.safetensors")) == 1
    err = capsys.readouterr().err
    assert "has no activations for 1 quantized module(s), e.g. ['blocks.0.attn.o_proj']" in err, err
    assert "Its keys that name no module of the checkpoint: 'blocks.0.attn.o_projj' (did you mean " \
           "'blocks.0.attn.o_proj'?) — misspelled?" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q").exists()
    assert quantize(src, tmp_path / "q", "--method", "awq", "--option", "group_size=32", "--calibration", str(calib)) == 0
    out = capsys.readouterr()
    assert f"note: calibration file {str(calib)!r}: 1 key(s) name no module of the checkpoint and were not read: " \
           "'blocks.0.attn.o_projj' (did you mean 'blocks.0.attn.o_proj'?)" in out.out + out.err, out


def test_calibration_keys_naming_unquantized_fused_or_parent_modules_are_accepted(src, tmp_path, capsys):
    def x():
        return torch.randn(3, CFG.hidden_size)

    calib = _calibration(src, tmp_path / "extra.safetensors", **{
        "norm_out": x(), "patch_embed": torch.randn(3, CFG.in_channels),  # not quantized (a norm, the default rule)
        "blocks.0.attn.qkv_proj": x(), "blocks.0.mlp.gate_up_proj": x(),  # fused layers (their parts' keys there too)
        "blocks.0.attn": x(), "blocks.0": x(),  # modules above linear layers, as hooks on every module record
    })
    assert quantize(src, tmp_path / "q", "--method", "awq", "--option", "group_size=32", "--skip", "proj_out",
                    "--calibration", str(calib)) == 0, capsys.readouterr().err


def test_destination_holding_the_calibration_file_is_refused_with_force(src, tmp_path, capsys):
    """--force replaced DST, deleting the calibration file inside it after reading it, with no word."""
    dst = tmp_path / "runs" / "oc"
    dst.mkdir(parents=True)
    calib = _calibration(src, dst / "calib.safetensors")
    before = calib.read_bytes()
    for out in (dst, dst.parent):  # the folder holding it, and one above
        assert main(["quantize", str(src), "--out", str(out), "--no-progress", "--method", "awq", "--option",
                     "group_size=32", "--calibration", str(calib), "--force"]) == 1
        err = capsys.readouterr().err
        assert f"destination {str(out)!r} contains the calibration file {str(calib)!r}" in err, err
        assert "replacing it would delete that input" in err and len(err.strip().splitlines()) == 1, err
        assert calib.read_bytes() == before and sorted(p.name for p in dst.iterdir()) == ["calib.safetensors"]


def test_destination_holding_a_file_the_source_links_to_is_refused(src, tmp_path, capsys):
    """A source whose files are links (a Hugging Face cache snapshot) into the destination: replacing it would delete
    what the source's links point to."""
    dst = tmp_path / "blobs"
    dst.mkdir()
    (dst / "tokenizer.json").write_text("{}")
    (src / "tokenizer.json").symlink_to(dst / "tokenizer.json")
    assert quantize(src, dst, "--method", "int8", "--force") == 1
    err = capsys.readouterr().err
    assert f"destination {str(dst)!r} contains {str(dst / 'tokenizer.json')!r}, which the source's " in err, err
    assert (dst / "tokenizer.json").read_text() == "{}"
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")  # a link to a file outside DST is fine
    (tmp_path / "elsewhere.json").write_text("{}")
    assert quantize(src, dst, "--method", "int8", "--force") == 0
    assert (dst / "tokenizer.json").read_text() == "{}"


@pytest.mark.parametrize("method, extra, without", [
    ("fp8", ["--option", "activation_scheme=static"], "--option activation_scheme=dynamic"),
    ("awq", ["--option", "group_size=32"], "drop --calibration"),
])
def test_all_zero_calibration_is_refused_naming_the_module(src, tmp_path, capsys, method, extra, without):
    """All-zero activations were a note: fp8 static wrote input_scale 2.2e-15 (amax clamped at 1e-12, / 448) and the
    loaded layer's output was ~0 (relative error 1.0); AWQ kept round-to-nearest unannounced."""
    calib = _calibration(src, tmp_path / "zero.safetensors",
                         **{"blocks.0.attn.o_proj": torch.zeros(3, CFG.hidden_size)})
    assert quantize(src, tmp_path / "q", "--method", method, *extra, "--calibration", str(calib)) == 1
    err = capsys.readouterr().err
    assert f"calibration file {str(calib)!r}: tensor 'blocks.0.attn.o_proj' (torch.float32, shape [3, 64]): " \
           "expected the module's input activations, found all 192 values zero" in err, err
    assert "calibration data that reaches the module" in err and "--skip the module" in err and without in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "q").exists()


def test_source_holding_quantized_tensors_without_a_config_is_refused(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "int8", "--method", "int8") == 0
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    del config["quantization_config"]
    (tmp_path / "int8" / "config.json").write_text(json.dumps(config))
    assert quantize(tmp_path / "int8", tmp_path / "again", "--method", "awq") == 1
    err = capsys.readouterr().err
    assert "holds quantized tensors" in err and ".SCB'" in err and "torch.int8" in err, err
    assert "declares no quantization method" in err and not (tmp_path / "again").exists(), err


def test_unquantized_method_is_refused(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "unquantized") == 1
    err = capsys.readouterr().err
    assert "method 'unquantized' builds unquantized layers" in err and "nothing to quantize" in err, err
    assert not (tmp_path / "q").exists()


def test_method_error_names_the_tensor_and_the_skip(tmp_path, capsys):
    d = tmp_path / "odd"
    d.mkdir()
    weight = torch.randn(128, 128, dtype=torch.bfloat16)
    # Refused by AWQ's quantize_weight: its fp16 scale would overflow (a shape it cannot take is refused before, in
    # plan; a NaN/inf weight before the method runs, for every method: tests/test_quantize_refusals.py).
    weight[3, 5] = 1e7
    save_file({"blocks.0.proj.weight": weight}, str(d / "model.safetensors"))
    (d / "config.json").write_text("{}")
    assert quantize(d, tmp_path / "q", "--method", "awq") == 1
    err = capsys.readouterr().err
    assert "could not quantize tensor 'blocks.0.proj.weight' (shape [128, 128], torch.bfloat16)" in err, err
    assert "Pass --skip blocks.0.proj" in err and "Traceback" not in err, err


def test_module_stored_unquantized_but_not_listed_gets_the_skip_list_hint(src, tmp_path):
    """An AutoAWQ-style checkpoint: modules left in float and not listed in the config. The load error says to add
    them to modules_to_not_convert (it listed only a missing qweight and an unexpected weight)."""
    from fastvideo_quant.demo.run import load_model
    from fastvideo_quant.errors import CheckpointError

    assert quantize(src, tmp_path / "awq", "--method", "awq", "--option", "group_size=32", "--skip", "proj_out",
                    "--skip", "blocks.0.attn.qkv_proj") == 0
    config = json.loads((tmp_path / "awq" / "config.json").read_text())
    config["quantization_config"]["modules_to_not_convert"] = [
        m for m in config["quantization_config"]["modules_to_not_convert"] if "proj_out" not in m and "blocks.0.attn" not in m]
    (tmp_path / "awq" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        load_model(CFG, tmp_path / "awq", torch.float32, torch.device("cpu"))
    msg = str(info.value)
    assert ("module 'proj_out' is stored unquantized ('proj_out.weight'), but the model built it as a quantized 'awq' "
            "layer: add 'proj_out' to the quantization config's skip list (") in msg, msg
    assert ("module 'blocks.0.attn.qkv_proj' is stored unquantized ('blocks.0.attn.k_proj.weight', "
            "'blocks.0.attn.q_proj.weight', 'blocks.0.attn.v_proj.weight')") in msg, msg


def test_option_for_a_config_reading_no_keys_says_so(src, tmp_path, capsys):
    assert quantize(src, tmp_path / "q", "--method", "unquantized", "--option", "foo=1") == 1
    err = capsys.readouterr().err
    assert "does not read 'foo'" in err and "It reads no keys: it takes no options" in err, err
    assert "Keys it reads: \n" not in err + "\n" and not (tmp_path / "q").exists()


# --- --fuse: a model's own fused modules (diffusers' to_q/to_k/to_v -> to_qkv) ----------------------------------

@pytest.fixture
def diffusers_src(tmp_path: Path) -> Path:
    d = tmp_path / "dit"
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    tensors = {f"blocks.0.attn.{n}.weight": torch.randn(64, 64, generator=g).bfloat16() for n in ("to_q", "to_k", "to_v")}
    tensors.update({"blocks.0.attn.to_out.0.weight": torch.randn(64, 64, generator=g).bfloat16(),
                    "blocks.0.norm1.weight": torch.ones(64).bfloat16()})
    save_file(tensors, str(d / "diffusion_pytorch_model.safetensors"))
    (d / "config.json").write_text("{}")
    return d


FUSE = ["--fuse", "to_qkv=to_q,to_k,to_v"]


def test_fuse_refuses_skipping_only_some_parts_and_lets_a_pattern_name_the_fused_module(diffusers_src, tmp_path, capsys):
    """Without a way to declare the model's fusion, --skip to_q was written (the loader's to_qkv then held a float
    part beside quantized ones)."""
    assert quantize(diffusers_src, tmp_path / "q", "--method", "fp8", *FUSE, "--skip", "blocks.0.attn.to_q") == 1
    err = capsys.readouterr().err
    assert "modules ['to_k', 'to_q', 'to_v'] under 'blocks.0.attn' are fused into 'to_qkv' when loaded" in err, err
    assert "--skip 'blocks.0.attn.to_qkv'" in err and not (tmp_path / "q").exists()
    assert quantize(diffusers_src, tmp_path / "q", "--method", "fp8", *FUSE, "--skip", "blocks.0.attn.to_qkv") == 0
    assert written_config(tmp_path / "q")["ignored_layers"] == [
        "blocks.0.attn.to_qkv", "blocks.0.attn.to_q", "blocks.0.attn.to_k", "blocks.0.attn.to_v"]
    assert quantize(diffusers_src, tmp_path / "q2", "--method", "fp8", "--skip", "blocks.0.attn.to_q") == 0  # no --fuse


def test_fuse_lets_calibration_keyed_by_the_fused_name_serve_its_parts(diffusers_src, tmp_path, capsys):
    calib = tmp_path / "calib.safetensors"
    save_file({"blocks.0.attn.to_qkv": torch.randn(8, 64), "blocks.0.attn.to_out.0": torch.randn(8, 64)}, str(calib))
    static = ["--method", "fp8", "--option", "activation_scheme=static", "--calibration", str(calib)]
    assert quantize(diffusers_src, tmp_path / "q", *static) == 1  # to_qkv names no module without --fuse
    assert "'blocks.0.attn.to_qkv'" in capsys.readouterr().err
    assert quantize(diffusers_src, tmp_path / "q", *static, *FUSE) == 0, capsys.readouterr().err
    with safe_open(str(tmp_path / "q" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        scales = {n: f.get_tensor(f"blocks.0.attn.{n}.input_scale") for n in ("to_q", "to_k", "to_v")}
    assert scales["to_q"] == scales["to_k"] == scales["to_v"] > 0


@pytest.mark.parametrize("argv, expected", [
    (["--fuse", "to_qkv=to_q"], "expected FUSED=PART,PART[,PART]"),
    (["--fuse", "to_qkv=to_q,to_q"], "two or more distinct parts"),
    (["--fuse", "attn.to_qkv=to_q,to_k"], "no dots"),
    (["--fuse", "qkv=q_proj,to_k"], "module 'q_proj' is a part of both 'qkv_proj' and 'qkv'"),
    (["--fuse", "to_qkv=to_q,to_k", "--fuse", "to_qkv=to_q,to_k,to_v"], "--fuse to_qkv is given twice"),
    (["--fuse", "q_proj=to_q,to_k"], "'q_proj' is both a fused module (q_proj=to_q,to_k) and a part of 'qkv_proj'"),
    (["--fuse", "x=qkv_proj,to_k"], "'qkv_proj' is both a fused module (qkv_proj=q_proj,k_proj,v_proj) and a part of "
                                    "'x'"),
])
def test_malformed_fuse_is_a_usage_error(diffusers_src, tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) if expected.startswith("expected") else contextlib.nullcontext():
        assert quantize(diffusers_src, tmp_path / "q", "--method", "fp8", *argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and not (tmp_path / "q").exists(), err


def test_a_fuse_group_of_the_built_in_parts_renames_it() -> None:
    """A model whose loader names q/k/v_proj's group qkv: refused ('q_proj' is a part of both), so not expressible."""
    from fastvideo_quant.quantize.plan import merged_packed_mapping

    mapping = merged_packed_mapping({"qkv": ["q_proj", "k_proj", "v_proj"]})
    assert mapping["qkv"] == ["q_proj", "k_proj", "v_proj"] and "qkv_proj" not in mapping
    assert mapping["gate_up_proj"] == ["gate_proj", "up_proj"]


def test_python_api_takes_the_fused_modules(diffusers_src, tmp_path):
    with pytest.raises(ConfigError, match="fused into 'to_qkv'"):
        quantize_checkpoint(diffusers_src, tmp_path / "q", "fp8", skip=["blocks.0.attn.to_k"],
                            packed_modules_mapping={"to_qkv": ["to_q", "to_k", "to_v"]})


@pytest.mark.parametrize("dtype", [torch.uint16, torch.float8_e8m0fnu], ids=str)
def test_a_source_weight_of_a_dtype_the_table_lacked_is_refused(src, tmp_path, capsys, dtype):
    """A 2-D weight stored as uint16 (or float8_e8m0) was copied unchanged: its dtype was missing from the loader's
    table, so the plan saw no dtype and the quantized-source check passed it."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    file = next(copy.glob("*.safetensors"))
    tensors = load_file(str(file))
    name = next(n for n, t in tensors.items() if n.endswith(".weight") and t.dim() == 2)
    tensors[name] = tensors[name].to(dtype)
    save_file(tensors, str(file))
    assert quantize(copy, tmp_path / "q", "--method", "fp8") == 1
    err = capsys.readouterr().err
    assert "holds quantized tensors" in err and f"{name!r} ({dtype})" in err, err


@pytest.mark.parametrize("shape", [(0, 64), (64, 0)])
@pytest.mark.parametrize("method", ["int8", "awq"])
def test_a_zero_size_weight_to_quantize_is_refused_naming_it(src, tmp_path, capsys, shape, method):
    """A [0, 128] or [128, 0] weight failed inside torch (fp8, AWQ) or was quantized and written without comment
    (int8 [0, n], AWQ [n, 0]): tensors no layer can be built for."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    file = next(copy.glob("*.safetensors"))
    tensors = load_file(str(file))
    tensors["blocks.0.extra.weight"] = torch.zeros(shape)
    save_file(tensors, str(file))
    assert quantize(copy, tmp_path / "q", "--method", method) == 1
    err = capsys.readouterr().err
    assert f"checkpoint tensor 'blocks.0.extra.weight' ({file.name}) has shape {list(shape)}: a weight with no " in err
    assert not (tmp_path / "q").exists()
