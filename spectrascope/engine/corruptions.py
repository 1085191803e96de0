"""Common corruptions (Hendrycks & Dietterich 2019, ImageNet-C) applied on the fly with the
``imagecorruptions`` package, reproducibly, and the loop that counts a model's errors under them.

Recipe. An image in [0, 1] is rounded to uint8 (``round(255 x)``, the package's input), corrupted
by ``imagecorruptions.corrupt(image, severity, corruption_name)`` and divided by 255 again; the
clean image a corruption is compared with is the same uint8 image. The package draws from numpy's
global generator (and, through ``spectrascope.compat``, so does its impulse noise); before every
call it is seeded with ``corruption_seed(seed, index, number, severity)``: a SplitMix64 digest of
the run's seed, the image's index in the data set, the corruption's number in the package's list
(0-18) and the severity. A corrupted image therefore depends only on those four, never on
batching or on the number of processes.

``corruption_counts`` evaluates one batch under every (corruption, severity) through the batched
loop of ``engine.variants`` (normalisation after the corruption) and, on request, adds the
unitary spectrum ``|fft2(corrupted - clean)|`` of every (corruption, severity) to running sums
(``ops.spectra.difference_spectrum``; Yin et al. 2019, Fig. 4).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Sequence

import numpy as np
import torch

from spectrascope.compat import import_imagecorruptions
from spectrascope.engine.runner import Runner
from spectrascope.engine.variants import VariantCounts, evaluate_variants
from spectrascope.ops.fourier_basis import seed_for
from spectrascope.ops.spectra import difference_spectrum

__all__ = ["SUBSETS", "MIN_SIDE", "corruption_names", "corruption_number", "corruption_seed", "to_uint8",
           "corrupt_images", "corruption_counts"]

#: the package's named groups of corruptions
SUBSETS = ("common", "validation", "all", "noise", "blur", "weather", "digital")
#: the smallest image side the package accepts
MIN_SIDE = 32


def corruption_names(subset: str = "all") -> list[str]:
    """The package's corruptions of a group, in its order.

    Args:
        subset: ``common`` (the 15 of ImageNet-C), ``validation`` (the 4 extra), ``all`` (the 19),
            ``noise``, ``blur``, ``weather`` or ``digital``.

    Returns:
        The corruption names.

    Raises:
        ImportError: imagecorruptions is not installed (one line naming what to install).
    """
    return list(import_imagecorruptions().get_corruption_names(subset))


def corruption_number(name: str) -> int:
    """The position of ``name`` in the package's list of all 19 corruptions."""
    return corruption_names("all").index(name)


def corruption_seed(seed: int, index: int, number: int, severity: int) -> int:
    """The numpy seed of one corrupted image (see the module doc).

    Args:
        seed: the run's seed.
        index: the image's index in the data set.
        number: the corruption's position in the package's list of 19 (``corruption_number``).
        severity: 1 .. 5.

    Returns:
        An integer in [0, 2^32).
    """
    return seed_for(seed, (int(index) * 32 + int(number)) * 8 + int(severity)) % (1 << 32)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) images in [0, 1] -> (N, H, W, 3) uint8 ``round(255 x)``."""
    return (x.detach().double().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def corrupt_images(images: np.ndarray, indices: Sequence[int], name: str, severities: Sequence[int],
                   seed: int) -> torch.Tensor:
    """Every image under one corruption at every severity, each call seeded (``corruption_seed``).

    Args:
        images: (N, H, W, 3) uint8 images (sides >= 32).
        indices: their indices in the data set.
        name: the corruption.
        severities: integers in 1 .. 5.
        seed: the run's seed.

    Returns:
        (S, N, 3, H, W) float64 in [0, 1].
    """
    ic = import_imagecorruptions()
    number = corruption_number(name)
    out = np.empty((len(severities), *images.shape), dtype=np.uint8)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for s_i, sev in enumerate(severities):
            for k, (img, idx) in enumerate(zip(images, indices)):
                np.random.seed(corruption_seed(seed, idx, number, sev))
                out[s_i, k] = ic.corrupt(img, severity=int(sev), corruption_name=name)
    return torch.from_numpy(out).permute(0, 1, 4, 2, 3).double() / 255.0


def corruption_counts(model, x: torch.Tensor, labels, indices: Sequence[int], names: Sequence[str],
                      severities: Sequence[int], *, seed: int, normalization, runner: Runner | None = None,
                      forward_batch: int | None = None, spectra: dict | None = None) -> VariantCounts:
    """Errors and summed loss of one batch under every corruption and severity.

    Args:
        model: callable from a normalised batch to logits (eval mode, on the device).
        x: (N, 3, H, W) images in [0, 1] on the device (H, W >= 32).
        labels: (N,) class indices.
        indices: the images' indices in the data set (their seeds).
        names: corruptions (``corruption_names``); severities: integers in 1 .. 5.
        seed: the run's seed.
        normalization, runner, forward_batch: as ``engine.variants.evaluate_variants``.
        spectra: when given, ``spectra[(name, severity)]`` accumulates the (H, W) sum over images and
            channels of ``|fft2(corrupted - clean)|`` (unitary, DC centred, float64).

    Returns:
        ``VariantCounts`` with variant ``j * len(severities) + s`` for corruption ``j``, severity ``s``.
    """
    clean8 = to_uint8(x)
    clean = torch.from_numpy(clean8).permute(0, 3, 1, 2).double() / 255.0
    S = len(severities)
    errors = torch.zeros(len(names) * S, dtype=torch.long)
    loss = torch.zeros(len(names) * S, dtype=torch.float64)
    for j, name in enumerate(names):
        bad = corrupt_images(clean8, indices, name, severities, seed)
        if spectra is not None:
            for s_i, sev in enumerate(severities):
                part = difference_spectrum(bad[s_i], clean, reduce="sum")
                key = (name, int(sev))
                spectra[key] = part if key not in spectra else spectra[key] + part
        imgs = bad.to(device=x.device, dtype=x.dtype)
        counts = evaluate_variants(model, x, labels, lambda ids, lo, hi: imgs[ids.to(x.device), lo:hi], S,
                                   normalization=normalization, runner=runner, forward_batch=forward_batch,
                                   describe=lambda ids: f"{name}, severity {severities[int(ids[0])]}")
        errors[j * S:(j + 1) * S] = counts.errors
        loss[j * S:(j + 1) * S] = counts.loss_sum
    return VariantCounts(errors, loss, int(x.shape[0]))
