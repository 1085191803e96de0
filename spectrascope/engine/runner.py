"""The one forward loop of every analysis (and of evaluation).

``Runner.run(model, dataset, probe)`` does, per batch of this rank's shard: decode through
the dataset (optionally in DataLoader workers), move to the device (4-D inputs
channels-last on request: ``engine.device.to_memory_format``), run the model under
``inference_mode`` (or with autograd for gradient methods) and autocast (``amp`` = bf16 /
fp16; the zoo's FFT mixers stay float32 inside), hand the output to ``on_batch``, and check
the output and every tap for NaN/inf. A non-finite value stops the run with a
``NonFiniteError`` naming the first tap (execution order), the batch and the likely cause
(weights, input or overflow). When the caller needs no model output the forward stops as
soon as the last tap fired (``Probe(stop_early=True)``). ``RunConfig.tf32`` (``off`` by
default: the float32 numerics the parity tests check) is applied process-wide when the
runner prepares a model and before every forward (``engine.device.set_tf32``).

Datasets are anything with ``len()`` and ``[i]`` returning an image tensor (C, H, W) or a
tuple ``(image, *extra)``; batches are formed from consecutive indices exactly as one
process would form them, and batch ``i`` goes to rank ``i mod world`` (see ``engine.dist``).
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn

from spectrascope.engine import dist as _dist
from spectrascope.engine.device import TF32_MODES, resolve_device, set_tf32, to_memory_format
from spectrascope.errors import DataError, NonFiniteError, OptionError, TapError
from spectrascope.probe.probe import Probe, StopForward

__all__ = ["AMP_DTYPES", "RunConfig", "Batch", "RunStats", "Runner", "autocast", "batch_chunks", "nonfinite_cause",
           "progress_bar", "progress_iter", "progress_scope"]

#: ``--amp`` values and the autocast dtypes they select
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None):
    """The autocast context of ``--amp`` (a no-op context for ``off``)."""
    dtype = AMP_DTYPES.get(amp or "off")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


#: whether the run in progress asked for progress bars (``progress_scope``; read by ``progress_iter``)
_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("spectrascope_progress", default=False)


@contextlib.contextmanager
def progress_scope(enabled: bool):
    """Within this block ``progress_iter`` draws its bars when ``enabled`` (a command's progress
    switch on the rank that reports); code without a switch of its own (figures, tables) follows it."""
    token = _PROGRESS.set(bool(enabled))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_iter(items, desc: str, *, unit: str = "item", enabled: bool | None = None):
    """``items`` one by one, advancing a ``progress_bar`` (rate and ETA) after each.

    Args:
        items: a sized iterable.
        desc: what is counted.
        unit: the item's unit.
        enabled: the progress switch; None follows the enclosing ``progress_scope`` (off outside one).

    Yields:
        The items.
    """
    items = list(items)
    bar = progress_bar(len(items), desc, unit=unit, enabled=_PROGRESS.get() if enabled is None else enabled)
    try:
        for item in items:
            yield item
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def progress_bar(total: int, desc: str, *, unit: str = "batch", enabled: bool = True):
    """The progress bar of every long loop: tqdm on stderr with its rate and ETA, cleared when done.

    Args:
        total: the number of steps.
        desc: what is counted (``score-cam dfformer_s18``).
        unit: the step's unit (``batch``, ``image``, ``model``).
        enabled: False gives no bar (the ``progress`` switch; callers pass False off rank 0).

    Returns:
        The bar (``update(n)``, ``close()``), or None when disabled; a bar on a stderr that is not a
        terminal draws nothing.
    """
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=None)


@dataclass
class RunConfig:
    """How the runner batches and runs: the shared analysis options."""

    device: torch.device | str = "cpu"
    batch_size: int = 16
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    progress: bool = False
    check_finite: bool = True
    desc: str = ""
    tf32: str = "off"

    def __post_init__(self):
        self.device = resolve_device(self.device)
        if str(self.tf32).lower() not in TF32_MODES:
            raise OptionError(f"{self.tf32!r} is not accepted; use on or off", option="--tf32")
        self.tf32 = str(self.tf32).lower()
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OptionError(f"{self.batch_size!r} is not a batch size (an integer >= 1)", option="--batch-size")
        if (self.amp or "off") not in AMP_DTYPES:
            raise OptionError(f"{self.amp!r} is not accepted; use {', '.join(AMP_DTYPES)}", option="--amp")
        self.amp = self.amp or "off"
        if not isinstance(self.workers, int) or self.workers < 0:
            raise OptionError(f"{self.workers!r} is not a number of workers (an integer >= 0)", option="--workers")


@dataclass
class Batch:
    """One batch: its global number (as one process would count), dataset indices, input, extra fields."""

    number: int
    indices: list[int]
    x: torch.Tensor
    extra: tuple = ()


@dataclass
class RunStats:
    """What one ``Runner.run`` did on this rank."""

    images: int = 0
    batches: int = 0
    seconds: float = 0.0
    order: list[str] = field(default_factory=list)
    stopped_early: bool = False


def batch_chunks(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive index chunks ``[0, b), [b, 2b), ...`` of ``n`` items."""
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return i, self.base[i]


