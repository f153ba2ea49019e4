"""What the loaded methods store, probed on meta layers (nothing allocated): whether a module is a quantized layer,
the config of a method that reads its quantized checkpoints, the dtype of the ``weight`` and the parameter names a
layer of a module's sizes built with it has — for the hints that name the method a checkpoint was written by."""

from __future__ import annotations

import torch


def _quantized(module: torch.nn.Module, default: bool = False) -> bool:
    """Whether ``module`` is a quantized linear layer (``LinearBase._quantized``); ``default`` for another module."""
    check = getattr(module, "_quantized", None)
    return check() if check is not None else default


def _quantized_config(cls, config=None):
    """The config of ``cls`` that reads its quantized checkpoints (``config``'s settings with
    ``quantized_checkpoint_keys`` set), or None when it cannot be built."""
    if not cls.quantized_checkpoint_keys and cls.online_quantization:
        return None
    try:
        base = config.to_dict() if config is not None else {"quant_method": cls.get_name()}
        return cls.from_config({**base, **cls.quantized_checkpoint_keys})
    except Exception:  # noqa: BLE001 - a config that cannot be built so: no hint from it
        return None


def _meta_layer(config, module) -> torch.nn.Module | None:
    """A ReplicatedLinear built with ``config`` on meta (nothing allocated): of ``module``'s sizes, else of 4096 x 4096
    (a default config's group size or alignment may not fit a small layer; names and dtypes do not depend on it)."""
    from fastvideo_quant.layers.linear import ReplicatedLinear

    for sizes in ((module.input_size, module.output_size), (4096, 4096)):
        try:
            with torch.device("meta"):
                return ReplicatedLinear(*sizes, bias=False, quant_config=config,
                                        params_dtype=getattr(module, "params_dtype", None))
        except Exception:  # noqa: BLE001 - a method that cannot build this shape: try the other
            continue
    return None


def _stored_weight_dtype(config, module) -> torch.dtype | None:
    """The dtype of the ``weight`` a layer of ``module``'s sizes built with ``config`` reads (on meta: nothing is
    allocated), or None (no ``weight``: AWQ's ``qweight``; or the layer cannot be built)."""
    layer = _meta_layer(config, module)
    if layer is None:
        return None
    weight = layer._parameters.get("weight")
    return weight.dtype if weight is not None else None


def methods_storing(dtype: torch.dtype, module) -> dict[str, object]:
    """The loaded methods whose quantized checkpoints store a ``weight`` of ``dtype`` for a layer of ``module``'s
    sizes (``fp8`` for float8_e4m3fn, ``int8`` for int8), each with its default config that reads them."""
    from fastvideo_quant.plugins.manager import get_registry

    found = {}
    for name, reg in sorted(get_registry().by_name.items()):
        config = _quantized_config(reg.config_cls)
        if config is not None and _stored_weight_dtype(config, module) == dtype:
            found[name] = config
    return found


def _parameter_names(config, module) -> frozenset[str]:
    """The parameters (and buffers) a layer of ``module``'s sizes built with ``config`` registers, bias aside (on
    meta); empty when it cannot be built."""
    layer = _meta_layer(config, module)
    if layer is None:
        return frozenset()
    return frozenset(n for n, _ in [*layer.named_parameters(), *layer.named_buffers()])
