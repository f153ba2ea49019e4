"""Triton kernels for AWQ int4 (imported lazily: CPU installs may lack triton)."""
