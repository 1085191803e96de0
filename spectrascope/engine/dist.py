"""The one torch.distributed layer (every analysis command and training run under ``torchrun``).

``init(device)`` joins the process group a launcher describes in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``PORT`` as
``torchrun`` sets them, single node or many): nccl with one GPU per local rank on CUDA,
gloo on CPU. Without a launcher it returns a one-process ``Dist`` and nothing is
initialised. ``init_process_group`` is called here and nowhere else. A group that a
library caller initialised is joined as it is (any world size, one included: its
collectives then run), and on CUDA this process's GPU becomes the current device, as
object collectives on nccl need.

Analyses are sharded by *batches* exactly as one process would form them (batch ``i`` of
the image list goes to rank ``i mod world``): no image is seen twice, no padding, and
statistics that depend on batch composition (mini-batch CKA) equal a one-process run.
Reducers all-reduce their sufficient statistics (float64 sums); per-image outputs are
gathered to rank 0, which alone writes.

Failures are agreed (``Dist.agree`` / ``with dist.together():``): a block that raised on any
rank raises on every rank -- the failing rank its own error, the others a ``PeerFailure`` with
the same line and exit status -- before the next collective, so no process waits for one that
gave up (on NCCL that wait lasts until the watchdog kills the job). This is the one rank
agreement of the package; the runner's ``run`` and every phase of the analysis seam use it.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from spectrascope.engine.device import available_cpus
from spectrascope.errors import Interrupted, OptionError, PeerFailure, SpectrascopeError

__all__ = ["Dist", "init", "current", "shutdown", "session", "launched", "describe_failure", "data_parallel"]


def describe_failure(exc: BaseException) -> tuple[str, int, str]:
    """(one line, exit status, kind) of an exception as every rank reports it: ``kind`` is
    ``user`` (one ``Error:`` line), ``signal`` or ``bug`` (a traceback on the failing rank)."""
    if isinstance(exc, PeerFailure):
        return str(exc), exc.exit_code, exc.kind
    if isinstance(exc, Interrupted):
        return str(exc), exc.exit_code, "signal"
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by SIGINT; nothing was written", 130, "signal"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, SpectrascopeError) and getattr(exc, "exit_code", None) is not None:
        return text, int(exc.exit_code), "user"
    return f"{type(exc).__name__}: {text}", 1, "bug"


@dataclass
class Dist:
    """Rank and world of this process; a one-process ``Dist`` makes every collective a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether collectives run: several processes, or a process group joined (even of one)."""
        return self.world > 1 or self.backend is not None

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ sharding
    def shard(self, items: Sequence) -> list:
        """Every ``world``-th item starting at ``rank`` (item i goes to rank i mod world)."""
        return list(items[self.rank::self.world])

    # ------------------------------------------------------------------ collectives
    def _device_for(self, t: torch.Tensor) -> torch.device:
        if self.backend == "nccl" and t.device.type != "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        if self.backend == "gloo" and t.device.type != "cpu":
            return torch.device("cpu")
        return t.device

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """A reduced copy of ``t`` (``op`` = sum, max or min) on ``t``'s device; ``t`` itself in one process."""
        if not self.enabled:
            return t
        import torch.distributed as td
        ops = {"sum": td.ReduceOp.SUM, "max": td.ReduceOp.MAX, "min": td.ReduceOp.MIN}
        out = t.detach().to(self._device_for(t), copy=True)
        td.all_reduce(out, op=ops[op])
        return out.to(t.device)

    def all_gather_object(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as td
        out: list = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def gather_object(self, obj: Any) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td
        out = [None] * self.world if self.main else None
        td.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as td
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.enabled:
            return bool(flag)
        return bool(self.all_reduce(torch.tensor([float(bool(flag))]), "max").item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td
            td.barrier()

    # ------------------------------------------------------------------ agreement on failure
    def agree(self, error: BaseException | None = None) -> None:
        """Every rank passes what it met (None: nothing). When any rank met an error, every rank
        raises: the failing rank ``error`` itself, the others a ``PeerFailure`` with the first failing
        rank's line and exit status. One process: raises ``error`` when given."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        mine = None if error is None else describe_failure(error)
        try:
            got = self.all_gather_object(mine)
        except Exception as exc:               # the group broke (a peer died): report what we know
            if error is not None:
                raise error
            raise PeerFailure(f"another process of the group stopped ({type(exc).__name__}); this one stops too",
                              1, "bug") from None
        if error is not None:
            raise error
        for rank, msg in enumerate(got):
            if msg is not None:
                text, code, kind = msg
                if kind == "bug":
                    text = f"process {rank} failed ({text}); see its traceback"
                raise PeerFailure(text, code, kind, rank)

    @contextlib.contextmanager
    def together(self):
        """``with dist.together():`` -- the block runs on every rank; when it raised on any rank it
        raises on every rank on leaving (see ``agree``). Put one around every stretch of work that a
        collective follows."""
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):
                raise
            self.agree(exc)
            raise
        self.agree(None)

    def agreed(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` inside ``together()``; returns its value."""
        with self.together():
            return fn(*args, **kwargs)


_CURRENT = Dist()


def launched() -> bool:
    """Whether a launcher (torchrun) asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Dist:
    """The ``Dist`` of this process (one process until ``init`` joined a group)."""
    return _CURRENT


def _local_gpu(index: int) -> torch.device:
    """``cuda:index`` (a process's own GPU: its local rank), checked against the GPUs of this node."""
    if index >= torch.cuda.device_count():
        raise OptionError(f"local rank {index} has no GPU (this node has {torch.cuda.device_count()}): "
                          "use --nproc_per_node <= the number of GPUs", option="--device")
    return torch.device("cuda", index)


def _joined_gpu_index(device: torch.device) -> int:
    """The GPU of a process in a group it did not initialise here: its launcher's ``LOCAL_RANK``,
    else the index given (``cuda:N``), else the caller's current device."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return device.index if device.index is not None else torch.cuda.current_device()


def init(device: torch.device | str = "cpu") -> tuple[Dist, torch.device]:
    """Join the process group the launcher describes; returns ``(dist, device)``.

    On CUDA every local rank takes its own GPU (``cuda:LOCAL_RANK``, made the current device)
    and nccl; on CPU gloo, with the CPUs this process may use (``available_cpus``) shared out
    among the local ranks as torch threads. A group already initialised (by a library
    caller) is joined as it is, its GPU made current. Without a launcher: ``(Dist(), device)``."""
    global _CURRENT
    device = torch.device(device)
    import torch.distributed as td
    if td.is_available() and td.is_initialized():
        _CURRENT = Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                        int(os.environ.get("LOCAL_WORLD_SIZE", td.get_world_size())), td.get_backend())
        if device.type == "cuda":
            device = _local_gpu(_joined_gpu_index(device))
            torch.cuda.set_device(device)
        return _CURRENT, device
    if not launched():
        _CURRENT = Dist()
        return _CURRENT, device
    if not td.is_available():
        raise OptionError("this PyTorch build has no torch.distributed; run without torchrun")
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.type == "cuda":
        device = _local_gpu(local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, available_cpus() // max(1, local_world)))
        backend = "gloo"
    td.init_process_group(backend=backend)
    _CURRENT = Dist(td.get_rank(), td.get_world_size(), local_rank, local_world, backend)
    return _CURRENT, device


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    global _CURRENT
    import torch.distributed as td
    if td.is_available() and td.is_initialized():
        with contextlib.suppress(Exception):
            td.destroy_process_group()
    _CURRENT = Dist()


@contextlib.contextmanager
def session(device: torch.device | str = "cpu"):
    """``with session(device) as (dist, device):`` joins the group for the block and leaves it after
    (only when this call joined it)."""
    import torch.distributed as td
    joined_here = not (td.is_available() and td.is_initialized()) and launched()
    d, dev = init(device)
    try:
        yield d, dev
    finally:
        if joined_here:
            shutdown()


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` on this process's device, its gradients living in
    DDP's buckets (``gradient_as_bucket_view``).

    DDP lays each bucket out with the parameters' strides and copies, with a warning ("Grad
    strides do not match bucket view strides"), every fresh gradient whose strides differ --
    and autograd's layout contract leaves the strides of size-1 dimensions open (a 1x1
    frequency grid, a 1x1 kernel). So every gradient is created here, in the parameter's
    layout, before DDP takes it into its bucket; backward then accumulates into the bucket
    in place (no copy, no warning). The caller zeroes gradients in place
    (``zero_grad(set_to_none=False)``) and never sets them to None.

    Args:
        model: the module to train (on ``device``, in its final memory format).
        device: this process's device (its GPU index is DDP's device id).

    Returns:
        The DDP module.
    """
    from torch.nn.parallel import DistributedDataParallel
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)
