"""torch.compile of loaded models with every method (CPU, ``aot_eager``), the way a user compiles a model: right
after loading it, before any eager call, with a dynamic token count."""

from __future__ import annotations

import pytest
import torch
from module_state_helpers import HIDDEN, METHODS, loaded, write_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {m: write_checkpoint(m, root / m) for m in METHODS}


def _x(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_a_model_compiled_before_its_first_eager_call_is_one_graph(method, checkpoints):
    """AWQ's layout computed its words' shape on first use (functools.cached_property, whose RLock dynamo cannot enter
    on Python 3.11): compiled before any eager call, every AWQ layer broke the graph — fullgraph=True failed with
    "Unsupported context manager", and without it the model ran as a dozen graphs."""
    model = loaded(method, checkpoints[method])  # (fresh: no eager call has run it yet)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = _x(3)
    with torch.no_grad():
        out = compiled(x)
        assert torch.equal(out, model(x))
