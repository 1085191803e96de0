"""What every pipeline shares: the device and distributed session, the output stage, and
the notes and warnings a command reports."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spectrascope.engine import dist as _dist
from spectrascope.engine.device import resolve_device
from spectrascope.io.results import StagedOutput, default_output_dir

__all__ = ["Outcome", "session", "stage_output", "random_weights_note", "model_device"]


@dataclass
class Outcome:
    """What a pipeline returns to its caller: the output folder, the one-line summary, the
    notes (random weights, fallbacks) and warnings to show, and the results payload."""

    output: Path | None = None
    summary: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    payload: dict = field(default_factory=dict)


@contextlib.contextmanager
def session(device="auto"):
    """``with session(device) as (dist, device):`` -- the validated device, joined to the process
    group of ``torchrun`` when one launched this process (left again afterwards)."""
    dev = resolve_device(device)
    with _dist.session(dev) as (d, dev):
        yield d, dev


def stage_output(output, *, command: str, tag: str, overwrite: bool = False, inputs=(),
                 dist: _dist.Dist | None = None) -> StagedOutput:
    """The checked, staged output folder of a command (default ``runs/<command>/<tag>-<time>``);
    only rank 0 stages and writes (other ranks get a disabled stage yielding None)."""
    d = dist or _dist.current()
    out = Path(output) if output else default_output_dir(command, tag)
    if d.enabled:
        out = Path(d.broadcast_object(str(out)))         # one name (the timestamp of rank 0) for every rank
    return StagedOutput(out, command=command, overwrite=overwrite, inputs=inputs, enabled=d.main)


def random_weights_note(names, what: str = "the results describe an untrained network") -> str | None:
    names = list(dict.fromkeys(names))
    if not names:
        return None
    return f"random weights for {', '.join(names)} (no checkpoint given): {what}"


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
