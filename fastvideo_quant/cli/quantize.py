"""``fvq quantize SRC --method NAME --out DST``: quantize a safetensors checkpoint directory."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from safetensors import SafetensorError

from fastvideo_quant.checkpoint_writer import DEFAULT_MAX_SHARD_BYTES, Terminated, os_reason, parse_size
from fastvideo_quant.cli import GivenOnce, config_argument
from fastvideo_quant.errors import ConfigError, FastVideoQuantError

HELP = "quantize a Hugging Face-style safetensors checkpoint with a registered method"


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as JSON (``128``, ``true``, ``[128, 128]``), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option {text!r}: expected key=value, e.g. group_size=128")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def parse_fuse(text: str) -> tuple[str, list[str]]:
    """``--fuse FUSED=PART,PART[,PART]`` as ``(fused, [parts])``; the names are checked by
    :func:`~fastvideo_quant.quantize.plan.merged_packed_mapping`."""
    fused, sep, raw = text.partition("=")
    parts = [p.strip() for p in raw.split(",")]
    if not sep or not fused.strip() or len(parts) < 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"--fuse {text!r}: expected FUSED=PART,PART[,PART], e.g. to_qkv=to_q,to_k,to_v")
    return fused.strip(), parts


def collect_fused(pairs: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """``--fuse`` pairs as a packed-modules mapping; ConfigError for a malformed one, or a fused name given twice
    with other parts."""
    from fastvideo_quant.quantize.plan import merged_packed_mapping

    fused: dict[str, list[str]] = {}
    for name, parts in pairs:
        if name in fused and fused[name] != parts:
            raise ConfigError(f"--fuse {name} is given twice, as {name}={','.join(fused[name])} and "
                              f"{name}={','.join(parts)}; give it once with the parts the loader fuses")
        fused[name] = parts
    merged_packed_mapping(fused, "--fuse")  # names checked here: a usage error, before anything is read
    return fused


def merged_options(config: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    """``--config`` and the ``--option`` pairs as one dict of config keys; ConfigError for a key both give (which of
    the two was meant is not known)."""
    both = sorted(set(config or {}) & set(options))
    if both:
        raise ConfigError(f"--config and --option both give {both[0]!r} ({json.dumps((config or {})[both[0]])} and "
                          f"{json.dumps(options[both[0]])}); give each key once")
    return {**(config or {}), **options}


def size_argument(text: str) -> int:
    """``--max-shard-size``: :func:`parse_size`, its message kept (argparse replaces a ValueError's with its own)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def same_value(a: Any, b: Any) -> bool:
    """Whether two JSON-parsed ``--option`` values are the same: numbers by value (``6`` and ``6.0``), lists and
    objects item by item, anything else by equality of value and type (``true`` is not ``1``, ``"6"`` not ``6``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _int_spelling(a: Any, b: Any) -> Any:
    """Of two :func:`same_value` values, the one with integers wherever either spells a number as one (``[128.0,
    128]`` and ``[128, 128.0]`` give ``[128, 128]``)."""
    if isinstance(a, list):
        return [_int_spelling(x, y) for x, y in zip(a, b)]
    if isinstance(a, dict):
        return {k: _int_spelling(a[k], b[k]) for k in a}
    if isinstance(a, float) and isinstance(b, int) and not isinstance(b, bool):
        return b
    return a


def collect_options(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``--option`` pairs as a dict; a key given twice with different values is a ConfigError (not last-wins). The
    same value twice (``k=6`` and ``k=6.0`` too: :func:`same_value`) is accepted, the integer spelling kept, in lists
    and objects too (a config that wants an int, as AWQ's group_size or fp8's weight_block_size, refuses ``6.0``)."""
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key in options and same_value(options[key], value):
            options[key] = _int_spelling(options[key], value)
            continue
        if key in options:
            raise ConfigError(
                f"--option {key} is given twice, as {key}={json.dumps(options[key])} and {key}={json.dumps(value)}; "
                "give it once with the value you mean"
            )
        options[key] = value
    return options


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "quantize", help=HELP, description=HELP + ". Quantizes 2-D *.weight tensors except embeddings and norms "
        "(override with --skip/--include) — with a compressed-tensors --config, only those its config groups target, "
        "each with its group's scheme; streams tensor by tensor and writes DST atomically.")
    p.add_argument("src", metavar="SRC", help="checkpoint directory: config.json plus *.safetensors (sharded or not)")
    p.add_argument("--method", required=True, help="quantization method name (see `fvq plugins`)")
    p.add_argument("--out", required=True, metavar="DST", help="output directory (must be empty or absent)")
    p.add_argument("--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="a key of the method's quantization config, value JSON-parsed (repeatable), "
                        "e.g. group_size=128, activation_scheme=dynamic, weight_block_size=[128,128]; a key the "
                        "config does not read, a value it overrides, a load-time setting (AWQ's fp8_compute: set it when "
                        "loading) or a key given twice with different values is an error")
    p.add_argument("--config", type=config_argument, action=GivenOnce, default=None, metavar="JSON",
                   help="the method's config keys as one JSON object, e.g. a compressed-tensors quantization_config "
                        "(quant_method \"compressed-tensors\", format, config_groups, ignore) of a scheme the method "
                        "reads: only the modules its groups target are quantized, the others listed in its ignore; "
                        "--option keys join it (a key in both is an error; --config given twice is one too)")
    p.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="leave modules matching PATTERN unquantized (whole dotted components, as "
                        "modules_to_not_convert; a fused name such as blocks.0.attn.qkv_proj matches its parts; "
                        "recorded in the config; repeatable; a pattern matching no module is an error)")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="quantize modules matching PATTERN even if the default rule excludes them (repeatable); "
                        "with a compressed-tensors --config, only modules a config group targets")
    p.add_argument("--fuse", action="append", type=parse_fuse, default=[], metavar="FUSED=PART,PART[,PART]",
                   help="modules the model's loader fuses into one layer, besides q/k/v_proj (qkv_proj) and "
                        "gate/up_proj (gate_up_proj), e.g. to_qkv=to_q,to_k,to_v: --skip/--include may name the fused "
                        "module, skipping only some parts is refused, and calibration keyed by its name serves its "
                        "parts (repeatable)")
    p.add_argument("--calibration", metavar="FILE.safetensors",
                   help="per-module input activations [tokens, in] keyed by module name, for methods that read "
                        "them (AWQ, optional; fp8 with activation_scheme=static, required); refused for one that "
                        "ignores them")
    p.add_argument("--max-shard-size", type=size_argument, default=DEFAULT_MAX_SHARD_BYTES, metavar="SIZE",
                   help="largest output shard, e.g. 2GB (default 5GB)")
    p.add_argument("--device", default=None,
                   help="where quantize_weight runs, e.g. cuda or cuda:1 (default cpu); must be visible here (not meta)")
    p.add_argument("--force", action="store_true", help="replace a non-empty DST")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, every 10% otherwise)."""

    def __init__(self, stream=None, width: int = 30) -> None:
        # (sys.stderr when made, not when this module was imported: a stream replaced since may be closed)
        self.stream, self.width = sys.stderr if stream is None else stream, width
        self.tty = self.stream.isatty()
        self._last_decile = -1

    def __call__(self, done: int, total: int, name: str) -> None:
        frac = done / max(total, 1)
        if not self.tty:
            decile = int(frac * 10)
            if decile == self._last_decile:
                return
            self._last_decile = decile
        bar = "#" * int(frac * self.width)
        line = f"[{bar:<{self.width}}] {done}/{total} tensors  {name[-50:]}"
        self.stream.write(("\r\033[K" + line) if self.tty else line + "\n")
        if self.tty and done == total:
            self.stream.write("\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from fastvideo_quant.quantize import check_device, quantize_checkpoint

    try:
        check_device(args.device, "--device")
        options = merged_options(args.config, collect_options(args.option))
        fused = collect_fused(args.fuse)
    except FastVideoQuantError as exc:  # a usage error, like argparse's
        print(f"fvq quantize: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = quantize_checkpoint(
            args.src, args.out, args.method, options=options, skip=args.skip, include=args.include,
            calibration=args.calibration, force=args.force, max_shard_bytes=args.max_shard_size, device=args.device,
            progress=None if args.no_progress else ProgressBar(), packed_modules_mapping=fused or None,
        )
    except (FastVideoQuantError, FileExistsError, ValueError) as exc:
        print(f"fvq quantize: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # permissions, disk full, a path that cannot be made: the partial output is removed
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"fvq quantize: error: {os_reason(exc)}{where}; the destination {args.out!r} was left as it was",
              file=sys.stderr)
        return 1
    except SafetensorError as exc:  # writing through safetensors outside a shard (reading one is a CheckpointError)
        print(f"fvq quantize: error: {exc}; the destination {args.out!r} was left as it was", file=sys.stderr)
        return 1
    except Terminated as exc:  # SIGTERM or SIGHUP while writing: the temporary directory was removed
        print(f"fvq quantize: error: {exc}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, as for SIGTERM (the writer removed the partial output)
        done = ("after the output was complete and in place" if getattr(exc, "completed", False) else
                f"the partial output was removed and the destination {args.out!r} left as it was")
        print(f"fvq quantize: error: interrupted (Ctrl-C) {done}", file=sys.stderr)
        return 130
    print(report.summary())
    return 0
