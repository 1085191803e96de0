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
    ``(seed, epoch)``, padded to a multiple of the world size (DistributedSampler style),
    rank ``r`` taking positions ``r, r + world, ...``; full batches only. The global batch
    ``s`` is the contiguous block of positions ``[s*B*world, (s+1)*B*world)`` whatever the
    world size, and each item's augmentation seed comes from its global position."""

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world)
        self.num_batches = self.per_rank // batch_size
        if self.num_batches < 1:
            raise DataError(f"the training split has {n} images: fewer than one batch of {batch_size} "
                            f"per process ({world} process(es)); lower --batch-size")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, TAG_DATA, self.epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.world
        perm = (perm * math.ceil(total / self.n))[:total]
        for b in range(self.start, self.num_batches):
            batch = []
            for j in range(self.batch_size):
                pos = (b * self.batch_size + j) * self.world + self.rank
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
