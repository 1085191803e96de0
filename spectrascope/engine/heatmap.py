"""The Fourier heat map's evaluation loop (Yin et al. 2019) and its resumable state.

``heatmap_counts`` evaluates one decoded batch of [0, 1] images under many Fourier-basis
perturbations ``clip(x + eps * r * U_ij, 0, 1)`` (``ops.fourier_basis``): the bases are built
per chunk, variants x images go through the model in forwards of ``forward_batch`` images
(``engine.variants``), and it returns per basis the top-1 errors and the summed cross-entropy.
``run_heatmap`` feeds it a stream of batches (each image decoded once) and keeps the per-basis
totals in a ``HeatmapProgress``.

``HeatmapProgress`` is the resumable state: per basis id ``(errors, loss_sum, n)``, where ``n``
counts the images of the data set's order (``0 .. n - 1``) already evaluated with that basis.
A batch of images ``start .. stop - 1`` is evaluated only for the bases whose ``n`` lies in that
range, from image ``n`` on, so an interrupted run continues where it stopped whatever the batch
size, and processes that evaluate disjoint sets of bases merge into one state (``merge``). The
state round-trips through a plain JSON dict (``to_dict`` / ``from_dict``, ``save`` / ``load``,
written atomically) with the settings it was computed with (``meta``); loading with other
settings is refused.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from spectrascope.engine.runner import Runner
from spectrascope.engine.variants import VariantCounts, evaluate_variants
from spectrascope.errors import OptionError
from spectrascope.ops.binomial import wilson_interval
from spectrascope.ops.fourier_basis import (SIGNS, basis_signs, fourier_basis, full_plane, half_plane, map_frequencies,
                                            perturb)

__all__ = ["HeatmapSpec", "HeatmapProgress", "heatmap_counts", "run_heatmap", "heatmap_maps"]


@dataclass(frozen=True)
class HeatmapSpec:
    """The perturbation: L2 norm ``eps`` per channel (Yin et al.: 4 for CIFAR-size images, 15.7 for
    ImageNet), ``sign`` ``+1`` / ``-1`` / ``random`` and the ``seed`` of the random signs. Bad values
    are ``OptionError``s naming ``--eps`` / ``--sign``."""

    eps: float = 4.0
    sign: str = "random"
    seed: int = 0

    def __post_init__(self):
        if self.sign not in SIGNS:
            raise OptionError(f"{self.sign!r} is not a sign; use {', '.join(SIGNS)}", option="--sign")
        if isinstance(self.eps, bool) or not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps)
                                              and self.eps >= 0):
            raise OptionError(f"{self.eps!r} is not a perturbation norm (a finite number >= 0)", option="--eps")


def heatmap_counts(model, x: torch.Tensor, labels, ids, spec: HeatmapSpec, *, normalization,
                   indices: Sequence[int] | None = None, runner: Runner | None = None,
                   forward_batch: int | None = None) -> VariantCounts:
    """Per-basis errors and summed loss of one batch of images.

    Args:
        model: callable from a normalised batch to logits (eval mode, on the device).
        x: (N, C, H, W) images in [0, 1] (before normalisation) on the device.
        labels: (N,) class indices.
        ids: basis ids (rows of ``ops.fourier_basis.half_plane(H, W)``) to evaluate.
        spec: eps, sign and seed of the perturbation.
        normalization: (mean, std) of the model.
        indices: data-set indices of the images (their sign streams); default ``0 .. N - 1``.
        runner: device, amp, channels-last, finite check (``engine.variants``).
        forward_batch: perturbed images per forward; default the runner's batch size.

    Returns:
        ``VariantCounts`` with one entry per id, in the order of ``ids``.
    """
    H, W = int(x.shape[-2]), int(x.shape[-1])
    ids = torch.as_tensor(ids, dtype=torch.long).cpu().reshape(-1)
    plane = half_plane(H, W)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(plane)):
        raise ValueError(f"basis ids must lie in 0 .. {len(plane) - 1} for {H} x {W} images")
    freqs = plane[ids]
    idx = list(range(len(x))) if indices is None else [int(i) for i in indices]
    if len(idx) != len(x):
        raise ValueError(f"{len(idx)} indices for {len(x)} images")
    signs = basis_signs(idx, ids, H, W, int(x.shape[1]), seed=spec.seed, sign=spec.sign).to(x.device)

    def make(v, lo, hi):
        bases = fourier_basis(freqs[v], H, W, dtype=x.dtype, device=x.device)
        return perturb(x[lo:hi], bases, signs[v.to(x.device), lo:hi], spec.eps)

    def describe(v):
        fy, fx = (int(t) for t in freqs[int(v[0])])
        return f"Fourier basis (fy={fy}, fx={fx})" + (f" and {len(v) - 1} more" if len(v) > 1 else "")

    return evaluate_variants(model, x, labels, make, len(ids), normalization=normalization, runner=runner,
                             forward_batch=forward_batch, describe=describe)


class HeatmapProgress:
    """Per-basis totals of a heat map in progress (see the module doc).

    Args:
        num_bases: the size of the half plane (``len(half_plane(H, W))``).
        meta: the settings the totals belong to (image size, eps, sign, seed, images, model...),
            JSON-able; ``from_dict`` / ``load`` refuse a state whose meta differs.
    """

    def __init__(self, num_bases: int, meta: dict | None = None):
        self.meta = dict(meta or {})
        self.errors = torch.zeros(num_bases, dtype=torch.long)
        self.loss_sum = torch.zeros(num_bases, dtype=torch.float64)
        self.n = torch.zeros(num_bases, dtype=torch.long)

    @property
    def num_bases(self) -> int:
        return len(self.n)

    def pending(self, ids, start: int, stop: int) -> dict[int, torch.Tensor]:
        """The ids that need images ``start .. stop - 1``, grouped by the offset in the batch of
        their first missing image (usually one group at offset 0)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        n = self.n[ids]
        if bool((n < start).any()):
            first = int(ids[n < start][0])
            raise ValueError(f"basis {first} has seen {int(self.n[first])} images, but the batch starts at image "
                             f"{start}: batches must come in the data set's order from its first missing image")
        need = n < stop
        return {int(off): ids[need & (n == start + off)] for off in torch.unique(n[need] - start).tolist()}

    def add(self, ids, counts: VariantCounts) -> None:
        """Add one batch's counts (in the order of ``ids``)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        self.errors.index_add_(0, ids, counts.errors.long())
        self.loss_sum.index_add_(0, ids, counts.loss_sum.double())
        self.n[ids] += int(counts.n)

    def first_missing(self, ids) -> int:
        """The first image (data-set order) some basis of ``ids`` still needs."""
        return int(self.n[torch.as_tensor(ids, dtype=torch.long)].min())

    def complete(self, ids, num_images: int) -> bool:
        """Whether every basis of ``ids`` has seen ``num_images`` images."""
        return self.first_missing(ids) >= num_images

    def merge(self, other: "HeatmapProgress") -> "HeatmapProgress":
        """Take ``other``'s bases (disjoint from the ones this state has started)."""
        if other.num_bases != self.num_bases or other.meta != self.meta:
            raise ValueError("cannot merge heat-map states of different settings")
        theirs = other.n > 0
        if bool((theirs & (self.n > 0)).any()):
            raise ValueError("both heat-map states hold the same bases")
        self.errors[theirs], self.loss_sum[theirs], self.n[theirs] = (other.errors[theirs], other.loss_sum[theirs],
                                                                      other.n[theirs])
        return self

    def as_dict(self) -> dict[int, tuple[int, float, int]]:
        """``{basis id: (errors, loss_sum, n)}`` of the bases started."""
        return {int(i): (int(self.errors[i]), float(self.loss_sum[i]), int(self.n[i]))
                for i in torch.nonzero(self.n > 0).flatten().tolist()}

    def to_dict(self) -> dict:
        """JSON-able ``{"num_bases", "meta", "bases": {"id": [errors, loss_sum, n]}}``."""
        bases = self.as_dict()
        bad = [i for i, (_, s, _) in bases.items() if not math.isfinite(s)]
        if bad:
            raise ValueError(f"non-finite loss sums for bases {bad[:5]}")
        return {"num_bases": self.num_bases, "meta": self.meta, "bases": {str(i): list(v) for i, v in bases.items()}}

    @classmethod
    def from_dict(cls, data: dict, num_bases: int | None = None, meta: dict | None = None) -> "HeatmapProgress":
        """The state of ``to_dict`` output, checked: size and meta (when given) must match, counts
        must be integers with ``0 <= errors <= n`` and loss sums finite and >= 0."""
        try:
            size = int(data["num_bases"])
            state = cls(size, data.get("meta") or {})
            entries = data["bases"].items()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a heat-map state: {exc}") from None
        if num_bases is not None and size != num_bases:
            raise ValueError(f"the saved heat map has {size} bases, this run {num_bases}")
        if meta is not None and json.loads(json.dumps(meta)) != state.meta:
            diff = sorted(k for k in set(meta) | set(state.meta) if meta.get(k) != state.meta.get(k))
            raise ValueError(f"the saved heat map was computed with other settings ({', '.join(map(str, diff))})")
        for key, value in entries:
            try:
                i, (e, s, n) = int(key), value
                ok = (0 <= i < size and isinstance(e, int) and isinstance(n, int) and 0 <= e <= n
                      and isinstance(s, (int, float)) and math.isfinite(s) and s >= 0)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"bad heat-map entry {key!r}: {value!r}")
            state.errors[i], state.loss_sum[i], state.n[i] = e, float(s), n
        return state

    def save(self, path) -> None:
        """Write the state as JSON atomically (a temporary file next to ``path``, then rename): an
        interruption at any point leaves the previous file or the new one, never a part of one."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        text = json.dumps(self.to_dict(), allow_nan=False)
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def latest(cls, states: Sequence["HeatmapProgress"], num_bases: int, meta: dict | None = None) -> "HeatmapProgress":
        """One state from several of the same settings that may overlap (the shards of runs on
        different numbers of processes): per basis, the entry that has seen the most images (a
        basis's totals over images ``0 .. n - 1`` do not depend on who computed them)."""
        out = cls(num_bases, meta)
        for st in states:
            if st.num_bases != num_bases:
                raise ValueError(f"a saved heat map has {st.num_bases} bases, this run {num_bases}")
            newer = st.n > out.n
            out.errors[newer], out.loss_sum[newer], out.n[newer] = st.errors[newer], st.loss_sum[newer], st.n[newer]
        return out

    def restricted(self, ids) -> "HeatmapProgress":
        """A copy holding only the bases ``ids`` (the others zero)."""
        out = HeatmapProgress(self.num_bases, self.meta)
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        out.errors[ids], out.loss_sum[ids], out.n[ids] = self.errors[ids], self.loss_sum[ids], self.n[ids]
        return out

    @classmethod
    def load(cls, path, num_bases: int | None = None, meta: dict | None = None) -> "HeatmapProgress":
        """Read a state written by ``save`` (see ``from_dict`` for the checks)."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a heat-map state ({exc})") from None
        return cls.from_dict(data, num_bases, meta)


def run_heatmap(model, batches: Iterable, ids, spec: HeatmapSpec, *, normalization, progress: HeatmapProgress,
                runner: Runner | None = None, forward_batch: int | None = None,
                on_batch: Callable[[HeatmapProgress, int], None] | None = None, chunk: int | None = None,
                on_chunk: Callable[[HeatmapProgress], None] | None = None) -> HeatmapProgress:
    """Evaluate the bases ``ids`` over a stream of batches, resuming ``progress``.

    Args:
        model, spec, normalization, runner, forward_batch: as ``heatmap_counts``.
        batches: iterable of ``(indices, x, labels)``: consecutive data-set indices in order (each
            image decoded once by the caller; batches before ``progress.first_missing(ids)`` may
            be left out), [0, 1] images on the device, labels.
        ids: the basis ids of this process.
        progress: the state to continue and update (``HeatmapProgress(len(half_plane(H, W)))``).
        on_batch: called after every batch with the state and the next image index (e.g. to save).
        chunk: evaluate a batch's bases in groups of at most ``chunk`` (default: all at once) and
            call ``on_chunk`` with the state after each group, so that a long batch can be saved
            part way (the state is consistent after every group: those bases have seen the batch,
            the others not yet).
        on_chunk: see ``chunk``.

    Returns:
        ``progress``.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    for indices, x, labels in batches:
        idx = [int(i) for i in indices]
        start, stop = idx[0], idx[-1] + 1
        if idx != list(range(start, stop)):
            raise ValueError("heat-map batches must hold consecutive data-set indices")
        for off, group in progress.pending(ids, start, stop).items():
            for part in (group.split(chunk) if chunk else (group,)):
                counts = heatmap_counts(model, x[off:], labels[off:], part, spec, normalization=normalization,
                                        indices=idx[off:], runner=runner, forward_batch=forward_batch)
                progress.add(part, counts)
                if on_chunk is not None:
                    on_chunk(progress)
        if on_batch is not None:
            on_batch(progress, stop)
    return progress


def heatmap_maps(progress: HeatmapProgress, H: int, W: int, max_freq: int | None = None,
                 level: float = 0.95) -> dict[str, torch.Tensor]:
    """The centred maps (``ops.fourier_basis.full_plane``) of a finished state: ``error`` rate,
    mean ``loss``, ``n``, Wilson bounds ``error_low`` / ``error_high``, and the signed axes
    ``fy`` / ``fx``. Bases never evaluated are NaN."""
    n = progress.n.double()
    seen = n > 0
    err = torch.where(seen, progress.errors.double() / n.clamp_min(1), torch.full_like(n, math.nan))
    loss = torch.where(seen, progress.loss_sum / n.clamp_min(1), torch.full_like(n, math.nan))
    low, high = wilson_interval(progress.errors, progress.n, level)
    out = {k: full_plane(v, H, W, max_freq) for k, v in
           {"error": err, "loss": loss, "n": n, "error_low": low, "error_high": high}.items()}
    out["fy"], out["fx"] = map_frequencies(H, max_freq), map_frequencies(W, max_freq)
    return out
