"""Result directories and provenance.

Every command writes into a staging directory and renames it into place only when the
whole output is written, so a failed run leaves nothing half-written. ``results.json``
always carries the provenance block from ``provenance()``."""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from spectrascope.errors import OutputExistsError

SCHEMA_VERSION = 1



def default_output_dir(command: str, tag: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    return Path("runs") / command / f"{safe}-{stamp}"


@contextlib.contextmanager
def staged_output(final: Path, overwrite: bool = False):
    """Yield a staging directory; on success it replaces ``final``, on error it is removed."""
    final = Path(final)
    occupied = final.is_file() or (final.is_dir() and any(final.iterdir()))
    if occupied and not overwrite:
        raise OutputExistsError(f"output directory {final} exists and is not empty (use --overwrite)")
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        stage.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(final)


def library_versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for pkg in ("spectrascope", "matplotlib", "captum", "torch-cka", "timm", "safetensors", "click"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def device_info(device: torch.device | str | None = None) -> dict:
    dev = torch.device(device or "cpu")
    info = {"device": str(dev), "threads": torch.get_num_threads()}
    if dev.type == "cuda" and torch.cuda.is_available():
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["cuda"] = torch.version.cuda
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def provenance(*, command: str, model: str | None = None, checkpoint_sha256: str | None = None,
               images_sha256: str | None = None, device=None, wall_time_s: float | None = None,
               random_weights: bool | None = None, extra: Mapping | None = None) -> dict:
    d = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "argv": [Path(sys.argv[0]).name] + sys.argv[1:],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "checkpoint_sha256": checkpoint_sha256,
        "random_weights": random_weights,
        "images_sha256": images_sha256,
        "versions": library_versions(),
        "device": device_info(device),
        "wall_time_s": wall_time_s,
    }
    if extra:
        d.update(extra)
    return d


def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Path, payload: Mapping) -> None:
    Path(path).write_text(json.dumps(payload, indent=1, default=_jsonable, allow_nan=True) + "\n")


def write_csv(path: Path, rows: Iterable[Mapping], fieldnames: list[str] | None = None) -> None:
    rows = list(rows)
    fieldnames = fieldnames or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
