"""Building a model ready for analysis: name (+ checkpoint) -> eval model on a device and
the preprocessing its card asks for."""
from __future__ import annotations


from spectrascope.zoo import registry
from spectrascope.zoo.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from spectrascope.zoo.registry import IMAGENET_MEAN, IMAGENET_STD, create_model


def preprocessing(model, img_size=None) -> dict:
    """Input size (H, W), crop_pct, mean and std for ``model`` (zoo card or timm config)."""
    card = getattr(model, "card", None)
    if card is not None:
        default = card.default_input_size[1:]
        crop, mean, std = card.crop_pct, card.mean, card.std
    else:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        default = tuple(cfg.get("input_size", (3, 224, 224))[1:])
        crop = cfg.get("crop_pct", 0.9)
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    if img_size is None:
        size = tuple(default)
    elif isinstance(img_size, int):
        size = (img_size, img_size)
    else:
        size = tuple(img_size)
    return {"size": size, "crop_pct": crop, "mean": tuple(mean), "std": tuple(std)}


def build_for_inference(name: str, *, checkpoint=None, img_size=None, device="cpu", num_classes: int | None = None,
                        strict: bool = True, use_ema: bool = False, **overrides):
    """``create_model`` + checkpoint + ``eval()`` + device. When a checkpoint is given and
    ``num_classes`` is not, the head size is read from the checkpoint."""
    preread = read_checkpoint(checkpoint, use_ema=use_ema) if checkpoint is not None else None
    if preread is not None:
        # a spectrascope training checkpoint knows its architecture: its input size and
        # constructor overrides apply unless given explicitly
        from spectrascope.train.loop import model_spec_from_info
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


def num_classes_in(state: dict) -> int | None:
    """Classifier size of a state dict (zoo head names), or None."""
    for key in ("head.fc2.bias", "head.bias", "classifier.bias", "head.fc.bias", "classifier.1.bias",
                "classifier.fc.bias"):
        if key in state and state[key].ndim == 1:
            return int(state[key].shape[0])
    return None
