"""Data specs (``--data SPEC``): what the spec text means, checked where it enters.

::

    imagefolder:PATH      ImageNet layout: PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg
    cifar10:PATH          the CIFAR-10 python archive (cifar-10-python.tar.gz, or its extracted
    cifar100:PATH         cifar-10-batches-py / cifar-100-python folder, or a folder holding either)
    synthetic[:k=v,...]   procedural band-limited oriented textures (``io.synthetic.SyntheticConfig``)
    samples               the bundled photos (analyses only: they have no labels)

Every malformed spec is a ``DataError`` naming ``--data`` and what is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from spectrascope.errors import DataError

__all__ = ["SPEC_HELP", "KINDS", "DataSpec", "parse_data_spec", "parse_scalar", "data_spec_differences"]

SPEC_HELP = ("imagefolder:PATH | cifar10:PATH | cifar100:PATH | "
             "synthetic[:num_classes=8,train_size=2048,val_size=512,...] | samples")
KINDS = ("imagefolder", "cifar10", "cifar100", "synthetic", "samples")


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Path | None = None
    options: dict = field(default_factory=dict)
    text: str = ""


def parse_data_spec(text: str) -> DataSpec:
    """``'cifar10:/data/cifar'`` -> DataSpec('cifar10', Path(...)); ``'synthetic:num_classes=4'``
    -> DataSpec('synthetic', options={'num_classes': 4}). Every malformed spec is a ``DataError``
    naming ``--data`` and what is accepted."""
    if text is None or not str(text).strip():
        raise DataError(f"empty data spec (use {SPEC_HELP})", option="--data")
    text = str(text).strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DataError(f"unknown data spec {text!r} (use {SPEC_HELP})", option="--data")
    if kind == "synthetic":
        return DataSpec(kind, None, _parse_options(rest), text)
    if kind == "samples":
        if rest:
            raise DataError(f"'samples' takes no argument (got {text!r})", option="--data")
        return DataSpec(kind, None, {}, text)
    if not rest.strip():
        raise DataError(f"{kind} needs a path: {kind}:PATH", option="--data")
    return DataSpec(kind, Path(rest.strip()).expanduser(), {}, text)


#: synthetic options that change neither the classes nor the look of the textures (an analysis
#: renders the images at the model's input size)
_SAMPLING_OPTIONS = ("train_size", "val_size", "seed", "size", "height", "width")


def _synthetic_fields(spec: DataSpec) -> dict:
    from dataclasses import asdict

    from spectrascope.io.synthetic import SyntheticConfig
    cfg = asdict(SyntheticConfig.from_options(spec.options))
    return {k: v for k, v in cfg.items() if k not in _SAMPLING_OPTIONS}


def data_spec_differences(trained: str, given: str) -> list[str]:
    """How the data spec ``given`` differs from the spec ``trained`` a model was trained on.

    Synthetic specs are compared option by option, after their defaults are filled in, leaving
    out what changes neither the classes nor the textures (split sizes, seed, image size); other
    specs by kind and path.

    Args:
        trained: the spec recorded in the training checkpoint (``synthetic:patch=0.75``).
        given: the spec of the analysis (``synthetic``).

    Returns:
        One item per difference (``patch 0.5 (trained at 0.75)``); empty when both describe the same
        data, or when either spec cannot be read.
    """
    try:
        a, b = parse_data_spec(trained), parse_data_spec(given)
        if a.kind != b.kind:
            return [f"{b.kind} data (trained on {a.kind})"]
        if a.kind != "synthetic":
            same = a.path is None or b.path is None or a.path.resolve() == b.path.resolve()
            return [] if same else [f"{b.path} (trained on {a.path})"]
        fa, fb = _synthetic_fields(a), _synthetic_fields(b)
    except (DataError, OSError):
        return []
    return [f"{k} {fb[k]} (trained at {fa[k]})" for k in fa if fa[k] != fb[k]]


def parse_scalar(text: str, *, booleans: bool = False):
    """One option value: ``none``/``null`` -> None, an int, a float, ``true``/``false`` when
    ``booleans``, else the text itself (data-spec values and ``--model-kwargs`` both use it)."""
    low = text.lower()
    if booleans and low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_options(text: str) -> dict:
    from spectrascope.io.synthetic import SyntheticConfig
    known = ", ".join(f.name for f in fields(SyntheticConfig))
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise DataError(f"synthetic option {part!r} is not KEY=VALUE (keys: {known})", option="--data")
        k, v = (s.strip() for s in part.split("=", 1))
        if not k or not v:
            raise DataError(f"synthetic option {part!r} needs both a key and a value (keys: {known})",
                            option="--data")
        if k in out:
            raise DataError(f"synthetic option {k!r} is given twice", option="--data")
        out[k] = parse_scalar(v)
    return out
