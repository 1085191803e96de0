"""``cam``: class activation maps (Score-CAM, Grad-CAM, Grad-CAM++) of one or more models on the
same images, with overlays, a grid comparing the models (SPANet Fig. S2), the raw maps and, on
data with boxes (synthetic textures), localisation scores (pointing game, energy in the box).

For activations A_k (channel k) of the target layer and class c:

* Grad-CAM: ``ReLU(sum_k w_k A_k)``, ``w_k`` = spatial mean of ``d y_c / d A_k`` (Selvaraju et al. 2017);
* Grad-CAM++: ``w_k`` from the closed-form alphas of Chattopadhay et al. 2018;
* Score-CAM: ``w_k`` = the class score of the input masked by the normalised, upsampled ``A_k``
  (Wang et al. 2020), in the flavour of pytorch-grad-cam, the authors' code or torch-cam.

Maps are resized to the input and min-max normalised. The engine is ``analysis.cam`` (one CAM
template: capture, weights, combine, normalise); the maths is ``ops.cam``.

Example:
    ``spectrascope cam --model spanet_s --model poolformer_s12 --method gradcam --data synthetic``
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from spectrascope.engine.cam import make_cam, resolve_target_layers
from spectrascope.engine.runner import Runner, progress_bar
from spectrascope.io.sources import ImageSource
from spectrascope.ops.cam import FLAVOURS, METHODS, check_flavour, flavour_score, localisation_scores
from spectrascope.report import cam as report
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import choice

__all__ = ["Cam", "CamResult", "CHANNELS_LAST", "SCORECAM_IMAGES_PER_BATCH", "model_keys", "gather_maps"]

#: channels-last activations by default (see benchmarks/bench_scorecam.py for the measurement)
CHANNELS_LAST = False
#: images per Score-CAM call: its cost is the masked forwards, so one image per batch shards best
SCORECAM_IMAGES_PER_BATCH = 1


@dataclass(kw_only=True)
class CamResult(Result):
    """Per model: target layer, classes, class probabilities, top-1, seconds, localisation scores;
    the maps (``model/image`` -> (H, W) in [0, 1]) are in ``maps.npz`` and the input images
    (``model/image`` -> (H, W, 3) uint8) in ``inputs.npz``, so the overlays and the grid redraw from
    the result."""

    method: str
    images: list[str]
    models: list[dict] = field(default_factory=list)
    boxes: list | None = None
    maps: dict = field(default_factory=dict, metadata={"json": False})
    inputs: dict = field(default_factory=dict, metadata={"json": False})

    def arrays(self) -> dict:
        return {"maps.npz": self.maps, "inputs.npz": self.inputs}

    def load_arrays(self, files: dict) -> None:
        self.maps = dict(files.get("maps.npz", {}))
        self.inputs = dict(files.get("inputs.npz", {}))


def model_keys(specs) -> list[str]:
    """One key per model for file and array names: its name, made unique by the checkpoint's file
    name (and a number) when a model is given twice."""
    names = [s.name for s in specs]
    keys: list[str] = []
    for s in specs:
        key = s.name
        if names.count(s.name) > 1:
            key = f"{s.name}-{s.label or (Path(s.checkpoint).stem if s.checkpoint else 'random')}"
        base, k = key, 2
        while key in keys:
            key, k = f"{base}-{k}", k + 1
        keys.append(key)
    return keys


def gather_maps(d, chunks, compute) -> dict | None:
    """``compute(indices) -> {image index: entry}`` over this rank's ``chunks`` (``Runner.chunks``), the
    entries sent to rank 0 chunk by chunk (None elsewhere). Every round is agreed by every rank before
    its gather, and a rank holds one chunk of entries at a time: only the writing rank keeps them all."""
    rounds = int(d.all_reduce(torch.tensor([float(len(chunks))]), "max").item()) if d.enabled else len(chunks)
    merged: dict | None = {} if d.main else None
    for r in range(rounds):
        with d.together():
            local = compute(chunks[r][1]) if r < len(chunks) else {}
        got = d.gather_object(local)
        if got is not None:
            for g in got:
                merged.update(g)
    return merged


def _maps_of(model, layers, ds, runner: Runner, method: str, classes, cam_kw: dict):
    """A function mapping image indices to {index: (map, class, probability, top-1)}."""
    cam = make_cam(model, method, layers, runner=runner, **cam_kw)

    def compute(idx):
        x = torch.stack([ds[i] for i in idx])
        cls = classes if (classes is None or isinstance(classes, int)) else [classes[i] for i in idx]
        maps = cam(x, cls)
        probs = cam.logits_.softmax(-1)
        out = {}
        for j, i in enumerate(idx):
            c = int(cam.classes_[j])
            out[i] = (maps[j].numpy().astype(np.float32), c, float(probs[j, c]), int(cam.logits_[j].argmax()))
        return out
    return compute


def _counted(compute, bar):
    """``compute`` advancing ``bar`` (or None) by the images of every chunk."""
    def run(idx):
        out = compute(idx)
        if bar is not None:
            bar.update(len(idx))
        return out
    return run


def _entry(built, layers, method, flavour, res, n, seconds, boxes) -> dict:
    e = {"model": built.name, "checkpoint": built.spec.checkpoint, "checkpoint_sha256": built.checkpoint_sha256,
         "random_weights": built.random_weights, "input_size": list(built.pre["size"]),
         "target_layer": ",".join(tl.path for tl in layers), "target_tap": ",".join(tl.name for tl in layers),
         "target_layout": ",".join(tl.layout for tl in layers), "method": method,
         "flavour": flavour if method == "scorecam" else None, "classes": [res[i][1] for i in range(n)],
         "class_probability": [res[i][2] for i in range(n)], "top1": [res[i][3] for i in range(n)],
         "seconds": seconds}
    if boxes is not None:
        e["localisation"] = localisation_scores(torch.from_numpy(np.stack([res[i][0] for i in range(n)])), boxes)
    return e


def _inputs(source: ImageSource, pre) -> list[np.ndarray]:
    ds = source.dataset(pre)
    return [report.to_uint8(report.denormalize(ds[i], pre["mean"], pre["std"])) for i in range(len(ds))]


def cam_options() -> tuple[Option, ...]:
    """``--method``, ``--flavour``, ``--score``, ``--target-layer``, ``--class``."""
    return (
        Option("method", "scorecam", "CAM method", type=choice(*METHODS)),
        Option("flavour", "gradcam-lib", "Score-CAM implementation to reproduce", type=choice(*FLAVOURS)),
        Option("score", None, "class score of a masked input (default: the flavour's own)",
               type=choice("logit", "softmax")),
        Option("target_layer", None, "tap name (stage4, s3.b1.block), role (stage: its last tap), stage number (its "
                                     "output), or path:MODULE[:LAYOUT][:HxW]; comma-separated layers are averaged "
                                     "(default: the last stage map of at least 7x7 at the input size)"),
        Option("target_class", None, "class to explain (default: top-1, or the label of labelled data)", type=int,
               aliases=("--class",)),
    )


@register
class Cam(Analysis):
    """Class activation maps (Score-CAM, Grad-CAM, Grad-CAM++) with overlays, a grid comparing the
    models (SPANet Fig. S2), raw maps and, on synthetic data, localisation scores (pointing game,
    energy in the box). --batch-size is the number of images per Grad-CAM pass and of masked inputs
    per Score-CAM forward (Score-CAM without --batch-size: chosen automatically, at most 8 on CPUs and
    64 on GPUs). Runs under torchrun (images sharded over the processes, maps gathered to rank 0)."""

    name = "cam"
    summary = "Class activation maps (Score-CAM, Grad-CAM, Grad-CAM++) of several models (SPANet Fig. S2)"
    needs = Needs(models="many", data="images", gradients=True)
    shared = {"batch_size": {"default": None, "show_default": False,
                             "help": "images per Grad-CAM pass / masked inputs per Score-CAM forward [Grad-CAM: 16; "
                                     "Score-CAM: automatic]"},
              "model": {"help": "registry name, alias or timm:<name>; repeat to compare models in one grid"}}
    without = ("compile",)
    options = cam_options()
    result = CamResult
    repeat_models = True
    random_weights = "the maps are not meaningful"

    def check(self, p) -> None:
        check_flavour(p.flavour)
        flavour_score(p.flavour, p.score)

    def source(self, params):
        return ImageSource.resolve(params.images, params.data, params.num_images, render=True, default_count=8)

    def run(self, ctx) -> CamResult:
        p, d = ctx.params, ctx.dist
        per = SCORECAM_IMAGES_PER_BATCH if p.method == "scorecam" else (p.batch_size or 16)
        runner = Runner(replace(ctx.runner.config, batch_size=per, progress=False), d)
        built = [ctx.build(s) for s in ctx.specs]
        layers = [resolve_target_layers(b.model, p.target_layer, input_size=tuple(b.pre["size"])) for b in built]
        if p.target_layer is None:
            ctx.note(*[f"{b.name}: {lay[0].note}" for b, lay in zip(built, layers) if lay[0].note])
        cam_kw = {"output_size": "input"}
        if p.method == "scorecam":
            cam_kw.update(flavour=p.flavour, batch_size=p.batch_size, score=p.score, progress=ctx.progress)
        source = ctx.source
        classes = p.target_class if p.target_class is not None else source.labels
        keys = model_keys([b.spec for b in built])
        res = CamResult(method=p.method, images=list(source.keys()), boxes=source.boxes_for(built[0].pre))
        for b, lay, key in zip(built, layers, keys):
            start = time.perf_counter()
            ds = source.dataset(b.pre)
            chunks = runner.chunks(len(ds))
            bar = progress_bar(sum(len(idx) for _, idx in chunks), f"{p.method} {key}", unit="image",
                               enabled=ctx.progress)
            maps = gather_maps(d, chunks, _counted(_maps_of(b.model, lay, ds, runner, p.method, classes, cam_kw),
                                                   bar))
            if bar is not None:
                bar.close()
            if maps is None:                                   # not the writing rank
                continue
            n = len(source)
            res.models.append(dict(_entry(b, lay, p.method, p.flavour, maps, n, time.perf_counter() - start,
                                          source.boxes_for(b.pre)), key=key))
            for i, image in enumerate(res.images):
                res.maps[f"{key}/{image}"] = maps[i][0]
            for image, rgb in zip(res.images, _inputs(source, b.pre)):
                res.inputs[f"{key}/{image}"] = rgb
        return res

    def draw(self, result, folder, style):
        return report.draw_cam(result, folder, style)

    def describe(self, result, output):
        lines = []
        for e in result.models:
            loc = e.get("localisation")
            extra = ""
            if loc:
                energy = loc["mean_energy_in_box"]
                extra = (f", pointing game {loc['pointing_accuracy']:.2f}, energy in box "
                         f"{'undefined' if energy is None else f'{energy:.3f}'}")
            lines.append(f"{e['model']}: {result.method} at {e.get('target_tap') or e['target_layer']} on {len(result.images)} images{extra}")
        return lines + [f"-> {output}"]
