"""Checkpoint reading and loading without executing pickled code.

Accepted: official ``.pth`` state dicts, timm ``.pth.tar`` checkpoints (nested
``state_dict`` / ``model`` / ``state_dict_ema`` keys, ``module.`` prefixes, argparse
``args`` inside), spectrascope training checkpoints and ``.safetensors``. Pickles are read
with ``torch.load(weights_only=True)``; only the few harmless types timm checkpoints carry
are allow-listed.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from spectrascope.errors import CheckpointError

log = logging.getLogger("spectrascope")



def _safe_globals() -> list:
    allowed: list = [argparse.Namespace]
    try:  # numpy scalars/dtypes appear in timm checkpoints (metrics) and in argparse args
        import numpy as np
        core = getattr(np, "_core", None) or np.core
        allowed += [core.multiarray.scalar, np.dtype, type(np.dtype("float64")), type(np.dtype("float32")),
                    type(np.dtype("int64"))]
    except Exception:  # pragma: no cover - numpy layout differs
        pass
    return allowed


_NESTED_KEYS = ("state_dict", "model", "module", "net", "network")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


def check_checkpoint_file(path) -> Path:
    """``path`` as a regular file to read a checkpoint from; a missing path, a folder or a device,
    pipe or socket (``/dev/zero``, also behind a link) is a ``CheckpointError`` saying which."""
    path = Path(path)
    if not path.exists():
        what = "a broken symbolic link" if path.is_symlink() else "not found"
        raise CheckpointError(f"checkpoint {what}: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        target = f" (it points to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise CheckpointError(f"{path} is not a regular file (a device, pipe or socket){target}; give a "
                              "checkpoint file")
    return path


def _load_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line (never torch's advice to
    switch the safe loading off)."""
    text = str(exc)
    if "GLOBAL" in text:
        name = text.split("GLOBAL", 1)[1].split()[0] if text.split("GLOBAL", 1)[1].split() else "?"
        return (f"it refers to Python code ({name}), so it was refused (save a plain state dict: "
                "torch.save(model.state_dict(), path))")
    if "Unsupported operand" in text or "invalid load key" in text or "magic number" in text.lower():
        return "its bytes are not a torch checkpoint (an HTML page, a text file or another format?)"
    if "central directory" in text or "zip archive" in text:
        return "it is truncated or damaged (its zip archive is incomplete)"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and "weights_only" not in ln
             and "file an issue" not in ln and "documentation of torch.load" not in ln]
    return lines[0] if lines else type(exc).__name__


def torch_load_plain(path, **kw):
    """``torch.load(path, weights_only=True)`` of a checked file (``check_checkpoint_file``); a file
    that cannot be read that way is a ``CheckpointError`` naming it and why (no pickled code runs)."""
    path = check_checkpoint_file(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True, **kw)
    except Exception as exc:
        raise CheckpointError(f"{path}: refused or unreadable (read with weights_only=True, no pickled code is run): "
                              f"{_load_failure(exc)}") from None


def read_checkpoint(path, *, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(state_dict, info)`` from a checkpoint file, never unpickling code."""
    path = check_checkpoint_file(path)
    info: dict = {"path": str(path), "format": None, "entry": None}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        info["format"] = "safetensors"
    else:
        obj = torch_load_plain(path)
        info["format"] = "torch"
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    state, entry = _find_state_dict(obj, use_ema)
    info["entry"] = entry
    if "args" in obj and isinstance(obj["args"], (argparse.Namespace, dict)):
        args = obj["args"]
        info["args"] = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    for k in ("epoch", "arch", "model_name"):
        if k in obj and isinstance(obj[k], (int, str)):
            info[k] = obj[k]
    return state, info


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and len(d) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _find_state_dict(obj: dict, use_ema: bool) -> tuple[dict, str | None]:
    order = (_EMA_KEYS + _NESTED_KEYS) if use_ema else _NESTED_KEYS
    for key in order:
        if key in obj and _is_state_dict(obj[key]):
            return _strip(obj[key]), key
    if use_ema:
        raise CheckpointError("use_ema=True but the checkpoint holds no EMA weights "
                              f"(top-level keys: {', '.join(sorted(map(str, obj))[:10])})")
    if _is_state_dict(obj):
        return _strip(obj), None
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) >= 0.9 * len(obj):
        return _strip(tensors), None
    raise CheckpointError("no state_dict found in the checkpoint (top-level keys: "
                          f"{', '.join(sorted(map(str, obj))[:10])})")


def _strip(state: dict) -> dict:
    out = dict(state)
    for prefix in _STRIP_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


@dataclass
class LoadReport:
    """What happened when a state_dict met a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    loaded: int = 0
    #: the layout conversion applied before loading (one line), or None
    layout: str | None = None
    #: fraction of the model's weights (elements) the checkpoint provided
    fraction: float = 1.0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 8) -> str:
        parts = []

        def show(title, items):
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {title}: " + ", ".join(items[:limit]) + more)

        if self.missing:
            show("missing keys", self.missing)
        if self.unexpected:
            show("unexpected keys", self.unexpected)
        if self.mismatched:
            show("shape mismatches", [f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched])
        if self.adapted:
            show("adapted", self.adapted)
        return "; ".join(parts) if parts else f"all {self.loaded} tensors loaded"


