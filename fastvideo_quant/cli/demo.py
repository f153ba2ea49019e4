"""``fvq demo``: quantize a small seeded video-DiT with every available method and compare with float32."""

from __future__ import annotations

import argparse
import dataclasses
import sys

HELP = "quantize a small seeded DiT with every available method, load it back and compare with float32"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from fastvideo_quant.cli import GivenOnce, config_argument
    from fastvideo_quant.demo.model import DemoConfig

    defaults = DemoConfig()
    p = subparsers.add_parser("demo", help=HELP, description=HELP + ". Methods that cannot run here are listed "
                              "with the reason.")
    p.add_argument("--method", action="append", default=None, metavar="NAME",
                   help="run only this method (repeatable; default: every registered method)")
    p.add_argument("--config", type=config_argument, action=GivenOnce, default=None, metavar="JSON",
                   help="the method's config keys as one JSON object, as fvq quantize --config takes them (a method "
                        "whose from_config needs keys: '{\"bits\": 4, \"group_size\": 128}'); with one --method only")
    p.add_argument("--tp", type=int, default=1, help="also run at this tensor-parallel size and compare with TP=1")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--seed", type=int, default=0)
    for field in dataclasses.fields(DemoConfig):
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(flag, type=int, default=getattr(defaults, field.name), help=f"default {field.default}")
    p.add_argument("--workdir", default=None,
                   help="keep the checkpoints here: a new or empty directory, or a previous demo's (default: a "
                        "temporary directory)")
    return p


def run(args: argparse.Namespace) -> int:
    from fastvideo_quant.demo.model import DemoConfig
    from fastvideo_quant.demo.run import check_sizes, check_tp, check_workdir, main
    from fastvideo_quant.errors import FastVideoQuantError
    from fastvideo_quant.quantize import check_device

    cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    try:  # usage errors, before anything is written or quantized
        check_device(args.device, "--device")
        check_sizes(cfg)
        check_tp(cfg, args.tp, "--tp")
        check_workdir(args.workdir, "--workdir")
    except FastVideoQuantError as exc:
        print(f"fvq demo: error: {exc}", file=sys.stderr)
        return 2
    if args.config is not None and len(args.method or []) != 1:
        print(f"fvq demo: error: --config gives one method's config keys, so it needs exactly one --method (found "
              f"{len(args.method or [])}: {args.method or 'every method'}); run the demo once per method to give "
              "each its keys", file=sys.stderr)
        return 2
    problem = unknown_method(args.method or [])
    if problem:  # as fvq quantize, check and bench: refused before the demo starts (it printed its banner and a row)
        print(f"fvq demo: error: {problem}", file=sys.stderr)
        return 1
    if args.config is not None:
        from fastvideo_quant.quantize.options import check_options

        try:  # (a key the method does not read, or a value it refuses: before anything is quantized)
            check_options(args.method[0], dict(args.config))
        except FastVideoQuantError as exc:
            print(f"fvq demo: error: --config: {exc}", file=sys.stderr)
            return 2
    return main(cfg, args.method, args.tp, args.seed, args.device, args.workdir, options=args.config)


def unknown_method(names: list[str]) -> str | None:
    """The selection's error for the first of ``names`` that no loaded plugin registers — with the available names,
    close spellings (fp9 → fp8) and plugins that failed to load — or that two plugins register; else None."""
    from fastvideo_quant.quantization.selection import method_problem

    problem = next((p for p in map(method_problem, names) if p is not None), None)
    return None if problem is None else " ".join(problem.split())
