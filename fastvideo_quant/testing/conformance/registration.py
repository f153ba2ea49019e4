"""Contract: the method is registered, its config class is well formed and round-trips.

Checks here need no layer, so they run even where the method cannot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from fastvideo_quant.testing.conformance.fixtures import MethodFixtures
from fastvideo_quant.testing.conformance.subject import LAYER_KINDS, Subject


def check_reachable(subject: Subject) -> None:
    """The method is in the registry, from a plugin the plugin manager loaded, with a QuantizationConfig."""
    from fastvideo_quant.plugins import get_plugin_manager, get_registry
    from fastvideo_quant.quantization.base import QuantizationConfig

    registry = get_registry()
    reg = registry.by_name.get(subject.method)
    if reg is None:
        raise subject.fail("registration", "plugin manager",
                           f"no plugin registers it; registered methods: {sorted(registry.by_name)}",
                           "call register(MyConfig, MyLinearMethod) in the plugin's register_quantization_methods "
                           "hook and expose the hooks module as an entry point in the 'fastvideo_quant' group "
                           "(then reinstall the distribution)")
    names = [n for n, _ in get_plugin_manager().list_name_plugin()]
    if reg.plugin not in names:
        raise subject.fail("registration", f"plugin {reg.plugin!r}", f"is not loaded by the plugin manager ({names})",
                           "register through the plugin manager, not the registry directly")
    if not (isinstance(reg.config_cls, type) and issubclass(reg.config_cls, QuantizationConfig)):
        raise subject.fail("registration", "config class", f"{reg.config_cls!r} is not a QuantizationConfig",
                           "subclass fastvideo_quant.quantization.QuantizationConfig")
    if reg.config_cls.get_name() != subject.method:
        raise subject.fail("registration", reg.config_cls.__name__,
                           f"get_name() returns {reg.config_cls.get_name()!r}, registered as {subject.method!r}",
                           "return the registered name from get_name()")


def check_declarations(subject: Subject) -> None:
    """Activation dtypes, min capability, CPU support, availability, config files and tolerance are declared."""
    from fastvideo_quant.quantization.base import Tolerance

    cls = subject.config_cls()
    where = cls.__name__
    dtypes = cls.get_supported_act_dtypes()
    if not dtypes or not all(isinstance(d, torch.dtype) and d.is_floating_point for d in dtypes):
        raise subject.fail("declarations: get_supported_act_dtypes", where, f"returned {dtypes!r}",
                           "return a non-empty list of floating torch dtypes, e.g. [torch.bfloat16, torch.float16]")
    cap = cls.get_min_capability()
    if not isinstance(cap, int) or isinstance(cap, bool) or not 0 <= cap < 1000:
        raise subject.fail("declarations: get_min_capability", where, f"returned {cap!r}",
                           "return the minimum CUDA compute capability times ten as an int, e.g. 89 (0 for any)")
    for fn in ("cpu_support", "unavailable_reason"):
        value = getattr(cls, fn)()
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise subject.fail(f"declarations: {fn}", where, f"returned {value!r}",
                               "return None or a one-line, non-empty str")
    files = cls.get_config_filenames()
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise subject.fail("declarations: get_config_filenames", where, f"returned {files!r}", "return a list of str")
    tol = cls.tolerance
    unbounded = [str(d) for d in tol.unbounded(dtypes)] if isinstance(tol, Tolerance) else []
    if not isinstance(tol, Tolerance) or unbounded:
        raise subject.fail("declarations: tolerance", where, f"tolerance is {tol!r}"
                           + (f", which bounds no error for {unbounded}" if unbounded else ""),
                           "set the class attribute tolerance = Tolerance(max_rel_error=..., min_sqnr_db=...) to "
                           "what you measured plus a margin (and dtypes={torch.float32: Tolerance(...)} for a dtype "
                           "that measures far less)")


def check_config_round_trip(subject: Subject) -> None:
    """``from_config(config)`` works, ``to_dict()`` round-trips, and selection maps the dict back to the method."""
    from fastvideo_quant.quantization.base import QuantizationConfig
    from fastvideo_quant.quantization.selection import resolve_quant_config

    cls = subject.config_cls()
    where = f"{cls.__name__}.from_config({subject.writer_options()!r})"
    with _skip_if_unavailable(subject):
        cfg = subject.quant_config()
    if not isinstance(cfg, QuantizationConfig):
        raise subject.fail("config round-trip", where, f"returned {cfg!r}", "return an instance of the config class")
    try:
        d = cfg.to_dict()
    except NotImplementedError as exc:
        raise subject.fail("config round-trip", where,
                           f"to_dict() of {subject.owner()} raised {type(exc).__name__}: {exc}",
                           "implement to_dict() returning the checkpoint's quantization_config dict") from exc
    if not isinstance(d, dict):
        raise subject.fail("config round-trip", where, f"to_dict() returned {type(d).__name__}", "return a dict")
    _check_settings_kept(subject, where, d)
    again = cls.from_config(dict(d))
    if type(again) is not type(cfg) or again.to_dict() != d:
        raise subject.fail("config round-trip", where,
                           f"from_config(to_dict()) gives {type(again).__name__} with to_dict() {again.to_dict()!r}, "
                           f"expected {d!r}",
                           "read back every key to_dict writes (and write every setting from_config reads)")
    if cls.unavailable_reason():  # selection refuses unavailable methods; the rest is checked
        return
    section = {"quant_method": subject.method, **d}
    resolved = resolve_quant_config(hf_config={"quantization_config": section})
    if type(resolved) is not type(cfg) or resolved.to_dict() != d:
        raise subject.fail("config round-trip", "resolve_quant_config(hf_config={'quantization_config': to_dict()})",
                           f"selected {type(resolved).__name__} with {getattr(resolved, 'to_dict', lambda: None)()!r}",
                           "write 'quant_method' in to_dict(), and claim only your own checkpoints in "
                           "override_quantization_method")


def _check_settings_kept(subject: Subject, where: str, d: dict) -> None:
    """No key of the suite's ``config`` is read by ``from_config`` and then dropped for its default: a setting lost
    so passes the round trip, since both sides lose it. ``to_dict()`` may write a setting otherwise than it was given
    (a skip list sorted or deduplicated, None as [], "bf16" as "bfloat16"); it fails only when it writes what
    ``from_config`` writes without the key (the default) although the value given is not that default."""
    given = subject.config or {}
    lost = {k: (v, d[k]) for k, v in given.items()
            if k in d and not _same_setting(v, d[k]) and _default_kept(subject, given, k, v, d[k])}
    if lost:
        found = ", ".join(f"{k}={new!r} for the {k}={old!r} it was given" for k, (old, new) in lost.items())
        raise subject.fail("config round-trip", where,
                           f"to_dict() writes {found}, as from_config writes without the key: from_config read the "
                           "setting and kept its default, so the layers and the checkpoint's quantization_config use "
                           "that instead of what was asked",
                           "store what from_config reads (cfg.setting = config['setting']) and write it in to_dict()")


def _default_kept(subject: Subject, config: dict, key: str, value: object, written: object) -> bool:
    """Whether ``written`` is what ``from_config`` writes for ``key`` without it (the default) while ``value`` is
    not; False when ``from_config`` refuses the config without ``key`` (a required key has no default), or for a
    ``value`` of None (no setting: the default asked for)."""
    if value is None:
        return False
    try:
        default = subject.config_cls().from_config({k: v for k, v in config.items() if k != key}).to_dict()
    except Exception:  # noqa: BLE001 - required (or needed by another setting): nothing to compare with
        return False
    if not isinstance(default, dict) or key not in default:
        return False
    return default[key] == written and not _same_setting(value, default[key])


def _same_setting(given: object, written: object) -> bool:
    """Equal, or equal up to a normalisation a config may apply: case of a string, list vs tuple, "32" vs 32."""
    if given == written:
        return True
    if isinstance(given, (list, tuple)) and isinstance(written, (list, tuple)):
        return list(given) == list(written)
    return str(given).lower() == str(written).lower()


def check_quant_method_registered(subject: Subject, kind: str) -> None:
    """``get_quant_method`` returns a registered method class (so the layer's v1/v2 loader choice is right)."""
    from fastvideo_quant.plugins import get_registry

    reason = subject.why_not_runnable()
    if reason:
        pytest.skip(reason)
    reg = get_registry().by_name[subject.method]
    layer = subject.build_layer(kind, bias=False, dtype=subject.main_dtype())
    method = layer.quant_method
    if not reg.methods:
        raise subject.fail("registration: method classes", reg.config_cls.__name__,
                           "register() was called with the config class only, so no layer knows whether its "
                           "parameters load through weight_loader_v2",
                           f"call register({reg.config_cls.__name__}, {type(method).__name__}, weight_loader_v2=...)")
    if not isinstance(method, reg.methods):
        raise subject.fail("registration: get_quant_method", subject.describe(kind),
                           f"returned {type(method).__name__}, which is not (a subclass of) a method registered "
                           f"with {reg.config_cls.__name__}: {[m.__name__ for m in reg.methods]}",
                           f"pass {type(method).__name__} to register(...) so its weight_loader_v2 choice is known")


#: Layer names of the skip-list check: one the skip list names, and ones it does not. The second is caught by a
#: substring match, so it is checked only for a config that keeps whole-component matching (one that overrides
#: ``skip_entry_matches``, as AWQ does for substrings, declares its format's own rule).
SKIPPED_MODULE = "blocks.0.proj_out"
QUANTIZED_MODULES = ("blocks.1.proj_in", "blocks.0.proj_out_gate")


def check_skip_list(subject: Subject) -> None:
    """``modules_to_not_convert`` survives ``from_config`` → ``to_dict`` → ``from_config`` (what ``fvq quantize``
    writes and a model loads), a skipped layer gets the unquantized method, and other layers do not."""
    from fvq_unquantized import UnquantizedLinearMethod

    from fastvideo_quant.errors import PluginError
    from fastvideo_quant.layers.linear import ReplicatedLinear
    from fastvideo_quant.plugins.manager import quant_method_for
    from fastvideo_quant.quantization.base import QuantizationConfig

    cls = subject.config_cls()
    options = dict(subject.config or {})
    skip = [SKIPPED_MODULE]
    # As `fvq quantize --skip` builds it: the generic key for from_config, the attribute for to_dict.
    with _skip_if_unavailable(subject):
        writer = cls.from_config(subject.writer_options(modules_to_not_convert=list(skip)))
    writer.modules_to_not_convert = list(skip)
    section = writer.to_dict()
    where = f"{cls.__name__}.from_config({{'modules_to_not_convert': {skip!r}, ...}}).to_dict() = {section!r}"
    loaded = cls.from_config(dict(section))
    fix = ("read the skip list in from_config (self.modules_to_not_convert = cls.skip_list_from(config)), write it "
           "in to_dict ('modules_to_not_convert': list(self.modules_to_not_convert)), and return "
           "self.linear_method_or_skip(layer, prefix, lambda: MyLinearMethod(...)) from get_quant_method")
    with torch.device("meta"):
        probe = ReplicatedLinear(8, 8, bias=False, params_dtype=torch.float32)
    got = {}
    own_rule = type(loaded).skip_entry_matches is not QuantizationConfig.skip_entry_matches
    quantized = QUANTIZED_MODULES[:1] if own_rule else QUANTIZED_MODULES
    for name in (SKIPPED_MODULE, *quantized):
        try:
            got[name] = quant_method_for(loaded, probe, name)
        except PluginError as exc:
            from fastvideo_quant.testing.conformance.subject import GET_QUANT_METHOD_FIXES

            contract = getattr(exc, "contract", None)
            raise subject.fail(contract if contract in GET_QUANT_METHOD_FIXES else "get_quant_method",
                               f"layer {name!r}", str(exc), GET_QUANT_METHOD_FIXES.get(
                                   contract, "return an instance of a LinearMethodBase subclass implementing "
                                   "create_weights and apply")) from exc
    if not isinstance(got[SKIPPED_MODULE], UnquantizedLinearMethod) and _skips(loaded, SKIPPED_MODULE):
        raise subject.fail("modules_to_not_convert", where,
                           f"from_config(to_dict()) keeps the skip list (is_layer_skipped({SKIPPED_MODULE!r}) is "
                           f"True), but its get_quant_method builds that layer with "
                           f"{type(got[SKIPPED_MODULE]).__name__}, expected UnquantizedLinearMethod: get_quant_method "
                           "ignores the skip list, so `fvq quantize --skip` is refused and a checkpoint's unquantized "
                           "modules would load as quantized layers",
                           f"honour is_layer_skipped in get_quant_method: return self.linear_method_or_skip(layer, "
                           f"prefix, lambda: {type(got[SKIPPED_MODULE]).__name__}(...))")
    if not isinstance(got[SKIPPED_MODULE], UnquantizedLinearMethod):
        raise subject.fail("modules_to_not_convert", where,
                           f"from_config(to_dict()) builds layer {SKIPPED_MODULE!r}, which the skip list names, with "
                           f"{type(got[SKIPPED_MODULE]).__name__}, expected UnquantizedLinearMethod; `fvq quantize "
                           "--skip` (and every checkpoint with an unquantized embed/norm/proj_out weight) fails with "
                           "'does not round-trip modules_to_not_convert'", fix)
    for name in quantized:
        if isinstance(got[name], UnquantizedLinearMethod) and not isinstance(
                cls.from_config(dict(options)).get_quant_method(probe, prefix=name), UnquantizedLinearMethod):
            raise subject.fail("modules_to_not_convert", where,
                               f"layer {name!r}, which the skip list {skip} does not name, is skipped too",
                               "match skip-list entries as whole dotted name components (is_layer_skipped does), "
                               "or override skip_entry_matches with your format's documented rule")


def _skips(config, name: str) -> bool:
    """Whether ``config.is_layer_skipped(name)``; False when it raises (the failure then names the round trip)."""
    try:
        return bool(config.is_layer_skipped(name))
    except Exception:  # noqa: BLE001 - only asked to tell two failures apart
        return False


@contextlib.contextmanager
def _skip_if_unavailable(subject: Subject) -> Iterator[None]:
    """Skip, saying why, where ``from_config`` says the subject's config cannot run here (a backend missing)."""
    from fastvideo_quant.errors import MethodUnavailableError

    try:
        yield
    except MethodUnavailableError as exc:
        pytest.skip(f"method {subject.method!r} with config {subject.config or {}} is unavailable here: {exc}")


def check_weight_bar_declared(subject: Subject) -> None:
    """Skipped, saying so, when the weight-fidelity checks run at the suite's loose default because neither the
    suite class nor the config class declares ``weight_rel_error`` (a scale written 20% off passes that default, and
    ``apply`` is compared with the method's own ``dequantize_weight``, so nothing else would see it)."""
    from fastvideo_quant.testing.conformance.subject import DEFAULT_WEIGHT_REL_ERROR

    cls = subject.config_cls()
    if subject.weight_rel_error is None and getattr(cls, "weight_rel_error", None) is None:
        pytest.skip(f"weight fidelity checked at the default bar {DEFAULT_WEIGHT_REL_ERROR} only, which a scale 20% "
                    f"off passes: declare weight_rel_error on {cls.__name__} (your measured error plus a margin)")


class RegistrationTests(MethodFixtures):
    """Registration, declarations and config round-trip."""

    def test_weight_bar_declared(self, fvq_subject: Subject) -> None:
        check_weight_bar_declared(fvq_subject)

    def test_reachable_by_name(self, fvq_subject: Subject) -> None:
        check_reachable(fvq_subject)

    def test_declarations(self, fvq_subject: Subject) -> None:
        check_declarations(fvq_subject)

    def test_config_round_trip(self, fvq_subject: Subject) -> None:
        check_config_round_trip(fvq_subject)

    def test_modules_to_not_convert(self, fvq_subject: Subject) -> None:
        check_skip_list(fvq_subject)

    @pytest.mark.parametrize("kind", LAYER_KINDS)
    def test_quant_method_registered(self, fvq_subject: Subject, kind: str) -> None:
        check_quant_method_registered(fvq_subject, kind)
