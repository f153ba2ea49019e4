"""The tensor-parallelism guide's example runs as written: two gloo ranks under torchrun load a small fp8 (and int8)
checkpoint of the demo model (the guide's `fvq demo --method fp8 --workdir demo` writes the same kind, larger)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide" / "tensor-parallelism.md"


def example() -> str:
    """The guide's first Python code block."""
    return re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.S)[1]


def test_example_compiles():
    compile(example(), str(GUIDE), "exec")


@pytest.mark.parametrize("method", ["fp8", "int8"])  # both plugins import torch._dynamo when first loaded
def test_example_runs_on_two_gloo_ranks(tmp_path: Path, method: str):
    from fastvideo_quant.demo.model import DemoConfig
    from fastvideo_quant.demo.run import write_demo_checkpoint
    from fastvideo_quant.quantize import quantize_checkpoint

    cfg = DemoConfig(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128, num_layers=1, in_channels=16,
                     num_tokens=8)
    write_demo_checkpoint(cfg, tmp_path / "bf16", seed=0)
    if method == "int8":
        pytest.importorskip("bitsandbytes")
    quantize_checkpoint(tmp_path / "bf16", tmp_path / method, method)
    script = tmp_path / "tp_load.py"
    # The example as written, and a check that destroy_process_group freed the world group: a group kept alive (by a
    # layer, or by torch.distributed.nn.functional's defaults when torch._dynamo was first imported after
    # init_process_group, as the fp8 plugin's first load does) keeps gloo's worker threads running into interpreter
    # exit, where they aborted 1 run in 3 ("terminate called without an active exception", pytorch/pytorch#190489).
    assert example().count("dist.destroy_process_group()\n") == 1
    script.write_text(example().replace("dist.destroy_process_group()\n", (
        "import weakref\n_world = weakref.ref(dist.group.WORLD)\ndist.destroy_process_group()\n"
        "assert _world() is None, 'the world group outlived destroy_process_group'\n")))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}  # keeps a PYTHONPATH install (bitsandbytes)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path / method)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"the guide's example failed:\n{proc.stdout}\n{proc.stderr}"
    assert "TP=2: output (1, 8, 16)" in proc.stdout
