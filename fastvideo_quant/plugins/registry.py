"""The method registry built from the plugins' ``register_quantization_methods`` hooks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

from fastvideo_quant.errors import PluginError

if TYPE_CHECKING:
    from fastvideo_quant.quantization.base import QuantizationConfig, QuantizeMethodBase

#: The distribution of the built-in plugins (fvq_unquantized, fvq_int8, fvq_fp8, fvq_awq).
BUILTIN_DISTRIBUTION = "fastvideo-quant"


@dataclasses.dataclass(frozen=True)
class MethodRegistration:
    """One registered quantization method and where it came from."""

    name: str
    config_cls: type[QuantizationConfig]
    methods: tuple[type[QuantizeMethodBase], ...]
    weight_loader_v2: bool
    plugin: str
    distribution: str | None

    @property
    def origin(self) -> str:
        """``plugin 'x' (distribution 'y')``, or ``plugin 'x' (in-process)``: who registered it, for messages."""
        return f"plugin {self.plugin!r}" + (f" (distribution {self.distribution!r})" if self.distribution
                                            else " (in-process)")

    @property
    def described(self) -> str:
        """``method 'x' of plugin 'p' (distribution 'd')``: the method and who registered it, for messages."""
        return f"method {self.name!r} of {self.origin}"


class PluginRegistrations:
    """One plugin's ``register`` callback and what it registered, each call validated at once (a bad registration
    fails where the plugin made it, naming the plugin); the registry takes them whole or not at all."""

    def __init__(self, plugin: str, distribution: str | None, where: str, taken: dict[str, str]) -> None:
        self.plugin, self.distribution, self.where = plugin, distribution, where
        self._taken = taken  # method name -> who registered it, in the plugins added before this one
        self.items: list[MethodRegistration] = []

    def register(
        self,
        config_cls: type[QuantizationConfig],
        *methods: type[QuantizeMethodBase],
        weight_loader_v2: bool = False,
    ) -> None:
        from fastvideo_quant.plugins.declarations import check_declarations, check_not_abstract

        self._check_classes(config_cls, methods)
        self._check_v2_flag(config_cls, weight_loader_v2)
        check_not_abstract(config_cls, "config class", self.where)
        for m in methods:
            check_not_abstract(m, "method class", self.where, config_cls)
        mine = {r.name: f"{self.where} itself ({r.config_cls.__name__})" for r in self.items}
        name = check_declarations(config_cls, self.where, {**self._taken, **mine})
        if weight_loader_v2 and not methods:
            self._refuse_v2_for_no_method(name, config_cls)
        self._check_new(name, config_cls, methods, weight_loader_v2)
        self.items.append(MethodRegistration(
            name, config_cls, tuple(methods), weight_loader_v2, self.plugin, self.distribution))

    def _check_v2_flag(self, config_cls: type, value: object) -> None:
        """``weight_loader_v2`` is a real bool: ``"no"`` or ``"False"`` is a truthy string, and would load the
        method's parameters through ``weight_loader_v2``."""
        from fastvideo_quant.plugins.declarations import meant_bool

        if isinstance(value, bool):
            return
        fix = " or ".join(f"weight_loader_v2={v}" for v in meant_bool(value).split(" or "))
        raise PluginError(
            f"{self.where} registered {config_cls.__name__} with weight_loader_v2={value!r} ({type(value).__name__}); "
            f"expected a bool, True or False (this value reads as {bool(value)}): pass {fix}"
        )

    def _refuse_v2_for_no_method(self, name: str, config_cls: type) -> None:
        """``register(Cfg, weight_loader_v2=True)``: the loader choice is recorded per method class, so with none
        given it applies to nothing, and the layers would load the method's parameters through v1 without a word.
        (A config alone, without the flag, stays allowed: its declarations are checked, and the conformance suite
        fails it for the same reason.)"""
        cls = config_cls.__name__
        raise PluginError(
            f"{self.where}, method {name!r}: register({cls}, weight_loader_v2=True) names no method class: register() "
            "was called with the config class only, so no layer knows whether its parameters load through "
            "weight_loader_v2. weight_loader_v2=True applies to the method classes passed with it (a layer looks its "
            "loader up by the class get_quant_method returns), so here it would apply to nothing and every layer "
            f"would load through weight_loader (v1); pass every method class its get_quant_method returns: "
            f"register({cls}, <method classes>, weight_loader_v2=True)"
        )

    def _check_classes(self, config_cls: type, methods: tuple[type, ...]) -> None:
        from fastvideo_quant.quantization.base import QuantizationConfig, QuantizeMethodBase

        if not (isinstance(config_cls, type) and issubclass(config_cls, QuantizationConfig)):
            raise PluginError(
                f"{self.where} registered {config_cls!r}, which is not a subclass of "
                "fastvideo_quant.quantization.QuantizationConfig; pass the config class itself"
            )
        for m in methods:
            if not (isinstance(m, type) and issubclass(m, QuantizeMethodBase)):
                raise PluginError(
                    f"{self.where} registered method {m!r} for {config_cls.__name__}, which is not a "
                    "subclass of fastvideo_quant.quantization.QuantizeMethodBase"
                )

    def _check_new(self, name: str, config_cls: type, methods: tuple[type, ...], v2: bool) -> None:
        """Against this plugin's earlier registrations: the name once, one loader choice per method class."""
        first = next((r for r in self.items if r.name == name), None)
        if first is not None:
            same = first.config_cls is config_cls
            raise PluginError(
                f"{self.where} registered method {name!r} twice ({first.config_cls.__name__}"
                + (" both times" if same else f", then {config_cls.__name__}") + "); call register once per method"
                + ("" if same else f", and give {config_cls.__name__} a get_name() of its own")
            )
        for m in methods:
            earlier = next((r for r in self.items if m in r.methods), None)
            if earlier is not None and earlier.weight_loader_v2 != v2:
                raise PluginError(
                    f"{self.where} registers {m.__name__} with weight_loader_v2={v2} for {name!r} and with "
                    f"weight_loader_v2={earlier.weight_loader_v2} for {earlier.name!r}; one class has one loader "
                    "(register a subclass for the other)"
                )


