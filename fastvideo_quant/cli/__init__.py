"""The ``fvq`` command line (also ``python -m fastvideo_quant``).

Each subcommand is a module of this package with ``HELP``, ``add_parser(subparsers)``
and ``run(args) -> int`` (the exit status). Adding one is adding its module name
to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from fastvideo_quant import __version__
from fastvideo_quant.errors import FastVideoQuantError


def config_object(text: str) -> dict:
    """``--config JSON`` (``fvq bench``, ``fvq check``) as a dict; ValueError saying where it stops parsing, or that
    it is not an object, with an example."""
    example = "pass e.g. '{\"group_size\": 64}'"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc}); {example}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object of config keys, found {type(value).__name__}; {example}")
    return value


class GivenOnce(argparse.Action):
    """An option given at most once (``--config``, in ``fvq quantize``, ``fvq check`` and ``fvq bench``): a second
    value is a usage error naming both (exit status 2), not a silent replacement of the first, as argparse's
    ``store`` does."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        seen = f"_{self.dest}_given"
        if getattr(namespace, seen, False):
            shown = [v if isinstance(v, str) else json.dumps(v) for v in (getattr(namespace, self.dest), values)]
            raise argparse.ArgumentError(self, f"given twice, as '{shown[0]}' and '{shown[1]}' (the second would "
                                               "replace the first); give it once, one JSON object holding every key")
        setattr(namespace, seen, True)
        setattr(namespace, self.dest, values)


def config_argument(text: str) -> dict:
    """``--config JSON`` as an argparse type (``fvq quantize``, ``fvq bench``): :func:`config_object`, its message kept
    with the value given (argparse replaces a ValueError's with its own)."""
    try:
        return config_object(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


#: Subcommand modules, in the order ``fvq --help`` lists them.
SUBCOMMANDS = ["plugins", "check", "quantize", "demo", "bench"]


def _modules():
    for name in SUBCOMMANDS:
        module_name = f"{__name__}.{name}"
        if importlib.util.find_spec(module_name) is None:  # a subcommand of a later release, not installed
            continue
        yield importlib.import_module(module_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvq", description="fastvideo-quant: quantization-method plugins for tensor-parallel linear layers.")
    parser.add_argument("--version", action="version", version=f"fastvideo-quant {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _modules():
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status.

    Every error this package raises on purpose (a :class:`FastVideoQuantError`: a plugin that fails to load, an
    unknown method, ...) that a subcommand does not report itself is one line, ``fvq CMD: error: ...``, exit status
    1; a plugin left out because it failed to load, or an ``FVQ_PLUGINS`` name that selects nothing, is one
    ``fvq CMD: warning: ...`` line. Never a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"fvq {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(prog, warnings.showwarning)
        try:
            status = int(args._run(args) or 0)
            sys.stdout.flush()  # (here, not at exit: a reader that closed the pipe is caught below)
            return status
        except FastVideoQuantError as exc:
            print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            # The reader closed the pipe (fvq plugins --json | head -c 10): what it read is all it wanted. stdout goes
            # to devnull so the interpreter's flush at exit is quiet; 141 is what a tool ended by SIGPIPE reports.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141


def _one_line_warnings(prog: str, show):
    """A ``warnings.showwarning`` printing our warnings — the plugin system's (a plugin left out: PluginLoadWarning;
    an ``FVQ_PLUGINS`` name that selects nothing: PluginSelectionWarning), this package's and the plugins' own classes
    (CheckpointWarning, fp8's scale warning), and any attributed to the ``fvq`` launcher itself (where every frame is
    ours, :func:`~fastvideo_quant.errors.warn_at_caller` names the outermost) — as one ``PROG: warning: ...`` line,
    without a source line that would be the launcher's ``sys.exit(main())`` (others as ``show`` does)."""
    from fastvideo_quant.errors import is_internal_module

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if is_internal_module(category.__module__) or os.path.abspath(filename) == os.path.abspath(sys.argv[0]):
            print(f"{prog}: warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


__all__ = ["SUBCOMMANDS", "build_parser", "main"]
