"""``context``: SPANet context maps (Fig. 4 / S1): each SPG's output and the aggregated context of a
SPAM block, channel-mean, resized to the image, min-max normalised per image and overlaid.

The captures are ``analysis.context`` (one forward through the runner, stopped once the block
ran); under ``torchrun`` the images are shared out and the maps gathered to rank 0.

Example:
    ``spectrascope context --model spanet_s --checkpoint spanet_s.pth --block 4``
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from spectrascope.analyses.cam import _inputs, gather_maps
from spectrascope.engine.context import context_maps, context_taps, map_labels, spg_lambdas
from spectrascope.io.sources import ImageSource
from spectrascope.report import cam as report
from spectrascope.report.style import paper_name
from spectrascope.seam import Analysis, Needs, Option, Result, register

__all__ = ["Context", "ContextResult"]


@dataclass(kw_only=True)
class ContextResult(Result):
    """``block``: the SPAM block; ``maps_shown``: map key -> label (``spg0`` ... ``context``);
    the maps (``image/key``) are in ``maps.npz``, the input images in ``inputs.npz``."""

    block: str
    images: list[str]
    maps_shown: dict = field(default_factory=dict)
    notes_by_map: dict = field(default_factory=dict)
    aggregation: str = "channel mean, bilinear resize to the input, min-max"
    title: str = ""
    maps: dict = field(default_factory=dict, metadata={"json": False})
    inputs: dict = field(default_factory=dict, metadata={"json": False})

    def to_json(self) -> dict:
        doc = super().to_json()
        doc["maps"] = doc.pop("maps_shown")                   # results.json: "maps": key -> label
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "ContextResult":
        doc = dict(doc)
        if isinstance(doc.get("maps"), dict):
            doc["maps_shown"] = doc.pop("maps")
        return super().from_json(doc)

    def arrays(self) -> dict:
        return {"maps.npz": self.maps, "inputs.npz": self.inputs}

    def load_arrays(self, files: dict) -> None:
        self.maps = dict(files.get("maps.npz", {}))
        self.inputs = dict(files.get("inputs.npz", {}))


@register
class Context(Analysis):
    """SPANet context maps (Fig. 4 / S1): each SPG's output and the aggregated context of a SPAM
    block, channel-mean, resized to the image and overlaid. Runs under torchrun."""

    name = "context"
    summary = "SPANet context maps of a SPAM block (SPANet Figs. 4, S1)"
    needs = Needs(models="one", data="images")
    without = ("compile",)
    options = (Option("block", None, "SPAM block (s4.b3), a stage number (its last block) or 'last' [last]"),)
    result = ContextResult
    random_weights = "the maps are not meaningful"

    def source(self, params):
        return ImageSource.resolve(params.images, params.data, params.num_images, render=True, default_count=8)

    def run(self, ctx) -> ContextResult:
        d, src = ctx.dist, ctx.source
        built = ctx.build(ctx.spec)
        model, pre = built.model, built.pre
        prefix, taps = context_taps(model, ctx.params.block)
        ds = src.dataset(pre)

        def compute(idx):
            res = context_maps(model, torch.stack([ds[i] for i in idx]), prefix, runner=ctx.runner)
            return {i: {k: v[j].numpy().astype(np.float32) for k, v in res["maps"].items()} for j, i in enumerate(idx)}
        maps = gather_maps(d, ctx.runner.chunks(len(ds)), compute)
        keys = [t.name.rsplit(".", 1)[1] for t in taps]
        labels = map_labels(keys, spg_lambdas(model, prefix))
        title = f"{paper_name(built.name)}: SPG maps and aggregated context at {prefix}"
        if built.random_weights:
            title += "\n(random weights: no checkpoint given)"
        out = ContextResult(block=prefix, images=src.keys(), maps_shown=dict(zip(keys, labels)),
                            notes_by_map={t.name.rsplit(".", 1)[1]: t.note for t in taps}, title=title)
        if maps is not None:
            for i, image in enumerate(out.images):
                for k in keys:
                    out.maps[f"{image}/{k}"] = maps[i][k]
            for image, rgb in zip(out.images, _inputs(src, pre)):
                out.inputs[image] = rgb
        return out

    def draw(self, result, folder, style):
        return report.draw_context(result, folder, style)

    def describe(self, result, output):
        labels = ", ".join(result.maps_shown.values())
        return [f"context maps of {result.provenance.get('model')} at {result.block} ({labels}) on "
                f"{len(result.images)} images", f"-> {output}"]
