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


@pytest.mark.parametrize("method", METHODS)
def test_a_dynamic_token_count_compiles_in_grad_mode_with_eagers_gradients(method, checkpoints):
    """dynamo traced int8's and fp8's autograd Functions into a subgraph and failed on the first tensor sized by the
    symbolic token count ("lift_tracked_freevar_to_input should not be called on root SubgraphTracer"); compiled in
    grad mode they are one custom op each, with the straight-through backward."""
    model = loaded(method, checkpoints[method])
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="aot_eager")
    for rows in (3, 5):
        outs, grads = [], []
        for run in (compiled, model):
            x = _x(rows, seed=rows).requires_grad_()
            out = run(x)
            out.square().sum().backward()
            outs.append(out.detach())
            grads.append(x.grad)
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6, msg=f"{method}: {rows} rows, output")
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6, msg=f"{method}: {rows} rows, grad")


def test_the_fp8_block_activation_quantization_is_one_op_while_compiling(checkpoints):
    """inductor fused a layer's rounding of its output to bf16 with the next fp8-block layer's upcast and skipped it
    (emulate_precision_casts off): activation codes at a rounding boundary flipped, and the compiled model's bf16
    outputs were 2.4e-2 off eager's (CPU, three layers). As one op per layer the input is the rounded tensor. (Checked
    here in the graph dynamo hands the backend — an inductor build on the CPU takes a minute;
    tests/test_cuda_transforms.py compares inductor's outputs on a GPU.)"""
    model = loaded("fp8-block", checkpoints["fp8-block"]).to(torch.bfloat16)
    graphs = []

    def backend(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = _x(17).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    calls = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("fvq_fp8.per_group_quant" in c for c in calls) == 3, calls


#: In a fresh process (nothing made yet by an eager call): every method's model compiled with a dynamic token count and
#: run compiled first, then eagerly, then compiled at other token counts with recompiles made errors.
FRESH_PROCESS = """
import sys
import torch
from module_state_helpers import HIDDEN, METHODS, loaded, write_checkpoint

root = sys.argv[1]
models = {m: loaded(m, write_checkpoint(m, __import__("pathlib").Path(root) / m)) for m in METHODS}
compiled = {m: torch.compile(model, dynamic=True, backend="aot_eager") for m, model in models.items()}
x = lambda rows: torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(rows))
with torch.no_grad():
    for fn in compiled.values():
        fn(x(3))
    for model in models.values():
        model(x(3))
    failed = []
    for m, fn in compiled.items():
        try:
            with torch._dynamo.config.patch(error_on_recompile=True):
                same = all(torch.equal(fn(x(rows)), models[m](x(rows))) for rows in (2, 7, 300))
            if not same:
                failed.append(f"{m}: compiled output differs from eager")
        except Exception as exc:
            failed.append(f"{m}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
print("\\n".join(failed) or "ok")
"""


@pytest.mark.slow  # a fresh process
def test_an_eager_call_between_compiled_calls_does_not_recompile(tmp_path):
    """fp8's CPU upcast table was made by the first eager call and kept in a module dict the compiled code guards on
    (while compiling none is kept: it would be fake): a model compiled and run before any eager call recompiled after
    the first one ("not ___dict_contains(torch.float8_e4m3fn, ..._FP8_TO_F32)") — an error under error_on_recompile,
    one of recompile_limit's few recompiles otherwise."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, sys.path)), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok", proc.stdout
