"""``python -m fastvideo_quant`` is the ``fvq`` command."""

from fastvideo_quant.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
