"""load_checkpoint closes the checkpoint's files once the tensors are written, before processing: a method's
processing (AWQ's repack, quantizing on load) then peaks without the checkpoint's mapped pages on top."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.loader import load_checkpoint


def _mapped(path: Path) -> bool:
    return any(str(path) in line for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_files_are_closed_before_processing(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"proj.weight": torch.randn(64, 64)}, str(path))
    model = torch.nn.Module()
    model.proj = ReplicatedLinear(64, 64, bias=False, params_dtype=torch.float32, prefix="proj")
    seen = []

    def process(layer):
        seen.append(_mapped(path))

    model.proj.quant_method.process_weights_after_loading = process
    load_checkpoint(model, tmp_path)
    assert seen == [False]


def test_nccl_flag_goes_to_the_models_device(monkeypatch):
    """Under NCCL the agreement's flag goes to the model's CUDA device, not cuda:current_device() (every rank's
    cuda:0 when a script places models with .to(f"cuda:{rank}") without torch.cuda.set_device)."""
    from fastvideo_quant import distributed

    monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: "nccl")
    assert distributed.collective_device(object(), torch.device("cuda", 3)) == torch.device("cuda", 3)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: "gloo")
    assert distributed.collective_device(object(), torch.device("cuda", 3)) == torch.device("cpu")
