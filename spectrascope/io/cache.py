"""The analyses' image cache: the first N validation images of a synthetic or CIFAR spec written
once as lossless PNG files (``$SPECTRASCOPE_CACHE/images`` or ``~/.cache/spectrascope/images``), so
every command reads the same files, with a sidecar ``labels.json`` (labels, class names and, for
synthetic data, the patch boxes ``(x0, y0, x1, y1)`` in pixels).

A cache folder is keyed by content: the spec's kind, options and split and, for data read from
disk, the name, size and modification time (ns) of every file the spec reads (the CIFAR archive,
or each file of its folder) -- a data set rewritten in place gets a new folder, never stale
images. Every file is written to a temporary name and renamed; a write the machine refuses (a
full disk, a read-only cache) removes what this call wrote and is one ``WriteError`` line.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from spectrascope.errors import DataError
from spectrascope.io.bundles import load_data
from spectrascope.io.cifar import CIFAR, cifar_files
from spectrascope.io.claims import created_parents, remove_created
from spectrascope.io.failures import write_error
from spectrascope.io.specs import DataSpec, parse_data_spec

__all__ = ["cache_root", "cache_key", "materialize_images"]


def cache_root() -> Path:
    """``$SPECTRASCOPE_CACHE`` or ``~/.cache/spectrascope``."""
    return Path(os.environ.get("SPECTRASCOPE_CACHE", Path.home() / ".cache" / "spectrascope"))


def cache_key(spec: DataSpec, split: str) -> dict:
    """What a cache folder of ``spec``'s ``split`` depends on (see the module doc)."""
    key = {"spec": spec.kind, "options": spec.options, "split": split}
    if spec.path is not None:
        path = Path(spec.path).resolve()
        files = cifar_files(spec.kind, path) if spec.kind in CIFAR else ([path] if path.is_file() else [])
        stats = []
        for f in files:
            st = f.stat()
            stats.append([f.name, st.st_size, st.st_mtime_ns])
        key.update(path=str(path), files=stats)
    return key


def _cached_count(meta_path: Path) -> int:
    """Images already written beside ``labels.json`` (0 when it is missing or damaged: rewritten)."""
    if not meta_path.is_file():
        return 0
    try:
        return len(json.loads(meta_path.read_text())["labels"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _write_png(img, path: Path) -> None:
    from PIL import Image
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        Image.fromarray(img).save(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def _fill(folder: Path, base, names: list[str], spec: DataSpec, split: str, classes, written: list[Path]) -> None:
    meta = {"spec": spec.text, "split": split, "classes": classes, "labels": [], "boxes": []}
    for i, nm in enumerate(names):
        img, label, extras = base.load(i)
        if not (folder / nm).is_file():
            _write_png(img, folder / nm)
            written.append(folder / nm)
        meta["labels"].append(int(label))
        if extras:
            meta["boxes"].append([int(v) for v in extras[0].tolist()])
    if not meta["boxes"]:
        del meta["boxes"]
    tmp = folder / f".labels.json.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, folder / "labels.json")
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def materialize_images(spec: str | DataSpec, split: str = "val", limit: int | None = None) -> list[Path]:
    """Write the first ``limit`` images of a synthetic or CIFAR split as PNG files (see the module
    doc; lossless, so their pixels equal the data set's) and return their paths."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if spec.kind not in ("synthetic", "cifar10", "cifar100"):
        raise DataError(f"cannot write images for {spec.kind!r}")
    bundle = load_data(spec)
    base = bundle.val if split == "val" else bundle.train
    n = len(base) if limit is None else max(0, min(limit, len(base)))
    digest = hashlib.sha256(json.dumps(cache_key(spec, split), sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = cache_root() / "images" / f"{spec.kind}-{split}-{digest}"
    names = [f"{i:06d}.png" for i in range(n)]
    if _cached_count(folder / "labels.json") >= n:
        return [folder / nm for nm in names]
    created = created_parents(folder)
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _fill(folder, base, names, spec, split, bundle.classes, written)
    except OSError as exc:
        for p in written:
            with contextlib.suppress(OSError):
                p.unlink()
        remove_created(created)
        raise write_error(exc, folder, "nothing half-written was kept (set SPECTRASCOPE_CACHE to a writable folder "
                          "with space)", option="--data") from None
    return [folder / nm for nm in names]
