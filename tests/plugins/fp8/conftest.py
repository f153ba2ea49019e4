import sys
from pathlib import Path

# fp8_helpers.py sits beside the tests (pytest's importlib mode does not put this folder on sys.path).
sys.path.insert(0, str(Path(__file__).parent))


def _ensure_fp8_registered() -> None:
    """Without an installed entry point (a bare checkout on PYTHONPATH), register the plugin in-process."""
    from fastvideo_quant.plugins import get_registry, register_plugin

    if "fp8" not in get_registry().by_name:
        import fvq_fp8.hooks

        register_plugin(fvq_fp8.hooks, "fp8")


_ensure_fp8_registered()
