"""Functions run on spawned gloo ranks by tests/test_layers_tp_grad.py: column → row pairs built at TP=world from full
weights, a backward through them, and every gradient for the parent to compare with TP=1.

They live in an importable module because spawned processes import them by name. At world 1 the parent calls them
itself (no process group: TP=1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

F32 = torch.float32
K = 32  # the pair's input and output width
HEAD, HEADS, KV_HEADS = 4, 8, 4  # QKV: 32 + 16 + 16 = 64 outputs; 4 KV heads divide TP 2 and 4 (none replicated)

#: case → (column layer: kind, its keyword arguments; row layer: its keyword arguments)
CASES: dict[str, tuple[str, dict, dict]] = {
    "column→row, input_is_parallel": ("column", {"gather_output": False}, {"input_is_parallel": True}),
    "column gather→row split": ("column", {"gather_output": True}, {"input_is_parallel": False}),
    "merged gather→row split": ("merged", {"gather_output": True}, {"input_is_parallel": False}),
    "qkv gather→row split": ("qkv", {"gather_output": True}, {"input_is_parallel": False}),
    "skip_bias_add, gathered bias": ("column", {"gather_output": True, "skip_bias_add": True},
                                     {"input_is_parallel": False, "skip_bias_add": True}),
    "skip_bias_add, sharded bias": ("column", {"skip_bias_add": True}, {"skip_bias_add": True}),
    "return_bias=False": ("column", {"return_bias": False}, {"return_bias": False}),
}


def seeded(*shape: int, seed: int, dtype: torch.dtype = F32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def part_sizes(kind: str) -> list[int]:
    """The column layer's output parts, in the TP=1 layout."""
    return {"column": [64], "merged": [16, 48], "qkv": [HEADS * HEAD, KV_HEADS * HEAD, KV_HEADS * HEAD]}[kind]


def _column(kind: str, kwargs: dict, dtype: torch.dtype, quant_config=None):
    from fastvideo_quant.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear

    common = {"params_dtype": dtype, "quant_config": quant_config, "prefix": "up"}
    if kind == "column":
        return ColumnParallelLinear(K, sum(part_sizes(kind)), **kwargs, **common)
    if kind == "merged":
        return MergedColumnParallelLinear(K, part_sizes(kind), **kwargs, **common)
    gather = kwargs.pop("gather_output", False)
    layer = QKVParallelLinear(K, HEAD, HEADS, KV_HEADS, **kwargs, **common)
    layer.gather_output = gather  # (not a constructor argument, as in vLLM; set, it takes the fused reorder)
    return layer


def _load_pair(col, row, kind: str, dtype: torch.dtype) -> None:
    """The same full tensors at every TP size, each loaded through the layers' own loaders."""
    ids = {"column": [None], "merged": [0, 1], "qkv": ["q", "k", "v"]}[kind]
    for i, (sid, size) in enumerate(zip(ids, part_sizes(kind))):
        for name, full in (("weight", seeded(size, K, seed=10 + i, dtype=dtype)), ("bias", seeded(size, seed=20 + i,
                                                                                                   dtype=dtype))):
            p = getattr(col, name)
            p.weight_loader(p, full) if sid is None else p.weight_loader(p, full, sid)
    hidden = sum(part_sizes(kind))
    row.weight.weight_loader(row.weight, seeded(K, hidden, seed=30, dtype=dtype))
    row.bias.weight_loader(row.bias, seeded(K, seed=31, dtype=dtype))


def _pair(kind: str, col_kwargs: dict, row_kwargs: dict, dtype: torch.dtype = F32):
    from fastvideo_quant.layers.linear import RowParallelLinear

    col = _column(kind, dict(col_kwargs), dtype)
    row = RowParallelLinear(sum(part_sizes(kind)), K, params_dtype=dtype, prefix="down", **row_kwargs)
    _load_pair(col, row, kind, dtype)
    return col, row


