"""The one output layer: staged result directories, the overwrite policy, atomic files,
strict JSON and provenance.

Every command writes into a staging folder beside its output (``.NAME.partial-HOST-PID``)
and moves the files into place only when everything was written, so a failed or
interrupted run leaves nothing half-written. The folder then holds a manifest
(``MANIFEST``) listing the files spectrascope wrote and which command wrote them.

Overwrite policy (``--overwrite``), checked before any work starts:

* a missing or empty folder is always fine;
* a non-empty folder needs ``--overwrite``, and then may hold only files that the same
  command recorded in its manifest: a folder with any other file (photos, another
  command's outputs, training checkpoints) is refused, never emptied;
* an output folder that is one of the command's inputs (images, data root, checkpoint) or
  contains one is refused, with or without ``--overwrite``;
* staging folders of processes that no longer run (``kill -9``) are removed the next time
  a command writes to the same place; SIGTERM/SIGINT remove the current one.

The manifest is data, never an instruction: its entries are accepted only as normalised
relative paths of files inside the folder (no ``..``, no absolute path, no symbolic link on
the way); a manifest with any other entry is refused in one line naming it, and nothing is
deleted. A command claims its folder (``io.claims``) from the check to the commit: a folder
another command is writing is refused at once, and one that changed meanwhile is refused at
the commit, never emptied. A write the machine refuses (a full disk, a read-only or busy
folder) is one ``io.failures.WriteError`` line naming the file and what was kept.

JSON is strict: a NaN or infinity in a payload is a bug (``InternalError``); defined
undefined values (the CKA of a constant tap) must be given as ``None`` (``null``) by the
code that produces them, with a diagnostic.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import json
import math
import os
import platform
import posixpath
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from spectrascope.errors import InternalError, OutputError, OutputExistsError
from spectrascope.io.claims import FolderClaim, fingerprint
from spectrascope.io.failures import WriteError, describe_oserror, is_write_failure, write_error

__all__ = ["SCHEMA_VERSION", "MANIFEST", "default_output_dir", "check_output", "check_output_file", "find_nonfinite",
           "StagedOutput", "staged_output", "read_manifest", "record_outputs", "atomic_write", "write_checkpoint",
           "write_json", "dumps", "loads", "write_csv", "provenance", "library_versions", "device_info", "Stopwatch"]

#: version of the results.json layout (2: every analysis writes ``{"schema_version", "analysis", <result
#: fields>, "provenance"}`` through the analysis seam; 1: the per-command layouts before it)
SCHEMA_VERSION = 2
#: the manifest a result folder carries: which files spectrascope wrote, and which command
MANIFEST = ".spectrascope-manifest.json"


def default_output_dir(command: str, tag: str) -> Path:
    """``runs/<command>/<tag>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3`` ... after it when a folder of
    that name is already there (two runs started within the same second)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    base = Path("runs") / command / f"{safe}-{stamp}"
    out, n = base, 1
    while out.exists() or out.is_symlink():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


# ---------------------------------------------------------------------------- manifest + policy

def _bad_entry(folder: Path, entry) -> str | None:
    """Why ``entry`` of ``folder``'s manifest is not a file of the folder (None: it is one)."""
    if not isinstance(entry, str) or not entry:
        return f"entry {entry!r} is not a file name"
    if "\x00" in entry or "\\" in entry:
        return f"entry {entry!r} holds a NUL or backslash"
    if entry.startswith("/") or (len(entry) > 1 and entry[1] == ":"):
        return f"entry {entry!r} is an absolute path"
    parts = entry.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(entry) != entry:
        return f"entry {entry!r} is not a normalised path inside the folder"
    if entry == MANIFEST:
        return f"entry {entry!r} is the manifest itself"
    p = folder
    for part in parts:
        p = p / part
        if p.is_symlink():
            return f"entry {entry!r} passes through the symbolic link {p}"
        if not p.exists():
            break
    return None


