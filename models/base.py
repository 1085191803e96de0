"""What every zoo model declares: its taps (hookable points addressed by role), its registry
entry (``register_model``: name, builder and model-card fields, read by ``spectrascope.zoo``),
how official checkpoints are adapted to the built configuration, and timm's model API
(``feature_info``, ``forward_intermediates``, ``forward_head(pre_logits=)``,
``reset_classifier``, ``set_grad_checkpointing``, ``group_matcher``, ``pretrained_cfg``) on
top of each family's ``_stages_forward`` / ``_final_features`` / ``forward_head``.

Model code imports nothing of the toolkit but ``spectrascope.errors`` and the probe's
``TapSpec`` types."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from spectrascope.errors import UserError
from spectrascope.probe.spec import LAYOUTS, ROLES, TapList, TapSpec  # noqa: F401  (re-exported)

from .layers import resize_complex_weight

log = logging.getLogger("spectrascope.models")

#: every entry point the model files register: (name, builder, model-card fields), in order
ENTRIES: list[tuple[str, Callable[..., nn.Module], dict]] = []


def register_model(name: str, **card_fields):
    """Decorator recording ``builder(num_classes, img_size, **overrides) -> nn.Module`` under ``name``
    with its model-card fields (family, paper, aliases, weights, preprocessing, ...)."""

    def deco(fn):
        ENTRIES.append((name, fn, dict(card_fields)))
        return fn

    return deco


class InputSizeError(UserError, RuntimeError):
    """An input that does not fit the size a model (or a size-bound layer) was built for."""


@dataclass
class AdaptNote:
    key: str
    what: str


def feature_take_indices(n: int, indices=None) -> tuple[list[int], int]:
    """timm's ``indices`` rule: None = every level, an int k = the last k levels, a sequence =
    those levels (negative from the end). Returns (sorted indices, largest index)."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise UserError(f"indices={indices}: this model has {n} feature levels (1..{n})", option="indices")
        take = list(range(n - indices, n))
    else:
        take = sorted({int(i) + n if int(i) < 0 else int(i) for i in indices})
        bad = [i for i in take if not 0 <= i < n]
        if bad or not take:
            raise UserError(f"indices={list(indices)}: this model has feature levels 0..{n - 1}", option="indices")
    return take, max(take)


