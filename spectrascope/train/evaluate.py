"""Evaluation: top-1/top-5 accuracy, loss and throughput of a model on a data spec's
validation split (the ``spectrascope evaluate`` command and the per-epoch evaluation of
``spectrascope train``).

Under ``spectrascope train`` the evaluation also listens for the stop signal: after each
batch every rank votes (one all-reduce of ``[failed, stop]``, the same number of votes on
every rank), so a SIGTERM during a long evaluation ends it on every rank within a batch
(``EvaluationStopped``) and the run saves its checkpoint within torchrun's grace period. A
failure on one rank (non-finite logits, a sample it cannot read) is agreed the same way and
ends every rank with the same error (``train.agree``).

The forward goes through ``engine.runner.Runner`` (batching, device, AMP, channels-last, the
non-finite check that stops on NaN/inf logits) and the sums through ``AccuracyReducer``, so
under ``torchrun`` every rank evaluates its share of the batches and the merged sums equal
a one-process run exactly."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from spectrascope.engine.runner import Runner, batch_chunks
from spectrascope.errors import CheckpointError, OptionError
from spectrascope.io.bundles import load_data
from spectrascope.io.transforms import EvalTransform, TransformedDataset
from spectrascope.train.agree import agreed as _agreed
from spectrascope.train.agree import raise_agreed
from spectrascope.train.metrics import AccuracyReducer
from spectrascope.zoo import registry
from spectrascope.zoo.build import model_spec_from_checkpoint, num_classes_in, preprocessing
from spectrascope.zoo.checkpoint import file_sha256, read_checkpoint

__all__ = ["evaluate", "evaluate_model", "agreed", "eval_dataset", "first_batches", "EvalModel", "resolve_eval_model",
           "EvaluationStopped"]


class EvaluationStopped(Exception):
    """Every rank agreed to stop an evaluation (a stop signal on any rank)."""


class _PeerFailed(Exception):
    """Another rank's evaluation failed (it says why, ``train.agree``)."""


def eval_dataset(split, pre, center_crop: bool) -> TransformedDataset:
    """A raw split with a model's evaluation transform (items ``(image, label, *extras)``)."""
    return TransformedDataset(split, EvalTransform(pre["size"], pre["mean"], pre["std"], pre["crop_pct"],
                                                   center_crop=center_crop))


def first_batches(dataset, limit_batches: int | None, batch_size: int):
    """The first ``limit_batches`` batches of ``dataset`` (all of it for None)."""
    if limit_batches is None or limit_batches * batch_size >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, range(limit_batches * batch_size))


def agreed(d, fn):
    """``fn()`` on every rank; when it fails on any rank (non-finite values, a sample it cannot
    read), every rank stops with the same error (``train.agree``), so no rank waits in a
    collective for one that gave up."""
    return _agreed(d, fn)


def _vote(d, failed: bool, stop: bool) -> tuple[bool, bool]:
    """(any rank failed, any rank asked to stop): one all-reduce of ``[failed, stop]`` (none in one
    process)."""
    if d.world == 1:
        return failed, stop
    t = d.all_reduce(torch.tensor([float(failed), float(stop)]), "max")
    return bool(t[0] > 0), bool(t[1] > 0)


def _voting_run(runner: Runner, model, dataset, on_batch, stop) -> None:
    """``runner.run`` with its failures (non-finite values, unreadable samples, any error) and the
    stop request agreed by every rank.

    Without ``stop``: one vote at the end. With ``stop`` (a callable: this rank's stop request):
    also a vote after each of the first batches that every rank has (the fewest any rank has),
    so every rank votes equally often; a rank that fails casts its last vote at once and the
    others meet it there. After a failed vote every rank raises the same error."""
    d = runner.dist
    common = len(batch_chunks(len(dataset), runner.config.batch_size)) // max(1, d.world) if stop else 0
    votes = 0

    def voting(batch, out):
        nonlocal votes
        on_batch(batch, out)
        if votes < common:
            votes += 1
            failed, halt = _vote(d, False, stop())
            if failed:
                raise _PeerFailed
            if halt:
                raise EvaluationStopped

    try:
        runner.run(model, dataset, on_batch=voting, need_output=True, agreed=False)
    except _PeerFailed:
        raise_agreed(d, None)                   # another rank failed: its error here too
    except EvaluationStopped:
        raise
    except Exception as exc:                    # this rank failed: its last vote, then every rank raises
        _vote(d, True, False)
        raise_agreed(d, exc)
    if _vote(d, False, False)[0]:
        raise_agreed(d, None)


