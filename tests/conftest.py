import os
import sys
from pathlib import Path

import torch

# Triton kernels run under the interpreter on machines without a GPU; the flag is
# read when a kernel module is imported, so it is set before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Worker functions for spawned torch.distributed ranks must be importable by the
# child processes (multiprocessing passes sys.path on), so tests/ goes on the path.
sys.path.insert(0, str(Path(__file__).parent))
