"""Host cost of the layer forward's output checks (shape, dtype) on eager small-M calls, where host time shows.

Times ``layer(x)`` eager, back to back (``torch.cuda.synchronize`` once per batch of calls), for AWQ / fp8 layers
at M=1 and M=16, with the shipped ``LinearBase._run_method`` and with a copy that skips the output checks (device
check and ``apply`` only), alternating rounds in one process. The checked output is compared with the unchecked one
first (bit-equal: the checks compute nothing). Prints and writes JSON.

    PYTHONPATH=benchmarks python benchmarks/forward_check_cost.py --out results/forward-check-cost.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch

from fastvideo_quant.layers.base import LinearBase
from fastvideo_quant.layers.linear import ReplicatedLinear
from fastvideo_quant.quantization import resolve_quant_config


def _unchecked(self: LinearBase, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    self._check_device(x)
    return self.quant_method.apply(self, x, bias)


def _layer(method: str, k: int, n: int) -> ReplicatedLinear:
    from fastvideo_quant.loader import process_weights_after_loading

    weight = torch.randn(n, k) / k**0.5
    stored = {"weight": weight.bfloat16()}
    if method == "awq":  # (no quantization on load: its checkpoint tensors, as fvq quantize writes them)
        cfg = resolve_quant_config(hf_config={"quantization_config": {"quant_method": "awq", "group_size": 128}})
        stored = cfg.quantize_weight(weight, prefix="proj")
    else:
        cfg = resolve_quant_config(method)
    layer = ReplicatedLinear(k, n, bias=False, params_dtype=torch.bfloat16, quant_config=cfg, prefix="proj").cuda()
    for name, tensor in stored.items():
        param = getattr(layer, name)
        param.weight_loader(param, tensor.cuda())

    process_weights_after_loading(layer)
    return layer


def _per_call(layer: torch.nn.Module, x: torch.Tensor, calls: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(calls):
            layer(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["fp8", "awq", "unquantized"])
    ap.add_argument("--ms", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--shape", nargs=2, type=int, default=[5120, 5120], metavar=("K", "N"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    k, n = args.shape
    shipped = LinearBase._run_method
    rows = []
    for method in args.methods:
        layer = _layer(method, k, n)
        for m in args.ms:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            with torch.no_grad():
                checked = layer(x)[0]
                LinearBase._run_method = _unchecked
                plain = layer(x)[0]
                LinearBase._run_method = shipped
            assert torch.equal(checked, plain), (method, m)
            times = {"checked": [], "unchecked": []}
            for _ in range(2):  # warm-up
                _per_call(layer, x, args.calls)
            for _ in range(args.rounds):
                for name, run in (("checked", shipped), ("unchecked", _unchecked)):
                    LinearBase._run_method = run
                    times[name].append(_per_call(layer, x, args.calls))
            LinearBase._run_method = shipped
            row = {"method": method, "M": m, "K": k, "N": n,
                   **{f"{name}_us": statistics.median(v) for name, v in times.items()},
                   **{f"{name}_min_us": min(v) for name, v in times.items()}}
            row["cost_us"] = row["checked_us"] - row["unchecked_us"]
            rows.append(row)
            print(f"{method} M={m} {k}x{n}: eager per call {row['checked_us']:.2f} us checked, "
                  f"{row['unchecked_us']:.2f} unchecked (min {row['checked_min_us']:.2f} / {row['unchecked_min_us']:.2f}): "
                  f"{row['cost_us']:+.2f} us", flush=True)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "rounds": args.rounds, "calls": args.calls}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
