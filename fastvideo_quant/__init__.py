"""fastvideo_quant: tensor-parallel linear layers with quantization methods as plugins."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastvideo-quant")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
