"""The AWQ plugin is imported lazily, on the first AWQ layer: a first layer built under ``with torch.device("meta")``
(shape inference, empty init) must not leave the plugin's constants on the meta device for every later load."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_first_awq_layer_built_on_meta_does_not_break_later_loads(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import torch
        from safetensors.torch import save_file
        from fastvideo_quant.layers.linear import ReplicatedLinear
        from fastvideo_quant.loader import load_checkpoint
        from fastvideo_quant.quantization import resolve_quant_config

        section = {{"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}}
        with torch.device("meta"):  # the first AWQ use of the process: the plugin is imported here
            config = resolve_quant_config(hf_config={{"quantization_config": section}})
            ReplicatedLinear(64, 32, bias=False, quant_config=config, prefix="proj")
        tensors = config.quantize_weight(torch.randn(32, 64), prefix="proj")
        save_file({{f"proj.{{k}}": v for k, v in tensors.items()}}, {str(tmp_path / "model.safetensors")!r})
        model = torch.nn.Module()
        model.proj = ReplicatedLinear(64, 32, bias=False, quant_config=config, prefix="proj")
        load_checkpoint(model, {str(tmp_path)!r})
        print(tuple(model.proj(torch.randn(3, 64))[0].shape))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "(3, 32)"
