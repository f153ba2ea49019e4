"""Contract: a config that says it quantizes on load (``online_quantization = True``, the default) does.

A model author who selects the method by name for a float checkpoint (``resolve_quant_config(method=NAME)``, no
quantization section) gets layers built with ``from_config({})``, and the loader writes the checkpoint's float
tensors into them through their weight loaders. A method that cannot quantize a float weight on load must say so
with ``online_quantization = False``: that load is then one error saying to run ``fvq quantize`` first (as AWQ's
is) instead of a loader error per layer (``expected an integer tensor (torch.int8), found torch.bfloat16``).

The float tensors load through the layers' real weight loaders (as the loading checks' do) and the layer is processed
through the loader's own ``process_weights_after_loading``; its de-quantized weight must be the float weight up to
``weight_rel_error`` and ``apply`` must meet the config's ``tolerance``.
"""

from __future__ import annotations

import pytest
import torch

from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.apply import INPUT_UNCHANGED, OUTPUT_SHAPE, reference, run_apply, within_tolerance
from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.loading import dequantized
from fastvideo_quant.testing.conformance.module_state import check_memory
from fastvideo_quant.testing.conformance.report import ConformanceFailure, rel_error
from fastvideo_quant.testing.conformance.subject import FUSED_KINDS, LAYER_KINDS, Subject, random_input

CONTRACT = "online_quantization"
MEMORY = "module state: memory"


def online_config(subject: Subject):
    """The config a float checkpoint loads with, and how it was built: ``from_config({})``, as
    ``resolve_quant_config`` builds it; the subject's ``config`` where ``from_config({})`` needs keys."""
    from fastvideo_quant.errors import ConfigError

    cls = subject.config_cls()
    try:
        return cls.from_config({}), "from_config({})"
    except ConfigError:
        if not subject.config:
            raise
        return cls.from_config(dict(subject.config)), f"from_config({subject.config!r})"


def check_online_quantization(subject: Subject, kind: str) -> None:
    """With ``online_quantization`` True, a ``kind`` layer of :func:`online_config` loads the float weight and bias
    of a float checkpoint, is processed, and de-quantizes and applies within the subject's bars."""
    cls = subject.config_cls()
    if not cls.online_quantization:
        pytest.skip(f"{cls.__name__}.online_quantization is False: the method loads only checkpoints that "
                    "fvq quantize wrote")
    dtype = subject.main_dtype()
    cfg, built = online_config(subject)
    where = subject.describe(kind, bias=True, dtype=dtype)
    try:
        _load_and_apply(subject, kind, cfg, dtype, where)
    except ConformanceFailure as exc:
        if exc.contract in (MEMORY, ck.VALIDATE_UNCHANGED, OUTPUT_SHAPE, INPUT_UNCHANGED):  # quantizing on load worked
            raise  # (or was never reached): what it kept, what validation changed, or apply's output size or its writes
            # into its input are the bug, not the declaration
        raise subject.fail(
            CONTRACT, where,
            f"{cls.__name__}.online_quantization is True, which says that layers of {cls.__name__}.{built} load a "
            f"float checkpoint and quantize it on load (resolve_quant_config(method={subject.method!r}) builds them "
            f"for a checkpoint without a quantization config), but with the float weights of a {kind} layer: "
            f"[{exc.contract}] {exc.problem}",
            f"if the method cannot quantize a float checkpoint on load, set online_quantization = False on "
            f"{cls.__name__} (loading a float checkpoint by its name then says to run fvq quantize first); else make "
            f"{built} layers take the float weight (a 'weight' parameter in params_dtype) and quantize it in "
            "process_weights_after_loading",
        ) from exc.__cause__  # (exc is repeated in the message; its cause is the plugin's own error, if any)


def _load_and_apply(subject: Subject, kind: str, cfg, dtype: torch.dtype, where: str) -> None:
    ckpt = float_checkpoint(subject, kind)
    layer = subject.build_layer(kind, bias=True, dtype=dtype, quant_config=cfg)
    if "weight" not in dict(layer.named_parameters(recurse=False)):
        raise subject.fail("create_weights", where, f"registered no 'weight' parameter for the checkpoint's float "
                           f"weight (parameters: {sorted(dict(layer.named_parameters(recurse=False)))})", "")
    ck.load(layer, float_entries(layer, ckpt, kind, dtype), subject, kind)
    _check_nothing_missing(subject, layer, where)
    layer.to(subject.device())
    ck.process_weights(layer, subject, kind)
    check_memory(subject, layer, kind, f"{where}, quantized on load from a float checkpoint")
    w = dequantized(subject, layer, kind)
    err = rel_error(w, ckpt.float_weight()) if w.shape == ckpt.float_weight().shape else float("inf")
    if not err <= subject.weight_bar:
        raise subject.fail("loading: weight fidelity", where,
                           f"||dequantize_weight - float weight|| / ||float weight|| = {err:.3g} > weight_rel_error "
                           f"{subject.weight_bar} (dequantize_weight shape {list(w.shape)})", "")
    x = random_input(subject, (subject.tokens, subject.input_size), dtype, kind, "online")
    out = run_apply(subject, layer, x, layer.bias, kind, where)
    missed = within_tolerance(subject, out, reference(x, w, layer.bias), dtype=x.dtype)
    if missed:
        raise subject.fail("apply: accuracy", where, f"against x.float() @ dequantize_weight(layer).T + bias: {missed}",
                           "")


