"""Input sizes a zoo model can take, checked before the model is built.

``check_input_size(card, (H, W), overrides)`` builds the model on the ``meta`` device (no
memory, well under a second) and runs one image through it there:

* a size below the model's minimum (a patch embedding larger than the input, a stage grid
  that vanishes) is an ``InputSizeTooSmall`` naming ``--img-size`` and the smallest square
  side that works;
* a size whose footprint for ONE image -- the parameters plus twice the largest activation
  (an operation's input and output live together) -- exceeds the memory this machine has
  available is an ``InputSizeTooLarge`` with the estimate and the largest side that fits.

Only sizes that can be a problem are checked (a side below ``CHECK_BELOW`` or more than
``CHECK_ABOVE`` pixels); others cost nothing."""
from __future__ import annotations

import math
import os

import torch

from spectrascope.errors import OptionError, UserError

__all__ = ["InputSizeTooSmall", "InputSizeTooLarge", "check_input_size", "footprint", "available_memory"]

OPTION = "--img-size"
CHECK_BELOW = 32
CHECK_ABOVE = 1024 * 1024


class InputSizeTooSmall(OptionError):
    """An input size below the smallest one the model can run."""


class InputSizeTooLarge(OptionError):
    """An input size whose one-image footprint exceeds the available memory."""


class _Unknown(Exception):
    """The meta-device estimate is not available for this model."""


def available_memory() -> int:
    """Bytes of memory available to a new allocation on this machine (``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _peak_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Peak(TorchDispatchMode):
        """Largest tensor any operation produces."""

        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.peak = max(self.peak, t.numel() * t.element_size())
            return out
    return Peak()


def footprint(builder, hw, overrides=None, num_classes: int = 1000) -> tuple[int, int]:
    """(parameter + buffer bytes, largest activation bytes) of one image of size ``hw`` through
    ``builder``'s model, measured on the meta device. Raises ``UserError``s of the builder as
    they are; a builtin error of the build or the forward is raised as ``RuntimeError``."""
    try:
        with torch.device("meta"):
            model = builder(num_classes=num_classes, img_size=tuple(hw), **dict(overrides or {}))
        size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        x = torch.empty(1, 3, *hw, device="meta")
        mode = _peak_mode()
        with torch.no_grad(), mode:
            model.eval()(x)
    except UserError:
        raise
    except NotImplementedError as exc:
        raise _Unknown(str(exc)) from None
    except (RuntimeError, ValueError, IndexError, TypeError, ZeroDivisionError, AssertionError) as exc:
        raise RuntimeError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    return size, mode.peak


def _need(builder, hw, overrides, num_classes) -> int:
    params, peak = footprint(builder, hw, overrides, num_classes)
    return params + 2 * peak


def _smallest_side(builder, overrides, num_classes, hi: int = 512) -> int | None:
    def ok(s):
        try:
            footprint(builder, (s, s), overrides, num_classes)
            return True
        except (RuntimeError, UserError):
            return False
    if not ok(hi):
        return None
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n < 2 ** 40 else f"{n / 2 ** 40:.1f} TiB"


def _too_large(card, hw, overrides, num_classes, need: int, avail: int, option: str = OPTION) -> InputSizeTooLarge:
    side = max(hw)
    half = tuple(max(1, v // 2) for v in hw)
    fit = ""
    try:
        n2 = _need(card.builder, half, overrides, num_classes)
        p = math.log(need / n2, 2) if n2 > 0 and need > n2 else 2.0
        s = int(side * (avail / need) ** (1.0 / p)) // 32 * 32
        fit = f"; the largest side that fits is about {s} px" if s >= 32 else ""
    except (RuntimeError, UserError, _Unknown):
        pass
    return InputSizeTooLarge(f"{hw[0]}x{hw[1]}: {card.name} needs at least {_gib(need)} for one image (parameters "
                             f"and its largest activation), more than the {_gib(avail)} available{fit}", option=option)


def check_input_size(card, hw, overrides=None, num_classes: int = 1000, option: str = OPTION) -> None:
    """Refuse ``hw`` for ``card`` before building: below the model's minimum or beyond the
    available memory (see the module doc). Silent when the estimate is not available. ``option``
    names the option the size came from (``--img-size``, ``--resolutions``)."""
    if hw is None:
        return
    hw = (int(hw[0]), int(hw[1]))
    if min(hw) >= CHECK_BELOW and hw[0] * hw[1] <= CHECK_ABOVE:
        return
    try:
        need = _need(card.builder, hw, overrides, num_classes)
    except _Unknown:
        return
    except RuntimeError as exc:
        try:
            _need(card.builder, tuple(card.default_input_size[1:]), overrides, num_classes)
        except (RuntimeError, UserError, _Unknown):
            return                                  # fails at its own size too: not a size problem
        s = _smallest_side(card.builder, overrides, num_classes)
        least = f"at least {s}x{s} px" if s else "a larger input"
        raise InputSizeTooSmall(f"{hw[0]}x{hw[1]} is too small for {card.name}: it needs {least} ({exc})",
                                option=option) from None
    avail = available_memory()
    if need > avail:
        raise _too_large(card, hw, overrides, num_classes, need, avail, option)
