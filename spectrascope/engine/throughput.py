"""Inference throughput and peak memory vs input resolution (DFFormer Figs. 5-6).

The protocol of the official benchmark script (timm's): random input
``(batch, 3, res, res)``, ``eval()`` + ``no_grad``, cuDNN's algorithm search on
(``cudnn.benchmark``, CUDA), warm-up iterations, then timed iterations with device
synchronisation; throughput = images / wall time; peak memory =
``torch.cuda.max_memory_allocated`` in MiB after a reset (CUDA only: CPU allocations
are not tracked by torch, so CPU rows carry no memory figure). Unlike the official script
(which builds the model once at 224 and fails for the size-bound DF/GF filters), every
model is built for each resolution, as ``create_model(name, img_size=res)`` does.
"""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import torch

from spectrascope.engine.device import cudnn_benchmark, to_memory_format
from spectrascope.engine.runner import RunConfig, Runner, autocast
from spectrascope.zoo.registry import create_model

__all__ = ["MEMORY_NOTE", "measure", "sweep"]

#: why a CPU run has no memory figure (one line, shown by the command and the recipe)
MEMORY_NOTE = ("peak memory is measured with torch.cuda.max_memory_allocated, which tracks CUDA allocations "
               "only: no memory figure on {device}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: torch.nn.Module, resolution, *, batch_size: int = 4, device="cpu", warmup: int = 10,
            iters: int = 40, amp: str | None = None, channels_last: bool = False) -> dict:
    """Time ``iters`` forward passes of a ``(batch_size, 3, H, W)`` random batch (the engine's
    device validation, model preparation -- ``eval``, device, channels-last -- and autocast)."""
    runner = Runner(RunConfig(device, batch_size, amp=amp or "off", channels_last=channels_last))
    device = runner.device
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    model = runner.prepare(model)
    x = to_memory_format(torch.randn(batch_size, 3, h, w, device=device), channels_last)
    with torch.inference_mode(), autocast(device, amp), cudnn_benchmark(device.type == "cuda"):
        for _ in range(warmup):
            model(x)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        _sync(device)
        elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return {"resolution": [h, w], "batch_size": batch_size, "iters": iters,
            "throughput_img_s": batch_size * iters / elapsed, "ms_per_batch": 1e3 * elapsed / iters,
            "peak_memory_mib": peak, "status": "ok"}


def sweep(models: Sequence[str], resolutions: Iterable, *, batch_size: int = 4, device="cpu", warmup: int = 10,
          iters: int = 40, amp: str | None = None, channels_last: bool = False, model_kwargs=None,
          progress=None) -> list[dict]:
    """One row per (model, resolution); out-of-memory rows are kept with status 'oom'."""
    device = RunConfig(device, batch_size).device
    rows = []
    for name in models:
        for res in resolutions:
            row = {"model": name}
            try:
                model = create_model(name, img_size=res, **(model_kwargs or {}))
                row["params"] = sum(p.numel() for p in model.parameters())
                row.update(measure(model, res, batch_size=batch_size, device=device, warmup=warmup, iters=iters,
                                   amp=amp, channels_last=channels_last))
            except torch.cuda.OutOfMemoryError:
                h, w = (res, res) if isinstance(res, int) else res
                row.update({"resolution": [h, w], "batch_size": batch_size, "status": "oom",
                            "throughput_img_s": None, "peak_memory_mib": None})
            finally:
                model = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows
