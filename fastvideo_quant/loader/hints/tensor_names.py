"""Hints for a tensor whose name matches nothing: a layer's prefix that is not its path, a name prefix one side
lacks (a ComfyUI export's ``model.diffusion_model.``, a DiT under ``transformer.``), attention KV-cache scales no
linear layer takes, a non-persistent buffer or a plain tensor attribute where a parameter was expected."""

from __future__ import annotations

import re

import torch

from fastvideo_quant.processing import (
    names,
)
from fastvideo_quant.quantization.base import as_model_shows


def built_as(path: str, layer: torch.nn.Module) -> str:
    prefix = f"prefix {layer.prefix!r}" if layer.prefix else "no prefix (prefix='')"
    return f"layer at path {path!r} ({type(layer).__name__}) was built with {prefix}"


def prefix_hints(misnamed: dict[str, torch.nn.Module], missing, unexpected: list[str], mapping) -> list[str]:
    """For a layer without a quant_config whose prefix is not its path: a hint when its tensors are missing, or when
    the checkpoint's unexpected tensors are named after its prefix."""
    hints = []
    absent = {n.rpartition(".")[0] for n, _ in missing}
    for path, layer in misnamed.items():
        named = layer.prefix and any(n.startswith(layer.prefix + ".") for n in unexpected)
        if path in absent or named:
            hints.append(f"{built_as(path, layer)}, but checkpoint tensors are matched by the module path "
                         f"({path}.<parameter>); if the checkpoint names the layer {layer.prefix!r}, place it at that "
                         f"path in the model; otherwise build it with prefix={path!r}")
    return hints


#: Tensor names of attention scales that fp8 exporters write beside the linear layers' (vLLM reads them into its
#: attention's KV cache: AutoFP8's ``kv_cache_scheme: static``, llm-compressor's ``kv_cache_scheme``).
KV_SCALE_LEAVES = ("k_scale", "v_scale", "q_scale", "prob_scale", "kv_scale")


def kv_scale_hint(unexpected: list[str]) -> list[str]:
    """One line for unexpected KV-cache / attention scales: no linear layer takes them."""
    found = [n for n in unexpected if n.rpartition(".")[2] in KV_SCALE_LEAVES]
    if not found:
        return []
    return [f"{len(found)} unexpected tensor(s) are attention scales ({names(found, limit=3)}: a kv_cache_scheme in "
            "the checkpoint's config), which vLLM loads into its attention's KV cache: no linear layer takes them. "
            "Give your attention modules those parameters, or load with strict=False (the LoadReport lists them as "
            "unexpected)"]


