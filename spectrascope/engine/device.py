"""Device selection: ``--device auto|cpu|cuda|cuda:N|mps``, validated where it enters."""
from __future__ import annotations

import torch

from spectrascope.errors import OptionError

__all__ = ["resolve_device", "model_device", "DEVICE_HELP"]

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """``auto`` -> cuda when available, then mps, else cpu. An unknown device, or one this
    machine does not have, is an ``OptionError`` naming what is accepted."""
    if isinstance(name, torch.device):
        dev = name
    else:
        text = str(name or "auto").strip().lower()
        if text == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            mps = getattr(torch.backends, "mps", None)
            return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise OptionError(f"{name!r} is not a device; use {DEVICE_HELP}", option=option) from None
        if dev.type not in ("cpu", "cuda", "mps"):
            raise OptionError(f"{name!r} is not a supported device; use {DEVICE_HELP}", option=option)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"{dev} was requested but no CUDA device is available (use cpu or auto)", option=option)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"{dev} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)",
                              option=option)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise OptionError("mps was requested but is not available here (use cpu or auto)", option=option)
    return dev


def model_device(model: torch.nn.Module, fallback="cpu") -> torch.device:
    """The device of a model's first parameter (or buffer); ``fallback`` for a model without tensors."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(fallback)
