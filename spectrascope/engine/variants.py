"""The batched evaluation of perturbed copies of one batch of images: the loop under the
frequency-robustness analyses (Fourier heat map, band-limited noise, filtered inputs).

A *variant* is one way of changing every image of the batch (a Fourier basis, a noise band, a
filter radius). ``evaluate_variants`` asks a ``make(variant_ids, lo, hi)`` callable for the
changed images ``lo:hi`` of several variants at once, in [0, 1] pixel space, normalises them
with the model's (mean, std), and runs them through the model in forwards of
``forward_batch`` images (variants x images in one tensor). It returns per variant the number of
top-1 errors and the summed cross-entropy; the images themselves are decoded once by the caller.

The model is any callable from a normalised (B, C, H, W) batch to logits; it runs under
``inference_mode`` and the runner's autocast (``amp``), on channels-last inputs when the runner
asks for them (``compile`` is the caller's: pass a compiled model). No hooks are installed. Non-finite logits stop the evaluation with a
``NonFiniteError`` naming the variant and the likely cause. ``band_noise_counts`` and
``filter_counts`` are the noise and filter analyses on this loop; the heat map is in
``engine.heatmap``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from spectrascope.engine.runner import Runner, RunConfig, autocast, nonfinite_cause
from spectrascope.errors import NonFiniteError
from spectrascope.ops.bands import BASES, band_limit, filter_images
from spectrascope.ops.fourier_basis import seed_for

__all__ = ["VariantCounts", "NoiseSpec", "evaluate_variants", "normalise", "default_runner", "base_noise",
           "band_noise_counts", "filter_counts"]

#: make(variant_ids, lo, hi) -> (len(variant_ids), hi - lo, C, H, W) images in [0, 1]
MakeFn = Callable[[torch.Tensor, int, int], torch.Tensor]


@dataclass
class VariantCounts:
    """Per variant: top-1 ``errors`` (int64), summed cross-entropy ``loss_sum`` (float64), over
    ``n`` images each."""

    errors: torch.Tensor
    loss_sum: torch.Tensor
    n: int

    @property
    def error_rate(self) -> torch.Tensor:
        return self.errors.double() / max(self.n, 1)

    @property
    def mean_loss(self) -> torch.Tensor:
        return self.loss_sum / max(self.n, 1)


def normalise(x: torch.Tensor, normalization) -> torch.Tensor:
    """``(x - mean) / std`` per channel; ``normalization`` is (mean, std), each of length C."""
    mean, std = normalization
    C = x.shape[-3]
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(C, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(C, 1, 1)
    return (x - m) / s


def default_runner(runner: Runner | None) -> Runner:
    """``runner``, or a CPU float32 runner when None."""
    return runner if runner is not None else Runner(RunConfig(device="cpu"))


def _forward(model, x: torch.Tensor, runner: Runner, what: str) -> torch.Tensor:
    cfg = runner.config
    if cfg.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(runner.device, cfg.amp):
        out = model(x)
    if cfg.check_finite and not bool(torch.isfinite(out).all()):
        cause = nonfinite_cause(model, x) if isinstance(model, nn.Module) else "check the model and its input"
        raise NonFiniteError(f"non-finite values (NaN/inf) in the model output for {what}: {cause}; "
                             "nothing was written")
    return out


def _plan(num_variants: int, n: int, forward_batch: int) -> list[tuple[torch.Tensor, int, int]]:
    """(variant ids, lo, hi) chunks: several variants x all images when a batch is small, one
    variant x a slice of images when it is large."""
    if n <= forward_batch:
        k = max(1, forward_batch // max(n, 1))
        return [(torch.arange(v, min(v + k, num_variants)), 0, n) for v in range(0, num_variants, k)]
    return [(torch.tensor([v]), lo, min(lo + forward_batch, n)) for v in range(num_variants)
            for lo in range(0, n, forward_batch)]


def evaluate_variants(model, x: torch.Tensor, labels, make: MakeFn, num_variants: int, *, normalization,
                      runner: Runner | None = None, forward_batch: int | None = None,
                      describe: Callable[[torch.Tensor], str] | None = None) -> VariantCounts:
    """Top-1 errors and summed cross-entropy of every variant of one batch.

    Args:
        model: callable from a normalised (B, C, H, W) batch to logits (prepared by the caller:
            eval mode, on the runner's device).
        x: (N, C, H, W) images in [0, 1] on the device; only its size, dtype and device are used
            here, ``make`` reads the pixels.
        labels: (N,) class indices.
        make: ``make(variant_ids, lo, hi)`` -> (k, hi - lo, C, H, W) changed images in [0, 1].
        num_variants: how many variants ``make`` knows (ids ``0 .. num_variants - 1``).
        normalization: (mean, std) of the model, applied after ``make``.
        runner: device, ``amp``, ``channels_last`` and ``check_finite`` (default: CPU, float32).
        forward_batch: images per forward (variants x images); default the runner's batch size.
        describe: names a chunk of variant ids in error messages.

    Returns:
        ``VariantCounts`` on the CPU, variants in id order, ``n = N``.
    """
    run = default_runner(runner)
    fb = int(forward_batch or run.config.batch_size)
    if fb < 1:
        raise ValueError(f"forward_batch must be >= 1, got {forward_batch}")
    y = torch.as_tensor(labels, dtype=torch.long, device=x.device).reshape(-1)
    n = int(x.shape[0])
    if y.numel() != n:
        raise ValueError(f"{y.numel()} labels for {n} images")
    errors = torch.zeros(num_variants, dtype=torch.long)
    loss = torch.zeros(num_variants, dtype=torch.float64)
    for ids, lo, hi in _plan(num_variants, n, fb):
        imgs = make(ids, lo, hi)
        k = len(ids)
        inp = normalise(imgs.reshape(k * (hi - lo), *x.shape[1:]), normalization)
        what = describe(ids) if describe is not None else f"variants {int(ids[0])}-{int(ids[-1])}"
        logits = _forward(model, inp, run, f"{what}, images {lo + 1}-{hi}")
        logits = logits.double() if x.dtype == torch.float64 else logits.float()
        yy = y[lo:hi].repeat(k)
        ce = F.cross_entropy(logits, yy, reduction="none").reshape(k, hi - lo)
        wrong = (logits.argmax(dim=1) != yy).reshape(k, hi - lo)
        errors.index_add_(0, ids, wrong.sum(dim=1).cpu())
        loss.index_add_(0, ids, ce.sum(dim=1).double().cpu())
    return VariantCounts(errors, loss, n)


@dataclass(frozen=True)
class NoiseSpec:
    """Band-limited noise settings: ``eps`` scale of the base noise (``gaussian`` or ``sign``),
    optional per-plane ``l2`` norm, ``seed`` of the per-image base noise (``ops.bands``)."""

    eps: float = 0.1
    base: str = "gaussian"
    l2: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, not {self.base!r}")
        if not (self.eps >= 0 and self.eps < float("inf")):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")


def base_noise(indices: Sequence[int], shape: Sequence[int], spec: NoiseSpec) -> torch.Tensor:
    """(N, *shape) float64 base noise ``eps * N(0, 1)`` (or its sign), image ``i`` drawn from a
    generator seeded from ``(seed, index)``: the same whatever the batching."""
    g = torch.Generator()
    out = torch.empty((len(indices), *shape), dtype=torch.float64)
    for k, i in enumerate(indices):
        g.manual_seed(seed_for(spec.seed, int(i)))
        out[k] = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    if spec.base == "sign":
        out = out.sign()
    return spec.eps * out


def band_noise_counts(model, x: torch.Tensor, labels, masks: torch.Tensor, spec: NoiseSpec, *, normalization,
                      indices: Sequence[int] | None = None, runner: Runner | None = None,
                      forward_batch: int | None = None) -> VariantCounts:
    """Errors under band-limited noise, one variant per band: ``clip(x + band(noise), 0, 1)``.

    Args:
        model, x, labels, normalization, runner, forward_batch: as ``evaluate_variants``.
        masks: (B, H, W) band masks (``ops.bands.band_mask`` / ``ring_partition``), FFT layout.
        spec: the noise; every band limits the same base noise of an image (common random
            numbers: the curve over bands is not blurred by independent draws).
        indices: data-set indices of the images (seeds of their noise); default ``0 .. N - 1``.
    """
    idx = list(range(len(x))) if indices is None else [int(i) for i in indices]
    z = base_noise(idx, x.shape[1:], spec).to(x.device)
    m = masks.to(x.device)

    def make(ids, lo, hi):
        noise = band_limit(z[lo:hi], m[ids.to(x.device)])
        if spec.l2 is not None:
            norm = noise.flatten(-2).norm(dim=-1)[..., None, None]
            noise = torch.where(norm > 0, noise * (spec.l2 / norm.clamp_min(1e-300)), torch.zeros_like(noise))
        return (x[lo:hi].unsqueeze(0) + noise.to(x.dtype)).clamp_(0.0, 1.0)

    return evaluate_variants(model, x, labels, make, int(m.shape[0]), normalization=normalization, runner=runner,
                             forward_batch=forward_batch, describe=lambda ids: f"noise band {int(ids[0]) + 1}")


def filter_counts(model, x: torch.Tensor, labels, settings: Sequence[tuple[float, str]], *, normalization,
                  outside: float = 0.0, units: str = "index", runner: Runner | None = None,
                  forward_batch: int | None = None) -> VariantCounts:
    """Errors on low-/high-pass filtered images (``ops.bands.filter_images``, not clipped, as HFC),
    one variant per ``(radius, "low" | "high")`` in ``settings``."""
    settings = [(float(r), str(k)) for r, k in settings]

    def make(ids, lo, hi):
        return torch.stack([filter_images(x[lo:hi], settings[int(v)][0], settings[int(v)][1], outside=outside,
                                          units=units) for v in ids])

    return evaluate_variants(model, x, labels, make, len(settings), normalization=normalization, runner=runner,
                             forward_batch=forward_batch,
                             describe=lambda ids: "{1}-pass radius {0:g}".format(*settings[int(ids[0])]))
