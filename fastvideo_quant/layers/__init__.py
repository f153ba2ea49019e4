"""Layers built on the quantization-method plugins."""
