"""DFFormer Fig. 7: representational similarity (unbiased mini-batch linear CKA) of three S18 pairs
over 40 probe points each (4 downsampling outputs, 18 residual streams after the token mixers,
18 after the channel MLPs), rows and columns in execution order.

    (a) GFFormer-S18 vs DFFormer-S18   (b) CAFormer-S18 vs CDFFormer-S18   (c) ConvFormer-S18 vs DFFormer-S18

The paper used the ImageNet-1K validation set and torch-cka; pass ``--engine torch-cka`` for
that computation (it agrees with the default engine on well-conditioned features only).
Usage::

    spectrascope figure dfformer-fig7 --checkpoint gfformer_s18=gf.pth --data imagefolder:/data/imagenet \\
        --engine torch-cka --estimator unbiased
    python -m spectrascope.recipes.cka_fig7 --checkpoint-dir weights/ --data imagefolder:/data/imagenet \\
        --batch-size 64 --output figures/cka_fig7

Checkpoints are looked up in ``--checkpoint-dir`` by each model card's ``weight_file`` (or
passed explicitly with ``--checkpoint NAME=PATH``); models without one run with random
weights, and every report says so. Writes one report directory per panel and ``fig7.png`` /
``fig7.pdf`` (200 dpi) with the three heatmaps side by side at one size, one labelled colour
bar, and a footer with the number of images, the estimator and engine and any skipped
batch (also printed). ``summary.json`` records what the figure shows (panel boxes, footer,
colour-bar label, dpi) so it can be checked without reading pixels.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from spectrascope.analyses.cka import FIG7_PAIRS, CKAResult, skip_warning
from spectrascope.io.results import staged_output, write_json
from spectrascope.recipes.base import FigureSpec
from spectrascope.report.cka import plot_heatmap
from spectrascope.seam import Style, get, run as run_analysis, write_result
from spectrascope.zoo.registry import get_card

__all__ = ["FIGURE", "PAIRS", "DPI", "find_checkpoint", "compute", "run", "main"]

PAIRS = FIG7_PAIRS
#: resolution of fig7.png and of the raster parts of fig7.pdf
DPI = 200

FIGURE = FigureSpec(
    name="dfformer-fig7",
    title="Mini-batch linear CKA between S18 models (40 probe points each)",
    paper="Tatsunami & Taki, FFT-based Dynamic Token Mixer for Vision (AAAI 2024), Fig. 7",
    models=("gfformer_s18", "dfformer_s18", "caformer_s18", "cdfformer_s18", "convformer_s18"),
    summary="(a) GFFormer-S18 vs DFFormer-S18, (b) CAFormer-S18 vs CDFFormer-S18, (c) ConvFormer-S18 vs "
            "DFFormer-S18; 4 downsampling outputs, 18 residual streams after the token mixers and 18 after the "
            "channel MLPs, in execution order; one report per panel plus fig7.png/pdf.",
    options=("estimator", "engine"),
)


def run(ctx):
    """``spectrascope figure dfformer-fig7`` entry point (writes into the framework's staging folder)."""
    res, summary = _write_panels(ctx.output, checkpoints=ctx.checkpoints, options=dict(
        images=ctx.images, data=ctx.data, num_images=ctx.num_images, batch_size=ctx.batch_size or 16,
        device=ctx.device, img_size=ctx.img_size, progress=ctx.progress,
        estimator=ctx.option("estimator", "unbiased"), engine=ctx.option("engine", "spectrascope")))
    ctx.warn(*summary["warnings"])                  # re-printed by `spectrascope figure` (skipped batches ...)
    return {"panels": {p: f"{r.meta['model_a']['name']} vs {r.meta['model_b']['name']}" for p, r in res.items()},
            "images": summary["images"], "estimator": summary["estimator"], "engine": summary["engine"],
            "warnings": summary["warnings"]}


def find_checkpoint(name: str, checkpoint_dir=None, checkpoints: dict | None = None) -> str | None:
    """An explicit ``checkpoints[name]`` or ``checkpoint_dir / <card.weight_file>`` if present."""
    if checkpoints and name in checkpoints:
        return str(checkpoints[name])
    if checkpoint_dir is None:
        return None
    card = get_card(name)
    for fname in filter(None, [card.weight_file, f"{card.name}.pth", f"{card.name}.safetensors"]):
        p = Path(checkpoint_dir) / fname
        if p.is_file():
            return str(p)
    return None


def compute(out_dir="figures/cka_fig7", *, checkpoint_dir=None, checkpoints: dict | None = None,
            overwrite: bool = False, pairs=PAIRS, **options) -> dict[str, CKAResult]:
    """Compute the panels and write their reports plus the combined figure into ``out_dir``
    (nothing is left there if a panel fails). ``options``: the ``cka`` options of every panel
    (``images``, ``data``, ``num_images``, ``batch_size``, ``device``, ``img_size``, ``estimator``,
    ``engine``, ``progress``) and ``overrides`` (constructor overrides of every model)."""
    with staged_output(Path(out_dir), overwrite=overwrite, command="figure dfformer-fig7") as stage:
        res, _ = _write_panels(stage, checkpoint_dir=checkpoint_dir, checkpoints=checkpoints, pairs=pairs,
                               options=options)
        return res


def _panel(panel, a, b, stage: Path, common: dict, *, checkpoint_dir, checkpoints):
    cks = tuple(find_checkpoint(m, checkpoint_dir, checkpoints) or "-" for m in (a, b))
    with warnings.catch_warnings():          # reported once per panel below, with the totals over the run
        warnings.filterwarnings("ignore", message="CKA: skipped", category=RuntimeWarning)
        res = run_analysis("cka", model=(a, b), checkpoint=cks, taps="fig7", **common)
    res.meta["panel"] = f"Fig. 7{panel}"
    sub = f"fig7{panel}_{a}_vs_{b}"
    (stage / sub).mkdir()
    res.title = f"DFFormer Fig. 7{panel}: {a} vs {b}"
    res.provenance = dict(res.provenance, command="figure dfformer-fig7")
    write_result(get("cka"), res, stage / sub, Style())
    info = {"model_a": a, "model_b": b, "report": sub, "taps": len(res.labels_a), "images": res.examples,
            "batches": res.batches, "skipped_batches": res.skipped_batches,
            "skipped_examples": res.skipped_examples, "diagnostics": list(res.diagnostics),
            "random_weights": [m for m, ck in zip((a, b), cks) if ck == "-"],
            "wall_time_s": res.provenance.get("wall_time_s")}
    return res, info, res.notes


def _write_panels(stage: Path, *, checkpoint_dir=None, checkpoints=None, pairs=PAIRS,
                  options: dict | None = None) -> tuple[dict[str, CKAResult], dict]:
    common = {"batch_size": 16, "device": "cpu", "estimator": "unbiased", "engine": "spectrascope", "progress": True}
    common.update({k: v for k, v in dict(options or {}).items() if v is not None})
    common["model_kwargs"] = dict(common.pop("overrides", None) or {})
    results: dict[str, CKAResult] = {}
    panels, notes = {}, []
    for panel, a, b in pairs:
        results[panel], panels[panel], more = _panel(panel, a, b, Path(stage), common,
                                                     checkpoint_dir=checkpoint_dir, checkpoints=checkpoints)
        notes += [n for n in more if not n.startswith("random weights") and n not in notes]
    warn = notes + [f"Fig. 7{p}: {w}" for p, r in results.items() for w in
                    filter(None, [skip_warning(r)] + list(r.diagnostics))]
    batch_size, estimator, engine = common["batch_size"], common["estimator"], common["engine"]
    footer = _footer(results, batch_size, estimator, engine)
    layout = _draw(results, Path(stage), footer)
    summary = {"figure": "DFFormer Fig. 7", "estimator": estimator, "engine": engine, "batch_size": batch_size,
               "images": max((r.examples for r in results.values()), default=0), "warnings": warn,
               "footer": footer, **layout, "panels": panels}
    write_json(Path(stage) / "summary.json", summary)
    return results, summary


def _footer(results: dict[str, CKAResult], batch_size: int, estimator: str, engine: str) -> str:
    """The line under the panels: images compared, batch size, estimator, engine, skipped batches."""
    counts = sorted({r.examples for r in results.values()})
    text = (f"{'/'.join(map(str, counts))} images (batch {batch_size}), {estimator} mini-batch linear CKA, "
            f"engine {engine}")
    skipped = [(p, r.skipped_batches, r.skipped_examples) for p, r in results.items() if r.skipped_batches]
    if skipped:
        text += "; skipped " + ", ".join(f"({p}) {k} batch(es) of {n} image(s)" for p, k, n in skipped)
    return text


def _draw(results: dict[str, CKAResult], stage: Path, footer: str) -> dict:
    """Equal panels (one row, a page wide) and one labelled colour bar in its own axes; returns what
    was drawn (``figure_size_in``: the written figure's size)."""
    from PIL import Image

    from spectrascope.report.style import PAGE_WIDTH, active_style, footnote, new_figure, save_figure
    n = len(results)
    width = active_style().width or PAGE_WIDTH
    fig = new_figure(width, width / n + 0.9, layout=None)
    grid = fig.add_gridspec(1, n + 1, width_ratios=[1.0] * n + [0.05], left=0.08, right=0.9, top=0.76,
                            bottom=0.2, wspace=0.5)
    axes = []
    for k, (panel, res) in enumerate(results.items()):
        ax = fig.add_subplot(grid[0, k])
        plot_heatmap(res, ax=ax, colorbar=False)
        for child in list(ax.child_axes):            # stage names on top only: the right side meets the next panel
            if getattr(child, "_orientation", "") == "y":
                child.remove()
        head, _, rest = ax.get_title().partition(" vs ")
        ax.set_title(f"({panel}) {head}\nvs {rest}", fontsize=8)
        axes.append(ax)
    first = next(iter(results.values()))
    label = f"CKA ({first.estimator}{', torch-cka engine' if first.engine == 'torch-cka' else ''})"
    cbar = fig.colorbar(axes[0].images[0], cax=fig.add_subplot(grid[0, n]), label=label)
    footnote(fig, footer, color="black")
    save_figure(fig, stage, "fig7", formats=("png", "pdf"), dpi=DPI)
    boxes = [[round(v, 6) for v in ax.get_position().bounds] for ax in axes]
    with Image.open(stage / "fig7.png") as im:
        size = [v / DPI for v in im.size]
    return {"dpi": DPI, "panel_boxes": boxes, "colorbar_label": cbar.ax.get_ylabel(), "figure_size_in": size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spectrascope.recipes.cka_fig7", description=__doc__.split("\n")[0])
    ap.add_argument("--output", default="figures/cka_fig7")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--images", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--num-images", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--estimator", default="unbiased", choices=["unbiased", "biased"])
    ap.add_argument("--engine", default="spectrascope", choices=["spectrascope", "torch-cka"])
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    from spectrascope.errors import UserError
    ckpts = dict(item.split("=", 1) for item in args.checkpoint)
    try:
        res = compute(args.output, checkpoint_dir=args.checkpoint_dir, checkpoints=ckpts, images=args.images,
                      data=args.data, num_images=args.num_images, batch_size=args.batch_size,
                      device=args.device, img_size=args.img_size, estimator=args.estimator,
                      engine=args.engine, overwrite=args.overwrite)
    except UserError as exc:
        print(f"Error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    for panel, r in res.items():
        for w in filter(None, [skip_warning(r)] + list(r.diagnostics)):
            print(f"warning: Fig. 7{panel}: {w}", file=sys.stderr)
        print(f"Fig. 7{panel}: {r.meta['model_a']['name']} vs {r.meta['model_b']['name']} "
              f"{len(r.labels_a)}x{len(r.labels_b)} over {r.examples} images")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
