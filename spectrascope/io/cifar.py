"""CIFAR-10/100 from the python archive (``.tar.gz``, read without extracting) or its extracted
folder. The pickles are read with a restricted unpickler that only rebuilds numpy arrays (no
code from the archive runs)."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from spectrascope.errors import DataError

__all__ = ["CIFAR", "ArrayImages", "load_cifar", "safe_unpickle", "cifar_files"]

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python archives: only numpy array reconstruction is allowed."""

    def find_class(self, module, name):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":   # bytes pickled by Python 3 with protocol 2
            import codecs
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def safe_unpickle(data: bytes, what: str = "archive") -> dict:
    """Load a pickled dict of numpy arrays / lists / bytes without running pickled code."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{what}: not a readable CIFAR pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what}: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


CIFAR = {
    "cifar10": {"dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"],
                "meta": "batches.meta", "labels": "labels", "names": "label_names", "num_classes": 10},
    "cifar100": {"dir": "cifar-100-python", "train": ["train"], "val": ["test"], "meta": "meta",
                 "labels": "fine_labels", "names": "fine_label_names", "num_classes": 100},
}


class _CifarSource:
    """Members of a CIFAR archive, from a folder or straight from the .tar.gz (no extraction)."""

    def __init__(self, kind: str, path: Path):
        self.kind, self.info = kind, CIFAR[kind]
        path = Path(path)
        self.tar = None
        if path.is_file():
            try:
                self.tar = tarfile.open(path, "r:*")
            except tarfile.TarError as exc:
                raise DataError(f"{kind}: {path} is not a readable tar archive ({exc})") from None
            self.members = {Path(m.name).name: m for m in self.tar.getmembers() if m.isfile()}
            self.where = str(path)
        elif path.is_dir():
            folder = path / self.info["dir"] if (path / self.info["dir"]).is_dir() else path
            self.members = {p.name: p for p in folder.iterdir() if p.is_file()}
            self.where = str(folder)
        else:
            raise DataError(f"{kind}: {path} not found (give the python archive or its extracted folder)")
        need = self.info["train"] + self.info["val"]
        missing = [m for m in need if m not in self.members]
        if missing:
            raise DataError(f"{kind}: {self.where} lacks {', '.join(missing)} "
                            f"(expected the python version of the archive, folder {self.info['dir']})")

    def read(self, name: str) -> dict:
        m = self.members[name]
        data = self.tar.extractfile(m).read() if self.tar is not None else Path(m).read_bytes()
        return safe_unpickle(data, f"{self.where}/{name}")

    def close(self):
        if self.tar is not None:
            self.tar.close()


class ArrayImages:
    """Images held in memory as uint8 (N, H, W, 3) with integer labels."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], classes: list[str]):
        self.images, self.labels, self.classes = images, np.asarray(labels, dtype=np.int64), classes

    def __len__(self):
        return len(self.images)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def load(self, i: int):
        return self.images[i], int(self.labels[i]), ()


def load_cifar(kind: str, path, split: str) -> ArrayImages:
    src = _CifarSource(kind, Path(path))
    info = src.info
    try:
        images, labels = [], []
        for name in info[split]:
            d = src.read(name)
            arr, lab = d.get("data"), d.get(info["labels"])
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3072 \
                    or lab is None or len(lab) != len(arr):
                raise DataError(f"{kind}: {src.where}/{name} does not hold uint8 'data' (N, 3072) and "
                                f"'{info['labels']}' of the same length")
            images.append(arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(int(v) for v in lab)
        classes = [str(i) for i in range(info["num_classes"])]
        if info["meta"] in src.members:
            names = src.read(info["meta"]).get(info["names"])
            if isinstance(names, list) and len(names) == info["num_classes"]:
                classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    finally:
        src.close()
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= info["num_classes"]:
        raise DataError(f"{kind}: labels outside [0, {info['num_classes']})")
    return ArrayImages(np.ascontiguousarray(np.concatenate(images)), labels, classes)


def cifar_files(kind: str, path) -> list[Path]:
    """The files a ``kind`` spec at ``path`` reads: the archive itself, or every file of its folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    folder = path / CIFAR[kind]["dir"] if (path / CIFAR[kind]["dir"]).is_dir() else path
    return sorted(p for p in folder.iterdir() if p.is_file())
