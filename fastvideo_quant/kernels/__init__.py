"""Kernel utilities shared by plugins (imported lazily; nothing here imports Triton at module load)."""
