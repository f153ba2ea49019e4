"""The embedded demo: a small video-DiT built from our layers, quantized with every available method."""

from fastvideo_quant.demo.model import DemoConfig, DemoDiT, random_state_dict
from fastvideo_quant.demo.run import MethodResult, format_table, run_demo

__all__ = ["DemoConfig", "DemoDiT", "MethodResult", "format_table", "random_state_dict", "run_demo"]
