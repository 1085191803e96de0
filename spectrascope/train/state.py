"""What a training run keeps on disk: checkpoints (plain types only, loadable with
``torch.load(weights_only=True)``; never pickled code), the random-number state that makes
a resumed run continue exactly, and the run folder.

Every file is written to a temporary name and renamed (``io.results.atomic_write``), so a
kill at any moment leaves the previous ``last.pth`` intact. The run folder carries the
manifest of ``io.results``: the files ``spectrascope train`` writes there are recorded
before they are written, so the overwrite policy of every command knows them; and
``--overwrite`` never deletes a run's checkpoints (``last.pth``, ``best.pth``)."""
from __future__ import annotations

import contextlib
import random
from pathlib import Path

import numpy as np
import torch

from spectrascope.errors import CheckpointError, OutputError
from spectrascope.io.results import (atomic_write, check_output, read_manifest, record_outputs, write_csv,
                                     write_json)
from spectrascope.train.config import plain

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "RUN_FILES", "CHECKPOINTS", "atomic_write", "save_checkpoint",
           "load_training_checkpoint", "rng_state", "set_rng_state", "prepare_output", "write_json_atomic",
           "write_csv_atomic"]

CHECKPOINT_FORMAT = "spectrascope-train"
CHECKPOINT_VERSION = 1
#: the checkpoints of a run: never deleted by --overwrite
CHECKPOINTS = ("last.pth", "best.pth")
#: every file a training run writes into its folder
RUN_FILES = ("args.json", *CHECKPOINTS, "metrics.csv", "results.json")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file renamed over it); a file system that
    refuses it (full, read-only, quota) is an ``OutputError`` and the previous file is intact."""
    def write(tmp) -> None:
        with open(tmp, "wb") as f:         # a Python file: a full disk is an OSError, not a C++ RuntimeError
            torch.save(state, f)

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise OutputError(f"cannot write the checkpoint {path} ({exc.strerror or exc}); the previous one is "
                          "intact", option="--output") from None


def load_training_checkpoint(path) -> dict:
    """A spectrascope training checkpoint (file, or a run directory holding last.pth)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:      # any unreadable file (truncated, not a zip, pickled code) is the user's input
        raise CheckpointError(f"{path}: unreadable training checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a spectrascope training checkpoint (cannot resume from it)")
    obj["_path"] = str(path)
    return obj


def rng_state() -> dict:
    """torch, python, numpy (and CUDA) random states as plain types and tensors."""
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    st = {"torch": torch.get_rng_state(), "python": plain(random.getstate()),
          "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                    "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: dict | None) -> None:
    if not st:
        return
    torch.set_rng_state(st["torch"])
    v, inner, g = st["python"]
    random.setstate((v, tuple(inner), g))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(st["cuda"])


def prepare_output(out: Path, overwrite: bool, *, resuming: bool = False, inputs=()) -> Path:
    """Check the run folder (the ``io.results`` policy; checkpoints are never replaced), record
    the run's files in its manifest and remove temporary files a kill left behind."""
    out = Path(out)
    if not resuming:
        check_output(out, command="train", overwrite=overwrite, inputs=inputs)
        kept = [n for n in CHECKPOINTS if (out / n).exists()]
        if kept:
            raise OutputError(f"{out} holds the checkpoint {kept[0]} of a training run; --overwrite never deletes "
                              f"checkpoints: continue it with --resume {out / kept[0]} or choose another folder",
                              option="--output")
        if out.is_dir() and read_manifest(out) is not None:
            for name in RUN_FILES:        # only files this command recorded (the policy checked it)
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
    man = read_manifest(out) if out.is_dir() else None
    if man is not None and man.get("command") != "train":
        raise OutputError(f"{out} holds the outputs of `spectrascope {man.get('command')}`; a training run writes "
                          "into its own folder: choose another --output", option="--output")
    record_outputs(out, command="train", files=RUN_FILES)
    for stale in out.glob(".*.tmp-*"):     # left by a kill during a save
        with contextlib.suppress(OSError):
            stale.unlink()
    return out


def write_json_atomic(path: Path, payload: dict) -> None:
    write_json(path, payload)


def write_csv_atomic(path: Path, rows: list[dict]) -> None:
    names: list[str] = []
    for r in rows:
        names += [k for k in r if k not in names]
    atomic_write(path, lambda tmp: write_csv(tmp, rows, names))
