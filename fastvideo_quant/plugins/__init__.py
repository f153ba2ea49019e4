"""The plugin system: pluggy hookspecs, the manager, and the method registry."""

from fastvideo_quant.errors import PluginError
from fastvideo_quant.plugins.entry_points import ENTRY_POINT_GROUP, EntryPointStatus, list_entry_points
from fastvideo_quant.plugins.failures import PluginFailure, PluginLoadWarning, PluginSelectionWarning
from fastvideo_quant.plugins.hookspecs import PROJECT_NAME, hookimpl, hookspec
from fastvideo_quant.plugins.manager import (
    PluginInfo,
    ensure_registered,
    get_plugin_failures,
    get_plugin_manager,
    get_plugins,
    get_registry,
    register_plugin,
    reset,
    unregister_plugin,
)
from fastvideo_quant.plugins.registry import MethodRegistration

__all__ = [
    "ENTRY_POINT_GROUP",
    "EntryPointStatus",
    "PROJECT_NAME",
    "MethodRegistration",
    "PluginError",
    "PluginFailure",
    "PluginInfo",
    "PluginLoadWarning",
    "PluginSelectionWarning",
    "ensure_registered",
    "get_plugin_failures",
    "get_plugin_manager",
    "get_plugins",
    "get_registry",
    "hookimpl",
    "hookspec",
    "list_entry_points",
    "register_plugin",
    "reset",
    "unregister_plugin",
]
