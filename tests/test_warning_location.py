"""Our warnings point at the user's call (``load_checkpoint``, ``process_weights_after_loading``, the call that
loads the plugins), not at the line of ours that issued them: ``warnings`` prints that file and line, and a filter by
module matches it. (Was: fixed stack levels, which named ``fastvideo_quant/loader/load.py`` for the warnings a load
issues, and the fp8 plugin's ``method.py`` for a layer processed by a direct call.)"""

from __future__ import annotations

import warnings

import fake_dist
import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant import plugins
from fastvideo_quant.errors import CheckpointWarning
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint, process_weights_after_loading
from fastvideo_quant.plugins import PluginLoadWarning
from fastvideo_quant.quantization import get_quantization_config, resolve_quant_config

SERIALIZED = {"quant_method": "fp8", "activation_scheme": "dynamic"}


def _fp8_model() -> torch.nn.ModuleDict:
    config = resolve_quant_config(hf_config={"quantization_config": SERIALIZED})
    return torch.nn.ModuleDict({n: ReplicatedLinear(64, 64, bias=False, params_dtype=torch.bfloat16, prefix=n,
                                                    quant_config=config) for n in "ab"})


def _reciprocal_scale_checkpoint(path, split: bool) -> None:
    """Weight scales stored as their reciprocals (an Fp8ScaleWarning); with ``split``, two files and no index (a
    CheckpointWarning)."""
    path.mkdir()
    config = resolve_quant_config(hf_config={"quantization_config": SERIALIZED})
    tensors = {}
    for name in "ab":
        stored = config.quantize_weight(torch.randn(64, 64), prefix=name)
        stored["weight_scale"] = 1 / stored["weight_scale"]
        tensors[name] = {f"{name}.{k}": v for k, v in stored.items()}
    if split:
        for name in "ab":
            save_file(tensors[name], str(path / f"{name}.safetensors"))
    else:
        save_file(tensors["a"] | tensors["b"], str(path / "model.safetensors"))


def _where(caught: list[warnings.WarningMessage]) -> dict[str, str]:
    return {w.category.__name__: w.filename for w in caught}


def test_the_warnings_of_a_load_point_at_load_checkpoint(tmp_path):
    _reciprocal_scale_checkpoint(tmp_path / "ckpt", split=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(_fp8_model(), tmp_path / "ckpt")
    assert _where(caught) == {"CheckpointWarning": __file__, "Fp8ScaleWarning": __file__}, [
        (w.category.__name__, w.filename, w.lineno) for w in caught]


def test_the_warning_of_a_direct_process_call_points_at_it(tmp_path):
    """Through the model-wide call, and through the plugin's own method called for one layer (vLLM's loop)."""
    _reciprocal_scale_checkpoint(tmp_path / "ckpt", split=False)
    for direct in (False, True):
        model = _fp8_model()
        load_checkpoint(model, tmp_path / "ckpt", process_weights=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if direct:
                model["a"].quant_method.process_weights_after_loading(model["a"])
            else:
                process_weights_after_loading(model)
        assert _where(caught) == {"Fp8ScaleWarning": __file__}, (direct, [(w.filename, w.lineno) for w in caught])


def test_a_module_filter_on_the_callers_module_silences_a_load_warning(tmp_path):
    """What the attribution is for: ``filterwarnings(module=...)`` of the module that loads."""
    _reciprocal_scale_checkpoint(tmp_path / "ckpt", split=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=CheckpointWarning, module=__name__)
        load_checkpoint(_fp8_model(), tmp_path / "ckpt")
    assert caught == [], [(w.category.__name__, w.filename) for w in caught]  # (Fp8ScaleWarning is one too)


def test_a_plugin_load_warning_points_at_the_call_that_loaded_the_plugins(fresh_plugins, tmp_path, monkeypatch):
    """An installed plugin whose hook module has no hook is refused at load, and warned of at the call that first
    needed the plugins."""
    fake_dist.install(tmp_path, monkeypatch, name="fvq-nohooks", version="0.0.1", module="fvq_nohooks_hooks",
                      source="def register_quantization_methods(register):\n    pass\n", entry="nohooks",
                      value="fvq_nohooks_hooks")
    plugins.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_quantization_config("unquantized")
    found = [w for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(found) == 1 and "plugin 'nohooks'" in str(found[0].message), [str(w.message) for w in caught]
    assert found[0].filename == __file__, (found[0].filename, found[0].lineno)


@pytest.mark.parametrize("name", ["fastvideo_quant.loader.load", "fvq_fp8.method", "torch.nn.modules.module"])
def test_internal_frames_are_skipped(name):
    """The frames skipped: ours, the plugins' (their entry points' packages), and the libraries between."""
    from fastvideo_quant.errors import _INTERNAL_PACKAGES, plugin_packages

    assert name.partition(".")[0] in _INTERNAL_PACKAGES | plugin_packages()


def test_a_plugins_import_time_warning_points_at_the_call_that_loaded_it(fresh_plugins, tmp_path, monkeypatch):
    """The import system's frames lie between (``warnings.warn`` does not count them in a stack level; was ``sys:1``)."""
    fake_dist.install(tmp_path, monkeypatch, name="fvq-warnplug", version="0.0.1", module="fvq_warnplug_hooks",
                      source="""
                          from fastvideo_quant.errors import warn_at_caller
                          from fastvideo_quant.plugins import hookimpl

                          warn_at_caller("fvq_warnplug: optional kernel library missing")

                          @hookimpl
                          def register_quantization_methods(register):
                              pass
                          """, entry="warnplug", value="fvq_warnplug_hooks")
    plugins.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_quantization_config("unquantized")
    found = [w for w in caught if "optional kernel library" in str(w.message)]
    assert len(found) == 1 and found[0].filename == __file__, [(w.filename, w.lineno, str(w.message)) for w in caught]


def test_the_fvq_command_prints_its_warnings_on_one_line(tmp_path, capsys):
    """Every frame of a command is ours: the warning is attributed to the launcher, and the command prints it as
    ``fvq CMD: warning: ...`` (was: the launcher's file and its ``sys.exit(main())`` line)."""
    from demo_checkpoints import write_demo_checkpoint

    from fastvideo_quant.cli import main
    from fastvideo_quant.demo.model import DemoConfig
    from fastvideo_quant.loader.files import checkpoint_files

    src = write_demo_checkpoint(tmp_path / "src", DemoConfig(hidden_size=64, num_heads=4, num_kv_heads=2,
                                                             intermediate_size=128, num_layers=1, in_channels=16,
                                                             num_tokens=8))
    (single,) = checkpoint_files(src)
    tensors = dict(safe_tensors(single))
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[: len(names) // 2]}, str(src / "a.safetensors"))
    save_file({n: tensors[n] for n in names[len(names) // 2:]}, str(src / "b.safetensors"))
    single.unlink()
    assert main(["quantize", str(src), "--method", "fp8", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"fvq quantize: warning: checkpoint {str(src)!r} has no index" in err, err
    assert "sys.exit(main())" not in err and "CheckpointWarning" not in err, err


def safe_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path)).items()