def evaluate_model(model, dataset, runner: Runner, stop=None) -> dict:
    """Cross-entropy (no smoothing), top-1/top-5 (percent; k clipped to the number of
    classes) and images/s of ``model`` over ``dataset`` (sums over every rank of the runner's
    ``Dist``); the model's train/eval mode is restored afterwards.

    Args:
        model: the classifier (on the runner's device).
        dataset: items ``(image, label, ...)``.
        runner: batches, device, AMP and the ranks.
        stop: None, or a callable returning whether this rank was asked to stop; when any rank
            was, every rank raises ``EvaluationStopped`` after the same batch.

    Returns:
        ``loss``, ``top1``, ``top5``, ``n``, ``time_s`` and ``throughput_img_s``.
    """
    was_training = model.training
    model.eval()
    reducer = AccuracyReducer(-(-len(dataset) // runner.config.batch_size))

    def on_batch(batch, out):
        reducer.update(batch.number, out, torch.as_tensor(batch.extra[0], dtype=torch.long))

    t0 = time.perf_counter()
    try:
        _voting_run(runner, model, dataset, on_batch, stop)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - t0
    reducer.all_reduce(runner.dist)
    elapsed = float(runner.dist.all_reduce(torch.tensor([elapsed], dtype=torch.float64), "max").item())
    res = reducer.metrics()
    return dict(res, time_s=elapsed, throughput_img_s=res["n"] / max(elapsed, 1e-9))


@dataclass
class EvalModel:
    """The model ``evaluate`` builds: its name, overrides, input size and the checkpoint's head."""

    name: str
    kwargs: dict
    img_size: object
    classes_in_checkpoint: int | None


def _checkpoint_classes(checkpoint, spec, use_ema: bool) -> int | None:
    if checkpoint is None:
        return None
    return spec.num_classes if spec is not None else num_classes_in(read_checkpoint(checkpoint, use_ema=use_ema)[0])


def resolve_eval_model(model_name, checkpoint, model_kwargs, img_size, use_ema: bool) -> EvalModel:
    """Name, overrides and input size from the options and (training checkpoints) the checkpoint."""
    spec = model_spec_from_checkpoint(checkpoint) if checkpoint is not None else None
    kwargs = dict(model_kwargs or {})
    if "img_size" in kwargs:
        raise OptionError("img_size is set with --img-size, not --model-kwargs", option="--model-kwargs")
    if spec is not None:
        if model_name and registry.resolve_name(model_name) != registry.resolve_name(spec.name):
            raise CheckpointError(f"--model {model_name} but the checkpoint was trained as {spec.name}")
        model_name = spec.name
        kwargs = dict(spec.overrides, **kwargs)
        if img_size is None and spec.img_size:
            img_size = tuple(spec.img_size)
    if not model_name:
        raise OptionError("--model is required (or a spectrascope training --checkpoint)", option="--model")
    return EvalModel(model_name, kwargs, img_size, _checkpoint_classes(checkpoint, spec, use_ema))


def _check_classes(m: EvalModel, checkpoint, data_text: str, num_classes: int) -> None:
    """The head must fit the data: the checkpoint's classes, and a ``num_classes`` override."""
    have = m.classes_in_checkpoint
    if have is not None and have != num_classes:
        raise CheckpointError(f"{checkpoint}: the model has {have} classes but {data_text} has {num_classes}")
    if "num_classes" in m.kwargs:
        given = m.kwargs.pop("num_classes")
        if given != num_classes:
            ck = f" and the checkpoint has {have}" if have is not None else ""
            raise OptionError(f"num_classes={given!r} does not fit: {data_text} has {num_classes} classes{ck} "
                              "(the head size follows the data; drop num_classes)", option="--model-kwargs")


def _default_size(bundle, img_size):
    if img_size is None:
        if bundle.spec.kind == "synthetic":
            return (bundle.val.cfg.height, bundle.val.cfg.width)
        if bundle.spec.kind in ("cifar10", "cifar100"):
            return (32, 32)
    return img_size


def _build(m: EvalModel, checkpoint, num_classes: int, use_ema: bool):
    try:
        return registry.create_model(m.name, checkpoint=checkpoint, num_classes=num_classes, img_size=m.img_size,
                                     use_ema=use_ema, **m.kwargs)
    except TypeError as exc:       # an override the constructor does not take
        raise OptionError(str(exc).splitlines()[0], option="--model-kwargs") from None


def evaluate(model_name: str | None, *, checkpoint=None, data: str, img_size=None, use_ema: bool = False,
             limit_batches: int | None = None, model_kwargs: dict | None = None, runner: Runner | None = None,
             **run) -> dict:
    """Evaluate a zoo model (optionally from a checkpoint) on ``data``'s validation split.

    A spectrascope training checkpoint supplies the architecture (overrides, input size,
    number of classes); for other checkpoints the head must match the data's classes.
    ``runner`` decides device and distribution; without one, ``run`` gives its ``RunConfig``
    (``batch_size`` [64], ``device``, ``amp``, ``channels_last``, ``workers``)."""
    from spectrascope.engine.runner import RunConfig
    if limit_batches is not None and limit_batches < 1:
        raise OptionError("--limit-batches must be >= 1", option="--limit-batches")
    runner = runner or Runner(RunConfig(**dict({"device": "auto", "batch_size": 64}, **run)))
    m = resolve_eval_model(model_name, checkpoint, model_kwargs, img_size, use_ema)
    bundle = load_data(data, m.img_size)
    m.img_size = _default_size(bundle, m.img_size)
    _check_classes(m, checkpoint, bundle.spec.text, bundle.num_classes)
    model = runner.prepare(_build(m, checkpoint, bundle.num_classes, use_ema))
    pre = preprocessing(model, m.img_size)
    ds = first_batches(eval_dataset(bundle.val, pre, bundle.center_crop), limit_batches, runner.config.batch_size)
    metrics = evaluate_model(model, ds, runner)
    name = getattr(model, "spectrascope_name", m.name)
    return {"model": name, "data": bundle.spec.text, "split": "val", "num_classes": bundle.num_classes,
            "img_size": list(pre["size"]), "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None, "use_ema": use_ema,
            "amp": runner.config.amp, "batch_size": runner.config.batch_size, "device": str(runner.device),
            "model_overrides": m.kwargs, "world_size": runner.dist.world, **metrics}
