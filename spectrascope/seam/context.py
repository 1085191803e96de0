"""What an analysis's ``run(ctx)`` is given: :class:`Context`.

The context holds the checked option values (``ctx.params``), the models to analyse as
``ModelSpec``s (``ctx.specs``; ``ctx.build(spec)`` builds one with the same random weights on
every process), the images (``ctx.source``, an ``io.sources.ImageSource``), the engine's
``Runner`` configured from the shared options (``ctx.runner``: device, batch size, AMP,
channels-last, compile, workers, progress) and the ``torchrun`` group (``ctx.dist``).
``ctx.note`` / ``ctx.warn`` collect what the command prints after the run (and results.json
records).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spectrascope.engine import dist as _dist
from spectrascope.engine.runner import Runner
from spectrascope.errors import OptionError
from spectrascope.io.sources import ImageSource
from spectrascope.io.specs import data_spec_differences
from spectrascope.seam.analysis import Analysis, Params
from spectrascope.zoo.build import Built, ModelSpec, build, pair_checkpoints, preprocessing
from spectrascope.zoo.registry import resolve_name

__all__ = ["Context", "model_specs", "run_checkpoints"]


#: the order of a training run's checkpoints when a run folder is given as ``--checkpoint``
_RUN_ORDER = ("init", "epoch", "last", "best")


def run_checkpoints(folder: Path) -> list[tuple[str, str]]:
    """(label, path) of every checkpoint of a training run folder, in training order: ``init.pth``,
    ``epoch_<k>.pth`` by k, ``last.pth``, ``best.pth``."""
    def order(p: Path):
        stem = p.stem
        head = stem.split("_", 1)[0]
        rank = _RUN_ORDER.index(head) if head in _RUN_ORDER else len(_RUN_ORDER)
        tail = stem.split("_", 1)[1] if "_" in stem else ""
        return (rank, int(tail) if tail.isdigit() else 0, stem)
    found = sorted((p for p in Path(folder).glob("*.pth") if p.is_file()), key=order)
    if not found:
        raise OptionError(f"{folder} holds no checkpoint (*.pth)", option="--checkpoint")
    return [(p.stem.replace("_", " "), str(p)) for p in found]


def _labelled(name: str, given) -> list[tuple[str, str | None]] | None:
    """One model at several checkpoints: ``LABEL=PATH`` items (labels that are not the model's name),
    several plain paths, or a training run folder. None when ``given`` is one plain checkpoint."""
    items = [str(g) for g in given]
    if len(items) == 1 and Path(items[0]).is_dir():
        return run_checkpoints(Path(items[0]))
    if len(items) < 2:
        return None
    out = []
    for item in items:
        label, sep, path = item.partition("=")
        if sep and label == name:
            raise OptionError(f"{item!r}: give one model several checkpoints as LABEL=PATH with labels other than "
                              "the model's name", option="--checkpoint")
        if not sep:
            label, path = Path(item).stem, item
        out.append((label, None if path in ("", "-") else path))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        raise OptionError(f"two checkpoints have the same label ({', '.join(labels)}); name them LABEL=PATH",
                          option="--checkpoint")
    return out


def _checkpoints(names: list, text: list[str], given, many: bool, repeats: bool) -> list:
    if not many:
        return [given]
    if given and len(set(text)) != len(text):
        if len(given) != len(names) or any("=" in str(g) for g in given):
            raise OptionError("a model listed twice takes its checkpoints in --model order, one per --model "
                              "('-' for random weights)", option="--checkpoint")
        return [None if str(g) in ("", "-") else str(g) for g in given]
    pairs = pair_checkpoints(text, given) if given else {}
    return [pairs.get(m) if isinstance(m, str) else None for m in names]


def model_specs(params: Params, *, repeats: bool = False) -> list:
    """The ``ModelSpec`` of every ``--model`` (with its ``--checkpoint``, ``--img-size``,
    ``--model-kwargs``, ``--pretrained``); a built ``nn.Module`` (Python API) stays as it is.

    ``repeats``: a model may be listed twice (checkpoints then pair by position). An analysis that
    compares models also takes one model at several checkpoints (``--model M --checkpoint init=a.pth
    --checkpoint ep10=b.pth``, or a training run folder): one labelled spec per checkpoint."""
    models = params.get("model")
    if models is None:
        return []
    many = isinstance(models, tuple)
    names = list(models) if many else [models]
    if not names:
        return []
    keys = [m if isinstance(m, str) else id(m) for m in names]
    if len(set(keys)) != len(keys) and not repeats:
        raise OptionError(f"a model is listed twice: {', '.join(str(m) for m in names)}", option="--model")
    given = params.get("checkpoint")
    text = [m for m in names if isinstance(m, str)]
    if not text and given:
        raise OptionError("pass checkpoints only with model names (a built model is used as it is)",
                          option="--checkpoint")
    labelled = _labelled(names[0], given) if many and len(names) == 1 and text and given else None
    if labelled is not None:
        names, labels, cks = [names[0]] * len(labelled), [lab for lab, _ in labelled], [p for _, p in labelled]
    else:
        labels, cks = [None] * len(names), _checkpoints(names, text, given, many, repeats)
    overrides = params.get("model_kwargs") or {}
    pretrained = bool(params.get("pretrained"))
    if params.get("weights_dir") and not pretrained:
        raise OptionError("give --pretrained too (the folder is where official weights are looked up)",
                          option="--weights-dir")
    out = []
    for m, ck, label in zip(names, cks, labels):
        if not isinstance(m, str):
            out.append(m)
            continue
        if pretrained and ck is None and m.startswith("timm:"):
            raise OptionError(f"{m}: --pretrained resolves zoo models' official weights; for timm models pass a "
                              "file with --checkpoint", option="--pretrained")
        if not m.startswith("timm:"):
            resolve_name(m)                              # an unknown name fails before any output exists
        out.append(ModelSpec(m, ck, params.get("img_size"), dict(overrides), pretrained=pretrained,
                             weights_dir=params.get("weights_dir"), label=label))
    return out


def _module_name(model: nn.Module) -> str:
    return getattr(model, "spectrascope_name", None) or type(model).__name__


@dataclass
class Context:
    """Everything ``Analysis.run`` needs (see the module doc)."""

    analysis: Analysis
    params: Params
    dist: _dist.Dist
    device: torch.device
    runner: Runner | None = None
    source: ImageSource | None = None
    specs: list = field(default_factory=list)
    progress: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: every model built for this run, in order (provenance, random-weights notes)
    built: list[Built] = field(default_factory=list)
    #: what ``run`` adds to results.json's provenance block
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self):
        """The one model of an analysis that takes one ``--model``."""
        return self.specs[0]

    def note(self, *messages: str) -> None:
        """Notes to print after the run (each once); results.json keeps them."""
        for m in messages:
            if m and m not in self.notes:
                self.notes.append(m)

    def warn(self, *messages: str) -> None:
        """Warnings to print after the run (each once); results.json keeps them."""
        for m in messages:
            if m and m not in self.warnings:
                self.warnings.append(m)

    def build(self, spec, *, prepare: bool = True) -> Built:
        """Build one model on the run's device (``eval()``; channels-last on request).

        A model without checkpoint gets random weights drawn from ``--seed`` or, without one, from
        a seed that rank 0 draws and shares, so every process analyses the same network."""
        if isinstance(spec, nn.Module):
            pre = preprocessing(spec, self.params.get("img_size"))
            built = Built(spec.eval().to(self.device), ModelSpec(_module_name(spec)), pre, _module_name(spec))
            built.user_module = True
        else:
            spec = self._resolved(spec)
            built = build(spec, self.device, seed=self._seed(spec))
        if prepare and self.runner is not None:
            self.runner.prepare(built.model)
        self.built.append(built)
        self.note(self._data_note(built))
        return built

    def _data_note(self, built: Built) -> str | None:
        """A note when ``--data`` differs from the data spec a spectrascope training checkpoint records."""
        given = self.params.get("data")
        args = (getattr(built.model, "checkpoint_info", None) or {}).get("args")
        if not isinstance(given, str) or not isinstance(args, dict) or "spectrascope" not in args:
            return None
        trained = args.get("data")
        diff = data_spec_differences(str(trained), given) if trained else []
        if not diff:
            return None
        return (f"{built.name}: --data {given} is not the data it was trained on ({trained}): "
                f"{'; '.join(diff)}")

    def _resolved(self, spec: ModelSpec) -> ModelSpec:
        if spec.pretrained and spec.checkpoint is None and not spec.name.startswith("timm:"):
            from spectrascope.zoo import registry, weights
            path = weights.resolve(registry.get_card(spec.name), weights_dir=spec.weights_dir,
                                   progress=self.progress and self.dist.main)
            spec = replace(spec, checkpoint=str(path))
        return spec

    def _seed(self, spec: ModelSpec) -> int | None:
        if spec.checkpoint is not None:
            return None
        seed = self.params.get("seed")
        if seed is None and self.dist.enabled:
            seed = self.dist.broadcast_object(int(torch.randint(0, 2 ** 31 - 1, ()).item()) if self.dist.main
                                              else None)
        return seed

    def random_models(self) -> list[str]:
        """The names of the built models with random weights (no checkpoint)."""
        return list(dict.fromkeys(b.name for b in self.built
                                  if b.random_weights and not getattr(b, "user_module", False)))
