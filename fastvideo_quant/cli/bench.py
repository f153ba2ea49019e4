"""``fvq bench``: time registered methods' ``apply`` against bf16 ``F.linear`` (needs a CUDA GPU)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

HELP = "time methods' apply vs bf16 F.linear at video-DiT shapes on a CUDA GPU; writes JSON + markdown"
CHAIN_MS = [1, 16, 128]


def parse_shape(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected KxN (input x output), e.g. 5120x13824") from None
    if k < 1 or n < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: K and N must be positive, e.g. 5120x13824")
    return k, n


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from fastvideo_quant.bench import DIT_MS, DIT_SHAPES
    from fastvideo_quant.cli import GivenOnce, config_argument

    p = subparsers.add_parser("bench", help=HELP, description=HELP + ".")
    p.add_argument("--method", action="append", required=True, metavar="NAME", help="method name (repeatable)")
    p.add_argument("--shapes", nargs="+", type=parse_shape, default=list(DIT_SHAPES), metavar="KxN",
                   help="default: " + " ".join(f"{k}x{n}" for k, n in DIT_SHAPES))
    p.add_argument("--m", nargs="+", type=_positive, default=None, metavar="M",
                   help="token counts; default: " + " ".join(map(str, DIT_MS)) + " (with --chain: "
                        + " ".join(map(str, CHAIN_MS)) + ")")
    p.add_argument("--config", type=config_argument, action=GivenOnce, default=None, metavar="JSON",
                   help='the method\'s config for from_config, e.g. \'{"group_size": 128}\' (given once)')
    p.add_argument("--rounds", type=_positive, default=1, metavar="R",
                   help="time each point in R alternating rounds (bf16, then the method) and report the median ratio "
                        "and its range; default 1")
    p.add_argument("--chain", action="store_true",
                   help="the model-like measurement instead of one call at a time: layers of distinct weights (one "
                        "pass several times L2) back to back in one CUDA graph, no L2 flush; writes "
                        "<method>-chain_<gpu>_<date>.{json,md}")
    p.add_argument("--l2-multiple", type=_positive_float, default=3.0, metavar="X",
                   help="with --chain: one pass over the method's weights is at least X times the GPU's L2; default 3")
    p.add_argument("--replays", type=_positive, default=20, metavar="R",
                   help="with --chain: graph replays a timing; default 20")
    p.add_argument("--out", default="benchmarks/results", help="directory for <method>_<gpu>_<date>.{json,md}")
    return p


def _number(cast: type, ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: ``cast(text)`` if it parses and ``ok`` holds, else an error saying what was expected."""
    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value
    return parse


_positive = _number(int, lambda v: v >= 1, "an integer >= 1")
_positive_float = _number(float, lambda v: v > 0, "a number > 0")


def run(args: argparse.Namespace) -> int:
    import torch

    from fastvideo_quant.quantization.selection import get_quantization_config
    from fastvideo_quant.quantize.options import check_config_keys

    for method in args.method:  # an unknown method (or one whose plugin failed to load) is said as such, anywhere
        cls = get_quantization_config(method)  # raises: fvq's main prints it in one line, exit status 1
        if args.config is not None:  # (so is a --config it would drop or refuse: before the GPU is asked for)
            check_config_keys(method, args.config, label="--config key")
            cls.from_config(dict(args.config))
    if not torch.cuda.is_available():
        print("fvq bench: error: the benchmark needs a CUDA GPU and torch sees none "
              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); run it on a GPU machine. "
              "`fvq demo` checks accuracy on CPU.", file=sys.stderr)
        return 1
    from fastvideo_quant.bench import DIT_MS, bench_chain, bench_method, write_chain_results, write_results
    from fastvideo_quant.errors import FastVideoQuantError

    for method in args.method:
        try:
            if args.chain:
                rows = bench_chain(method, args.shapes, args.m or CHAIN_MS, config=args.config,
                                   l2_multiple=args.l2_multiple, replays=args.replays, rounds=args.rounds)
                paths = write_chain_results(rows, args.out, l2_multiple=args.l2_multiple, replays=args.replays)
            else:
                rows = bench_method(method, args.shapes, args.m or DIT_MS, config=args.config, rounds=args.rounds)
                paths = write_results(rows, args.out)
        except FastVideoQuantError as exc:
            print(f"fvq bench: error: {method}: {exc}", file=sys.stderr)
            return 1
        for path in paths:
            print(f"wrote {path}")
    return 0
