"""Helpers for tests that quantize or load the demo DiT's checkpoint: write one, read one back."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fastvideo_quant.demo.model import DemoConfig, random_state_dict
from fastvideo_quant.loader import checkpoint_files


def write_demo_checkpoint(directory: Path, cfg: DemoConfig, seed: int = 0) -> Path:
    """The demo DiT of ``cfg`` as a float checkpoint in ``directory`` (one ``model.safetensors`` and its config.json,
    written without our writer); returns ``directory``."""
    directory.mkdir(parents=True)
    save_file(random_state_dict(cfg, seed=seed), str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg.to_dict()))
    return directory


def tensors_of(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint ``ckpt`` (all its shards), by name."""
    out = {}
    for f in checkpoint_files(ckpt):
        with safe_open(str(f), framework="pt") as h:
            out.update({n: h.get_tensor(n) for n in h.keys()})
    return out
