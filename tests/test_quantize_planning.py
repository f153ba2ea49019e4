"""`fvq quantize`'s planning stage, before anything is written: the source's config.json read once."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from fastvideo_quant.quantize import quantize_checkpoint


def write(d: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    d.mkdir()
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config))
    return d


def w(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.bfloat16) * 0.05


# --- the source's config.json was read three times (its check, the method-file check, the table sizes) ----------

def test_source_config_is_read_once_and_its_table_sizes_still_apply(tmp_path: Path, monkeypatch):
    src = write(tmp_path / "src", {"embed_like.weight": w(1000, 64), "blocks.0.fc.weight": w(64, 64)},
                {"vocab_size": 1000, "hidden_size": 64})
    reads: list[Path] = []
    read_text = Path.read_text

    def counting(self: Path, *args, **kwargs):
        if self.name == "config.json" and self.parent == src:
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    report = quantize_checkpoint(src, tmp_path / "q", "int8")
    assert len(reads) == 1, reads
    assert report.modules_to_not_convert == ["embed_like"]  # the vocab-sized table, by config.json's vocab_size
