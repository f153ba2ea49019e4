"""``fvq quantize`` refusals made in the core flow, for every method (a third party's too), leaving nothing at the
destination: non-finite source weights, load-time options (``load_time_keys``), a method that needs calibration run
without ``--calibration``, and a checkpoint with nothing to quantize."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import toy_method
from safetensors import safe_open
from safetensors.torch import save_file

from fastvideo_quant import plugins
from fastvideo_quant.cli import main
from fastvideo_quant.errors import CheckpointError, ConfigError, PluginError
from fastvideo_quant.plugins import hookimpl
from fastvideo_quant.quantization import QUANTIZATION_METHODS, get_quantization_config, resolve_quant_config
from fastvideo_quant.quantization.config_keys import keys_asked
from fastvideo_quant.quantize import QuantizeError, quantize_checkpoint


class LoadTimeToyConfig(toy_method.ToyConfig):
    """A third party's config with a load-time key (``fast_path``), read by ``from_config`` and written by
    ``to_dict``."""

    load_time_keys = ("fast_path",)

    @classmethod
    def get_name(cls) -> str:
        return "toy-loadtime"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LoadTimeToyConfig:
        self = super().from_config(config)
        self.fast_path = bool(config.get("fast_path", False))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "fast_path": self.fast_path}


class NeedsCalibrationToyConfig(toy_method.ToyConfig):
    """A third party's method that cannot quantize without activations."""

    @classmethod
    def get_name(cls) -> str:
        return "toy-needs-calib"

    def uses_calibration(self) -> bool:
        return True

    def requires_calibration(self) -> bool:
        return True

    def quantize_weight(self, weight, *, prefix="", activations=None):
        if activations is None:
            raise ConfigError(f"toy-needs-calib {prefix!r}: input scales need calibration activations")
        return super().quantize_weight(weight, prefix=prefix, activations=activations)


class AlwaysFailsToyConfig(NeedsCalibrationToyConfig):
    """Declares it reads activations (not that it needs them) and refuses every weight: not a calibration matter."""

    @classmethod
    def get_name(cls) -> str:
        return "toy-always-fails"

    def requires_calibration(self) -> bool:
        return False

    def quantize_weight(self, weight, *, prefix="", activations=None):
        raise ConfigError(f"toy-always-fails {prefix!r}: refuses every weight")


class OldSignatureToyConfig(toy_method.ToyConfig):
    """A port with ``quantize_weight(self, weight)`` (docs/plugins.md's old example): fvq quantize passes prefix=."""

    @classmethod
    def get_name(cls) -> str:
        return "toy-old-signature"

    def quantize_weight(self, weight):
        return super().quantize_weight(weight)


class IgnoresSkipToyConfig(toy_method.ToyConfig):
    """Stores its skip list (to_dict/from_config round-trip it), but get_quant_method never asks is_layer_skipped
    (vLLM style: ``if isinstance(layer, LinearBase): return Method(self)``)."""

    @classmethod
    def get_name(cls) -> str:
        return "toy-ignores-skip"

    def get_quant_method(self, layer, prefix):
        from fastvideo_quant.layers.linear import LinearBase

        return toy_method.ToyLinearMethod() if isinstance(layer, LinearBase) else None


class NoSuperInitToyConfig(toy_method.ToyConfig):
    """An ``__init__`` of its own without ``super().__init__()``."""

    def __init__(self) -> None:
        self.bits = 8

    @classmethod
    def get_name(cls) -> str:
        return "toy-no-super"


class RefusalPlugins:
    @hookimpl
    def register_quantization_methods(self, register) -> None:
        register(toy_method.ToyConfig, toy_method.ToyLinearMethod, weight_loader_v2=True)
        for cls in (LoadTimeToyConfig, NeedsCalibrationToyConfig, AlwaysFailsToyConfig, OldSignatureToyConfig,
                    IgnoresSkipToyConfig, NoSuperInitToyConfig):
            register(cls, toy_method.ToyLinearMethod, weight_loader_v2=True)


