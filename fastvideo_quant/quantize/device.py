"""The device ``fvq quantize`` (and ``fvq demo``) runs on, checked before anything is read."""

from __future__ import annotations

import torch

from fastvideo_quant.errors import ConfigError

#: Device types whose tensors hold no data: nothing quantized there could be written out.
_NO_DATA_DEVICES = {"meta"}


def check_device(device: str | torch.device | None, what: str = "device") -> torch.device:
    """``device`` as a torch.device (None: CPU); ConfigError naming ``what`` when it cannot be used here."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{what} {str(device)!r} is not a device name ({exc}); use e.g. cpu, cuda or cuda:1") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = (f"torch {torch.__version__} is built with CUDA {torch.version.cuda}" if torch.version.cuda
                     else f"torch {torch.__version__} is built without CUDA")
            raise ConfigError(f"{what} {str(device)!r}: no CUDA device is visible ({built}); use {what} cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{what} {str(device)!r}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type in _NO_DATA_DEVICES:
        raise ConfigError(
            f"{what} {str(device)!r}: a {dev.type} tensor holds no data (shapes and dtypes only), so quantized "
            f"weights could not be written from it; use {what} cpu or cuda"
        )
    if dev.type != "cpu":
        try:  # quantize_weight runs there and its output is copied back to CPU memory to be written
            torch.zeros(1, device=dev).to("cpu")
        except Exception as exc:  # noqa: BLE001 - any backend's refusal, reported with the option's name
            raise ConfigError(
                f"{what} {str(device)!r} cannot be used here (torch {torch.__version__}: {type(exc).__name__}: "
                f"{_first_line(exc)}); use {what} cpu or cuda"
            ) from exc
    return dev


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The gist of an exception: its first line, up to the first sentence's end, at most ``limit`` characters.

    Torch's dispatcher errors run to ~60 lines (every backend's kernel registrations); the first
    sentence says what failed ("Could not run 'aten::empty.memory_format' ... from the 'MPS' backend").
    """
    lines = str(exc).strip().splitlines()
    line = lines[0].strip() if lines else ""
    end = line.find(". ")
    if end > 0:
        line = line[:end]
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."
