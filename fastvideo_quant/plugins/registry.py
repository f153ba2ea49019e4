"""The method registry built from the plugins' ``register_quantization_methods`` hooks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from fastvideo_quant.errors import PluginError

if TYPE_CHECKING:
    from fastvideo_quant.quantization.base import QuantizationConfig, QuantizeMethodBase


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


class Registry:
    """Method name → registration, and method class → loader choice."""

    def __init__(self) -> None:
        self.by_name: dict[str, MethodRegistration] = {}
        self._v2: dict[type, bool] = {}

    def make_register(self, plugin: str, distribution: str | None):
        """A ``register`` callback that validates and records on behalf of ``plugin``."""
        from fastvideo_quant.quantization.base import QuantizationConfig, QuantizeMethodBase

        where = f"plugin {plugin!r}" + (f" (distribution {distribution!r})" if distribution else "")

        def register(
            config_cls: type[QuantizationConfig],
            *methods: type[QuantizeMethodBase],
            weight_loader_v2: bool = False,
        ) -> None:
            if not (isinstance(config_cls, type) and issubclass(config_cls, QuantizationConfig)):
                raise PluginError(
                    f"{where} registered {config_cls!r}, which is not a subclass of "
                    "fastvideo_quant.quantization.QuantizationConfig; pass the config class itself"
                )
            for m in methods:
                if not (isinstance(m, type) and issubclass(m, QuantizeMethodBase)):
                    raise PluginError(
                        f"{where} registered method {m!r} for {config_cls.__name__}, which is not a "
                        "subclass of fastvideo_quant.quantization.QuantizeMethodBase"
                    )
            name = config_cls.get_name()
            if not isinstance(name, str) or not name:
                raise PluginError(f"{where}: {config_cls.__name__}.get_name() returned {name!r}; expected a non-empty str")
            if name in self.by_name:
                other = self.by_name[name]
                raise PluginError(
                    f"{where} registers method {name!r}, already registered by plugin {other.plugin!r}"
                    + (f" (distribution {other.distribution!r})" if other.distribution else "")
                    + "; method names must be unique. Uninstall one, or block one with FVQ_DISABLE_PLUGINS"
                )
            for m in methods:
                if m in self._v2 and self._v2[m] != bool(weight_loader_v2):
                    raise PluginError(
                        f"{where} registers {m.__name__} with weight_loader_v2={bool(weight_loader_v2)}, but it is "
                        f"already registered with weight_loader_v2={self._v2[m]}; one class has one loader"
                    )
            self.by_name[name] = MethodRegistration(
                name, config_cls, tuple(methods), bool(weight_loader_v2), plugin, distribution
            )
            for m in methods:
                self._v2[m] = bool(weight_loader_v2)

        return register

    def uses_weight_loader_v2(self, method_cls: type) -> bool:
        """The loader choice of ``method_cls`` or its nearest registered ancestor (default v1)."""
        for klass in method_cls.__mro__:
            if klass in self._v2:
                return self._v2[klass]
        return False

    def v2_class_names(self) -> list[str]:
        return [cls.__name__ for cls, v2 in self._v2.items() if v2]


class LiveNames(Sequence[str]):
    """A read-only sequence whose items are recomputed from the live registry on each use."""

    def __init__(self, compute) -> None:
        self._compute = compute

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