@pytest.fixture(autouse=True)
def toy_plugins():
    plugins.register_plugin(RefusalPlugins(), name="refusal-toys")
    toy_method.ToyConfig.calls.clear()
    yield
    plugins.unregister_plugin("refusal-toys")


def checkpoint(d: Path, tensors: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    d.mkdir()
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config or {}))
    return d


def weights(**shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {f"{m}.weight": (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for m, s in shapes.items()}


def only(path: Path) -> list[str]:
    """The names in ``path``'s parent: no temporary or partial output left beside the source."""
    return sorted(p.name for p in path.parent.iterdir())


# --- 1. non-finite source weights: refused for every method before it runs ----------------------------------------

@pytest.fixture
def nan_src(tmp_path: Path) -> Path:
    """A healthy first tensor, then ``proj.weight`` [64, 256] with one NaN and one inf (the review's ``nanw``)."""
    tensors = weights(a_proj=(64, 256), proj=(64, 256))
    tensors["proj.weight"][3, 5] = float("nan")
    tensors["proj.weight"][10, 7] = float("inf")
    return checkpoint(tmp_path / "src", tensors)


@pytest.mark.parametrize("method", ["fp8", "int8", "awq", "toy-int8"])
def test_non_finite_weight_is_refused_for_every_method_naming_tensor_count_and_first(nan_src, tmp_path, method):
    dst = tmp_path / "q"
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(nan_src, dst, method)
    msg = str(info.value)
    assert msg.startswith("tensor 'proj.weight' in model.safetensors (shape [64, 256], torch.bfloat16): expected "
                          "finite weights to quantize, but 2 weight value(s) of 16384 are not finite, the first at "
                          "[3, 5] = nan."), msg
    assert f"Method {method!r} would compute its scales from them" in msg and "re-export the tensor" in msg, msg
    assert "Nothing was written to the destination" in msg, msg
    assert only(dst) == ["src"]  # the first tensor was written into a temporary directory, removed


@pytest.mark.parametrize("dtype, value, found", [
    (torch.float8_e4m3fn, float("nan"), "1 weight value(s) of 6 are not finite, the first at [1, 0] = nan"),
    (torch.bfloat16, float("inf"), "1 weight value(s) of 6 are not finite, the first at [1, 0] = inf"),
    (torch.int8, 7, None),  # (integers and bools are always finite)
    (torch.bool, True, None),
])
def test_describe_non_finite_takes_every_dtype(dtype, value, found):
    from fastvideo_quant.quantize.finite import describe_non_finite

    t = torch.zeros(2, 3).to(dtype)
    t[1, 0] = value
    assert describe_non_finite(t) == found


def test_non_finite_weight_never_reaches_a_third_party_quantize_weight(nan_src, tmp_path):
    with pytest.raises(QuantizeError, match="are not finite"):
        quantize_checkpoint(nan_src, tmp_path / "q", "toy-int8")
    assert [prefix for prefix, _ in toy_method.ToyConfig.calls] == ["a_proj"]  # proj was refused before it ran


def test_non_finite_weight_keeps_the_previous_checkpoint_with_force(nan_src, tmp_path):
    dst = tmp_path / "q"
    quantize_checkpoint(nan_src, dst, "fp8", skip=["proj"])
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    with pytest.raises(QuantizeError, match="'proj.weight'"):
        quantize_checkpoint(nan_src, dst, "fp8", force=True)
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert only(dst) == ["q", "src"]


def test_non_finite_weight_is_one_cli_error_line(nan_src, tmp_path, capsys):
    dst = tmp_path / "q"
    assert main(["quantize", str(nan_src), "--method", "int8", "--out", str(dst), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fvq quantize: error: tensor 'proj.weight'") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not dst.exists()


# --- 2. load-time settings (load_time_keys) are not options of the checkpoint written -------------------------------

@pytest.fixture
def src(tmp_path: Path) -> Path:
    return checkpoint(tmp_path / "src", weights(**{"blocks.0.proj": (64, 256), "blocks.0.out": (256, 64)}))


@pytest.mark.parametrize(("options", "shown", "override"), [
    ({"fp8_compute": True}, "option fp8_compute=true", "'fp8_compute': True"),
    ({"fp8_compute": True, "fp8_compute_min_m": 512}, "option fp8_compute=true fp8_compute_min_m=512",
     "'fp8_compute': True, 'fp8_compute_min_m': 512"),
])
def test_awq_fp8_compute_is_refused_as_a_load_time_setting(src, tmp_path, options, shown, override):
    dst = tmp_path / "q"
    with pytest.raises(ConfigError) as info:
        quantize_checkpoint(src, dst, "awq", options=options)
    msg = str(info.value)
    assert msg.startswith(f"{shown} for method 'awq' of plugin 'awq'"), msg
    assert "load-time setting" in msg and "of AWQConfig (listed in its load_time_keys)" in msg, msg
    assert "changes no tensor quantize_weight writes" in msg and "forcing it on everyone who loads" in msg, msg
    assert f"set it when loading: resolve_quant_config(checkpoint=DST, load_options={{{override}}})" in msg, msg
    assert only(dst) == ["src"]


def test_int8s_kernel_backend_is_a_load_time_setting(src, tmp_path):
    """fvq_backend picks the kernels that run bitsandbytes' tensors: refused as a quantize option (was written into
    the checkpoint, forcing a backend on everyone who loads it), given when loading."""
    dst = tmp_path / "q"
    with pytest.raises(ConfigError) as info:
        quantize_checkpoint(src, dst, "int8", options={"fvq_backend": "bitsandbytes"})
    msg = str(info.value)
    assert msg.startswith("option fvq_backend=\"bitsandbytes\" for method 'int8' of plugin 'int8'"), msg
    assert "of Int8Config (listed in its load_time_keys)" in msg, msg
    assert "set it when loading: resolve_quant_config(checkpoint=DST, load_options={'fvq_backend': 'bitsandbytes'})" \
        in msg, msg
    quantize_checkpoint(src, dst, "int8")
    assert "fvq_backend" not in json.loads((dst / "config.json").read_text())["quantization_config"]
    cfg = resolve_quant_config(checkpoint=dst, load_options={"fvq_backend": "bitsandbytes"})
    assert cfg.backend == "bitsandbytes" and cfg.threshold == 0.0


def test_load_time_setting_given_when_loading_as_the_message_says(src, tmp_path):
    quantize_checkpoint(src, tmp_path / "q", "awq", options={"group_size": 64})
    written = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert "fp8_compute" not in written
    cfg = resolve_quant_config(checkpoint=tmp_path / "q", load_options={"fp8_compute": True, "fp8_compute_min_m": 512})
    assert cfg.fp8_compute and cfg.min_m_for_fp8() == 512 and cfg.group_size == 64


@pytest.mark.parametrize("load_options, words", [
    ({"group_size": 128}, r"load_options \['group_size'\] are not load-time settings of method 'awq' of plugin 'awq' "
                          r"\(distribution 'fastvideo-quant'\) \(AWQConfig\.load_time_keys: \['fp8_compute', "
                          r"'fp8_compute_min_m'\]\); the other keys are the checkpoint's"),
    ({"fp8_compute_min_m": 64}, "fp8_compute_min_m is set but fp8_compute is not"),  # (the config's own checks run)
    (["fp8_compute"], r"load_options must be a dict of config keys, found list \['fp8_compute'\]"),
])
def test_load_options_take_only_the_configs_load_time_keys(src, tmp_path, load_options, words):
    quantize_checkpoint(src, tmp_path / "q", "awq", options={"group_size": 64})
    with pytest.raises(ConfigError, match=words):
        resolve_quant_config(checkpoint=tmp_path / "q", load_options=load_options)


def test_load_options_replace_the_load_time_keys_a_checkpoint_carries(src, tmp_path):
    """A checkpoint written before quantize refused them, with fp8_compute and its min_m: load options replace both
    ({"fp8_compute": False} turns it off; it was refused, the section's min_m left without fp8_compute)."""
    quantize_checkpoint(src, tmp_path / "q", "awq", options={"group_size": 64})
    cfg_path = tmp_path / "q" / "config.json"
    data = json.loads(cfg_path.read_text())
    data["quantization_config"].update(fp8_compute=True, fp8_compute_min_m=512)
    cfg_path.write_text(json.dumps(data))
    assert resolve_quant_config(checkpoint=tmp_path / "q").min_m_for_fp8() == 512
    off = resolve_quant_config(checkpoint=tmp_path / "q", load_options={"fp8_compute": False})
    assert not off.fp8_compute and off.min_m_for_fp8() == 0 and off.group_size == 64
    on = resolve_quant_config(checkpoint=tmp_path / "q", load_options={"fp8_compute": True})
    assert on.min_m_for_fp8() == 129  # (the default cut: the section's 512 was replaced too)


def test_load_options_without_a_method_are_refused():
    with pytest.raises(ConfigError, match=r"load_options \{'fp8_compute': True\} were given, but no quantization "
                                          "method was chosen"):
        resolve_quant_config(None, load_options={"fp8_compute": True})


def test_load_time_keys_of_a_third_party_config_are_refused(src, tmp_path, capsys):
    dst = tmp_path / "q"
    assert main(["quantize", str(src), "--method", "toy-loadtime", "--option", "fast_path=true", "--out", str(dst),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fvq quantize: error: option fast_path=true for method 'toy-loadtime'"), err
    assert "'fast_path' is a load-time setting of LoadTimeToyConfig" in err and not dst.exists(), err
    quantize_checkpoint(src, dst, "toy-loadtime")  # without it: written
    assert json.loads((dst / "config.json").read_text())["quantization_config"]["fast_path"] is False


def test_load_time_keys_are_keys_from_config_reads():
    """A load-time key from_config does not read would refuse nothing (a typo in the declaration)."""
    assert {"awq", "fp8", "int8", "toy-loadtime"} <= set(QUANTIZATION_METHODS)
    for name in QUANTIZATION_METHODS:
        cls = get_quantization_config(name)
        assert isinstance(cls.load_time_keys, tuple), (name, cls.load_time_keys)
        assert set(cls.load_time_keys) <= keys_asked(cls, {}), (name, cls.load_time_keys)
    from fvq_awq.config import AWQConfig

    assert AWQConfig.load_time_keys == ("fp8_compute", "fp8_compute_min_m")


def test_a_load_time_keys_declaration_that_is_not_a_tuple_is_a_plugin_error(src, tmp_path, monkeypatch):
    monkeypatch.setattr(LoadTimeToyConfig, "load_time_keys", "fast_path")
    with pytest.raises(PluginError, match=r"LoadTimeToyConfig\.load_time_keys is 'fast_path'; expected a tuple"):
        quantize_checkpoint(src, tmp_path / "q", "toy-loadtime")


# --- 3. a method that needs calibration, run without --calibration: refused before any tensor is read -------------

@pytest.fixture
def no_tensor_read(monkeypatch):
    def convert(*args, **kwargs):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr("fastvideo_quant.quantize.convert._convert", convert)


def test_fp8_static_without_calibration_is_refused_before_reading(src, tmp_path, capsys, no_tensor_read):
    dst = tmp_path / "q"
    assert main(["quantize", str(src), "--method", "fp8", "--option", "activation_scheme=static", "--out", str(dst),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fvq quantize: error: method 'fp8' of plugin 'fp8'"), err
    assert "with --option activation_scheme=static needs calibration activations, and no --calibration was given" in err
    assert "requires_calibration() is True" in err and "No tensor was read and nothing was written" in err, err
    assert "Pass --calibration FILE.safetensors (calibration=): a safetensors file holding, for every module " \
           "quantized, its input activations under the module's name" in err, err
    assert "shape [tokens, in_features]" in err and "write_calibration" in err, err
    assert "--skip" not in err and len(err.strip().splitlines()) == 1 and not dst.exists(), err


def test_a_third_party_method_needing_calibration_is_refused_too(src, tmp_path, no_tensor_read):
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(src, tmp_path / "q", "toy-needs-calib")
    msg = str(info.value)
    assert msg.startswith("method 'toy-needs-calib' of plugin 'refusal-toys'"), msg
    assert "with its default options needs calibration activations" in msg, msg
    assert "says requires_calibration() is True" in msg, msg
    assert only(tmp_path / "q") == ["src"]


def test_methods_using_calibration_only_when_given_still_run_without(src, tmp_path):
    """AWQ declares uses_calibration() True but quantizes round-to-nearest without activations."""
    report = quantize_checkpoint(src, tmp_path / "q", "awq", options={"group_size": 64})
    assert report.tensors_quantized == 2


def test_a_refusal_not_about_calibration_is_left_to_the_run(src, tmp_path):
    with pytest.raises(QuantizeError, match=r"could not quantize tensor 'blocks\.0\.[a-z]+\.weight'.*refuses every"):
        quantize_checkpoint(src, tmp_path / "q", "toy-always-fails")


# --- 4. nothing to quantize: an error, not a float checkpoint under a quantization_config --------------------------

def test_checkpoint_with_nothing_quantizable_is_refused_with_the_reasons(tmp_path, capsys):
    src = checkpoint(tmp_path / "src", {"proj.weight": torch.randn(64).bfloat16()}, {"x": 1})  # the review's w1d
    dst = tmp_path / "q"
    assert main(["quantize", str(src), "--method", "fp8", "--out", str(dst), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fvq quantize: error: no tensor of checkpoint {str(src)!r} would be quantized by method "
                          "'fp8': of its 1 tensor(s), none is a 2-D floating-point linear weight"), err
    assert "Left as they are: 'proj.weight' [64] torch.bfloat16: 1-D, not a linear weight." in err, err
    assert "Nothing was written" in err and not dst.exists() and only(dst) == ["src"], err


def test_everything_skipped_is_refused_listing_weights_first(tmp_path):
    tensors = {"blocks.0.norm.bias": torch.zeros(64).bfloat16(), **weights(**{"blocks.0.proj": (64, 256)}),
               "blocks.0.norm.weight": torch.ones(64).bfloat16()}
    src = checkpoint(tmp_path / "src", tensors)
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(src, tmp_path / "q", "toy-int8", skip=["proj"])
    msg = str(info.value)
    assert "of its 3 tensor(s)" in msg and ("Left as they are: 'blocks.0.proj.weight' [64, 256] torch.bfloat16: "
                                            "--skip proj, 'blocks.0.norm.weight' [64] torch.bfloat16: 1-D") in msg, msg
    assert "'blocks.0.norm.bias' [64] torch.bfloat16: not a .weight tensor" in msg, msg
    assert toy_method.ToyConfig.calls == [] and only(tmp_path / "q") == ["src"]


def test_a_checkpoint_with_one_quantized_tensor_is_still_written(tmp_path):
    src = checkpoint(tmp_path / "src", {"norm.weight": torch.ones(64).bfloat16(), **weights(proj=(64, 256))})
    report = quantize_checkpoint(src, tmp_path / "q", "fp8")
    assert (report.tensors_in, report.tensors_quantized) == (2, 1)
    with safe_open(str(tmp_path / "q" / "model.safetensors"), framework="pt") as h:
        assert h.get_tensor("proj.weight").dtype == torch.float8_e4m3fn


def test_a_non_finite_fused_part_suggests_the_fused_name_skip_takes(tmp_path):
    """--skip refuses a part of a fused module (gate_proj of gate_up_proj): the hint names the fused module."""
    tensors = weights(**{"mlp.gate_proj": (64, 256), "mlp.up_proj": (64, 256)})
    tensors["mlp.gate_proj.weight"][0, 0] = float("nan")
    with pytest.raises(QuantizeError, match=r"\(--skip mlp.gate_up_proj would only copy it unchanged"):
        quantize_checkpoint(checkpoint(tmp_path / "src", tensors), tmp_path / "q", "int8")


def test_a_skip_list_option_matching_nothing_names_its_key(tmp_path):
    src = checkpoint(tmp_path / "src", weights(proj=(64, 256)))
    with pytest.raises(QuantizeError, match=r"--option ignored_layers pattern"):
        quantize_checkpoint(src, tmp_path / "q", "fp8", options={"ignored_layers": ["nomatch"]})


def test_a_single_file_or_a_pipeline_root_as_the_source_says_what_to_give(tmp_path):
    src = checkpoint(tmp_path / "src", weights(proj=(64, 256)))
    with pytest.raises(CheckpointError, match=rf"is not a directory: give the directory that holds it \({str(src)!r}\)"):
        quantize_checkpoint(src / "model.safetensors", tmp_path / "q", "fp8")
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    src.rename(pipe / "transformer")
    with pytest.raises(CheckpointError, match=r"a diffusers pipeline: its models are in sub-directories; quantize one "
                                              rf"of them, e.g. {str(pipe / 'transformer')!r}"):
        quantize_checkpoint(pipe, tmp_path / "q", "fp8")


# --- 5. a config fvq quantize cannot use: refused before any tensor is read, with the plugin's fix -----------------

def test_a_quantize_weight_without_prefix_is_refused_before_reading(src, tmp_path, capsys, no_tensor_read):
    """``def quantize_weight(self, weight)``: each tensor's TypeError ended in "Pass --skip blocks.0.proj to leave it
    unquantized", which would skip every layer."""
    dst = tmp_path / "q"
    assert main(["quantize", str(src), "--method", "toy-old-signature", "--out", str(dst), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fvq quantize: error: method 'toy-old-signature' of plugin 'refusal-toys' (in-process): "
                          "OldSignatureToyConfig.quantize_weight at "), err
    assert ("has the signature quantize_weight(weight), but it is called as quantize_weight(weight, *, prefix='', "
            "activations=None) (prefix and activations by keyword), so every call fails with TypeError: got an "
            "unexpected keyword argument 'prefix'. No tensor was read and nothing was written. Fix the plugin: define "
            "quantize_weight(self, weight, *, prefix='', activations=None)") in err, err
    assert "keyed by the parameter names create_weights registers" in err, err
    assert "--skip" not in err and not dst.exists(), err


def test_an_init_without_super_is_refused_naming_the_fix(src, tmp_path, no_tensor_read):
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(src, tmp_path / "q", "toy-no-super")
    msg = str(info.value)
    assert msg.startswith("method 'toy-no-super' of plugin 'refusal-toys' (in-process): the NoSuperInitToyConfig "
                          "from_config returned has no packed_modules_mapping attribute, which "
                          "QuantizationConfig.__init__ sets: NoSuperInitToyConfig.__init__ at "), msg
    assert msg.endswith("Fix the plugin: call super().__init__() in NoSuperInitToyConfig.__init__ (it sets "
                        "packed_modules_mapping and modules_to_not_convert)"), msg


def test_a_get_quant_method_ignoring_the_skip_list_is_told_to_honour_it(src, tmp_path):
    """The skip list round-trips through to_dict/from_config, so "the plugin's to_dict()/from_config() must store
    modules_to_not_convert" was wrong: get_quant_method is what ignores it."""
    with pytest.raises(QuantizeError) as info:
        quantize_checkpoint(src, tmp_path / "q", "toy-ignores-skip", skip=["blocks.0.out"])
    msg = str(info.value)
    assert msg.startswith("method 'toy-ignores-skip' of plugin 'refusal-toys' (in-process): "
                          "IgnoresSkipToyConfig.get_quant_method ignores the skip list: the quantization_config "
                          "{'quant_method': 'toy-ignores-skip', 'skip_modules': ['blocks.0.out']} keeps "
                          "modules_to_not_convert (read back, is_layer_skipped is True for ['blocks.0.out']), but "
                          "get_quant_method returns ToyLinearMethod for it"), msg
    assert msg.endswith("get_quant_method must honour is_layer_skipped: return self.linear_method_or_skip(layer, "
                        "prefix, lambda: ToyLinearMethod(...)) (it returns the unquantized method for a skipped "
                        "layer)"), msg
    assert "must store modules_to_not_convert" not in msg and only(tmp_path / "q") == ["src"]
