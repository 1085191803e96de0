"""Failures every rank of a training run agrees on, on the engine's one agreement
(``engine.dist.Dist.agree``).

Under ``torchrun`` a rank that fails alone (a data set missing on one node, an unreadable image
in its shard, a full disk when rank 0 writes a checkpoint) would leave the others waiting in
their next collective, on nccl until the watchdog kills them. Every step of a training run that
may fail on one rank only, and that runs no collective itself, therefore goes through
``agreed``: every rank calls ``Dist.agree`` at the same point, the rank that failed raises its own
error and the others a ``PeerFailure`` with the same line and exit status, so every rank ends
with the same line and rank 0 reports it.
"""
from __future__ import annotations

from typing import Callable

__all__ = ["agree", "agreed", "raise_agreed"]


def agree(d, error: BaseException | None) -> None:
    """Called by every rank at the same point: when ``error`` is set on any rank, every rank
    raises (``Dist.agree``); otherwise nothing happens."""
    d.agree(error)


def raise_agreed(d, error: BaseException | None) -> None:
    """Every rank knows that a rank failed (a vote said so): raise it everywhere, the failing rank
    its own error, the others the first failing rank's line."""
    d.agree(error)


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
    d.agree(error)
    return result
