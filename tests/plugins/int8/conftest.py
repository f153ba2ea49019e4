import sys
from pathlib import Path

# int8_helpers.py sits beside the tests (pytest's importlib mode does not put this folder on sys.path).
sys.path.insert(0, str(Path(__file__).parent))

from int8_helpers import ensure_registered  # noqa: E402

ensure_registered()
