"""Public entry points given an argument of the wrong type say which argument and what it takes. Before, each failed
deep inside: AttributeError (a list as packed_modules_mapping, None as the model, a numpy array into a weight loader)
or TypeError (an int as the checkpoint directory, an int as tp_fit's sizes); a str as a mapping entry was read as its
characters."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.layers.linear import QKVParallelLinear, ReplicatedLinear, RowParallelLinear, tp_fit
from fastvideo_quant.loader import load_checkpoint
from fastvideo_quant.processing import process_weights_after_loading
from fastvideo_quant.quantization import resolve_quant_config


def _model() -> torch.nn.Module:
    model = torch.nn.Module()
    model.lin = ReplicatedLinear(4, 4, bias=False, prefix="lin")
    return model


@pytest.mark.parametrize("mapping, message", [
    (["qkv_proj"], r"load_checkpoint: the packed_modules_mapping argument must map each fused module's name to the list "
                   r"of its checkpoint modules' names .*found list \['qkv_proj'\]"),
    ({"qkv_proj": "q_proj"}, r"entry 'qkv_proj' maps to str 'q_proj'"),
    ({"qkv_proj": []}, r"entry 'qkv_proj' maps to list \[\]"),
])
def test_load_checkpoint_checks_the_packed_mapping(tmp_path, mapping, message) -> None:
    save_file({"lin.weight": torch.ones(4, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=message):
        load_checkpoint(_model(), tmp_path, packed_modules_mapping=mapping)


def test_a_models_own_mapping_is_checked_too(tmp_path) -> None:
    save_file({"lin.weight": torch.ones(4, 4)}, str(tmp_path / "model.safetensors"))
    model = _model()
    model.packed_modules_mapping = {"qkv_proj": "q_proj"}
    with pytest.raises(ConfigError, match=r"^Module.packed_modules_mapping must map .*entry 'qkv_proj' maps to str"):
        load_checkpoint(model, tmp_path)


def test_resolve_quant_config_names_a_checkpoint_that_is_no_path() -> None:
    with pytest.raises(TypeError, match=r"checkpoint must be the checkpoint's directory \(a str or os.PathLike\), found "
                                        r"int 5"):
        resolve_quant_config(checkpoint=5)


def test_tp_fit_and_processing_name_their_arguments() -> None:
    with pytest.raises(TypeError, match=r"tp_fit\(model, sizes\): sizes is the TP sizes to check, an iterable of ints "
                                        r".*found int 4"):
        tp_fit(_model(), 4)
    with pytest.raises(TypeError, match=r"tp_fit\(model, sizes\): expected a torch.nn.Module, found NoneType"):
        tp_fit(None, (1,))
    with pytest.raises(TypeError, match=r"process_weights_after_loading\(model\): expected a torch.nn.Module, found "
                                        r"NoneType"):
        process_weights_after_loading(None)


@pytest.mark.parametrize("build", [lambda: ReplicatedLinear(4, 4, prefix="a"), lambda: RowParallelLinear(4, 4, prefix="a"),
                                   lambda: QKVParallelLinear(64, 16, 4, 2, prefix="a")])
def test_a_weight_loader_given_no_tensor_names_the_parameter(build) -> None:
    layer = build()
    with pytest.raises(TypeError, match=r"a\.weight: weight_loader takes the checkpoint tensor as a torch.Tensor, found "
                                        r"list$"):
        layer.weight.weight_loader(layer.weight, layer.weight.tolist())
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match=r"found ndarray \(torch.from_numpy\(array\)\)"):
        layer.weight.weight_loader(layer.weight, np.ones(tuple(layer.weight.shape), dtype=np.float32))


def test_a_mapping_that_is_no_dict_is_taken(tmp_path) -> None:
    """A read-only mapping (MappingProxyType, a config library's dict-like) as packed_modules_mapping, with tuples."""
    import types

    save_file({"lin.weight": torch.ones(4, 4)}, str(tmp_path / "model.safetensors"))
    model = _model()
    model.packed_modules_mapping = types.MappingProxyType({"qkv": ("q", "k", "v")})
    load_checkpoint(model, tmp_path)
    load_checkpoint(_model(), tmp_path, packed_modules_mapping=types.MappingProxyType({"qkv": ("q", "k", "v")}))