def _through(layer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` as a model uses it: a returned bias (skip_bias_add) added by the caller."""
    if not layer.return_bias:
        return layer(x)
    out, bias = layer(x)
    return out if bias is None else out + bias


def _layouts(kind: str) -> dict[str, tuple]:
    """How each parameter's TP=1 gradient splits over the ranks (for the parent): ``("rows", parts)`` — each part's
    rows split over the ranks, this rank's slice of every part in part order —, ``("cols",)`` or ``("whole",)``."""
    parts = part_sizes(kind)
    return {"up.weight": ("rows", parts), "up.bias": ("rows", parts), "down.weight": ("cols",), "down.bias": ("whole",)}


def pair_backward(rank: int, world: int, case: str, train: str = "all") -> dict[str, Any]:
    """The pair of ``case`` at TP=world: its output, ``x.grad`` and every parameter's gradient on this rank.

    ``train``: ``"all"`` (x and every parameter require grad) or ``"down.bias"`` (only the row layer's bias: its
    weight frozen and x not requiring grad, so the output of every rank but 0 does not require grad before the sum).
    """
    kind, col_kwargs, row_kwargs = CASES[case]
    col, row = _pair(kind, col_kwargs, row_kwargs)
    params = {f"up.{n}": p for n, p in col.named_parameters()} | {f"down.{n}": p for n, p in row.named_parameters()}
    for name, p in params.items():
        p.requires_grad_(train in ("all", name))
    x = seeded(3, 5, K, seed=1).requires_grad_(train == "all")
    y = _through(row, _through(col, x))
    (y * seeded(*y.shape, seed=2)).sum().backward()
    return {"out": y.detach(), "x": x.grad, "grads": {n: p.grad for n, p in params.items()}, "layouts": _layouts(kind)}


# --- a quantized method, its weights frozen: AWQ (int4, the CPU path computes with the de-quantized weight) -------
def _awq_layer(cls, in_size: int, out_size: int, seed: int, **kwargs):
    from fvq_awq.config import AWQConfig
    from fvq_awq.format import pack_awq

    from fastvideo_quant import plugins

    plugins.ensure_registered("awq", "fvq_awq.hooks")
    layer = cls(in_size, out_size, bias=True, params_dtype=F32, quant_config=AWQConfig(group_size=64), **kwargs)
    gen = torch.Generator().manual_seed(seed)
    full = {"qweight": pack_awq(torch.randint(0, 16, (in_size, out_size), generator=gen)),
            "qzeros": pack_awq(torch.randint(0, 16, (in_size // 64, out_size), generator=gen)),
            "scales": (torch.rand(in_size // 64, out_size, generator=gen) * 0.02 + 0.001).half(),
            "bias": seeded(out_size, seed=seed + 1)}
    params = dict(layer.named_parameters())
    for name, t in full.items():
        params[name].weight_loader(params[name], t)
    layer.quant_method.process_weights_after_loading(layer)
    return layer


def awq_pair_backward(rank: int, world: int) -> dict[str, Any]:
    """An AWQ column (128 → 128) → row (128 → 64) pair at TP=world, x requiring grad: the output, ``x.grad``, and
    whether any of the layers' tensors got a gradient (the quantized weights are frozen)."""
    from fastvideo_quant.layers.linear import ColumnParallelLinear, RowParallelLinear

    col = _awq_layer(ColumnParallelLinear, 128, 128, seed=3)
    row = _awq_layer(RowParallelLinear, 128, 64, seed=5)
    x = seeded(2, 3, 128, seed=7).requires_grad_()
    y = _through(row, _through(col, x))
    (y * seeded(*y.shape, seed=8)).sum().backward()
    tensors = [*col.parameters(), *col.buffers(), *row.parameters(), *row.buffers()]
    return {"out": y.detach(), "x": x.grad, "frozen": all(t.grad is None for t in tensors)}


# --- the no-grad path: no autograd Function called, outputs as the plain collectives give them ----------------------
def _count_function_calls() -> dict[str, int]:
    """Count the calls of the layers' autograd Functions from now on, in this (spawned) process."""
    from fastvideo_quant import _tp_autograd as A

    calls: dict[str, int] = {}
    for cls in (A._CopyToRegion, A._ReduceFromRegion, A._ScatterToRegion, A._GatherFromRegion):
        original = cls.apply

        def counted(*args, _name=cls.__name__, _original=original):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args)

        cls.apply = counted
    return calls


def _by_hand(col, row, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The pair's forward with the plain collectives, as the layers ran it before they had a backward."""
    from fastvideo_quant.distributed import (
        split_tensor_along_last_dim,
        tensor_model_parallel_all_gather,
        tensor_model_parallel_all_reduce,
    )

    h = tensor_model_parallel_all_gather(F.linear(x, col.weight, col.bias), dim=-1, group=col.tp_group)
    h = split_tensor_along_last_dim(h, world)[rank].contiguous()
    return tensor_model_parallel_all_reduce(F.linear(h, row.weight, row.bias if rank == 0 else None),
                                            group=row.tp_group)


def no_grad_path(rank: int, world: int) -> dict[str, Any]:
    """The column gather → row split pair (all four collectives) under each mode: its output, whether it has a
    grad_fn, and the Functions called."""
    col, row = _pair("column", {"gather_output": True}, {"input_is_parallel": False})
    calls = _count_function_calls()
    x = seeded(3, 5, K, seed=1)
    out: dict[str, Any] = {}

    def run(mode: str, ctx, x_grad: bool, params_grad: bool) -> None:
        for p in (*col.parameters(), *row.parameters()):
            p.requires_grad_(params_grad)
        calls.clear()
        with ctx:
            y = row(col(x.clone().requires_grad_(x_grad))[0])[0]
        out[mode] = {"out": y.detach(), "grad_fn": y.grad_fn is not None, "calls": dict(calls)}

    run("no_grad, everything requiring grad", torch.no_grad(), True, True)
    run("inference_mode", torch.inference_mode(), True, True)
    run("grad mode, nothing requiring grad", torch.enable_grad(), False, False)
    run("grad mode, x requiring grad", torch.enable_grad(), True, False)
    with torch.no_grad():
        out["by hand"] = _by_hand(col, row, x, rank, world)
    return out


# --- shapes drawn by hypothesis, against float64 autograd through F.linear on the full weights ----------------------
def drawn_shapes(rank: int, world: int, max_examples: int) -> int:
    """Hypothesis on every rank (derandomized: every rank draws the same examples). Each example builds a column →
    row pair at TP=world (float64) of drawn widths, leading dims (one token included: the collectives' views) and
    options, adds a residual in place to the column's output, and compares the output and every gradient with float64
    autograd through ``F.linear`` on the full weights (no layer code)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fastvideo_quant.layers.linear import ColumnParallelLinear, RowParallelLinear

    dt = torch.float64
    checked = 0

    def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
        err = float((got - want).norm() / want.norm().clamp_min(1e-30))
        assert err < 1e-10, f"{what}: relative error {err:.3g}"

    @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(k=st.integers(1, 8), n=st.integers(1, 4), o=st.integers(1, 8), lead=st.sampled_from([(1,), (3,), (1, 1), (2, 3)]),
           gather=st.booleans(), bias=st.booleans(), skip=st.booleans(), seed=st.integers(0, 2**16))
    def prop(k, n, o, lead, gather, bias, skip, seed):
        nonlocal checked
        hidden = n * world
        w1, b1 = seeded(hidden, k, seed=seed, dtype=dt), seeded(hidden, seed=seed + 1, dtype=dt)
        w2, b2 = seeded(o, hidden, seed=seed + 2, dtype=dt), seeded(o, seed=seed + 3, dtype=dt)
        col = ColumnParallelLinear(k, hidden, bias=bias, gather_output=gather, skip_bias_add=skip, params_dtype=dt)
        row = RowParallelLinear(hidden, o, bias=bias, input_is_parallel=not gather, skip_bias_add=skip, params_dtype=dt)
        for layer, w, b in ((col, w1, b1), (row, w2, b2)):
            layer.weight.weight_loader(layer.weight, w)
            layer.weight.requires_grad_()
            if bias:
                layer.bias.weight_loader(layer.bias, b)
                layer.bias.requires_grad_()
        x = seeded(*lead, k, seed=seed + 4, dtype=dt).requires_grad_()
        h = _through(col, x)
        h += 0.5  # (in place, as a residual: the gathered output must not be a view a Function returned)
        y = _through(row, h)
        g = seeded(*y.shape, seed=seed + 5, dtype=dt)
        (y * g).sum().backward()

        ref = {name: t.clone().requires_grad_() for name, t in (("x", x.detach()), ("w1", w1), ("b1", b1), ("w2", w2),
                                                                  ("b2", b2))}
        y_ref = F.linear(F.linear(ref["x"], ref["w1"], ref["b1"] if bias else None) + 0.5, ref["w2"],
                         ref["b2"] if bias else None)
        (y_ref * g).sum().backward()
        close(y.detach(), y_ref.detach(), "output")
        close(x.grad, ref["x"].grad, "x.grad")
        close(col.weight.grad, ref["w1"].grad.chunk(world, dim=0)[rank], "column weight grad")
        close(row.weight.grad, ref["w2"].grad.chunk(world, dim=1)[rank], "row weight grad")
        if bias:
            close(col.bias.grad, ref["b1"].grad.chunk(world)[rank], "column bias grad")
            close(row.bias.grad, ref["b2"].grad, "row bias grad")
        checked += 1

    prop()
    return checked


# --- torch.compile(fullgraph=True) in grad mode --------------------------------------------------------------------
def compiled_backward(rank: int, world: int) -> dict[str, Any]:
    """The column gather → row split pair compiled whole (``aot_eager``: AOTAutograd traces the backward) in grad mode,
    one token (the gathered output a view) with a residual added in place: the relative error of its output, x.grad
    and weight gradients from eager's, and whether its no-grad output equals eager's bit for bit."""
    col, row = _pair("column", {"gather_output": True}, {"input_is_parallel": False})
    for p in (*col.parameters(), *row.parameters()):
        p.requires_grad_()

    def model(t: torch.Tensor) -> torch.Tensor:
        h = col(t)[0]
        h += 0.5
        return row(h)[0]

    x = seeded(1, K, seed=1)
    grads = []
    for fn in (model, torch.compile(model, fullgraph=True, backend="aot_eager")):
        xx = x.clone().requires_grad_()
        y = fn(xx)
        (y * seeded(*y.shape, seed=2)).sum().backward()
        grads.append([y.detach(), xx.grad, col.weight.grad, row.weight.grad])
        col.weight.grad = row.weight.grad = None
    with torch.no_grad():
        same = torch.equal(torch.compile(model, fullgraph=True, backend="aot_eager")(x), model(x))
    names = ("out", "x", "up.weight", "down.weight")
    return {"errors": {n: float((c - e).norm() / e.norm()) for n, e, c in zip(names, *grads)}, "no_grad_equal": same}


# --- torch.func over a pair at TP=world: grad and vjp, with respect to the input and (functional_call) the weights ---

class _Pair(torch.nn.Module):
    def __init__(self, up, down) -> None:
        super().__init__()
        self.up, self.down = up, down

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return _through(self.down, _through(self.up, t))


def func_transforms(rank: int, world: int, case: str) -> dict[str, Any]:
    """``torch.func.grad`` / ``vjp`` of the pair's loss with respect to ``x``, and ``grad`` over the parameters through
    ``functional_call`` (functional training), against autograd's ``backward`` on the same rank."""
    kind, col_kwargs, row_kwargs = CASES[case]
    col, row = _pair(kind, col_kwargs, row_kwargs)
    model = _Pair(col, row)
    x = seeded(3, 5, K, seed=1)
    weights = seeded(3, 5, K, seed=2)

    def pair_loss(params: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, params, (t,))
        return (out * weights).sum()

    params = {f"up.{n}": p.detach() for n, p in col.named_parameters()} | {
        f"down.{n}": p.detach() for n, p in row.named_parameters()}
    # autograd, as a training loop computes it
    for p in model.parameters():
        p.requires_grad_(True)
    xa = x.clone().requires_grad_(True)
    (model(xa) * weights).sum().backward()
    autograd = {"x": xa.grad} | {f"up.{n}": p.grad for n, p in col.named_parameters()} | {
        f"down.{n}": p.grad for n, p in row.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    out: dict[str, Any] = {"autograd": autograd}
    out["grad_x"] = torch.func.grad(lambda t: pair_loss(params, t))(x)
    _, vjp = torch.func.vjp(lambda t: pair_loss(params, t), x)
    out["vjp_x"] = vjp(torch.ones(()))[0]
    out["grad_params"] = torch.func.grad(lambda ps: pair_loss(ps, x))(params)
    return out


# --- the public collectives a model's own code calls ------------------------------------------------------------------

def public_all_gather_backward(rank: int, world: int) -> dict[str, Any]:
    """``tensor_model_parallel_all_gather`` of a tensor that requires grad, along each dim of a 3-D one, then a loss
    every rank computes alike: each rank's input gradient, and whether the output stayed in the graph."""
    from fastvideo_quant.distributed import tensor_model_parallel_all_gather

    out: dict[str, Any] = {}
    for dim in (0, 1, -1):
        x = seeded(2, 3, 4, seed=10 + rank).requires_grad_(True)
        y = tensor_model_parallel_all_gather(x * 1.0, dim=dim)  # (a non-leaf, as a model's activations are)
        weights = seeded(*y.shape, seed=20)
        (y * weights).sum().backward()
        out[dim] = {"grad": x.grad, "weights": weights, "in_graph": y.grad_fn is not None,
                    "gathered_equal": torch.equal(y.detach(), tensor_model_parallel_all_gather(x.detach(), dim=dim))}
    return out


# --- forward mode (torch.func.jvp) through a pair at TP=world ---------------------------------------------------------

def forward_mode(rank: int, world: int) -> dict[str, Any]:
    """Per case: the pair's ``torch.func.jvp`` tangent along a direction, and the same directional derivative from
    reverse mode (autograd's Jacobian, a backward per output element: jacrev would vmap the collectives)."""
    out: dict[str, Any] = {}
    for case, (kind, col_kwargs, row_kwargs) in CASES.items():
        col, row = _pair(kind, dict(col_kwargs), dict(row_kwargs))
        model = _Pair(col, row)
        x, t = seeded(2, K, seed=1), seeded(2, K, seed=2)
        want = torch.einsum("aibj,bj->ai", torch.autograd.functional.jacobian(model, x), t)
        out[case] = {"jvp": torch.func.jvp(model, (x,), (t,))[1], "reverse": want}
    return out