class Registry:
    """Method name → registration, and method class → loader choice.

    A name that two plugins register is in ``conflicts``, not ``by_name``: neither is used, since choosing one would
    depend on the order plugins happen to load in.
    """

    def __init__(self) -> None:
        self.by_name: dict[str, MethodRegistration] = {}
        self.conflicts: dict[str, list[MethodRegistration]] = {}
        self.plugins: dict[str, str] = {}  # plugin name -> "plugin 'x' (distribution 'd' 1.0)"
        self._v2: dict[type, tuple[bool, str]] = {}  # method class -> (weight_loader_v2, registering plugin)

    def begin(self, plugin: str, distribution: str | None, where: str) -> PluginRegistrations:
        """The registrations of ``plugin``, to fill through its ``register`` callback and then :meth:`add`."""
        taken = {n: self.plugins[r.plugin] for n, r in self.by_name.items()}
        taken.update({n: " and ".join(self.plugins[r.plugin] for r in rs) for n, rs in self.conflicts.items()})
        return PluginRegistrations(plugin, distribution, where, taken)

    def add(self, staged: PluginRegistrations) -> None:
        """Record one plugin's registrations, all or none: PluginError when a method class of it is registered by an
        earlier plugin with the other loader choice. A name another plugin registered becomes a conflict."""
        for reg in staged.items:
            for m in reg.methods:
                v2, owner = self._v2.get(m, (reg.weight_loader_v2, staged.plugin))
                if v2 != reg.weight_loader_v2:
                    raise PluginError(
                        f"{staged.where} registers {m.__name__} with weight_loader_v2={reg.weight_loader_v2}, but "
                        f"{self.plugins[owner]} already registered it with weight_loader_v2={v2}; one class has one "
                        f"loader: register {m.__name__} with weight_loader_v2={v2}, or register a subclass of it"
                        + self._taken_names(staged)
                    )
        self.plugins[staged.plugin] = staged.where
        for reg in staged.items:
            if reg.name in self.conflicts:
                self.conflicts[reg.name].append(reg)
            elif reg.name in self.by_name:
                self.conflicts[reg.name] = [self.by_name.pop(reg.name), reg]
            else:
                self.by_name[reg.name] = reg
            for m in reg.methods:
                self._v2[m] = (reg.weight_loader_v2, staged.plugin)

    def _taken_names(self, staged: PluginRegistrations) -> str:
        """``; it also registers method 'x', which ... registers ...``: the other problem a refused plugin has, so its
        author fixes both at once."""
        taken = [r for r in staged.items if r.name in self.by_name or r.name in self.conflicts]
        return "".join(
            f"; it also registers method {r.name!r}, which "
            + " and ".join(self.plugins[o.plugin] for o in self.conflicts.get(r.name, [self.by_name.get(r.name)]))
            + f" registers: return another name from {r.config_cls.__name__}.get_name()" for r in taken)

    def conflict_message(self, name: str, newcomer: str | None = None) -> str:
        """Why ``name`` is not usable: every plugin that registers it, and what to do. With ``newcomer`` (a plugin
        being added in-process), from its side: which plugins already register the name."""
        regs = self.conflicts[name]
        if newcomer is not None:
            mine = next(r for r in regs if r.plugin == newcomer)
            others = " and ".join(self.plugins[r.plugin] for r in regs if r.plugin != newcomer)
            return (f"{self.plugins[newcomer]} registers method {name!r}, which {others} already registers; method "
                    f"names must be unique: return another name from {mine.config_cls.__name__}.get_name()")
        who = " and ".join(self.plugins[r.plugin] for r in regs)
        third = [r for r in regs if r.distribution != BUILTIN_DISTRIBUTION] or regs[1:]
        rename = "; ".join(f"{self.plugins[r.plugin]} should return another name from "
                           f"{r.config_cls.__name__}.get_name()" for r in third)
        blockable = [r for r in third if r.distribution]
        remedy = (f"uninstall one, or block one with FVQ_DISABLE_PLUGINS={blockable[0].plugin}" if blockable else
                  f"remove one with fastvideo_quant.plugins.unregister_plugin({third[0].plugin!r})")
        return (f"method {name!r} is registered by {who}; method names must be unique, so "
                f"{'neither' if len(regs) == 2 else 'none of them'} is used. To fix it, {rename}; until then, {remedy}")

    def uses_weight_loader_v2(self, method_cls: type) -> bool:
        """The loader choice of ``method_cls`` or its nearest registered ancestor (default v1)."""
        for klass in method_cls.__mro__:
            if klass in self._v2:
                return self._v2[klass][0]
        return False

    def v2_class_names(self) -> list[str]:
        return [cls.__name__ for cls, (v2, _) in self._v2.items() if v2]


