"""The README's usage snippet runs as written, against a checkpoint named as it says (bf16, then fvq quantize's fp8)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

README = Path(__file__).resolve().parents[1] / "README.md"


def _usage_snippet() -> str:
    usage = README.read_text().split("## Usage", 1)[1]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


def _bf16_checkpoint(path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(2):
        for name, rows in (("q_proj", 1024), ("k_proj", 1024), ("v_proj", 1024), ("o_proj", 1024)):
            tensors[f"blocks.{i}.attn.{name}.weight"] = (torch.randn(rows, 1024, generator=g) / 32).bfloat16()
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"hidden_size": 1024}))


@pytest.mark.parametrize("method", [None, "fp8"])
def test_the_usage_snippet_runs(tmp_path, method) -> None:
    src = tmp_path / "bf16"
    _bf16_checkpoint(src)
    ckpt = src
    if method is not None:
        from fastvideo_quant.quantize import quantize_checkpoint

        ckpt = tmp_path / method
        quantize_checkpoint(src, ckpt, method=method)
    scope: dict = {}
    exec(compile(_usage_snippet().replace("path/to/ckpt", str(ckpt)), f"{README}: usage", "exec"), scope)
    assert scope["qkv"].shape == (2, 16, 3 * 1024)
    assert (scope["quant_config"] is None) == (method is None)
    from safetensors.torch import load_file

    stored = load_file(str(src / "model.safetensors"))
    w = torch.cat([stored[f"blocks.0.attn.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")]).float()
    ref = scope["x"].float() @ w.t()
    err = ((scope["qkv"].float() - ref).norm() / ref.norm()).item()
    assert err < (1e-2 if method is None else 5e-2), err  # bf16 rounding; fp8's W8A8
