"""Under ``torch.autocast`` a quantized layer follows it like ``nn.Linear``: its input is cast to the autocast dtype,
so a model with some layers left unquantized (``modules_to_not_convert``) gives one activation dtype throughout."""

from __future__ import annotations

import pytest
import torch
from module_state_helpers import Net, config, inputs, loaded, write_checkpoint

METHODS = ["unquantized", "fp8-tensor", "int8", "awq"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_layers_follow_cpu_autocast(method, dtype, tmp_path) -> None:
    """float16 too: autocast recast fp8's CPU product of unscaled e4m3 values (up to 448^2 * K) to float16 inside
    apply, and it overflowed to inf (a porting author's review); apply now runs with autocast off, on its input in the
    autocast dtype."""
    model = loaded(method, write_checkpoint(method, tmp_path / method))
    x = inputs()
    seen = []
    for layer in (model.qkv_proj, model.o_proj, model.out):
        layer.register_forward_hook(lambda mod, args, out: seen.append(out[0].dtype))
    with torch.no_grad():
        reference = model(x)  # float32 activations
        seen.clear()
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
    assert seen == [dtype] * 3, seen
    assert out.dtype == dtype and bool(out.isfinite().all())
    err = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
    assert err < 5e-2, err  # bf16 activations (fp8 also re-rounds them to e4m3: its 2.6% error, drawn again)


def test_without_autocast_the_input_dtype_is_kept(tmp_path) -> None:
    model = loaded("fp8-tensor", write_checkpoint("fp8-tensor", tmp_path / "fp8"))
    assert model(inputs()).dtype == torch.float32
    assert isinstance(Net(config("fp8-tensor")), torch.nn.Module)
