"""Classification metrics of training: top-k counts and the soft-target cross-entropy of
mixup/cutmix (the evaluation's streaming sums are ``engine.reducers.accuracy.AccuracyReducer``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spectrascope.engine.reducers.accuracy import AccuracyReducer, accuracy_counts

__all__ = ["accuracy_counts", "soft_cross_entropy", "AccuracyReducer"]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