def name_prefix_hints(unexpected: list[str], missing, mapping, loaded=()) -> list[str]:
    """One line when most of the checkpoint's unexpected tensors are the model's missing ones under a name prefix that
    one side has and the other lacks (``model.diffusion_model.`` on a ComfyUI/original export, ``transformer.`` on a
    model whose DiT is a submodule): the rename that fixes the whole load, instead of one line a tensor only. A rename
    (or submodule) is suggested only when it leaves the checkpoint's tensors that already load (``loaded``) as they
    are: where only some names lack the prefix, a pattern anchored on those names, else examples of both kinds."""
    if not unexpected or not missing:
        return []
    wanted = {n for n, _ in missing}

    def model_name(name: str) -> str:
        return _model_name(name, mapping)

    best = None
    for extra_on_checkpoint in (True, False):
        counts: dict[str, int] = {}
        if extra_on_checkpoint:
            for name in unexpected:
                parts = name.split(".")
                for k in range(1, len(parts)):
                    prefix = ".".join(parts[:k]) + "."
                    if model_name(name[len(prefix):]) in wanted:
                        counts[prefix] = counts.get(prefix, 0) + 1
        else:
            shown = {model_name(n) for n in unexpected}
            for name in wanted:
                parts = name.split(".")
                for k in range(1, len(parts)):
                    prefix = ".".join(parts[:k]) + "."
                    if name[len(prefix):] in shown:
                        counts[prefix] = counts.get(prefix, 0) + 1
        for prefix, count in counts.items():
            if best is None or count > best[2] or count == best[2] and len(prefix) < len(best[1]):
                best = (extra_on_checkpoint, prefix, count)
    if best is None or best[2] * 2 < min(len(unexpected), len(wanted)):
        return []
    on_checkpoint, prefix, count = best
    escaped = re.escape(prefix)
    loaded = list(loaded)
    if on_checkpoint:
        if any(n.startswith(prefix) for n in loaded):  # (the rename would move tensors that load now)
            return []
        return [f"{count} of the checkpoint's {len(unexpected)} unexpected tensor(s) are the model's missing parameters "
                f"under the name prefix {prefix!r}, which the model's names lack: load with param_names_mapping="
                f"{{r'^{escaped}(.*)$': r'\\1'}} (drops it)"]
    module = prefix.rstrip(".")
    said = (f"{count} of the model's {len(wanted)} missing parameter(s) are the checkpoint's unexpected tensors under "
            f"the name prefix {prefix!r}, which the checkpoint's names lack")
    if not loaded:
        return [f"{said}: load into that submodule, load_checkpoint(model.get_submodule({module!r}), path), or load with "
                f"param_names_mapping={{r'^(.*)$': r'{prefix}\\1'}}"]
    lacking = sorted(n for n in unexpected if prefix + model_name(n) in wanted)
    pattern = _anchored_pattern(lacking, loaded)
    others = (f"while {len(loaded)} other tensor(s) of the checkpoint load as they are ({names(sorted(loaded), limit=3)}), "
              f"so a rename of every name, or loading into submodule {module!r}, would lose those")
    if pattern is not None:
        return [f"{said} on only some tensors ({names(lacking, limit=3)}), {others}: load with param_names_mapping="
                f"{{r'{pattern}': r'{prefix}\\1'}} (adds it to those names only)"]
    return [f"{said} inconsistently: some tensors lack it ({names(lacking, limit=3)}), {others}, and no pattern on the "
            f"first name component tells the two apart: add {prefix!r} to the names that lack it in the checkpoint, or "
            "give param_names_mapping an entry for each"]


def _model_name(name: str, mapping) -> str:
    """A checkpoint tensor name as the model shows it (a fused layer's parts by ``mapping``: ``to_q.weight`` →
    ``to_qkv.weight``)."""
    module, _, leaf = name.rpartition(".")
    return f"{as_model_shows(module, mapping)}.{leaf}" if module else leaf


def renamed_module_hints(unexpected: list[str], missing, mapping, loaded=()) -> list[str]:
    """One line when most of the checkpoint's unexpected tensors are the model's missing ones with one module's name
    changed at the same place (``blocks.0.attn.…`` in the checkpoint, ``blocks.0.attention.…`` in the model: an
    attribute renamed): the ``param_names_mapping`` that renames it, anchored at that depth — not where it would
    also rename tensors that load now (``loaded``) — and the other fix, naming the model's module as the checkpoint
    does. A parameter's own name (the last component) is not a module: ``weight`` against ``qweight`` is another
    method's tensor, which other hints explain."""
    if not unexpected or not missing:
        return []
    slots: dict[tuple, set[str]] = {}  # (depth, the components before, those after) → the model's component there
    for name, _ in missing:
        parts = name.split(".")
        for i in range(len(parts) - 1):
            slots.setdefault((i, tuple(parts[:i]), tuple(parts[i + 1:])), set()).add(parts[i])
    counts: dict[tuple[int, str, str], list[str]] = {}
    for name in unexpected:
        parts = _model_name(name, mapping).split(".")
        for i in range(len(parts) - 1):
            for new in slots.get((i, tuple(parts[:i]), tuple(parts[i + 1:])), ()):
                counts.setdefault((i, parts[i], new), []).append(name)
    if not counts:
        return []
    (depth, old, new), found = max(counts.items(), key=lambda item: len(item[1]))
    if len(found) * 2 < min(len(unexpected), len(missing)) or any(
            d == depth and (o == old) != (n == new) for d, o, n in counts):
        return []  # (too few; or not one name for one: to_q, to_k, to_v → to_qkv is a fusion, fused_name_hints')
    example = found[0].split(".")
    example[depth] = new
    said = (f"{len(found)} of the checkpoint's {len(unexpected)} unexpected tensor(s) are the model's missing "
            f"parameters with module {old!r} named {new!r} ({found[0]!r} → {_model_name('.'.join(example), mapping)!r}):"
            f" the model's module is {new!r} where the checkpoint's is {old!r}")
    pattern = rf"^((?:[^.]+\.){{{depth}}}){re.escape(old)}\." if depth else rf"^{re.escape(old)}\."
    if any(re.match(pattern, n) for n in loaded):  # (the rename would move tensors that load now)
        return [f"{said}; name the model's module {old!r}, or give param_names_mapping an entry that renames those "
                "tensors only"]
    replacement = rf"\g<1>{new}." if depth else f"{new}."  # (\g<1>: a name starting with a digit, 2 for 1)
    return [f"{said}. Load with param_names_mapping={{r'{pattern}': r'{replacement}'}} (renames it), or name the "
            f"model's module {old!r}"]


