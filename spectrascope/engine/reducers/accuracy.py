"""The sufficient statistics of an evaluation: ``AccuracyReducer`` (loss sum, top-1 and top-5
hits, images) per global batch, merged over ranks by the ``engine.reducers`` protocol.

Each batch's sums sit in the row of its global batch number, so merging the ranks' states
(a key-wise sum of tensors that are zero outside a rank's rows) is exact, and the totals are
``math.fsum`` of the rows: correctly rounded and independent of the order, so an evaluation
under ``torchrun`` equals a one-process run exactly."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spectrascope.engine.reducers import Reducer

__all__ = ["AccuracyReducer", "accuracy_counts"]


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is in the top-k (k clipped to the number of classes)."""
    maxk = min(max(ks), logits.shape[-1])
    top = logits.topk(maxk, dim=-1).indices
    hit = top.eq(target.view(-1, 1))
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


class AccuracyReducer(Reducer):
    """Cross-entropy (no smoothing) sum, top-1 and top-5 hits and image count per global batch."""

    def __init__(self, num_batches: int):
        self.sums = torch.zeros(max(0, num_batches), 4, dtype=torch.float64)

    def update(self, number: int, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Fold one batch (its global number, float logits, class targets)."""
        logits = logits.float()
        target = target.to(logits.device)
        c1, c5 = accuracy_counts(logits, target)
        row = torch.stack([F.cross_entropy(logits, target, reduction="sum").double(), c1.double(), c5.double(),
                           torch.tensor(float(len(target)), dtype=torch.float64, device=logits.device)])
        self.sums[number] = row.cpu()

    def __call__(self, tap, x) -> None:  # pragma: no cover - fed by batches, not by a probe
        raise TypeError("AccuracyReducer is fed with update(number, logits, target)")

    def state(self) -> dict:
        return {"sums": self.sums}

    def load_state(self, state: dict) -> None:
        self.sums = state["sums"]

    def totals(self) -> tuple[float, float, float, int]:
        """(loss sum, top-1 hits, top-5 hits, images) over every batch."""
        cols = self.sums.t().tolist() if len(self.sums) else [[], [], [], []]
        loss, c1, c5, n = (math.fsum(c) for c in cols)
        return loss, c1, c5, int(n)

    def metrics(self) -> dict:
        """loss (mean cross-entropy), top1/top5 (percent) and n; None values for no image."""
        loss, c1, c5, n = self.totals()
        if n == 0:
            return {"loss": None, "top1": None, "top5": None, "n": 0}
        return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "n": n}
