"""Failures every rank of a training run agrees on.

Under ``torchrun`` a rank that fails alone (a data set missing on one node, an unreadable image
in its shard, a full disk when rank 0 writes a checkpoint) would leave the others waiting in
their next collective, on nccl until the watchdog kills them. Every step that may fail on one
rank only, and that runs no collective itself, therefore ends with ``agree``: one all-reduce
of "failed" (every rank calls it at the same point), and only when a rank failed, one gather
of what failed. The rank that failed raises its own error; the others raise one with the
same message and kind (``NonFiniteError``, ``NonFiniteLossError``, a user error with its
exit status 2, or a ``TrainingError`` naming the process whose bug it was), so every rank
ends with the same line and rank 0 reports it.
"""
from __future__ import annotations

from typing import Callable

from spectrascope.errors import NonFiniteError, NonFiniteLossError, TrainingError, UserError

__all__ = ["agree", "agreed", "raise_agreed", "describe"]


def describe(error: BaseException) -> tuple[str, str]:
    """``(kind, first line)`` of an error, as another rank re-raises it."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    for cls in (NonFiniteError, NonFiniteLossError):
        if type(error) is cls:
            return cls.__name__, line
    if isinstance(error, UserError):
        return "user", line
    if isinstance(error, TrainingError):
        return "training", line
    return "bug", f"{type(error).__name__}: {line}"


def _peer_error(kind: str, line: str, rank: int) -> Exception:
    if kind == "NonFiniteError":
        return NonFiniteError(line)
    if kind == "NonFiniteLossError":
        return NonFiniteLossError(line)
    if kind == "user":
        return UserError(line)
    if kind == "training":
        return TrainingError(line)
    return TrainingError(f"process {rank} failed ({line}); its traceback is in its output")


def raise_agreed(d, error: BaseException | None) -> None:
    """Every rank knows that a rank failed: gather what failed and raise it everywhere (the
    failing rank its own error, the others the first failing rank's, by rank)."""
    notes = d.all_gather_object(None if error is None else describe(error)) if d.world > 1 else [None]
    if error is not None:
        raise error
    rank, (kind, line) = next((r, n) for r, n in enumerate(notes) if n is not None)
    raise _peer_error(kind, line, rank)


def agree(d, error: BaseException | None) -> None:
    """Called by every rank at the same point: when ``error`` is set on any rank, every rank raises
    (see the module doc); otherwise nothing happens (one all-reduce; none in one process)."""
    if d.world == 1:
        if error is not None:
            raise error
        return
    if d.any(error is not None):
        raise_agreed(d, error)


def agreed(d, fn: Callable, *, only_main: bool = False):
    """``fn()`` (on rank 0 only with ``only_main``), its failure on any rank agreed by every rank.

    Args:
        d: the ``Dist`` of the run.
        fn: a step that runs no collective.
        only_main: run ``fn`` on rank 0 only (writes); the other ranks return None.

    Returns:
        ``fn()``'s result (None on the ranks that did not run it).
    """
    result, error = None, None
    if d.main or not only_main:
        try:
            result = fn()
        except Exception as exc:           # any failure, a bug included: no rank may be left waiting
            error = exc
    agree(d, error)
    return result