#: ``strict=False`` must still load at least this fraction of the model's weights (elements)
MIN_LOADED_FRACTION = 0.5


def convert_layout(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, str | None]:
    """Bring a state dict into ``model``'s layout: timm-layout files for the zoo families timm also
    has are converted to the official layout; official-layout files for ``timm:<name>`` models go
    through timm's own ``checkpoint_filter_fn``. Returns (state, one-line note or None)."""
    from spectrascope.zoo import formats
    found = formats.detect(state)
    if found is None:
        return state, None
    layout, macro = found
    name = getattr(model, "spectrascope_name", "") or ""
    card = getattr(model, "card", None)
    if card is not None and layout == formats.TIMM and formats.family_layout(card.family) == macro:
        note = f"checkpoint in timm's layout (timm.models.metaformer keys) converted to the official {card.family} layout"
        return formats.to_official(state), note
    if name.startswith("timm:") and layout == formats.OFFICIAL:
        import sys
        filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filt is not None:
            note = f"checkpoint in the official layout converted with timm's {type(model).__module__}.checkpoint_filter_fn"
            return filt(state, model), note
        return formats.to_timm(state), "checkpoint in the official layout converted to timm's layout"
    return state, None


def _layout_hint(state: dict, converted: str | None) -> str:
    from spectrascope.zoo import formats
    found = None if converted else formats.detect(state)
    if found is None:
        return ""
    return (f" (the file is in the {found[0]} layout of a {found[1].replace('_', ' ')} model; "
            "spectrascope convert --to official|timm converts between the two)")


def _real(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _check_dtypes(state: dict, own: dict) -> None:
    """Integer (or boolean) tensors for floating-point weights are refused: loading would cast them
    silently (a quantised, exported or damaged checkpoint)."""
    bad = [(k, v.dtype, own[k].dtype) for k, v in state.items() if _real(own[k]) and not _real(v)]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(f"{len(bad)} tensor(s) hold integers where the model has floating-point weights "
                              f"(e.g. {k}: {str(got).replace('torch.', '')} vs "
                              f"{str(want).replace('torch.', '')}); integer weights are not cast silently: "
                              "dequantise the checkpoint or save it in floating point")


def load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True) -> LoadReport:
    """Convert the layout (``convert_layout``), adapt (``model.adapt_state_dict``) and load a state
    dict; one readable report. ``strict=False`` tolerates missing or extra keys, but a checkpoint
    that provides less than ``MIN_LOADED_FRACTION`` of the model's weights is refused."""
    state, layout_note = convert_layout(model, state)
    if layout_note:
        log.warning("note: %s", layout_note)
    notes = []
    if hasattr(model, "adapt_state_dict"):
        state, notes = model.adapt_state_dict(state)
    report = LoadReport(adapted=[f"{n.key}: {n.what}" for n in notes], layout=layout_note)
    for n in notes:
        log.info("checkpoint: %s %s", n.key, n.what)
    own = model.state_dict()
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                         if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if strict and not report.ok:
        raise CheckpointError("checkpoint does not fit the model: " + report.format() + _layout_hint(state, layout_note))
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    _check_dtypes(fitting, own)
    total = sum(v.numel() for v in own.values())
    report.fraction = sum(v.numel() for v in fitting.values()) / total if total else 1.0
    if not strict and report.fraction < MIN_LOADED_FRACTION:
        raise CheckpointError(f"strict=False but the checkpoint fits only {report.fraction:.0%} of the model's "
                              f"weights ({len(fitting)} of {len(own)} tensors); " + report.format())
    model.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    return report


def load_checkpoint(model: nn.Module, path, *, strict: bool = True, use_ema: bool = False,
                    preread: tuple[dict, dict] | None = None) -> LoadReport:
    """Read ``path`` safely and load it into ``model``; raises CheckpointError when strict
    loading fails. The report is also stored as ``model.checkpoint_report``.
    ``preread`` is the ``(state, info)`` of an earlier ``read_checkpoint(path)``."""
    state, info = preread if preread is not None else read_checkpoint(path, use_ema=use_ema)
    try:
        report = load_state_dict(model, state, strict=strict)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.checkpoint_info = dict(info, sha256=file_sha256(path))
    model.checkpoint_report = report
    return report


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def save_safetensors(model_or_state, path) -> None:
    """Write a state dict as safetensors (atomic: temp file + rename)."""
    from safetensors.torch import save_file
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(state, tmp)
    os.replace(tmp, path)
