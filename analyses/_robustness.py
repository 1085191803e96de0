"""What the five frequency-robustness analyses share (``fourier-heatmap``, ``freq-noise``,
``freq-filter``, ``freq-sensitivity``, ``corruptions``): labelled images in [0, 1], the models
built for the data, the clean error, ordered and sharded batches, and the records they write.

Images. Every perturbation of these analyses is applied to images in [0, 1] pixel space at the
model's input size, *before* the model's normalisation (Yin et al. 2019: noise added after the
normalisation is not the perturbation the paper measures). ``LabelledSource`` reads the
validation split of ``--data`` (``imagefolder:PATH``, ``cifar10:PATH``, ``cifar100:PATH`` or
``synthetic[:...]``, through ``io.datasets``) with the evaluation transform of ``evaluate``
without its normalisation: photos are resized (shorter side to ``size / crop_pct``) and
centre-cropped, fixed-size arrays (CIFAR, synthetic) are resized to the input size. The
normalisation is applied by the engine's loops after the perturbation. ``--num-images N``
takes the first N images of CIFAR and synthetic data (their order mixes the classes) and N
images evenly spaced over an image folder (whose order is class by class).

Models. Without a checkpoint a model gets a head of as many classes as the data and, for
CIFAR and synthetic data, the data's image size (unless ``--img-size`` says otherwise); with
one, its head must fit the data (``evaluate``'s rule).

Under ``torchrun`` the noise, filter, sensitivity and corruption loops share the images out
(batch ``i`` to rank ``i mod world``, as ``Runner.batches``) and all-reduce their sums; the heat
map shares its bases out instead and decodes every image on every rank (``ordered_batches``).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from spectrascope.engine.runner import Runner
from spectrascope.engine.variants import VariantCounts, evaluate_variants
from spectrascope.errors import CheckpointError, DataError, OptionError
from spectrascope.io.datasets import EvalTransform, load_data
from spectrascope.io.sources import images_digest
from spectrascope.ops.binomial import wilson_interval
from spectrascope.seam.options import Option, parse_positive

__all__ = ["LabelledSource", "LabelledImages", "PreparedModel", "prepare_model", "ordered_batches", "sharded_counts",
           "clean_counts", "forward_batch", "rate", "rates", "FORWARD_BATCH", "LEVEL", "model_labels", "run_block",
           "perturbation_seed",
           "in_band_share"]

#: confidence level of every interval these analyses report (Wilson score interval)
LEVEL = 0.95

FORWARD_BATCH = Option("forward_batch", None, "perturbed images per forward pass (variants x images) "
                       "[default: 8 x --batch-size]", type=int, metavar="N",
                       parse=parse_positive("--forward-batch", "a number of images (an integer >= 1)"))


# ---------------------------------------------------------------------------- images

_ZERO, _ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


class LabelledImages(torch.utils.data.Dataset):
    """``[i]`` -> (float32 (3, H, W) image in [0, 1] at one model's input size, label)."""

    def __init__(self, split, indices: Sequence[int], labels: Sequence[int], pre, center_crop: bool):
        self.split, self.indices, self.labels = split, list(indices), list(labels)
        self.transform = EvalTransform(tuple(pre["size"]), _ZERO, _ONE, float(pre["crop_pct"]),
                                       center_crop=center_crop)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, _label, _extra = self.split.load(self.indices[i])
        return self.transform(img).clamp_(0.0, 1.0), self.labels[i]


@dataclass
class LabelledSource:
    """The labelled validation images of ``--data`` (see the module doc). It answers what the seam
    asks of a source (``digest``, ``notes``, ``describe()``, ``len``) and gives each model its
    [0, 1] images (``dataset(pre)``)."""

    spec: str
    kind: str
    split: object
    indices: list[int]
    labels: list[int]
    classes: list[str]
    center_crop: bool
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _digest: str | None = None

    @classmethod
    def resolve(cls, data: str | None, num_images: int | None) -> "LabelledSource":
        """The images of ``--data`` / ``--num-images``.

        Raises:
            DataError: the data spec is missing, unlabelled (``samples``) or cannot be read.
        """
        if not data:
            raise OptionError("is required: imagefolder:PATH, cifar10:PATH, cifar100:PATH or synthetic[:k=v,...]",
                              option="--data")
        if str(data).strip().split(":", 1)[0].lower() == "samples":
            raise DataError("'samples' has no labels; these analyses need imagefolder:PATH, cifar10:PATH, "
                            "cifar100:PATH or synthetic[:k=v,...]", option="--data")
        bundle = load_data(data)
        split = bundle.val
        total = len(split)
        n = total if num_images is None else min(int(num_images), total)
        if bundle.spec.kind == "imagefolder" and n < total:
            indices = sorted({int(round(v)) for v in np.linspace(0, total - 1, n)})
        else:
            indices = list(range(n))
        notes = [f"--num-images {num_images}: {bundle.spec.text} holds only {total} validation image(s); "
                 f"using {total}"] if num_images is not None and num_images > total else []
        return cls(bundle.spec.text, bundle.spec.kind, split, indices, [int(split.label(i)) for i in indices],
                   list(bundle.classes), bundle.center_crop, dict(bundle.info), notes)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def native_size(self) -> tuple[int, int] | None:
        """The images' own size for CIFAR (32 x 32) and synthetic data; None for image folders."""
        if self.kind == "synthetic":
            cfg = self.info["synthetic"]
            return int(cfg["height"]), int(cfg["width"])
        if self.kind in ("cifar10", "cifar100"):
            return 32, 32
        return None

    @property
    def digest(self) -> str:
        """sha256 of the images and labels used (files for image folders; pixels for CIFAR; the
        generator's settings for synthetic data, whose image ``i`` depends on them alone)."""
        if self._digest is None:
            h = hashlib.sha256(json.dumps({"labels": self.labels, "indices": self.indices}).encode())
            if self.kind == "imagefolder":
                h.update(images_digest([self.split.samples[i][0] for i in self.indices]).encode())
            elif self.kind == "synthetic":
                h.update(json.dumps(self.info["synthetic"], sort_keys=True).encode())
            else:
                for i in self.indices:
                    h.update(np.ascontiguousarray(self.split.images[i]).tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def describe(self) -> dict:
        """The block results.json records for the images."""
        out = {"count": len(self), "sha256": self.digest, "source": self.spec, "split": "val",
               "num_classes": self.num_classes,
               "class_counts": np.bincount(self.labels, minlength=self.num_classes).tolist()}
        if self.kind == "imagefolder":
            out["files"] = [Path(self.split.samples[i][0]).name for i in self.indices]
        return out

    def dataset(self, pre) -> LabelledImages:
        """The images in [0, 1] at ``pre``'s input size, with their labels."""
        return LabelledImages(self.split, self.indices, self.labels, pre, self.center_crop)

    def class_bands(self, size: Sequence[int]) -> list[list[float]] | None:
        """The radial bands (cycles per pixel of an input of ``size``) that the classes of
        synthetic data live in, or None (other data; or a resize that is not the same on both
        axes, which would turn the rings into ellipses)."""
        if self.kind != "synthetic":
            return None
        cfg = self.info["synthetic"]
        H, W = (int(v) for v in size)
        if cfg["height"] * W != cfg["width"] * H:
            return None
        scale = cfg["height"] / H
        return [[c["f_low"] * scale, c["f_high"] * scale] for c in
                {(c["band"]): c for c in cfg["classes"]}.values()]


# ---------------------------------------------------------------------------- models


@dataclass
class PreparedModel:
    """A model ready for the loops: the callable (compiled on request), its normalisation, input
    size, display label and the record results.json keeps."""

    model: Callable
    module: nn.Module
    pre: object
    normalization: tuple
    size: tuple[int, int]
    label: str
    record: dict


def _spec_for(spec, source: LabelledSource, img_size):
    if isinstance(spec, nn.Module) or spec.checkpoint is not None or spec.pretrained:
        return spec
    over = dict(spec.overrides)
    if "num_classes" in over:
        given = over.pop("num_classes")
        if given != source.num_classes:
            raise OptionError(f"num_classes={given!r} does not fit: {source.spec} has {source.num_classes} classes "
                              "(the head size follows the data; drop num_classes)", option="--model-kwargs")
    size = spec.img_size if spec.img_size is not None else (img_size or source.native_size)
    return replace(spec, overrides=over, num_classes=source.num_classes, img_size=size)


def _weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def prepare_model(ctx, spec, source: LabelledSource) -> PreparedModel:
    """Build a model for the labelled data (see the module doc) and check its head.

    Args:
        ctx: the run's ``seam.Context``.
        spec: a ``ModelSpec`` or a built module.
        source: the labelled images.

    Returns:
        The ``PreparedModel`` (on the run's device, eval mode, compiled with ``--compile``).

    Raises:
        CheckpointError: the model's head has another number of classes than the data.
    """
    built = ctx.build(_spec_for(spec, source, ctx.params.get("img_size")))
    pre = built.pre
    H, W = (int(v) for v in pre["size"])
    module = built.model
    with torch.inference_mode():
        probe = torch.zeros(1, 3, H, W, device=ctx.device)
        out = module(probe)
    classes = int(out.shape[-1]) if out.ndim == 2 else None
    if classes != source.num_classes:
        where = f"{built.spec.checkpoint}: " if getattr(built.spec, "checkpoint", None) else ""
        raise CheckpointError(f"{where}{built.name} has {classes} output classes but {source.spec} has "
                              f"{source.num_classes}", option="--checkpoint" if where else "--model")
    model = torch.compile(module) if ctx.runner.config.compile else module
    ck = getattr(built.spec, "checkpoint", None)
    record = {"model": built.name, "checkpoint": str(ck) if ck else None, "checkpoint_sha256": built.checkpoint_sha256,
              "random_weights": bool(built.random_weights and not getattr(built, "user_module", False)),
              "weights_sha256": _weights_digest(module), "input_size": [H, W], "num_classes": classes,
              "preprocessing": pre.as_dict()}
    return PreparedModel(model, module, pre, (tuple(pre["mean"]), tuple(pre["std"])), (H, W), built.name, record)


def model_labels(records: Sequence[dict]) -> list[str]:
    """Display names: the model name, with its checkpoint's file name (or "random weights") when
    a name appears twice."""
    names = [r["model"] for r in records]
    out = []
    for r in records:
        if names.count(r["model"]) > 1:
            tail = Path(r["checkpoint"]).name if r["checkpoint"] else "random weights"
            out.append(f"{r['model']} ({tail})")
        else:
            out.append(r["model"])
    if len(set(out)) != len(out):
        out = [f"{lab} #{k + 1}" for k, lab in enumerate(out)]
    return out


# ---------------------------------------------------------------------------- batches


def _collate(items):
    xs, ys = zip(*items)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def ordered_batches(runner: Runner, dataset, start: int = 0):
    """Every image of a dataset from ``start`` on, in order, on this process (not sharded).

    Args:
        runner: the run's runner (device, ``--batch-size``, ``--workers``).
        dataset: ``LabelledImages``.
        start: the first image.

    Yields:
        ``(indices, x, labels)``: data-set indices, (B, 3, H, W) images in [0, 1] and labels on the
        device, each image decoded once.
    """
    n, b = len(dataset), runner.config.batch_size
    chunks = [list(range(a, min(a + b, n))) for a in range(start, n, b)]
    if not chunks:
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, num_workers=runner.config.workers,
                                         collate_fn=_collate)
    for idx, (x, y) in zip(chunks, loader):
        yield idx, x.to(runner.device), y.to(runner.device)


def sharded_counts(ctx, dataset, count: Callable, num_variants: int) -> VariantCounts:
    """Counts of a loop over the images, shared out over the ranks and summed.

    Args:
        ctx: the run's context (runner and ``Dist``).
        dataset: ``LabelledImages``; batch ``i`` goes to rank ``i mod world`` (``Runner.batches``).
        count: ``count(x, labels, indices) -> VariantCounts`` of one batch.
        num_variants: the number of variants ``count`` reports.

    Returns:
        ``VariantCounts`` summed over every rank (the same on every rank); a failure on any rank
        stops every rank (``Dist.together``).
    """
    errors = torch.zeros(num_variants, dtype=torch.long)
    loss = torch.zeros(num_variants, dtype=torch.float64)
    n = 0
    with ctx.dist.together():
        for b in ctx.runner.batches(dataset):
            y = torch.as_tensor(b.extra[0], dtype=torch.long, device=b.x.device)
            c = count(b.x, y, b.indices)
            errors += c.errors.long()
            loss += c.loss_sum.double()
            n += int(c.n)
    d = ctx.dist
    errors = d.all_reduce(errors)
    loss = d.all_reduce(loss)
    n = int(d.all_reduce(torch.tensor([n], dtype=torch.long)).item())
    return VariantCounts(errors, loss, n)


def clean_counts(ctx, m: PreparedModel, dataset) -> VariantCounts:
    """Top-1 errors and summed loss of the unperturbed images (one variant)."""
    def count(x, y, _idx):
        return evaluate_variants(m.model, x, y, lambda ids, lo, hi: x[lo:hi].unsqueeze(0), 1,
                                 normalization=m.normalization, runner=ctx.runner,
                                 forward_batch=ctx.runner.config.batch_size, describe=lambda ids: "the clean images")
    return sharded_counts(ctx, dataset, count, 1)


def forward_batch(ctx) -> int:
    """``--forward-batch``, or 8 x ``--batch-size``."""
    return int(ctx.params.get("forward_batch") or 8 * ctx.runner.config.batch_size)


# ---------------------------------------------------------------------------- records


def rate(errors, n, loss_sum=None) -> dict:
    """The record of one error count.

    Args:
        errors: top-1 errors.
        n: images.
        loss_sum: summed cross-entropy (optional).

    Returns:
        ``{"errors", "n", "error", "error_low", "error_high"}`` (Wilson interval at ``LEVEL``) and
        ``"loss"`` (the mean cross-entropy) when ``loss_sum`` is given.
    """
    errors, n = int(errors), int(n)
    lo, hi = wilson_interval(errors, n, LEVEL)
    out = {"errors": errors, "n": n, "error": errors / n if n else None,
           "error_low": float(lo) if n else None, "error_high": float(hi) if n else None}
    if loss_sum is not None:
        out["loss"] = float(loss_sum) / n if n else None
    return out


def rates(counts: VariantCounts) -> dict:
    """Per-variant arrays of a count: ``error``, ``error_low``, ``error_high``, ``loss`` (float64)
    and ``errors`` (int64), over ``counts.n`` images each."""
    lo, hi = wilson_interval(counts.errors, torch.full_like(counts.errors, counts.n), LEVEL)
    return {"errors": counts.errors.numpy().astype(np.int64), "error": counts.error_rate.numpy(),
            "error_low": lo.numpy(), "error_high": hi.numpy(), "loss": counts.mean_loss.numpy()}


def perturbation_seed(ctx) -> int:
    """The seed of the perturbations' random draws: ``--seed``, or 0 (a map is reproducible
    unless another seed is asked for)."""
    seed = ctx.params.get("seed")
    return 0 if seed is None else int(seed)


def in_band_share(radii, bands) -> float:
    """The share of ``radii`` inside the union of ``bands``."""
    r = np.asarray(radii, dtype=np.float64)
    inside = np.zeros(r.shape, dtype=bool)
    for lo, hi in bands:
        inside |= (r >= lo) & (r < hi)
    return float(inside.mean()) if r.size else math.nan


def run_block(ctx) -> dict:
    """What results.json records of the run: world size, device, batch sizes, AMP, channels-last."""
    r = ctx.runner
    return {"world_size": r.dist.world, "device": str(r.device), "batch_size": r.config.batch_size,
            "forward_batch": forward_batch(ctx), "amp": r.config.amp, "channels_last": r.config.channels_last,
            "compile": r.config.compile}