def float_checkpoint(subject: Subject, kind: str) -> ck.LayerCheckpoint:
    """The float weights and biases the quantized checkpoint checks use (the same seeds), with no quantized tensors."""
    return ck.LayerCheckpoint(kind, [ck.Part(s, w, b, {}) for s, w, b in ck.float_parts(subject, kind)])


def float_entries(layer: torch.nn.Module, ckpt: ck.LayerCheckpoint, kind: str, dtype: torch.dtype) -> list[ck.Entry]:
    """The loader calls of a float checkpoint in the model's dtype: each part's ``weight`` and ``bias``."""
    prefix = getattr(layer, "prefix", "") or f"conformance.{kind}"
    out = []
    for suffix in ("weight", "bias"):
        for part in ckpt.parts:
            tensor = (part.weight if suffix == "weight" else part.bias).to(dtype)
            out.append(ck.Entry(suffix, ck.tensor_name(prefix, part.shard_id, suffix), tensor, part.shard_id,
                                kind in FUSED_KINDS))
    return out


def _check_nothing_missing(subject: Subject, layer: torch.nn.Module, where: str) -> None:
    """No parameter besides ``weight`` and ``bias`` that a model load would report missing."""
    left = [n for n, p in layer.named_parameters(recurse=False) if n not in ("weight", "bias")
            and n not in subject.params_not_in_checkpoint and not getattr(p, "checkpoint_optional", False)]
    if left:
        raise subject.fail("create_weights", where, f"registered {left}, for which a float checkpoint has no tensor, "
                           "so a model load reports them missing (create them in process_weights_after_loading, or "
                           "mark one the loader may leave unloaded with checkpoint_optional=True)", "")


def check_reads_quantized_checkpoint(subject: Subject) -> None:
    """A config class with :attr:`quantized_checkpoint_keys` tells its two modes apart through
    ``reads_quantized_checkpoint()``: True for the config a checkpoint ``quantize_weight`` wrote loads with
    (``from_config(to_dict())``), False for :func:`online_config` when ``online_quantization`` is True. The loader asks
    it to refuse, in one error before any tensor is read, a checkpoint stored quantized loaded into layers built to
    quantize on load; a wrong answer turns that into one loader error per tensor."""
    cls = subject.config_cls()
    keys = cls.quantized_checkpoint_keys
    if not keys:
        pytest.skip(f"{cls.__name__} declares no quantized_checkpoint_keys: it has one way to store weights")
    fix = (f"{cls.__name__}.reads_quantized_checkpoint() reads each quantized_checkpoint_keys key ({keys}) as the "
           "config's attribute of that name by default; where the config keeps the setting under another name, "
           "override reads_quantized_checkpoint() to return it")
    stored = subject.checkpoint_config()
    if stored.reads_quantized_checkpoint() is not True:
        raise subject.fail(CONTRACT, f"{cls.__name__}.from_config(to_dict())",
                           f"reads_quantized_checkpoint() is {stored.reads_quantized_checkpoint()!r} for the config "
                           "of the checkpoint quantize_weight writes; expected True", fix)
    if cls.online_quantization:
        online, built = online_config(subject)
        if online.reads_quantized_checkpoint() is not False:
            raise subject.fail(CONTRACT, f"{cls.__name__}.{built}",
                               f"reads_quantized_checkpoint() is {online.reads_quantized_checkpoint()!r} for the "
                               "config that quantizes a float checkpoint on load (online_quantization is True); "
                               "expected False", fix)


class OnlineQuantizationTests(MethodFixtures):
    """A config with ``online_quantization = True`` loads a float checkpoint (every layer class)."""

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_online_quantization(self, fvq_runnable: Subject, kind: str) -> None:
        check_online_quantization(fvq_runnable, kind)

    def test_reads_quantized_checkpoint(self, fvq_subject: Subject) -> None:
        check_reads_quantized_checkpoint(fvq_subject)
