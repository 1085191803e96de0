"""``sparsity``: the fraction of zero activations per tap (an example spectrascope plug-in).

For every tapped tensor x of every image: ``sparsity = #{|x| <= threshold} / #x``, summed over
the images and divided once at the end (float64 counts, all-reduced under ``torchrun``).

Example:
    ``spectrascope sparsity --model dfformer_s18 --taps mlp_hidden --threshold 0``
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spectrascope.engine.reducers import Reducer
from spectrascope.io.results import write_csv
from spectrascope.probe.grammar import TapRequest
from spectrascope.report.style import new_figure, save_figure
from spectrascope.seam import Analysis, Needs, Option, Result, register

__all__ = ["Sparsity", "SparsityResult", "SparsityReducer"]


class SparsityReducer(Reducer):
    """Per tap: float64 counts of the elements with ``|x| <= threshold`` and of all elements."""

    probe_kwargs = {"nchw": False, "clone": False, "dtype": None}

    def __init__(self, taps, threshold: float = 0.0):
        self.taps = list(taps)
        self.threshold = float(threshold)
        self.zeros: dict[str, torch.Tensor] = {}
        self.total: dict[str, torch.Tensor] = {}

    def __call__(self, tap, x: torch.Tensor) -> None:
        z = (x.detach().abs() <= self.threshold).sum().to(torch.float64)
        n = torch.tensor(float(x.numel()), dtype=torch.float64, device=z.device)
        self.zeros[tap.name] = self.zeros.get(tap.name, 0) + z
        self.total[tap.name] = self.total.get(tap.name, 0) + n

    def missing(self) -> list[str]:
        return [t.name for t in self.taps if t.name not in self.total]

    def state(self) -> dict:
        return {**{f"z|{k}": v for k, v in self.zeros.items()}, **{f"n|{k}": v for k, v in self.total.items()}}

    def load_state(self, state: dict) -> None:
        self.zeros = {k[2:]: v for k, v in state.items() if k.startswith("z|")}
        self.total = {k[2:]: v for k, v in state.items() if k.startswith("n|")}


@dataclass(kw_only=True)
class SparsityResult(Result):
    """Per model, per tap (execution order): name, role, stage, sparsity, elements counted."""

    threshold: float
    models: list[dict] = field(default_factory=list)


@register
class Sparsity(Analysis):
    """Fraction of zero activations per tap (|x| <= --threshold), one bar per tap in execution order.

    Writes results.json, sparsity.csv and sparsity PNG+PDF; runs under torchrun."""

    name = "sparsity"
    summary = "Fraction of zero activations per tap (an example plug-in)"
    needs = Needs(models="many", data="images")
    options = (
        Option("taps", "block", "taps in the tap grammar: roles, names, globs or path:<module>"),
        Option("threshold", 0.0, "an activation counts as zero when |x| <= threshold", type=float),
    )
    result = SparsityResult

    def run(self, ctx) -> SparsityResult:
        p = ctx.params
        res = SparsityResult(threshold=p.threshold)
        for spec in ctx.specs:
            built = ctx.build(spec)
            taps = TapRequest.parse(p.taps).resolve(built.model, input_size=built.pre["size"])
            reducer = SparsityReducer(taps, p.threshold)
            stats = ctx.runner.reduce(built.model, ctx.source.dataset(built.pre), reducer, desc=built.name)
            by = {t.name: t for t in taps}
            res.models.append({"model": built.name, "images": int(stats.images), "taps": [
                {"name": n, "role": by[n].role, "stage": by[n].stage,
                 "sparsity": float(reducer.zeros[n] / reducer.total[n]), "elements": int(reducer.total[n])}
                for n in stats.order if n in by]})
        return res

    def report(self, result, folder, style):
        rows = [dict(model=m["model"], **t) for m in result.models for t in m["taps"]]
        write_csv(folder / "sparsity.csv", rows)
        return ["sparsity.csv"] + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        fig = new_figure(6.5, 2.6)
        ax = fig.subplots()
        width = 0.8 / max(1, len(result.models))
        for k, m in enumerate(result.models):
            xs = [i + k * width for i in range(len(m["taps"]))]
            ax.bar(xs, [t["sparsity"] for t in m["taps"]], width=width, label=m["model"])
        ax.set_xlabel("tap (execution order)")
        ax.set_ylabel(f"fraction |x| <= {result.threshold:g}")
        ax.set_ylim(0, 1)
        if len(result.models) > 1:
            ax.legend(frameon=False)
        return [p.name for p in save_figure(fig, folder, "sparsity", style.formats)]

    def describe(self, result, output):
        return [f"{m['model']}: mean sparsity {sum(t['sparsity'] for t in m['taps']) / len(m['taps']):.3f} over "
                f"{len(m['taps'])} taps" for m in result.models] + [f"-> {output}"]
