"""Model registry: names, official aliases, model cards and ``create_model``.

The model files (``spectrascope.models``) record their entry points with
``spectrascope.models.base.register_model``; the registry turns those records into
``ModelCard``s the first time a name is looked up. ``register_model`` here registers a
user's own builder directly."""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from spectrascope.errors import OptionError, UnknownModelError
from spectrascope.zoo.limits import check_input_size
from spectrascope.zoo.overrides import builder_error, check_overrides

log = logging.getLogger("spectrascope")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelCard:
    """Everything the toolkit knows about a registered model without building it."""

    name: str
    family: str
    paper: str
    builder: Callable[..., nn.Module] = field(repr=False)
    default_input_size: tuple[int, int, int] = (3, 224, 224)
    feature_layout: str = "NHWC"
    source: str = ""            # official repository@commit:file:entrypoint
    weight_file: str | None = None
    weight_url: str | None = None
    aliases: tuple[str, ...] = ()
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    variant_of: str | None = None
    description: str = ""
    paper_params_m: float | None = None   # parameter count stated by the paper/README, millions
    fixed_input_size: bool = False        # bound to the size it is built for (timm's pretrained-config flag)

    _counts: tuple[int, int] | None = field(default=None, repr=False)
    _taps: list | None = field(default=None, repr=False)

    def _meta_model(self) -> nn.Module:
        with torch.device("meta"):
            return self.builder(num_classes=1000, img_size=None)

    def _inspect(self) -> None:
        if self._counts is None:
            model = self._meta_model()
            total = sum(p.numel() for p in model.parameters())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            self._counts = (total, trainable)
            self._taps = model.taps() if hasattr(model, "taps") else []

    @property
    def params(self) -> int:
        """Total parameters (frozen ones included) at the default resolution."""
        self._inspect()
        return self._counts[0]

    @property
    def params_trainable(self) -> int:
        self._inspect()
        return self._counts[1]

    @property
    def taps(self) -> list:
        self._inspect()
        return list(self._taps)

    @property
    def tap_roles(self) -> list[str]:
        roles: list[str] = []
        for t in self.taps:
            if t.role not in roles:
                roles.append(t.role)
        return roles

    def pretrained_cfg(self, model: nn.Module | None = None) -> dict:
        """timm's pretrained config from the card (input size, mean/std, crop, interpolation, url,
        file) and, given the built model, its first conv and classifier; what
        ``timm.data.resolve_data_config`` reads."""
        from spectrascope.zoo import weights
        cfg = {"architecture": self.name, "tag": "", "url": self.weight_url or "", "file": self.weight_file,
               "direct_download": weights.is_direct(self.weight_url), "num_classes": 1000,
               "input_size": tuple(self.default_input_size), "fixed_input_size": self.fixed_input_size,
               "pool_size": tuple(s // 32 for s in self.default_input_size[1:]), "crop_pct": self.crop_pct,
               "crop_mode": "center", "interpolation": self.interpolation, "mean": tuple(self.mean),
               "std": tuple(self.std), "first_conv": "", "classifier": "", "paper_name": self.paper,
               "source": self.source, "license": ""}
        if model is not None:
            cfg["first_conv"] = getattr(model, "first_conv", "") or ""
            cfg["classifier"] = getattr(model, "classifier_name", "") or ""
            cfg["num_classes"] = int(getattr(model, "num_classes", 1000) or 0)
        return cfg

    def as_dict(self, with_counts: bool = True) -> dict:
        d = {
            "name": self.name, "family": self.family, "paper": self.paper,
            "default_input_size": list(self.default_input_size),
            "feature_layout": self.feature_layout, "source": self.source,
            "weight_file": self.weight_file, "weight_url": self.weight_url,
            "aliases": list(self.aliases), "crop_pct": self.crop_pct,
            "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std),
            "variant_of": self.variant_of, "description": self.description,
            "paper_params_m": self.paper_params_m,
        }
        if with_counts:
            d["params"] = self.params
            d["params_trainable"] = self.params_trainable
            d["taps"] = self.tap_roles
        return d


_REGISTRY: dict[str, ModelCard] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


def register_model(name: str, *, family: str, paper: str, aliases=(), **card_fields):
    """Decorator registering ``builder(num_classes, img_size, **overrides) -> nn.Module``."""

    def deco(fn):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model {name!r} registered twice")
        card = ModelCard(name=name, family=family, paper=paper, builder=fn,
                         aliases=tuple(aliases), **card_fields)
        _REGISTRY[name] = card
        for a in card.aliases:
            if a in _ALIASES or a in _REGISTRY:
                raise ValueError(f"alias {a!r} registered twice")
            _ALIASES[a] = name
        return fn

    return deco


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        base = importlib.import_module("spectrascope.models.base")
        importlib.import_module("spectrascope.models")
        for name, builder, card_fields in base.ENTRIES:
            register_model(name, **card_fields)(builder)


def resolve_name(name: str) -> str:
    """Canonical registry name for a name or an official alias (case-insensitive)."""
    _ensure_loaded()
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    low = {k.lower(): k for k in list(_REGISTRY) + list(_ALIASES)}
    key = name.lower().replace("-", "_")
    if key in low:
        return resolve_name(low[key])
    candidates = list(_REGISTRY) + list(_ALIASES)
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (see `spectrascope models`)")


def get_card(name: str) -> ModelCard:
    return _REGISTRY[resolve_name(name)]


def list_models(pattern: str | None = None, *, include_aliases: bool = False) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``'dfformer*'``)."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if include_aliases:
        names = sorted(set(names) | set(_ALIASES))
    if pattern:
        pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n.lower(), pat.lower())]
    return names


