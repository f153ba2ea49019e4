"""``fvq plugins --json | head -c 10``: a reader that closes the pipe early ends the command quietly (exit 141, as a
tool ended by SIGPIPE), not with a BrokenPipeError traceback (docs/guide/cli.md: never a traceback)."""

from __future__ import annotations

import subprocess
import sys


def test_a_closed_pipe_is_no_traceback() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "fastvideo_quant", "plugins", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before it writes: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