def _collate(items):
    idx = [i for i, _ in items]
    first = [it[0] if isinstance(it, (tuple, list)) else it for _, it in items]
    rest = [tuple(it[1:]) if isinstance(it, (tuple, list)) else () for _, it in items]
    extra = tuple(list(col) for col in zip(*rest)) if rest and rest[0] else ()
    return idx, torch.stack(first), extra


def nonfinite_cause(model: nn.Module, x: torch.Tensor | None = None) -> str:
    """The likely cause of a non-finite value: the weights, the input, or overflow in the forward."""
    bad = [(n, int((~torch.isfinite(t)).sum())) for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        total = sum(k for _, k in bad)
        return (f"the model weights hold {total} non-finite value(s) in {len(bad)} tensor(s), e.g. {bad[0][0]}: "
                "check the checkpoint")
    if x is not None and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return "the input images hold non-finite values"
    return ("the weights and inputs are finite, so the forward pass overflowed (values beyond the dtype's range: "
            "try --amp off, or check the checkpoint's scale)")


class Runner:
    """Batches a dataset over this rank's shard and runs a model on it (see the module doc)."""

    def __init__(self, config: RunConfig | None = None, dist: _dist.Dist | None = None):
        self.config = config or RunConfig()
        self.dist = dist or _dist.current()

    @property
    def device(self) -> torch.device:
        return self.config.device

    # ------------------------------------------------------------------ model
    def prepare(self, model: nn.Module) -> nn.Module:
        """``eval()``, on the device, channels-last convolution weights on request (the engine's
        memory-format policy), and the run's TF32 switch."""
        model.eval().to(self.device)
        to_memory_format(model, self.config.channels_last)
        set_tf32(self.config.tf32)
        return model

    # ------------------------------------------------------------------ data
    def chunks(self, n: int) -> list[tuple[int, list[int]]]:
        """(global batch number, indices) of this rank's batches."""
        return self.dist.shard(list(enumerate(batch_chunks(n, self.config.batch_size))))

    def batches(self, dataset) -> Iterator[Batch]:
        """This rank's batches of ``dataset`` (inputs on the device)."""
        mine = self.chunks(len(dataset))
        if not mine:
            return
        numbers = [k for k, _ in mine]
        sampler = [idx for _, idx in mine]
        w = self.config.workers
        loader = torch.utils.data.DataLoader(_Indexed(dataset), batch_sampler=sampler, num_workers=w,
                                             collate_fn=_collate, pin_memory=self.device.type == "cuda")
        for k, (idx, x, extra) in zip(numbers, loader):
            x = to_memory_format(x.to(self.device, non_blocking=True), self.config.channels_last)
            yield Batch(k, idx, x, extra)

    def _bar(self, total: int, desc: str, unit: str = "batch"):
        return progress_bar(total, desc or self.config.desc, unit=unit, enabled=self.config.progress and self.dist.main)

    # ------------------------------------------------------------------ forward
    def forward(self, model, batch: Batch | torch.Tensor, probe: Probe | None = None, *, need_output: bool = True,
                grad: bool = False):
        """One forward of ``batch`` (a ``Batch`` or an input tensor on the device) with the checks
        of the module doc. Returns the output, or None when the probe stopped the forward early."""
        b = batch if isinstance(batch, Batch) else Batch(0, list(range(int(batch.shape[0]))), batch)
        if probe is not None:
            probe.stop_early = not need_output and not grad and not self.config.compile
            probe.check_finite = self.config.check_finite
            probe.begin()
        mode = contextlib.nullcontext() if grad else torch.inference_mode()
        set_tf32(self.config.tf32)
        out, stopped = None, False
        with mode, autocast(self.device, self.config.amp):
            try:
                out = model(b.x)
            except StopForward:
                stopped = True
        report = probe.end(stopped=stopped) if probe is not None else None
        if self.config.check_finite:
            self._check_finite(model, b, out, report)
        return out

    def _check_finite(self, model, b: Batch, out, report) -> None:
        where = None
        if report is not None and report.nonfinite is not None:
            where = f"tap {report.nonfinite}"
        elif isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
            where = "the model output"
        if where is None:
            return
        first, last = b.indices[0], b.indices[-1]
        raise NonFiniteError(f"non-finite values (NaN/inf) first appeared at {where} in batch {b.number + 1} "
                             f"(images {first + 1}-{last + 1}): {nonfinite_cause(model, b.x)}; nothing was written")

    def run(self, model, dataset, probe: Probe | None = None, *, on_batch: Callable | None = None,
            need_output: bool = False, grad: bool = False, desc: str = "", agreed: bool = True) -> RunStats:
        """Run ``model`` over this rank's shard of ``dataset``; ``on_batch(batch, output)`` sees every
        batch (output None when the forward stopped early). The probe must be entered by the caller.

        Every rank of the group calls it: a failure on any rank (a non-finite value, an undecodable
        image) raises on every rank when the loop ends (``Dist.together``). ``agreed=False`` leaves
        that to a caller that agrees itself (``on_batch`` running collectives of its own, as the
        training's evaluation votes on stop requests after each batch)."""
        stats = RunStats()
        t0 = time.perf_counter()
        fn = torch.compile(model) if self.config.compile else model
        mine = self.chunks(len(dataset))
        bar = self._bar(len(mine), desc)
        try:
            with self.dist.together() if agreed else contextlib.nullcontext():   # a failure on any rank
                # stops every rank here
                for b in self.batches(dataset):
                    out = self.forward(fn, b, probe, need_output=need_output, grad=grad)
                    if out is None and probe is not None:
                        stats.stopped_early = True
                    if on_batch is not None:
                        on_batch(b, out)
                    stats.images += len(b.indices)
                    stats.batches += 1
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.seconds = time.perf_counter() - t0
        if probe is not None:
            stats.order = list(probe.order)
        return stats

    def reduce(self, model, dataset, reducer, *, desc: str = "") -> RunStats:
        """Run ``model`` over this rank's shard of ``dataset`` with ``reducer`` (``engine.reducers``) fed
        by a probe on its taps, then merge its statistics over every rank.

        Returns the ``RunStats`` with ``images``, ``batches`` and ``stopped_early`` over every rank and
        ``order``, the taps' firing order (the same on every rank). Raises ``DataError`` when no image
        was processed and ``TapError`` when a tap never fired."""
        with Probe(model, reducer.taps, callback=reducer, **reducer.probe_kwargs) as probe:
            stats = self.run(model, dataset, probe, need_output=False, desc=desc)
        order = list(stats.order)
        stats.images, stats.batches = self.total(stats.images), self.total(stats.batches)
        stats.stopped_early = self.dist.any(stats.stopped_early)
        if stats.images == 0:
            raise DataError("no images were processed")
        reducer.all_reduce(self.dist)
        missing = reducer.missing()
        if missing:
            raise TapError(f"tap(s) {', '.join(missing[:5])} never fired during the forward pass")
        if self.dist.enabled:                      # the first rank that ran a batch
            order = next((o for o in self.dist.all_gather_object(order) if o), [])
        stats.order = order + [t.name for t in reducer.taps if t.name not in order]
        return stats

    def total(self, n: int | float) -> int | float:
        """The sum of ``n`` over all ranks."""
        if not self.dist.enabled:
            return n
        v = self.dist.all_reduce(torch.tensor([float(n)], dtype=torch.float64)).item()
        return int(v) if isinstance(n, int) else v
