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
import os
import random
from pathlib import Path

import numpy as np
import torch

from spectrascope.errors import CheckpointError, OutputError
from spectrascope.io.claims import claim_folder, claim_scope
from spectrascope.io.failures import writing
from spectrascope.io.results import (MANIFEST, _pid_alive, atomic_write, check_output, read_manifest, record_outputs,
                                     write_checkpoint, write_csv, write_json)
from spectrascope.zoo.checkpoint import torch_load_plain
from spectrascope.train.config import plain

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "RUN_FILES", "CHECKPOINTS", "atomic_write", "save_checkpoint",
           "load_training_checkpoint", "rng_state", "set_rng_state", "prepare_output", "write_json_atomic",
           "write_csv_atomic", "claim_scope"]

CHECKPOINT_FORMAT = "spectrascope-train"
CHECKPOINT_VERSION = 1
#: the checkpoints of a run: never deleted by --overwrite
CHECKPOINTS = ("last.pth", "best.pth")
#: every file a training run writes into its folder
RUN_FILES = ("args.json", *CHECKPOINTS, "metrics.csv", "results.json")


def save_checkpoint(path: Path, state: dict) -> None:
    """``state`` to ``path`` atomically; a full disk is one ``WriteError`` line (the previous file is kept)."""
    write_checkpoint(path, state)


def load_training_checkpoint(path) -> dict:
    """A spectrascope training checkpoint (file, or a run directory holding last.pth)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    obj = torch_load_plain(path)        # no pickled code runs; a refusal says why in one line
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


def _clean_partial_saves(out: Path) -> None:
    """Temporary files of the run's own saves left by a kill (``.last.pth.tmp-PID`` of a dead PID)."""
    for name in RUN_FILES:
        for stale in out.glob(f".{name}.tmp-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    stale.unlink()


def _resume_in_place(out: Path, resumed: Path | None) -> None:
    """Resuming in the checkpoint's own folder: every run file already there must be this run's
    (recorded by ``spectrascope train``, or the checkpoint being resumed); a file of the same name
    that spectrascope did not record is the user's and is neither replaced nor claimed."""
    man = read_manifest(out) if out.is_dir() else None
    if man is not None and man.get("command") != "train":
        raise OutputError(f"{out} holds the outputs of `spectrascope {man.get('command')}`; a training run writes "
                          "into its own folder: choose another --output", option="--output")
    listed = set(man["files"]) if man else set()
    theirs = [n for n in RUN_FILES if (out / n).exists() and n not in listed
              and not (resumed is not None and (out / n).resolve() == resumed.resolve())]
    if theirs:
        raise OutputError(f"{out} holds {', '.join(theirs)} that spectrascope train did not record there (your own "
                          f"file{'s' if len(theirs) > 1 else ''}?); a resumed run would replace "
                          f"{'them' if len(theirs) > 1 else 'it'}: resume into another folder with --output",
                          option="--output")


def _abandon(out: Path, created: bool) -> None:
    """A run that failed before its first checkpoint leaves nothing: its files, manifest and (when
    it made it) its folder are removed; a run with a checkpoint is kept (it can be resumed)."""
    if any((out / n).exists() for n in CHECKPOINTS):
        return
    for name in (*RUN_FILES, MANIFEST):
        with contextlib.suppress(OSError):
            (out / name).unlink()
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()


def prepare_output(out: Path, overwrite: bool, *, resuming: bool = False, inputs=(), resumed=None) -> Path:
    """Claim the run folder for the run (``io.claims``: released when the run's ``claim_scope``
    ends), check it (the ``io.results`` policy; checkpoints are never replaced, a resumed run never
    takes over the user's files), record the run's files in its manifest and remove temporary
    files a kill left behind. A run that fails before its first checkpoint removes what it wrote."""
    out = Path(os.path.abspath(Path(out)))
    claim = claim_folder(out, command="train")
    created = not out.exists()
    try:
        _check_run_folder(out, overwrite, resuming, inputs, resumed)
        with writing(out, "nothing was written"):
            record_outputs(out, command="train", files=RUN_FILES)
    except BaseException:
        if created:
            _abandon(out, created)
        claim.release()
        raise
    claim.on_failure = lambda: _abandon(out, created)
    _clean_partial_saves(out)
    return out


def _check_run_folder(out: Path, overwrite: bool, resuming: bool, inputs, resumed) -> None:
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
    else:
        _resume_in_place(out, Path(resumed) if resumed else None)
    man = read_manifest(out) if out.is_dir() else None
    if man is not None and man.get("command") != "train":
        raise OutputError(f"{out} holds the outputs of `spectrascope {man.get('command')}`; a training run writes "
                          "into its own folder: choose another --output", option="--output")


def write_json_atomic(path: Path, payload: dict) -> None:
    write_json(path, payload)


def write_csv_atomic(path: Path, rows: list[dict]) -> None:
    names: list[str] = []
    for r in rows:
        names += [k for k in r if k not in names]
    atomic_write(path, lambda tmp: write_csv(tmp, rows, names))
