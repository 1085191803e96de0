"""Evaluation: top-1/top-5 accuracy, loss and throughput of a model on a data spec's
validation split (the ``spectrascope evaluate`` command and the per-epoch evaluation of
``spectrascope train``)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from spectrascope.zoo import registry


@torch.no_grad()
def evaluate_loader(model, loader, device, amp_dtype=None, channels_last: bool = False, dist=None) -> dict:
    """Cross-entropy (no smoothing), top-1/top-5 (percent; k clipped to the number of
    classes) and images/s over ``loader``; sums are reduced over DDP ranks."""
    from spectrascope.train.loop import _all_reduce, accuracy_counts
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    for batch in loader:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        c1, c5 = accuracy_counts(logits, y)
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), c1.double(), c5.double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    if dist is not None:
        _all_reduce(sums, dist)
    loss, c1, c5, n = sums.tolist()
    model.train(was_training)
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0, "time_s": elapsed,
                "throughput_img_s": 0.0}
    return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "n": int(n), "time_s": elapsed,
            "throughput_img_s": n / max(elapsed, 1e-9)}


def evaluate(model_name: str | None, *, checkpoint=None, data: str, img_size=None, batch_size: int = 64,
             device="auto", amp: str = "off", use_ema: bool = False, channels_last: bool = False, workers: int = 0,
             limit_batches: int | None = None, model_kwargs: dict | None = None) -> dict:
    """Evaluate a zoo model (optionally from a checkpoint) on ``data``'s validation split.

    A spectrascope training checkpoint supplies the architecture (overrides, input size,
    number of classes); for other checkpoints the head must match the data's classes."""
    from spectrascope.zoo.checkpoint import CheckpointError, file_sha256, read_checkpoint
    from spectrascope.io.datasets import EvalTransform, TransformedDataset, load_data
    from spectrascope.engine.device import resolve_device
    from spectrascope.zoo.build import num_classes_in, preprocessing
    from spectrascope.train.loop import ShardSampler, _amp_dtype
    from spectrascope.zoo.build import model_spec_from_checkpoint

    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    dev = resolve_device(device)
    spec = model_spec_from_checkpoint(checkpoint) if checkpoint is not None else None
    kwargs = dict(model_kwargs or {})
    if spec is not None:
        if model_name and registry.resolve_name(model_name) != registry.resolve_name(spec.name):
            raise ValueError(f"--model {model_name} but the checkpoint was trained as {spec.name}")
        model_name = spec.name
        kwargs = dict(spec.overrides, **kwargs)
        if img_size is None and spec.img_size:
            img_size = tuple(spec.img_size)
    if not model_name:
        raise ValueError("--model is required")
    bundle = load_data(data, img_size)
    if img_size is None:
        if bundle.spec.kind == "synthetic":
            img_size = (bundle.val.cfg.height, bundle.val.cfg.width)
        elif bundle.spec.kind in ("cifar10", "cifar100"):
            img_size = (32, 32)
    num_classes = bundle.num_classes
    if checkpoint is not None:
        have = spec.num_classes if spec is not None else num_classes_in(read_checkpoint(checkpoint, use_ema=use_ema)[0])
        if have is not None and have != num_classes:
            raise CheckpointError(f"{checkpoint}: the model has {have} classes but {bundle.spec.text} has {num_classes}")
    model = registry.create_model(model_name, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size,
                                  use_ema=use_ema, **kwargs)
    model.to(dev).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    pre = preprocessing(model, img_size)
    ds = TransformedDataset(bundle.val, EvalTransform(pre["size"], pre["mean"], pre["std"], pre["crop_pct"],
                                                      center_crop=bundle.center_crop))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=ShardSampler(len(ds), batch_size, limit_batches=limit_batches),
                                         num_workers=workers, pin_memory=dev.type == "cuda")
    metrics = evaluate_loader(model, loader, dev, _amp_dtype(amp), channels_last)
    name = getattr(model, "spectrascope_name", model_name)
    return {"model": name, "data": bundle.spec.text, "split": "val", "num_classes": num_classes,
            "img_size": list(pre["size"]), "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None, "use_ema": use_ema, "amp": amp,
            "batch_size": batch_size, "device": str(dev), "model_overrides": kwargs, **metrics}


__all__ = ["evaluate", "evaluate_loader"]