class ZooModel(nn.Module):
    """Mixin-like base for zoo models.

    Subclasses implement ``taps()``; they may extend ``adapt_state_dict`` for
    checkpoint conversions (resolution changes, derived buffers).

    timm's API: a family implements ``forward_features(x)`` (the unpooled last map; written so
    that ``torch.jit.script`` and ``torch.fx`` take it), ``_stages_forward(x)`` (yields the
    native output of every feature level, for ``forward_intermediates``), ``_to_nchw(x, i)``,
    ``_final_features(x)`` (what ``forward_features`` applies after the last level),
    ``forward_head(x, pre_logits=False)``, ``_make_classifier`` and ``_set_global_pool``, and
    sets ``feature_info`` (timm's list of ``num_chs``, ``reduction``, ``module``),
    ``num_features`` (channels of ``forward_features``), ``head_hidden_size`` (width of
    ``forward_head(pre_logits=True)``) and ``in_chans``."""

    #: properties TorchScript leaves alone (a scripted model keeps only what ``forward`` needs)
    __jit_unused_properties__ = ["default_cfg", "fixed_input_size"]
    #: tensor layout between blocks, for cards and probes
    feature_layout = "NCHW"
    #: timm's ``first_conv`` / ``classifier`` entries of the pretrained config (module paths)
    first_conv = ""
    classifier_name = "head"
    #: where ``reset_classifier`` installs the module ``_make_classifier`` builds
    classifier_slot = "head"
    grad_checkpointing = False
    pretrained_cfg = None
    feature_info = None
    #: timm's global pooling of ``forward_head``: 'avg' (the official mean) or '' (none: the map)
    global_pool_type = "avg"
    #: global pooling types ``reset_classifier`` / ``global_pool=`` accept
    pool_types = ("avg", "")

    def __init__(self):
        super().__init__()
        # instance attributes (TorchScript reads these, not class attributes)
        self.grad_checkpointing = False
        self.global_pool_type = "avg"

    # ------------------------------------------------------------------ timm API
    @property
    def default_cfg(self):
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, value) -> None:
        self.pretrained_cfg = value

    @property
    def fixed_input_size(self) -> bool:
        """Whether a layer is bound to the input size the model was built for (filters on the build
        grid, a token-count matrix, a patch embedding that refuses other sizes): timm's
        ``fixed_input_size``."""
        return any(getattr(m, "size_bound", False) for m in self.modules())

    def _stages_forward(self, x) -> Iterator[torch.Tensor]:  # pragma: no cover - every family overrides
        raise NotImplementedError

    def _to_nchw(self, x, i: int) -> torch.Tensor:
        return x

    def _final_features(self, x):
        return x

    def _forward_levels(self, x):
        """``forward_features`` through ``_stages_forward`` (eager; with activation checkpointing)."""
        for x in self._stages_forward(x):
            pass
        return self._final_features(x)

    def forward_features(self, x):
        return self._forward_levels(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the outputs of the feature levels ``indices`` as NCHW
        maps (``output_fmt='NHWC'`` permutes them; token models also give ``'NLC'``) and, unless
        ``intermediates_only``, the ``forward_features`` output. ``norm`` is accepted for timm's
        signature; the families here have no per-level norm."""
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise UserError(f"output_fmt={output_fmt!r}: choose NCHW, NHWC or NLC", option="output_fmt")
        take, last = feature_take_indices(len(self.feature_info), indices)
        out = []
        for i, x in enumerate(self._stages_forward(x)):
            if i in take:
                y = x if output_fmt == "NLC" and x.ndim == 3 else self._to_nchw(x, i)
                out.append(y.permute(0, 2, 3, 1) if output_fmt == "NHWC" else y)
            if (stop_early or intermediates_only) and i >= last:
                break
        if intermediates_only:
            return out
        return self._final_features(x), out

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """timm's pruning hook: the head is dropped (``prune_head``); the levels kept are returned.
        Levels after the last one are not run by ``forward_intermediates(intermediates_only=True)``."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0)
        return take

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    def _run_blocks(self, blocks, x):
        """Run a sequence of blocks, each under activation checkpointing when enabled."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in blocks:
                x = _checkpoint(blk, x, use_reentrant=False)
            return x
        if isinstance(blocks, (list, tuple)):
            for blk in blocks:
                x = blk(x)
            return x
        return blocks(x)

    # ------------------------------------------------------------------ classifier
    def _make_classifier(self, num_classes: int) -> nn.Module:  # pragma: no cover - every family overrides
        raise NotImplementedError

    def _set_classifier(self, module: nn.Module) -> None:
        """Install the classifier module at ``classifier_slot`` (default: the attribute ``head``)."""
        parent, _, leaf = self.classifier_slot.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, module)

    def _set_global_pool(self, global_pool: str) -> None:
        """timm's ``global_pool``: 'avg' (the official mean) or '' (no pooling: ``forward_head`` returns the map)."""
        if global_pool not in self.pool_types:
            raise UserError(f"global_pool={global_pool!r}: {type(self).__name__} takes "
                            + ", ".join(repr(p) for p in self.pool_types), option="global_pool")
        self.global_pool_type = global_pool

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        """timm's ``reset_classifier``: a new classifier for ``num_classes`` (0: none, ``forward`` gives
        the pre-logits) on the device and dtype of the model, and optionally another ``global_pool``."""
        if global_pool is not None:
            self._set_global_pool(global_pool)
        self.num_classes = num_classes
        head = self._make_classifier(num_classes)
        ref = next(self.parameters(), None)
        if ref is not None:
            head = head.to(device=ref.device, dtype=ref.dtype)
        self._set_classifier(head.train(self.training))

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def _feature_info(self, chans, reductions, modules) -> list[dict]:
        return [dict(num_chs=int(c), reduction=int(r), module=m) for c, r, m in zip(chans, reductions, modules)]

    def taps(self) -> TapList:  # pragma: no cover - every family overrides
        raise NotImplementedError

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[AdaptNote]]:
        """Make an official state_dict fit this instance.

        Default rule: complex filters stored as ``(h, w, K, 2)`` real tensors whose grid
        differs from the model's are resized with the official bicubic,
        ``align_corners=True`` recipe (DFFormer/GFFormer/GFNet)."""
        own = self.state_dict()
        out = dict(state)
        notes: list[AdaptNote] = []
        for key, value in state.items():
            if key not in own or not key.endswith(("complex_weights", "complex_weight")):
                continue
            target = own[key].shape
            if value.shape == target or value.ndim != 4 or value.shape[2:] != target[2:]:
                continue
            out[key] = resize_complex_weight(value.float(), target[0], target[1]).to(value.dtype)
            notes.append(AdaptNote(key, f"resized {tuple(value.shape[:2])} -> {tuple(target[:2])} "
                                        "(bicubic, align_corners=True)"))
        return out, notes


