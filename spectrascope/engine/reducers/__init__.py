"""Streaming reducers fed by ``Probe`` callbacks, and how their statistics cross ranks.

``Reducer`` is the protocol: ``reducer(tap, x)`` folds a capture into running sums;
``state()`` returns those sums (sufficient statistics) as a dict of tensors and
``load_state()`` takes merged ones back. ``all_reduce(dist)`` merges the states of every
rank by summation (``merge_states``; ranks that saw no batch contribute nothing), so each
rank ends with the statistics of the whole data set, as one process would have them.

A reducer is a callable ``reducer(tap, tensor)`` that folds every captured tensor into
running statistics and drops it, so memory stays flat in the number of images. Use it as
``Probe(model, taps, callback=reducer, **reducer.probe_kwargs)``: the reducer handles the
tap layouts itself (no NCHW copy) and consumes each tensor before the model continues,
so no clone is needed.
"""
from __future__ import annotations

import torch

__all__ = ["Reducer", "merge_states"]


def merge_states(states) -> dict:
    """Key-wise sum of state dicts (tensors or numbers), in rank order (deterministic)."""
    out: dict = {}
    for st in states:
        for k, v in (st or {}).items():
            out[k] = v if k not in out else out[k] + v
    return out


class Reducer:
    """Protocol of a streaming statistic (see the module doc)."""

    #: how to build the Probe feeding this reducer: it handles raw layouts and consumes inside the hook
    probe_kwargs = {"nchw": False, "clone": False, "dtype": None}
    #: the taps it is fed from (``Runner.reduce`` probes them)
    taps: tuple = ()

    def __call__(self, tap, x) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    def state(self) -> dict:  # pragma: no cover - protocol
        """The sums this reducer holds (tensors on any device, or numbers)."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    def missing(self) -> list[str]:
        """Taps that never fired (``Runner.reduce`` refuses to go on with them); default none."""
        return []

    def all_reduce(self, dist) -> None:
        """Replace this rank's sums by the sums over every rank."""
        if dist is None or not dist.enabled:
            return
        local = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.state().items()}
        self.load_state(merge_states(dist.all_gather_object(local)))

