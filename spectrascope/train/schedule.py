"""Optimisation: the optimiser (AdamW or Nesterov SGD) over timm's weight-decay groups and
the per-update cosine schedule with linear warm-up."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["CosineWarmup", "param_groups", "make_optimizer"]


class CosineWarmup:
    """Per-update schedule: linear warm-up from ``warmup_lr`` over ``warmup_steps``, then
    cosine decay to ``min_lr`` at ``total_steps``."""

    def __init__(self, optimizer, lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 1e-6,
                 min_lr: float = 1e-5):
        self.optimizer, self.base_lr = optimizer, lr
        self.total, self.warmup = max(1, total_steps), max(0, min(warmup_steps, total_steps))
        self.warmup_lr, self.min_lr = min(warmup_lr, lr), min(min_lr, lr)
        self.last_step = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t))

    def step_to(self, step: int) -> float:
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "total": self.total, "warmup": self.warmup, "warmup_lr": self.warmup_lr,
                "min_lr": self.min_lr, "last_step": self.last_step}

    def load_state_dict(self, d: dict) -> None:
        self.last_step = int(d.get("last_step", 0))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """timm's rule: no weight decay for biases, 1-D parameters (norms, scales) and the names
    in ``model.no_weight_decay()``."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float, momentum: float = 0.9):
    """AdamW (betas 0.9/0.999, eps 1e-8) or Nesterov SGD over ``param_groups``."""
    groups = param_groups(model, weight_decay)
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