def frozen_parameters_to_buffers(model: nn.Module) -> list[str]:
    """Turn every frozen parameter (``requires_grad=False``: SPANet's spectral pooling masks,
    RandFormer's random mixing matrix) into a persistent buffer of the same name, as timm's own
    models hold constants. State-dict keys, shapes and values stay the same, so official
    checkpoints load either way; ``parameters()`` then lists only what training updates.

    Args:
        model: the model, changed in place.

    Returns:
        The state-dict keys that became buffers.
    """
    moved = []
    for prefix, module in model.named_modules():
        for name, p in list(module._parameters.items()):
            if p is not None and not p.requires_grad:
                del module._parameters[name]
                module.register_buffer(name, p.detach(), persistent=True)
                moved.append(f"{prefix}.{name}" if prefix else name)
    return moved


def block_depths(stage_depths: list[int]) -> Iterator[tuple[int, int, float]]:
    """Yield (stage, index, normalised depth) for every block of a staged network."""
    total = sum(stage_depths)
    k = 0
    for s, d in enumerate(stage_depths):
        for j in range(d):
            yield s, j, (k / (total - 1) if total > 1 else 0.0)
            k += 1


class FeaturesOnly(nn.Module):
    """``features_only=True`` without timm: the model's ``forward_intermediates`` at ``out_indices``
    (a list of NCHW maps), with timm's ``feature_info`` helpers (``channels()``, ``reduction()``)."""

    def __init__(self, model: ZooModel, out_indices=None, output_fmt: str = "NCHW"):
        super().__init__()
        n = len(model.feature_info)
        self.out_indices, _ = feature_take_indices(n, out_indices if out_indices is not None else n)
        self.model = model
        self.output_fmt = output_fmt
        model.prune_intermediate_layers(self.out_indices)
        self.feature_info = _FeatureInfo([model.feature_info[i] for i in self.out_indices])

    def forward(self, x):
        return self.model.forward_intermediates(x, indices=self.out_indices, output_fmt=self.output_fmt,
                                                intermediates_only=True)


class _FeatureInfo(list):
    def channels(self, idx=None):
        return [d["num_chs"] for d in self] if idx is None else self[idx]["num_chs"]

    def reduction(self, idx=None):
        return [d["reduction"] for d in self] if idx is None else self[idx]["reduction"]

    def module_name(self, idx=None):
        return [d["module"] for d in self] if idx is None else self[idx]["module"]

    def get_dicts(self):
        return list(self)