def read_manifest(folder: Path) -> dict | None:
    """The manifest of ``folder`` (``{"command": ..., "files": [...]}``), or None when it is missing
    or unreadable. A manifest is data, never an instruction: every entry must be a normalised
    relative path of a file inside ``folder`` (no ``..``, no absolute path, no symbolic link on
    the way); any other entry is an ``OutputError`` naming the manifest (nothing is touched)."""
    folder = Path(folder)
    p = folder / MANIFEST
    if p.is_symlink():
        raise OutputError(f"{p} is a symbolic link, not a manifest spectrascope wrote; the folder was left "
                          "untouched: choose another folder", option="--output")
    if not p.is_file():
        return None
    try:
        doc = loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list) or not isinstance(doc.get("command"), str):
        return None
    for entry in doc["files"]:
        why = _bad_entry(folder, entry)
        if why:
            raise OutputError(f"{p}: {why}; a manifest may only list files inside its own folder, so the "
                              "folder was left untouched: choose another folder (or repair the manifest)",
                              option="--output")
    return doc


def _files_under(folder: Path) -> list[str]:
    return sorted(rel for rel, v in fingerprint(folder).items() if v[3] != "d")


def _contains(parent: Path, child: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _check_place(final: Path, inputs: Iterable, option: str) -> None:
    """Where the folder lies: not on or around an input, not a file, not under a file."""
    for item in inputs or ():
        if item is None:
            continue
        src = Path(os.path.abspath(Path(item).expanduser()))
        if src == final or _contains(final, src):
            raise OutputError(f"{final} is or contains this command's input {src}; choose another folder",
                              option=option)
        if src.is_dir() and _contains(src, final):
            raise OutputError(f"{final} lies inside this command's input folder {src} (the outputs would mix "
                              "with the inputs); choose another folder", option=option)
    for parent in [final, *final.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == final else f"lies under the file {parent}"
                raise OutputError(f"{final} {what}; give a folder", option=option)
            break


def _check_contents(final: Path, command: str, overwrite: bool, option: str) -> None:
    """What the folder holds: nothing, or (with ``--overwrite``) only files this command recorded."""
    if not final.is_dir():
        return
    present = [f for f in _files_under(final) if f != MANIFEST]
    if not present:
        return
    if not overwrite:
        raise OutputExistsError(f"output directory {final} exists and is not empty (use --overwrite)", option=option)
    man = read_manifest(final)
    if man is None:
        raise OutputError(f"{final} holds {len(present)} file(s) spectrascope did not write (e.g. "
                          f"{present[0]}); --overwrite only replaces a folder of spectrascope outputs: "
                          "choose another folder", option=option)
    if man.get("command") != command:
        raise OutputError(f"{final} holds the outputs of `spectrascope {man.get('command')}`; --overwrite "
                          f"only replaces outputs of `spectrascope {command}`: choose another folder", option=option)
    foreign = sorted(set(present) - set(man["files"]))
    if foreign:
        raise OutputError(f"{final} holds {len(foreign)} file(s) spectrascope did not write (e.g. "
                          f"{foreign[0]}); --overwrite only replaces spectrascope's own files: choose "
                          "another folder", option=option)


def check_output(final, *, command: str, overwrite: bool = False, inputs: Iterable = (),
                 option: str = "--output") -> Path:
    """Validate an output folder before any work (the policy of the module doc); returns its absolute path."""
    final = Path(os.path.abspath(Path(final).expanduser()))
    _check_place(final, inputs, option)
    _check_contents(final, command, overwrite, option)
    _check_writable(final, option)
    return final


def check_output_file(target, *, overwrite: bool = False, inputs: Iterable = (), option: str = "--output") -> Path:
    """Validate a single output file before any work: never one of the command's inputs (the same
    file, also through a link), its folder exists, and an existing file needs ``--overwrite``;
    returns its absolute path."""
    out = Path(os.path.abspath(Path(target).expanduser()))
    for item in inputs or ():
        if item is None:
            continue
        src = Path(os.path.abspath(Path(item).expanduser()))
        same = src == out
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(src, out)
        if same:
            raise OutputError(f"{out} is this command's input {src}; write to another file", option=option)
    if out.is_dir():
        raise OutputError(f"{out} is a folder; give a file name", option=option)
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"the folder {parent} does not exist; create it first", option=option)
    if not parent.is_dir():
        raise OutputError(f"{out} lies under the file {parent}; give a path in a folder", option=option)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it", option=option)
    _check_writable(parent, option)
    return out


def _check_writable(final: Path, option: str) -> None:
    """The output folder and its staging folder (beside it) can be created: checked by creating and
    removing an empty probe folder in the nearest existing ancestor (``os.access`` is not enough:
    root bypasses permissions, read-only file systems and special folders do not)."""
    for where in dict.fromkeys([final, final.parent]):
        base = next(p for p in [where, *where.parents] if p.exists())
        if not os.access(base, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write into {base} (permission denied)", option=option)
        try:
            probe = tempfile.mkdtemp(prefix=".spectrascope-probe-", dir=base)
            os.rmdir(probe)
        except OSError as exc:
            raise OutputError(f"cannot write into {base} ({describe_oserror(exc)})", option=option) from None


# ---------------------------------------------------------------------------- staging

_HOST = socket.gethostname().replace("-", "_") or "host"


def _stage_name(final: Path) -> str:
    return f".{final.name}.partial-{_HOST}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_stages(final: Path) -> list[Path]:
    """Remove staging folders for ``final`` left by dead processes of this host."""
    removed = []
    parent = final.parent
    if not parent.is_dir():
        return removed
    for p in parent.glob(f".{final.name}.partial-*"):
        tail = p.name.rsplit(".partial-", 1)[1]
        host, _, pid = tail.rpartition("-")
        if host not in ("", _HOST) or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _move_into(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)``; across file systems (``dst`` on a mount point) a copy beside ``dst``
    renamed over it, so ``dst`` is never half-written."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        try:
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        src.unlink()


class StagedOutput:
    """``with StagedOutput(final, command=...) as stage:`` -- write into ``stage``; on success the
    files move into ``final`` with a manifest, on any error (or signal) the staging folder is
    removed and ``final`` is untouched. ``enabled=False`` (non-zero ranks) stages nothing and
    yields None.

    The folder is checked when the object is made (so a refusal comes before any work) and again
    when the block is entered, under a claim (``io.claims``) held until the commit: a second
    command writing the same folder meanwhile is refused, and a folder that changed between the
    entry and the commit (something outside spectrascope wrote there) is refused, never emptied.
    An ``OSError`` of writing (a full disk, a read-only or busy folder) becomes one ``WriteError``
    line naming the file and saying what was kept."""

    def __init__(self, final, *, command: str, overwrite: bool = False, inputs: Iterable = (),
                 option: str = "--output", enabled: bool = True):
        self.command = command
        self.enabled = enabled
        self.overwrite = overwrite
        self.option = option
        self.final = check_output(final, command=command, overwrite=overwrite, inputs=inputs, option=option) \
            if enabled else Path(final)
        self.stage: Path | None = None
        self.claim: FolderClaim | None = None

    def __enter__(self) -> Path | None:
        if not self.enabled:
            return None
        self.claim = FolderClaim(self.final, command=self.command, option=self.option).acquire()
        try:
            _check_contents(self.final, self.command, self.overwrite, self.option)   # again, under the claim
            self.claim.baseline = fingerprint(self.final)
            clean_stale_stages(self.final)
            self.stage = self.final.parent / _stage_name(self.final)
            if self.stage.exists():
                shutil.rmtree(self.stage)
            self.stage.mkdir()
        except OSError as exc:
            self.claim.release()
            raise OutputError(f"cannot create the output folder {self.final} ({describe_oserror(exc)})",
                              option=self.option) from None
        except BaseException:
            self.claim.release()
            raise
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.enabled:
            return False
        try:
            if exc_type is not None:
                shutil.rmtree(self.stage, ignore_errors=True)
                if isinstance(exc, WriteError):
                    if exc.path is not None and _contains(self.stage, Path(os.path.abspath(exc.path))):
                        raise self._stage_error(exc) from None
                    return False                    # another place (a cache) says so itself
                if is_write_failure(exc, under=self.stage):
                    raise self._stage_error(exc) from None
                return False
            try:
                self._commit()
            except BaseException:
                shutil.rmtree(self.stage, ignore_errors=True)
                raise
            return False
        finally:
            self.claim.release()

    def _stage_error(self, exc: BaseException) -> WriteError:
        """A write into the stage failed: name the output file (never the staging path)."""
        path = getattr(exc, "path", None) or (Path(os.fsdecode(exc.filename)) if getattr(exc, "filename", None)
                                              else None)
        shown = self.final
        if path is not None:
            with contextlib.suppress(ValueError):
                shown = self.final / Path(os.path.abspath(path)).relative_to(self.stage)
        reason = getattr(exc, "reason", "") or describe_oserror(exc)
        before = "it is as before" if self.final.exists() else "it was not created"
        return WriteError(f"cannot write {shown}: {reason}; nothing was written to {self.final} ({before})",
                          path=shown, reason=reason, option=self.option)

    def _recheck(self) -> None:
        """The folder is as it was when the claim was taken (nothing else wrote there meanwhile)."""
        now = fingerprint(self.final)
        base = self.claim.baseline or {}
        if now == base:
            return
        changed = sorted(k for k in set(now) | set(base) if now.get(k) != base.get(k))
        raise OutputError(f"{self.final} changed while this command ran ({len(changed)} entr"
                          f"{'y' if len(changed) == 1 else 'ies'} added, changed or removed by another program, "
                          f"e.g. {changed[0]}); its files were left as they are and this run's results were not "
                          "written: run again into another folder", option=self.option)

    def _commit(self) -> None:
        stage, final = self.stage, self.final
        self._recheck()
        new = [f for f in _files_under(stage) if f != MANIFEST]
        doc = {"command": self.command, "files": new,
               "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if not final.exists() and not final.is_symlink():
            (stage / MANIFEST).write_text(dumps(doc) + "\n")
            os.replace(stage, final)
            return
        old = read_manifest(final) or {"files": []}
        kept = (f"{final} may hold old and new files, all listed in its manifest {MANIFEST}; run again with "
                "--overwrite")
        try:
            # a manifest that lists old and new files first: a crash midway never leaves unlisted files
            union = dict(doc, files=sorted(set(old["files"]) | set(new)))
            atomic_write(final / MANIFEST, lambda p: p.write_text(dumps(union) + "\n"))
            emptied = set()
            for rel in new:
                dst = final / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                _move_into(stage / rel, dst)
            for rel in sorted(set(old["files"]) - set(new)):
                with contextlib.suppress(FileNotFoundError):
                    (final / rel).unlink()
                    emptied.update(p for p in (final / rel).parents if _contains(final, p) and p != final)
            for d in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()                              # folders emptied by the replacement
            atomic_write(final / MANIFEST, lambda p: p.write_text(dumps(doc) + "\n"))
        except WriteError as exc:
            raise WriteError(f"cannot write {exc.path}: {exc.reason}; {kept}", path=exc.path, reason=exc.reason,
                             option=self.option) from None
        except OSError as exc:
            raise write_error(exc, final, kept, option=self.option) from None
        shutil.rmtree(stage, ignore_errors=True)


def record_outputs(folder, *, command: str, files: Iterable[str]) -> None:
    """Add ``files`` (paths relative to ``folder``) to the manifest of a folder a command writes in
    place (training runs: checkpoints are written there during the run); atomic."""
    folder = Path(folder)
    old = read_manifest(folder)
    if old is not None and old.get("command") != command:
        raise InternalError(f"{folder} is recorded as an output of {old.get('command')!r}, not {command!r}")
    listed = set(old["files"]) if old else set()
    files = {str(f) for f in files}
    bad = next(((f, why) for f in sorted(files) if (why := _bad_entry(folder, f))), None)
    if bad:
        raise InternalError(f"{folder}: cannot record {bad[0]!r}: {bad[1]}")
    doc = {"command": command, "files": sorted(listed | files),
           "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MANIFEST, lambda p: p.write_text(dumps(doc) + "\n"))


def staged_output(final, overwrite: bool = False, *, command: str = "output", inputs: Iterable = (),
                  enabled: bool = True) -> StagedOutput:
    """``StagedOutput(final, command=command, overwrite=overwrite, inputs=inputs)``."""
    return StagedOutput(final, command=command, overwrite=overwrite, inputs=inputs, enabled=enabled)


def atomic_write(path, write) -> None:
    """``write(tmp_path)`` then fsync and rename over ``path``: never a half-written file. An
    ``OSError`` of the write (a full disk, a read-only folder) is a ``WriteError`` naming ``path``
    and saying that its previous content was kept."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    kept = f"the previous {path.name} was kept" if path.exists() else "nothing was written"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        cause = _os_error_in(exc)          # a writer may hide it (torch.save's zip writer raises anew)
        if cause is None:
            raise
        raise write_error(cause, path, kept) from None
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists() or tmp.is_symlink():
                tmp.unlink()


def _os_error_in(exc: BaseException) -> OSError | None:
    """``exc`` or the first ``OSError`` it was raised from or while handling (None: none)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def write_checkpoint(path, state) -> None:
    """``state`` saved to ``path`` atomically: safetensors for a ``.safetensors`` path (a dict of
    tensors), else ``torch.save``. Written through a Python file, so a full disk is a ``WriteError``
    (never a half-written file; the previous file is kept)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save
        data = save({k: v.detach().contiguous().cpu() for k, v in state.items()})
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        return

    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(state, f)
    atomic_write(path, write)


# ---------------------------------------------------------------------------- strict JSON

def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def find_nonfinite(o, path: str = "$") -> str | None:
    """The JSON path of the first NaN/inf in ``o`` (``$.models[0].curve[3]``), or None."""
    if isinstance(o, float):
        return None if math.isfinite(o) else path
    if isinstance(o, Mapping):
        for k, v in o.items():
            hit = find_nonfinite(v, f"{path}.{k}")
            if hit:
                return hit
    elif isinstance(o, (list, tuple)):
        for i, v in enumerate(o):
            hit = find_nonfinite(v, f"{path}[{i}]")
            if hit:
                return hit
    return None


def dumps(payload, indent: int | None = 1) -> str:
    """Strict JSON text: a NaN or infinity anywhere is an ``InternalError`` naming where it is."""
    try:
        return json.dumps(payload, indent=indent, default=_jsonable, allow_nan=False)
    except ValueError:
        plain = json.loads(json.dumps(payload, default=_jsonable, allow_nan=True))
        raise InternalError(f"a non-finite number reached the results at {find_nonfinite(plain)}; "
                            "it must be reported (and written as null) by the code that produced it") from None


def loads(text: str):
    """Parse strict JSON (NaN / Infinity tokens are refused)."""
    def refuse(tok):
        raise ValueError(f"non-standard JSON token {tok}")
    return json.loads(text, parse_constant=refuse)


def write_json(path, payload: Mapping) -> None:
    text = dumps(payload) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))


def write_csv(path, rows: Iterable[Mapping], fieldnames: list[str] | None = None) -> None:
    rows = list(rows)
    fieldnames = fieldnames or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------- provenance

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
               random_weights: bool | None = None, world_size: int | None = None,
               extra: Mapping | None = None) -> dict:
    """The provenance block of every results.json (``world_size``: processes that computed it)."""
    if world_size is None:
        from spectrascope.engine import dist
        world_size = dist.current().world
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
        "world_size": int(world_size),
        "wall_time_s": wall_time_s,
    }
    if extra:
        d.update(extra)
    return d


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
