"""File names for outputs keyed by more than a name: one safe, unique name per key.

Outputs written per input (a CAM overlay per model, checkpoint and image) cannot be named by an
image stem or a model name alone: ``x.png``, ``x.jpg`` and ``x.bmp`` share a stem, and one model
may be given twice with two checkpoints. ``unique_names(keys, labels)`` gives every key its
readable label made safe for any file system (letters, digits, ``.``, ``-``, ``_``; at most
``MAX_LEN`` characters) and, where two different keys would share a name (compared without case,
as on macOS and Windows), a short hash of the whole key -- the same key always gets the same name.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Sequence

__all__ = ["MAX_LEN", "safe_name", "unique_names"]

#: longest name produced (before the suffix a caller adds)
MAX_LEN = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text, max_len: int = MAX_LEN) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``-``, ``_``
    replaced by ``_`` (no leading dot, never empty)."""
    raw = os.fsdecode(text) if isinstance(text, bytes) else str(text)
    out = _UNSAFE.sub("_", raw).strip("._") or "_"
    return out[:max_len]


def _digest(key) -> str:
    return hashlib.sha256(repr(tuple(str(k) for k in key)).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def unique_names(keys: Sequence[Sequence], labels: Sequence[str] | None = None) -> list[str]:
    """One name per key (see the module doc). ``labels`` are the readable parts (default: the
    key's parts joined by ``_``); equal keys get equal names, different keys different names."""
    keys = [tuple(k) for k in keys]
    labels = list(labels) if labels is not None else ["_".join(str(p) for p in k) for k in keys]
    if len(labels) != len(keys):
        raise ValueError(f"{len(labels)} labels for {len(keys)} keys")
    base = [safe_name(lb, MAX_LEN - 9) for lb in labels]
    owners: dict[str, set] = {}
    for b, k in zip(base, keys):
        owners.setdefault(b.lower(), set()).add(k)
    return [b if len(owners[b.lower()]) == 1 else f"{b}-{_digest(k)}" for b, k in zip(base, keys)]
