"""Fourier sensitivity of a model: the spectrum of the gradient of its loss with respect to the input
image (kiranchari/Fourier-Sensitivity-Regularization; the maths is ``ops.spectra``).

One forward and one backward per batch: the images in [0, 1] pixel space (before the model's
normalisation) require grad, the summed cross-entropy of the batch is differentiated (each image's
gradient is that of its own loss, whatever the batch size), and ``ops.spectra.fourier_sensitivity``
turns the gradients into per-image radial profiles of the unitary-FFT power. The model runs under
the runner's autocast; no hooks are installed.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from spectrascope.engine.runner import Runner, autocast, nonfinite_cause
from spectrascope.engine.variants import default_runner, normalise
from spectrascope.errors import NonFiniteError
from spectrascope.ops.spectra import fourier_sensitivity

__all__ = ["input_gradients", "sensitivity_profiles"]


def input_gradients(model, x: torch.Tensor, labels, *, normalization, runner: Runner | None = None) -> torch.Tensor:
    """(N, C, H, W) gradients of the summed cross-entropy with respect to the [0, 1] images ``x``.

    Args:
        model: callable from a normalised batch to logits (eval mode, on the device).
        x: (N, C, H, W) images in [0, 1] on the device.
        labels: (N,) class indices.
        normalization: (mean, std) of the model.
        runner: device, amp, channels-last, finite check (default: CPU, float32).
    """
    run = default_runner(runner)
    y = torch.as_tensor(labels, dtype=torch.long, device=x.device).reshape(-1)
    xi = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        inp = normalise(xi, normalization)
        if run.config.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with autocast(run.device, run.config.amp):
            logits = model(inp)
        loss = F.cross_entropy(logits.float() if logits.dtype != torch.float64 else logits, y, reduction="sum")
        if run.config.check_finite and not bool(torch.isfinite(logits).all()):
            cause = nonfinite_cause(model, x) if isinstance(model, nn.Module) else "check the model and its input"
            raise NonFiniteError(f"non-finite values (NaN/inf) in the model output: {cause}; nothing was written")
        (grad,) = torch.autograd.grad(loss, xi)
    if run.config.check_finite and not bool(torch.isfinite(grad).all()):
        raise NonFiniteError("non-finite values (NaN/inf) in the input gradients (overflow in the backward pass: "
                             "try --amp off); nothing was written")
    return grad.detach()


def sensitivity_profiles(model, x: torch.Tensor, labels, *, normalization,
                         runner: Runner | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image normalised radial profiles of the input-gradient power, (N, R) on the CPU, and
    which images have one (a zero gradient has none): ``ops.spectra.fourier_sensitivity``."""
    grad = input_gradients(model, x, labels, normalization=normalization, runner=runner)
    prof, valid = fourier_sensitivity(grad)
    return prof.cpu(), valid.cpu()
