"""Seeds and data order of a training run.

Every random draw is derived from ``(seed, epoch, position)`` (data order and per-sample
augmentation) or ``(seed, epoch, micro-step, rank)`` (mixup, drop path), so a resumed run
continues exactly as the uninterrupted one, and the global batches do not depend on the
number of processes."""
from __future__ import annotations

import math

import numpy as np
import torch

from spectrascope.errors import DataError

__all__ = ["derive_seed", "EpochBatchSampler", "ShardSampler", "TAG_DATA", "TAG_ITEM", "TAG_STEP"]

TAG_DATA, TAG_ITEM, TAG_STEP = 1, 2, 3


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SeedSequence hashing: independent streams per tuple)."""
    a, b = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(a) << 31) ^ int(b)) & 0x7FFFFFFFFFFFFFFF


class EpochBatchSampler:
    """Batches of ``(index, seed)`` for one rank: a permutation of the data set from
    ``(seed, epoch)``, padded to a multiple of the world size (DistributedSampler style);
    full batches only. Positions are global: from the epoch's starting position ``start``
    (0, or the samples a resumed run had already seen), rank ``r`` takes positions
    ``start + r, start + r + world, ...``, so the global batch ``s`` is the contiguous block
    ``start + [s*B*world, (s+1)*B*world)`` whatever the world size, and each item's
    augmentation seed comes from its global position. A run stopped after ``start`` samples
    therefore resumes on any number of processes with exactly the positions not yet seen."""

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world)
        self.num_batches = self.per_rank // batch_size
        if self.num_batches < 1:
            raise DataError(f"the training split has {n} images: fewer than one batch of {batch_size} "
                            f"per process ({world} process(es)); lower --batch-size")

    @property
    def global_batch(self) -> int:
        """Positions one batch of every rank takes together."""
        return self.batch_size * self.world

    def batches_after(self, start: int) -> int:
        """Full batches per rank left in an epoch after its first ``start`` positions."""
        return max(0, self.per_rank * self.world - int(start)) // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0, *, start: int | None = None) -> None:
        """Iterate ``epoch`` from its global position ``start`` (a number of samples; by default
        ``start_batch`` global batches of this world size)."""
        self.epoch = epoch
        self.start = int(start) if start is not None else int(start_batch) * self.global_batch

    def __len__(self) -> int:
        return self.batches_after(self.start)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, TAG_DATA, self.epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.world
        perm = (perm * math.ceil(total / self.n))[:total]
        for b in range(len(self)):
            batch = []
            for j in range(self.batch_size):
                pos = self.start + (b * self.batch_size + j) * self.world + self.rank
                batch.append((perm[pos], derive_seed(self.seed, TAG_ITEM, self.epoch, pos)))
            yield batch


class ShardSampler:
    """Index batches of rank ``r``: ``r, r + world, ...`` (no padding, so summed metrics over
    ranks are exact). Evaluation itself shards whole batches through ``engine.runner``."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, limit_batches: int | None = None):
        self.idx = list(range(rank, n, world))
        self.batch_size = batch_size
        self.limit = limit_batches

    def __iter__(self):
        for k, i in enumerate(range(0, len(self.idx), self.batch_size)):
            if self.limit is not None and k >= self.limit:
                return
            yield self.idx[i:i + self.batch_size]

    def __len__(self):
        n = math.ceil(len(self.idx) / self.batch_size)
        return n if self.limit is None else min(n, self.limit)