def _anchored_pattern(lacking: list[str], loaded: list[str]) -> str | None:
    """A ``param_names_mapping`` pattern capturing the whole name that matches every name in ``lacking`` and none in
    ``loaded``, by their first dotted component (``\\d+`` when all are block indices), or None."""
    firsts = sorted({n.split(".", 1)[0] for n in lacking})
    if all(f.isdigit() for f in firsts):
        alternatives = r"\d+"
    elif len(firsts) <= 8:
        alternatives = "|".join(map(re.escape, firsts))
        alternatives = f"(?:{alternatives})" if len(firsts) > 1 else alternatives
    else:
        return None
    pattern = rf"^({alternatives}\..*)$"
    matches = re.compile(pattern).match
    if all(matches(n) for n in lacking) and not any(matches(n) for n in loaded):
        return pattern
    return None


def non_persistent_hint(model: torch.nn.Module, name: str) -> str:
    """Why a tensor's name matches nothing when the module holds a non-persistent buffer of that name."""
    path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return ""
    if module._buffers.get(leaf) is None or leaf not in module._non_persistent_buffers_set:
        return ""
    return (f" ({name} is a buffer the model marks non-persistent, "
            "register_buffer(..., persistent=False): it is not in the model's state_dict, so no checkpoint tensor loads "
            "into it; register it persistent to load it, or leave the tensor out of the checkpoint)")


def plain_attribute_hint(model: torch.nn.Module, name: str, mapping: dict[str, list[str]] | None = None) -> str:
    """Why a tensor's name matches no parameter when the module holds a plain tensor attribute of that name: its
    method's ``create_weights`` set it without registering it (a parameter is what loads). A fused layer's part
    (``q_proj.weight_scale``) is looked up on the fused module ``mapping`` names (``qkv_proj``)."""
    path, _, leaf = name.rpartition(".")
    path = as_model_shows(path, mapping)
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return ""
    if leaf in module._parameters or not isinstance(vars(module).get(leaf), torch.Tensor):
        return ""
    method = type(getattr(module, "quant_method", None)).__name__
    param = ("a fastvideo_quant.parameter class built with weight_loader=extra_weight_attrs['weight_loader'] (its "
             "method is registered with weight_loader_v2=True)" if getattr(module, "uses_weight_loader_v2", False)
             else "Parameter(..., requires_grad=False)) with the layer's weight_loader (set_weight_attrs")
    return (f" ({path or 'the model'}.{leaf} is a plain tensor attribute, not a registered parameter: "
            f"{method}.create_weights must register it, layer.register_parameter({leaf!r}, {param}))")