def _as_hw(img_size) -> tuple[int, int] | None:
    if img_size is None:
        return None
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        t = (img_size, img_size)
    else:
        try:
            t = tuple(int(v) for v in img_size)
        except (TypeError, ValueError):
            t = ()
        if len(t) == 3:
            t = t[1:]
    if len(t) != 2 or min(t) < 1:
        raise OptionError(f"img_size must be S, (H, W) or (3, H, W) with positive sides; got {img_size!r}",
                          option="--img-size")
    return t


def create_model(name: str, *, checkpoint=None, num_classes: int = 1000, img_size=None,
                 strict: bool = True, use_ema: bool = False, pretrained: bool = False, weights_dir=None,
                 features_only: bool = False, out_indices=None, **overrides) -> nn.Module:
    """Build a zoo model (random init) and optionally load a checkpoint.

    ``name`` is a registry name, an official alias, or ``timm:<name>`` when timm is
    installed. ``img_size`` (S or (H, W)) builds size-bound parts (DF/GF filter grids,
    position embeddings, SPANet masks) for that input; checkpoints trained at another
    size are resized on load. ``overrides`` use the official constructors' argument names
    (``depths``, ``dims``, ``token_mixers``, ``layers``, ``embed_dims``, ...).

    ``pretrained=True`` (without ``checkpoint``) loads the card's official weights
    (``spectrascope.zoo.weights.resolve``: ``weights_dir`` / ``SPECTRASCOPE_WEIGHTS``, the
    cache, ``SPECTRASCOPE_WEIGHTS_MIRROR``, the official URL). ``num_classes=0`` gives pooled
    features; ``features_only=True`` a module returning the NCHW maps of ``out_indices``.
    """
    if name.startswith("timm:"):
        from spectrascope.compat import create_timm_model, import_timm
        if features_only:
            overrides["features_only"] = True
            if out_indices is not None:
                overrides["out_indices"] = out_indices
        if pretrained and checkpoint is None:      # timm's own hub download and cache
            if img_size is not None:
                overrides["img_size"] = img_size
            model = import_timm().create_model(name[5:], pretrained=True, num_classes=num_classes, **overrides)
            model.spectrascope_name = name
        else:
            model = create_timm_model(name[5:], num_classes=num_classes, img_size=img_size, **overrides)
    else:
        card = get_card(name)
        hw = _as_hw(img_size)
        check_overrides(card, overrides)
        check_input_size(card, hw, overrides, num_classes)
        try:
            model = card.builder(num_classes=num_classes, img_size=hw, **overrides)
        except (TypeError, ValueError, KeyError) as exc:
            raise builder_error(card, exc, overrides, img_size=hw) from None
        model.card = card
        model.spectrascope_name = card.name
        model.pretrained_cfg = card.pretrained_cfg(model)
        if pretrained and checkpoint is None:
            from spectrascope.zoo import weights
            checkpoint = weights.resolve(card, weights_dir=weights_dir)
    if checkpoint is not None:
        from spectrascope.zoo.checkpoint import load_checkpoint
        load_checkpoint(model, checkpoint, strict=strict, use_ema=use_ema)
    if features_only and not name.startswith("timm:"):
        from spectrascope.models.base import FeaturesOnly
        wrapped = FeaturesOnly(model, out_indices)
        for attr in ("card", "spectrascope_name", "pretrained_cfg", "checkpoint_info", "checkpoint_report"):
            if hasattr(model, attr):
                setattr(wrapped, attr, getattr(model, attr))
        model = wrapped
    return model

