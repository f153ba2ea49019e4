"""A checkpoint that is a loaded model's state_dict saved as safetensors: its layers' tensors are in the kernel format
(what ``process_weights_after_loading`` makes: fp8's ``weight_scale_scalar``/``weight_scale_cols``, AWQ's
``qweight_k``, int8's ``weight_scale``, a channel scale turned into a row), not the checkpoint format the loader reads.

What each method's processing adds is not listed anywhere: it is found out, once per config, by loading and
processing a small layer built with that config (from its own ``quantize_weight``, or float weights for a method that
quantizes on load) — so a third party's method is recognised as a built-in's is. Without this, the layers' configs
read the kernel tensors as checkpoint settings ("set weight_block_size": a row of channel scales looks like a block
grid) and sent the user to edit a config that was right."""

from __future__ import annotations

import json
import warnings

import torch

from fastvideo_quant.errors import stops_the_process
from fastvideo_quant.loader.hints.probe import _quantized
from fastvideo_quant.loader.targets import linear_layers
from fastvideo_quant.processing import names

#: The sizes of the probe layer (``[in, out]``): the first a config can quantize (group sizes and blocks divide them);
#: in and out differ, so a tensor that processing transposes is told apart from one it keeps.
_PROBE_SIZES = ((512, 256), (1024, 512), (4096, 2048))


#: What :func:`_kernel_format` found, by (config class, its settings, the layers' dtype): probed once a process.
_FOUND: dict[tuple[type, str, torch.dtype], dict[str, tuple] | None] = {}


def _kernel_format(config, dtype: torch.dtype) -> dict[str, tuple] | None:
    """``{name: (dtype, how)}`` of the tensors a processed layer of ``config`` holds: ``how`` is "added" (a fresh
    layer has no such tensor), "transposed" (a ``[out, 1]`` scale kept as ``[1, out]``) or "kept". None where no probe
    layer can be loaded and processed (a method without ``quantize_weight``, one that needs a GPU)."""
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.processing import process_weights_after_loading

    for in_size, out_size in _PROBE_SIZES:
        if config.quantize_shape_problem((out_size, in_size)) is not None:
            continue
        try:
            with warnings.catch_warnings():  # (the probe's own warnings are not the load's)
                warnings.simplefilter("ignore")
                layer = ReplicatedLinear(in_size, out_size, bias=False, quant_config=config, params_dtype=dtype)
                fresh = {n: tuple(t.shape) for n, t in _tensors(layer).items()}
                weight = torch.randn(out_size, in_size, generator=torch.Generator().manual_seed(0)) * 0.05
                stored = (config.quantize_weight(weight, prefix="probe") if config.reads_quantized_checkpoint()
                          else {"weight": weight.to(dtype)})
                for name, tensor in stored.items():
                    param = layer._parameters[name]
                    param.weight_loader(param, tensor)
                process_weights_after_loading(layer)
        except BaseException as exc:  # noqa: BLE001 - a probe that cannot run: no hint from it
            if stops_the_process(exc):
                raise
            return None
        found = {}
        for name, tensor in _tensors(layer).items():
            shape = tuple(tensor.shape)
            if name not in fresh:
                found[name] = (tensor.dtype, "added")
            elif len(shape) == 2 and shape != fresh[name] and shape == fresh[name][::-1]:
                found[name] = (tensor.dtype, "transposed")
            else:
                found[name] = (tensor.dtype, "kept")
        return found
    return None


def _tensors(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t for n, t in [*layer._parameters.items(), *layer._buffers.items()] if t is not None}


def _kernel_format_of(layer: torch.nn.Module) -> dict[str, tuple] | None:
    config = layer.quant_config
    try:
        settings = json.dumps(config.to_dict(), sort_keys=True, default=str)
    except Exception:  # noqa: BLE001 - settings that do not serialise: no probe
        return None
    # (the online and pre-quantized configs of a method write the same to_dict: which one it is, is part of the key)
    key = (type(config), f"{settings} {config.reads_quantized_checkpoint()}", layer.params_dtype)
    if key not in _FOUND:
        _FOUND[key] = _kernel_format(config, layer.params_dtype)
    return _FOUND[key]


def kernel_format_hint(model: torch.nn.Module, stored: dict[str, torch.dtype | None],
                       shapes: dict[str, tuple[int, ...]]) -> str | None:
    """One line where the checkpoint's tensors of some quantized layer are its method's kernel format: each tensor of
    the processed layer is there, of its dtype (an fp8 checkpoint's float32 ``weight_scale`` in an int8 layer is not
    int8's kernel format: its weight is float8; nor is a compressed-tensors int8 checkpoint's, without ``SCB``), and
    one at least is one that processing adds, or stored transposed as processing transposes it. None otherwise."""
    found: dict[str, list[str]] = {}  # method → kernel tensors found
    for path, layer in linear_layers(model):
        if not _quantized(layer) or not any(n.startswith(path + ".") for n in stored):
            continue
        kernel = _kernel_format_of(layer)
        if not kernel:
            continue
        own = _tensors(layer)
        evidence = []
        for name, (dtype, how) in kernel.items():
            key = f"{path}.{name}"
            if stored.get(key, "absent") != dtype:
                break  # (a processed layer holds each of them, of that dtype)
            if how == "added" or (how == "transposed" and name in own and len(own[name].shape) == 2
                                  and own[name].shape[0] != 1 and shapes.get(key) == tuple(own[name].shape)[::-1]):
                evidence.append(key)
        else:
            if evidence:
                found.setdefault(layer.quant_config.get_name(), []).extend(evidence)
    if not found:
        return None
    method = ", ".join(map(repr, found))
    tensors = [t for ts in found.values() for t in ts]
    return (f"the checkpoint holds the kernel format of {method} layers, what process_weights_after_loading makes of "
            f"the tensors it loads ({names(tensors, limit=3)}): it is the state_dict of a loaded model saved as "
            "safetensors, which load_checkpoint does not read (the problems below follow from it). Load the checkpoint "
            "that model was loaded from; to keep a quantized checkpoint, write one with fvq quantize SRC --method "
            f"{next(iter(found))} --out DST (the checkpoint format, loadable at any TP size); to restore a loaded "
            "model's state, torch.save(model.state_dict(), f) and model.load_state_dict(torch.load(f)) into a model "
            "built with the same config and loaded")
