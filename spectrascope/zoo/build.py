"""Building a model ready for analysis: a ``ModelSpec`` (name, checkpoint, input size,
constructor overrides) becomes an ``eval()`` model on a device with the preprocessing its
card (or timm config) asks for.

A spectrascope training checkpoint records its architecture (``CheckpointModelSpec``:
model, overrides, input size, classes); ``build`` rebuilds it from the checkpoint, so the
flags need not be repeated."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from spectrascope.errors import CheckpointError, OptionError
from spectrascope.zoo import registry
from spectrascope.zoo.checkpoint import load_checkpoint, read_checkpoint
from spectrascope.zoo.registry import IMAGENET_MEAN, IMAGENET_STD, create_model

__all__ = ["pair_checkpoints", "Preprocessing", "preprocessing", "ModelSpec", "Built", "build", "build_for_inference",
           "CheckpointModelSpec", "model_spec_from_info", "model_spec_from_checkpoint",
           "create_model_from_checkpoint", "num_classes_in"]


@dataclass(frozen=True)
class Preprocessing(Mapping):
    """The evaluation transform of a model: input (H, W), resize/crop ratio, normalisation
    (also a read-only mapping: ``pre["size"]``, ``dict(pre)``)."""

    size: tuple[int, int]
    crop_pct: float = 0.9
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __getitem__(self, key):
        if key not in _PRE_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(_PRE_FIELDS)

    def __len__(self) -> int:
        return len(_PRE_FIELDS)

    def as_dict(self) -> dict:
        return {"size": list(self.size), "crop_pct": self.crop_pct, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}


_PRE_FIELDS = ("size", "crop_pct", "mean", "std", "interpolation")


def _hw(img_size) -> tuple[int, int] | None:
    if img_size is None:
        return None
    if isinstance(img_size, int):
        return (img_size, img_size)
    return tuple(int(v) for v in img_size)[-2:]


def preprocessing(model: nn.Module, img_size=None) -> Preprocessing:
    """Input size, crop_pct, mean and std for ``model`` (its zoo card, or its timm config)."""
    card = getattr(model, "card", None)
    if card is not None:
        default = tuple(card.default_input_size[1:])
        crop, mean, std, interp = card.crop_pct, card.mean, card.std, card.interpolation
    else:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        default = tuple(cfg.get("input_size", (3, 224, 224))[1:])
        crop = cfg.get("crop_pct", 0.9)
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        interp = cfg.get("interpolation", "bicubic")
    return Preprocessing(_hw(img_size) or default, float(crop), tuple(mean), tuple(std), str(interp))


# ---------------------------------------------------------------------------- training checkpoints

@dataclass
class CheckpointModelSpec:
    """What is needed to rebuild the model of a spectrascope training checkpoint."""

    name: str
    num_classes: int
    img_size: tuple | None
    overrides: dict
    has_ema: bool = False
    classes: list | None = None
    data: str | None = None

    def create(self, checkpoint=None, use_ema: bool = False, **extra):
        return registry.create_model(self.name, checkpoint=checkpoint, num_classes=self.num_classes,
                                     img_size=self.img_size, use_ema=use_ema, **dict(self.overrides, **extra))


def model_spec_from_info(info: dict) -> CheckpointModelSpec | None:
    """The architecture recorded in a training checkpoint (from the ``info`` of ``read_checkpoint``);
    None for other checkpoints (official / timm files)."""
    args = info.get("args") or {}
    if not isinstance(args, dict) or "model" not in args or "spectrascope" not in args:
        return None
    sp = args["spectrascope"]
    try:
        size = sp.get("img_size")
        return CheckpointModelSpec(name=str(sp["model"]), num_classes=int(sp["num_classes"]),
                                   img_size=tuple(int(v) for v in size) if size else None,
                                   overrides=dict(sp.get("overrides") or {}), has_ema=bool(sp.get("has_ema")),
                                   classes=sp.get("classes"), data=args.get("data"))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{info.get('path', 'checkpoint')}: its recorded architecture is damaged "
                              f"({type(exc).__name__}: {exc})", option="--checkpoint") from None


def model_spec_from_checkpoint(path) -> CheckpointModelSpec | None:
    """``model_spec_from_info`` of a checkpoint file."""
    return model_spec_from_info(read_checkpoint(path)[1])


def create_model_from_checkpoint(path, use_ema: bool = False, **extra) -> nn.Module:
    """``create_model`` with the architecture stored in a training checkpoint, weights loaded."""
    spec = model_spec_from_checkpoint(path)
    if spec is None:
        raise CheckpointError(f"{path}: not a spectrascope training checkpoint; use create_model(name, checkpoint=...)")
    return spec.create(checkpoint=path, use_ema=use_ema, **extra)


def num_classes_in(state: dict) -> int | None:
    """Classifier size of a state dict (zoo head names), or None."""
    for key in ("head.fc2.bias", "head.fc.fc2.bias", "head.bias", "classifier.bias", "head.fc.bias",
                "classifier.1.bias", "classifier.fc.bias"):
        if key in state and state[key].ndim == 1:
            return int(state[key].shape[0])
    return None


# ---------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class ModelSpec:
    """How to build one model: registry name (or ``timm:<name>``), optional checkpoint, input
    size (S or (H, W)), constructor overrides, EMA weights, head size (None: from the checkpoint)."""

    name: str
    checkpoint: str | None = None
    img_size: int | tuple[int, int] | None = None
    overrides: Mapping = field(default_factory=dict)
    use_ema: bool = False
    num_classes: int | None = None
    #: without ``checkpoint``: the card's official weights (``spectrascope.zoo.weights.resolve``)
    pretrained: bool = False
    weights_dir: str | None = None
    #: how results name this model when the same model appears several times (``init``, ``epoch 10``)
    label: str | None = None

    def key(self) -> tuple:
        """Identity of the built model (two equal keys build the same model)."""
        return (self.name, str(self.checkpoint) if self.checkpoint else None, _hw(self.img_size),
                tuple(sorted((str(k), repr(v)) for k, v in dict(self.overrides).items())), self.use_ema,
                self.num_classes) + (("pretrained",) if self.pretrained and not self.checkpoint else ())


@dataclass
class Built:
    """A model built from a ``ModelSpec``: the module (eval, on its device), its preprocessing and provenance."""

    model: nn.Module
    spec: ModelSpec
    pre: Preprocessing
    name: str
    checkpoint_sha256: str | None = None

    @property
    def random_weights(self) -> bool:
        return self.spec.checkpoint is None

    def describe(self) -> dict:
        """The block that results.json records for this model."""
        return {"name": self.name, "checkpoint": str(self.spec.checkpoint) if self.spec.checkpoint else None,
                "checkpoint_sha256": self.checkpoint_sha256, "random_weights": self.random_weights,
                "img_size": list(self.pre.size), "overrides": dict(self.spec.overrides),
                "preprocessing": self.pre.as_dict()}


def build(spec: ModelSpec, device: torch.device | str = "cpu", *, seed: int | None = None) -> Built:
    """Build ``spec`` (random init under ``seed`` when given), load its checkpoint, ``eval()``, move to ``device``."""
    if spec.pretrained and spec.checkpoint is None and not spec.name.startswith("timm:"):
        from dataclasses import replace

        from spectrascope.zoo import weights
        spec = replace(spec, checkpoint=str(weights.resolve(registry.get_card(spec.name),
                                                            weights_dir=spec.weights_dir)))
    if seed is not None:
        torch.manual_seed(seed)
    model, pre = build_for_inference(spec.name, checkpoint=spec.checkpoint, img_size=spec.img_size, device=device,
                                     num_classes=spec.num_classes, use_ema=spec.use_ema, **dict(spec.overrides))
    info = getattr(model, "checkpoint_info", None) or {}
    name = getattr(model, "spectrascope_name", spec.name)
    return Built(model, spec, pre, name, info.get("sha256") if spec.checkpoint is not None else None)


def build_for_inference(name: str, *, checkpoint=None, img_size=None, device="cpu", num_classes: int | None = None,
                        strict: bool = True, use_ema: bool = False, **overrides):
    """``create_model`` + checkpoint + ``eval()`` + device; returns ``(model, Preprocessing)``.
    Without ``num_classes`` the head size is read from the checkpoint."""
    preread = read_checkpoint(checkpoint, use_ema=use_ema) if checkpoint is not None else None
    if preread is not None:
        spec = model_spec_from_info(preread[1])
        if spec is not None:
            if name.startswith("timm:") or registry.resolve_name(spec.name) != registry.resolve_name(name):
                raise CheckpointError(f"{checkpoint}: trained as {spec.name}, not {name}")
            img_size = img_size if img_size is not None else spec.img_size
            overrides = {**spec.overrides, **overrides}
            num_classes = num_classes if num_classes is not None else spec.num_classes
    if preread is not None and num_classes is None:
        num_classes = num_classes_in(preread[0])
    model = create_model(name, img_size=img_size, num_classes=num_classes or 1000, **overrides)
    if preread is not None:
        load_checkpoint(model, checkpoint, strict=strict, preread=preread)
    model.eval().to(device)
    return model, preprocessing(model, img_size)


def pair_checkpoints(models: Sequence[str], items, option: str = "--checkpoint") -> dict[str, str | None]:
    """``--checkpoint`` values for several models -> {model: path or None}.

    ``items`` are ``MODEL=PATH`` pairs, or plain paths in model order (``-`` keeps random
    weights), or a mapping. Unknown model names and count mismatches are ``OptionError``s."""
    models = list(models)
    if not items:
        return {m: None for m in models}
    if isinstance(items, Mapping):
        pairs = dict(items)
    else:
        items = [str(i) for i in items]
        named = [i for i in items if "=" in i and i.split("=", 1)[0] in models]
        if named and len(named) != len(items):
            raise OptionError("use either MODEL=PATH for every checkpoint or plain paths in --model order",
                              option=option)
        if named:
            pairs = dict(i.split("=", 1) for i in named)
        elif len(models) == 1 and len(items) == 1:
            pairs = {models[0]: items[0]}
        elif len(items) != len(models):
            raise OptionError(f"{len(items)} checkpoint(s) for {len(models)} model(s): give one per model in order "
                              "('-' for random weights) or MODEL=PATH", option=option)
        else:
            pairs = dict(zip(models, items))
    unknown = [m for m in pairs if m not in models]
    if unknown:
        raise OptionError(f"{', '.join(unknown)} is not one of the models ({', '.join(models)})", option=option)
    return {m: (None if pairs.get(m) in (None, "", "-") else str(pairs[m])) for m in models}
