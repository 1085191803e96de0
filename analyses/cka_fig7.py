"""DFFormer Fig. 7: representational similarity (unbiased mini-batch linear CKA) of three S18 pairs
over 40 probe points each (4 downsampling outputs, 18 residual streams after the token mixers,
18 after the channel MLPs), rows and columns in execution order.

    (a) GFFormer-S18 vs DFFormer-S18   (b) CAFormer-S18 vs CDFFormer-S18   (c) ConvFormer-S18 vs DFFormer-S18

The paper used the ImageNet-1K validation set and torch-cka; pass ``--engine torch-cka`` for
that computation (it agrees with the default engine on well-conditioned features only).
Usage::

    spectrascope figure dfformer-fig7 --checkpoint gfformer_s18=gf.pth --data imagefolder:/data/imagenet
    python -m spectrascope.analyses.cka_fig7 --checkpoint-dir weights/ --data imagefolder:/data/imagenet \\
        --batch-size 64 --output figures/cka_fig7

Checkpoints are looked up in ``--checkpoint-dir`` by each model card's ``weight_file`` (or
passed explicitly with ``--checkpoint NAME=PATH``); models without one run with random
weights, and every report says so. Writes one report directory per panel and ``fig7.png`` /
``fig7.pdf`` with the three heatmaps side by side.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spectrascope.analysis.cka import FIG7_PAIRS, CKAResult, ModelSpec, run_cka
from spectrascope.report.cka import plot_heatmap, write_report
from spectrascope.report.recipes import FigureSpec
from spectrascope.zoo.registry import get_card
from spectrascope.io.results import staged_output, write_json

__all__ = ["FIGURE", "PAIRS", "find_checkpoint", "compute", "run", "main"]

PAIRS = FIG7_PAIRS

FIGURE = FigureSpec(
    name="dfformer-fig7",
    title="Mini-batch linear CKA between S18 models (40 probe points each)",
    paper="Tatsunami & Taki, FFT-based Dynamic Token Mixer for Vision (AAAI 2024), Fig. 7",
    models=("gfformer_s18", "dfformer_s18", "caformer_s18", "cdfformer_s18", "convformer_s18"),
    summary="(a) GFFormer-S18 vs DFFormer-S18, (b) CAFormer-S18 vs CDFFormer-S18, (c) ConvFormer-S18 vs "
            "DFFormer-S18; 4 downsampling outputs, 18 residual streams after the token mixers and 18 after the "
            "channel MLPs, in execution order; one report per panel plus fig7.png/pdf.",
)


def run(ctx):
    """``spectrascope figure dfformer-fig7`` entry point (writes into the framework's staging folder)."""
    from spectrascope.engine.device import resolve_device
    res = _write_panels(ctx.output, checkpoints=ctx.checkpoints, images=ctx.images, data=ctx.data,
                        num_images=ctx.num_images, batch_size=ctx.batch_size, device=resolve_device(ctx.device),
                        img_size=ctx.img_size, progress=ctx.progress)
    return {"panels": {p: f"{r.meta['model_a']['name']} vs {r.meta['model_b']['name']}" for p, r in res.items()}}


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


def compute(out_dir="figures/cka_fig7", *, checkpoint_dir=None, checkpoints: dict | None = None, images=None,
        data: str | None = None, num_images: int | None = None, batch_size: int = 16, device="cpu",
        img_size=None, estimator: str = "unbiased", engine: str = "spectrascope", overwrite: bool = False,
        progress: bool = True, overrides: dict | None = None, pairs=PAIRS) -> dict[str, CKAResult]:
    """Compute the three panels and write their reports plus the combined figure into ``out_dir``
    (nothing is left there if a panel fails)."""
    with staged_output(Path(out_dir), overwrite=overwrite, command="figure dfformer-fig7") as stage:
        return _write_panels(stage, checkpoint_dir=checkpoint_dir, checkpoints=checkpoints, images=images, data=data,
                             num_images=num_images, batch_size=batch_size, device=device, img_size=img_size,
                             estimator=estimator, engine=engine, progress=progress, overrides=overrides, pairs=pairs)


def _write_panels(stage: Path, *, checkpoint_dir=None, checkpoints=None, images=None, data=None, num_images=None,
                  batch_size=16, device="cpu", img_size=None, estimator="unbiased", engine="spectrascope",
                  progress=True, overrides=None, pairs=PAIRS) -> dict[str, CKAResult]:
    from matplotlib.figure import Figure
    results: dict[str, CKAResult] = {}
    summary = {}
    for panel, a, b in pairs:
        spec_a = ModelSpec(a, find_checkpoint(a, checkpoint_dir, checkpoints), img_size, dict(overrides or {}))
        spec_b = ModelSpec(b, find_checkpoint(b, checkpoint_dir, checkpoints), img_size, dict(overrides or {}))
        res = run_cka(spec_a, spec_b, taps="fig7", images=images, data=data, num_images=num_images,
                      batch_size=batch_size, estimator=estimator, engine=engine, device=device,
                      progress=progress)
        res.meta["panel"] = f"Fig. 7{panel}"
        results[panel] = res
        sub = f"fig7{panel}_{a}_vs_{b}"
        write_report(res, stage / sub, title=f"DFFormer Fig. 7{panel}: {a} vs {b}")
        summary[panel] = {"model_a": a, "model_b": b, "report": sub, "taps": len(res.labels_a),
                          "random_weights": [s.name for s in (spec_a, spec_b) if s.checkpoint is None],
                          "wall_time_s": res.meta.get("wall_time_s")}
    fig = Figure(figsize=(6.4 * len(results), 6.8))
    for k, (panel, res) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), k + 1)
        plot_heatmap(res, ax=ax, colorbar=k == len(results) - 1)
        ax.set_title(f"({panel}) " + ax.get_title(), fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.96, top=0.84, bottom=0.09, wspace=0.3)
    fig.savefig(stage / "fig7.png", dpi=150)
    fig.savefig(stage / "fig7.pdf")
    write_json(stage / "summary.json", {"figure": "DFFormer Fig. 7", "estimator": estimator, "engine": engine,
                                        "batch_size": batch_size, "panels": summary})
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spectrascope.analyses.cka_fig7", description=__doc__.split("\n")[0])
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
    from spectrascope.engine.device import resolve_device
    ckpts = dict(item.split("=", 1) for item in args.checkpoint)
    try:
        res = compute(args.output, checkpoint_dir=args.checkpoint_dir, checkpoints=ckpts, images=args.images,
                  data=args.data, num_images=args.num_images, batch_size=args.batch_size,
                  device=resolve_device(args.device), img_size=args.img_size, estimator=args.estimator,
                  engine=args.engine, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    for panel, r in res.items():
        print(f"Fig. 7{panel}: {r.meta['model_a']['name']} vs {r.meta['model_b']['name']} "
              f"{len(r.labels_a)}x{len(r.labels_b)} over {r.examples} images")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