class LiveNames(Sequence[str]):
    """A read-only sequence whose items are recomputed from the live registry on each use.

    FastVideo's and vLLM's module-level lists are plain lists that plugins append to
    (``WEIGHT_LOADER_V2_SUPPORTED.append("MyMethod")``); here each is derived from what plugins register, so every
    list-mutating method raises a :class:`PluginError` saying so and how to register instead. ``name`` (the list's
    name), ``derived_from`` and ``register_call`` word that error."""

    def __init__(self, compute: Callable[[], list[str]], *, name: str = "this list",
                 derived_from: str = "the plugins' registrations (recomputed on every use)",
                 register_call: str = "register(MyConfig, MyLinearMethod, weight_loader_v2=...)") -> None:
        self._compute = compute
        self._name, self._derived_from, self._register_call = name, derived_from, register_call

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        name = self._name[:1].upper() + self._name[1:]
        raise PluginError(
            f"{name} is read-only: it is derived from {self._derived_from}, so changing it would change nothing; "
            f"register the method class in your plugin's register_quantization_methods hook: {self._register_call} "
            "(docs/plugins.md)"
        )

    append = extend = insert = remove = pop = clear = sort = reverse = _read_only
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only

    def __getitem__(self, index):  # type: ignore[override]
        return self._compute()[index]

    def __len__(self) -> int:
        return len(self._compute())

    def __iter__(self) -> Iterator[str]:
        return iter(self._compute())

    def __contains__(self, item: object) -> bool:
        return item in self._compute()

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))
