"""Calibration activations for ``fvq quantize --calibration``: the file read, and the two refusals made before
anything is read — a file for a method that ignores it, and no file for a method that cannot run without one."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from fastvideo_quant.errors import QuantizeError
from fastvideo_quant.loader import open_safetensors
from fastvideo_quant.plugins.manager import describe_method
from fastvideo_quant.processing import names
from fastvideo_quant.quantization.base import QuantizationConfig, as_model_shows
from fastvideo_quant.quantize.fused_names import fuse_flag, fused_from

#: What ``--calibration`` must hold, for the messages that ask for one.
CALIBRATION_FILE = (
    "a safetensors file holding, for every module quantized, its input activations under the module's name (the "
    "tensor name without '.weight', e.g. 'blocks.0.attn.q_proj'; a fused layer's name, 'blocks.0.attn.qkv_proj', "
    "serves its parts), floating point, shape [tokens, in_features] (or [..., in_features]); fvq demo writes one "
    "with forward pre-hooks on the linear layers (fastvideo_quant.demo.run.write_calibration)"
)


class Calibration:
    """Per-module input activations from a safetensors file keyed by module name (``blocks.0.attn.q_proj``), or by
    the fused layer's name (``blocks.0.attn.qkv_proj``: what forward pre-hooks on a model built from our layers
    record) for each of its parts (``DEFAULT_PACKED_MODULES_MAPPING``, or the mapping given): the parts of a fused
    layer take its input."""

    def __init__(self, path: Path, stack: contextlib.ExitStack, *, without: str = "",
                 mapping: dict[str, list[str]] | None = None) -> None:
        """``without``: how to run the method without activations, for the advice on all-zero ones (e.g. fp8's
        ``--option activation_scheme=dynamic``; empty when dropping ``--calibration`` does). ``mapping``: the fused
        modules whose name serves their parts (``DEFAULT_PACKED_MODULES_MAPPING`` when None)."""
        if not path.is_file():
            raise QuantizeError(f"calibration file {str(path)!r} does not exist")
        self.path = path
        self.handle = stack.enter_context(open_safetensors(path, "calibration file", pread=True))
        self.keys = set(self.handle.keys())
        self.without = without or "drop --calibration (the method then quantizes without activations)"
        self.fused: dict[str, str] = {}  # module → the fused layer's key its activations are read under
        self.mapping = mapping
        self.unread: list[str] = []  # keys naming no module of the checkpoint (:meth:`unknown_keys`)
        self.notes: list[str] = []  # for the summary (:meth:`check`)

    def _fused_key(self, module: str) -> str | None:
        key = as_model_shows(module, self.mapping)  # q/k/v_proj → qkv_proj: a part's activations are its fused layer's input
        return key if key != module and key in self.keys else None

    def check(self, modules: list[str], checkpoint_modules: Iterable[str] = ()) -> None:
        """Refuse a quantized module of ``modules`` with no activations under its name or its fused layer's, naming
        the file's keys that name no module of the checkpoint with the closest module name (a misspelled key,
        ``to_qq``, leaves the module it meant without activations), or, for a key that looks like a fused module of
        checkpoint modules beside it (``to_qkv``: the model's layer, of ``to_q``, ``to_k``, ``to_v``), the ``--fuse``
        that makes its activations serve them. Such keys beside a complete set are noted (:attr:`notes`), not
        refused: hooks on every module also record modules without tensors (an activation, ``ff.net.1``), which the
        checkpoint cannot tell from a typo."""
        fused, fused_keys, unknown = self.unknown_keys(checkpoint_modules)
        for m in modules:
            if m not in self.keys and (key := self._fused_key(m)) is not None:
                self.fused[m] = key
        missing = [m for m in modules if m not in self.keys and m not in self.fused]
        if missing:
            raise QuantizeError(
                f"calibration file {self.path} has no activations for {len(missing)} quantized module(s), e.g. "
                f"{missing[:5]}; it has {sorted(self.keys)[:5]}... "
                + (f"{fused}. " if fused else "")
                + "Key it by module name (the tensor name without '.weight'), holding [tokens, in_features] inputs — a "
                "fused layer's name (qkv_proj, gate_up_proj) serves its parts — or --skip those modules"
                + (f". Its keys that name no module of the checkpoint: {unknown} — misspelled?" if unknown else "")
            )
        listed = ", ".join(filter(None, [unknown, names(fused_keys, limit=5)]))
        self.notes = [f"calibration file {str(self.path)!r}: {len(self.unread)} key(s) name no module of the "
                      f"checkpoint and were not read: {listed} (a module without tensors, such as an activation, is "
                      "fine; a misspelled key is not)" + (f". {fused}" if fused else "")] if self.unread else []

    def unknown_keys(self, checkpoint_modules: Iterable[str]) -> tuple[str, list[str], str]:
        """The keys naming no module of the checkpoint, for messages: what the keys that look like fused modules of
        modules beside them say (:meth:`_looks_fused`) and those keys, then the others, each with the closest module
        name ('' for none). A key may name any module that holds tensors, a fused layer its parts load into
        (``qkv_proj``), or a module above them (``blocks.0.attn``)."""
        checkpoint_modules = list(checkpoint_modules)
        known: set[str] = set()
        for module in checkpoint_modules:
            for name in {module, as_model_shows(module, self.mapping)}:
                parts = name.split(".")
                known.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        self.unread = sorted(k for k in self.keys if k not in known)
        fused, fused_keys = self._looks_fused(checkpoint_modules)
        others = [k for k in self.unread if k not in fused_keys]
        candidates = sorted(known)
        hints = []
        for key in others[:5]:
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.8)  # (long names are alike: the best)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return fused, fused_keys, ", ".join(hints) + (f" and {len(others) - 5} more" if len(others) > 5 else "")

    def _looks_fused(self, checkpoint_modules: list[str]) -> tuple[str, list[str]]:
        """What the unread keys that look like fused modules of checkpoint modules beside them (``to_qkv`` beside
        ``to_q``, ``to_k``, ``to_v``: :func:`fused_from`) say — the ``--fuse`` that makes their activations serve
        those modules — and those keys. A model that fuses modules the checkpoint stores apart records its inputs
        under the fused name; the closest single name (``to_v``) would be the wrong fix."""
        siblings: dict[str, set[str]] = {}
        for module in checkpoint_modules:
            parent, _, leaf = module.rpartition(".")
            siblings.setdefault(parent, set()).add(leaf)
        groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for key in self.unread:
            parent, _, leaf = key.rpartition(".")
            if parts := fused_from(leaf, siblings.get(parent, ())):
                groups.setdefault((leaf, tuple(parts)), []).append(key)
        said = []
        for (leaf, parts), keys in groups.items():
            parent = keys[0].rpartition(".")[0]
            beside = [f"{parent}.{p}" if parent else p for p in parts]
            said.append(f"Its key(s) {names(keys, limit=3)} name no module of the checkpoint but look like a fused module "
                        f"of the modules beside them ({names(beside)}, stored separately): tell fvq quantize which "
                        f"modules the model fuses with {fuse_flag(leaf, list(parts))}, and activations keyed by the "
                        "fused name serve its parts")
        return ". ".join(said), [k for keys in groups.values() for k in keys]

    def get(self, module: str, in_features: int) -> torch.Tensor:
        """``[tokens, in_features]`` activations of ``module``; QuantizeError naming the file and module when they
        do not fit the weight, hold NaN/inf (the scales computed from them would be NaN) or are all zero.

        All zero says the capture recorded nothing of the module's real inputs, and no scale fits those: fp8's
        ``input_scale`` is ``amax / 448``, ~0 (the floor of the clamp), which saturates every real activation to
        ``448 * input_scale`` — outputs ~0, relative error 1; AWQ's clip search finds every candidate equal and keeps
        round-to-nearest unannounced. No floor fixes it (compressed-tensors clamps scales at float32's eps, 1.2e-7,
        vLLM's per-token kernels at 1 / (448 * 512): inputs past 5e-5 or 2e-3 saturate), so it is refused."""
        key = module if module in self.keys else self.fused.get(module, module)
        x = self.handle.get_tensor(key)
        read = repr(key) if key == module else f"{key!r} (read for its part {module!r})"
        where = f"calibration file {str(self.path)!r}: tensor {read} ({x.dtype}, shape {list(x.shape)})"
        if x.dim() == 0 or x.shape[-1] != in_features or not x.is_floating_point():
            raise QuantizeError(
                f"{where}: expected floating-point [..., {in_features}] activations (the module's weight has "
                f"in_features={in_features}); write each module's inputs, e.g. with forward pre-hooks"
            )
        x = x.reshape(-1, in_features)
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            first = [int(i) for i in bad.nonzero()[0]]
            raise QuantizeError(
                f"{where}: expected finite activations, found {int(bad.sum())} of {x.numel()} NaN/inf, the first at "
                f"[token {first[0]}, channel {first[1]}] (rows flattened); scales from them would be NaN. Re-capture "
                "the calibration data (a diverged or overflowed run), or --skip the module"
            )
        if not bool(x.any()):
            raise QuantizeError(
                f"{where}: expected the module's input activations, found all {x.numel()} values zero: the capture "
                "recorded none of its real inputs (a hook on a branch the calibration run did not take, inputs zeroed "
                "by padding or masking), and scales computed from zeros fit no real input (fp8's static input_scale "
                "would be ~0 and the layer's outputs ~0). Re-capture with calibration data that reaches the module, "
                f"--skip the module, or {self.without}"
            )
        return x


def check_calibration_read(method: str, config: QuantizationConfig, calibration: str | os.PathLike[str]) -> None:
    """Refuse a calibration file for a config whose ``quantize_weight`` declares it ignores activations: the operator
    would believe the file changed the checkpoint. Checked before anything is read (the file need not exist)."""
    if config.uses_calibration() is not False:
        return
    raise QuantizeError(
        f"--calibration {str(calibration)!r} (calibration=) for {describe_method(method)}: {config!r} says "
        "uses_calibration() is False, i.e. its quantize_weight does not read activations, so the calibration file "
        "would change nothing in the checkpoint written. Drop --calibration; or, if the method reads activations under "
        "other settings (see its documentation and the config above), give those with --option"
    )


def check_calibration_given(method: str, config: QuantizationConfig, options: dict[str, Any]) -> None:
    """Refuse, before any tensor is read, a run without ``--calibration`` whose config says it cannot quantize without
    one (``requires_calibration()``: fp8 with ``activation_scheme=static``, whose ``input_scale`` comes from them),
    instead of failing at the first tensor with advice (``--skip`` it) that only moves the error to the next."""
    if config.requires_calibration() is not True:
        return
    given = " ".join(f"--option {k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in options.items()) \
        or "its default options"
    raise QuantizeError(
        f"{describe_method(method)} with {given} needs calibration activations, and no --calibration was given: "
        f"{config!r} says requires_calibration() is True. No tensor was read and nothing was written. Pass "
        "--calibration FILE.safetensors "
        f"(calibration=): {CALIBRATION_FILE}; or choose options under which the method runs without them"
    )
