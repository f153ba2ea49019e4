"""apply's relative error against ``x.float() @ dequantize_weight(layer).T + bias`` per method, activation dtype and
row count, on the conformance suite's layers (every layer class) and on a wider input (K=2048): what each method's
per-dtype ``Tolerance`` is set from. Writes JSON to the path given (default: stdout only).

    python benchmarks/apply_error_by_dtype.py [OUT.json]
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import warnings

import torch

from fastvideo_quant.testing.conformance import Subject
from fastvideo_quant.testing.conformance import checkpoint as ck
from fastvideo_quant.testing.conformance.apply import LAYER_KINDS, reference, run_apply
from fastvideo_quant.testing.conformance.input_shapes import random_input
from fastvideo_quant.testing.conformance.loading import dequantized
from fastvideo_quant.testing.conformance.report import rel_error

CASES = [("unquantized", {}), ("awq", {}), ("awq", {"group_size": 32}),
         ("awq", {"group_size": 32, "fp8_compute": True, "fp8_compute_min_m": 1}), ("fp8", {}),
         ("fp8", {"weight_block_size": [128, 128]}), ("int8", {}), ("int8", {"fvq_backend": "triton"})]
ROWS = (1, 4, 16, 17, 64, 257, 1024)


def worst(subject: Subject, dtype: torch.dtype, rows: tuple[int, ...]) -> tuple[float, str]:
    found, where = 0.0, ""
    for kind in LAYER_KINDS:
        layer = ck.build_loaded(subject, kind, ck.make_checkpoint(subject, kind), bias=True, dtype=dtype)
        for m in rows:
            x = random_input(subject, (m, subject.input_size), dtype, kind)
            out = run_apply(subject, layer, x, layer.bias, kind, "probe")
            err = rel_error(out, reference(x, dequantized(subject, layer, kind), layer.bias))
            if err >= found:
                found, where = err, f"{kind} M={m}"
    return found, where


def main() -> None:
    warnings.simplefilter("ignore")
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    rows = ROWS if torch.cuda.is_available() else (1, 17, 64)
    results = []
    for method, config in CASES:
        for size in (256, 2048):
            s = Subject(method, config=config, input_size=size, output_size=256, merged_output_sizes=(128, 128))
            if s.why_not_runnable():
                print(method, config, "not runnable:", s.why_not_runnable())
                break
            for dtype in s.runnable_act_dtypes():
                err, where = worst(s, dtype, rows)
                results.append({"method": method, "config": config, "K": size, "dtype": str(dtype), "worst": err,
                                "at": where})
                print(f"{method:12s} {json.dumps(config):34s} K={size:5d} {str(dtype):15s} {err:.3g} ({where})",
                      flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "date": datetime.date.today().isoformat(), "rows": rows,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
