"""The figures of the documentation site (``docs/img/*.png``), made from models trained here.

``make docs-figures`` runs this script. It trains two reduced models on the synthetic textures
(the DFFormer-S18 of the training tutorial and the GFFormer-S18 of the CKA tutorial) with the
documented ``spectrascope train`` commands, unless their run folders already hold ``last.pth``,
then runs the analyses through ``spectrascope.run`` and copies the figures they write into
``docs/img/``, reduced to at most ``--width`` pixels and 256 colours so that the pages stay light.
The few figures that no command draws (FLOPs by stage, predictions, accuracy during training) are
drawn here from the results, with the toolkit's plot style.

Usage::

    python docs/make_figures.py [--work build/docs-figures] [--width 700]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
DATA = "synthetic:patch=0.75"
#: the reduced models: run folder -> (model, constructor overrides, data spec, epochs) of their tutorials
MODELS = {
    "synthetic-demo": ("dfformer_s18", ["depths=1,1,1,1", "dims=16,32,64,96"], DATA, 4),
    "synthetic-gf": ("gfformer_s18", ["depths=1,1,1,1", "dims=16,32,64,96"], DATA + ",train_size=1024", 2),
}
#: the SPANet of the context figure (random weights: its spectral pooling masks are fixed, not learned)
SPANET = ["layers=1,1,1,1", "embed_dims=16,32,64,96"]
#: the full-size models of the throughput and FLOPs figures
S18 = ["convformer_s18", "caformer_s18", "dfformer_s18", "cdfformer_s18"]


def train(work: Path, folder: str) -> Path:
    """The run folder of one reduced model, trained with the documented command unless it exists."""
    run = work / "runs" / "train" / folder
    if (run / "last.pth").exists():
        return run
    model, kwargs, data, epochs = MODELS[folder]
    cmd = [sys.executable, "-m", "spectrascope.cli", "train", "--model", model]
    for kw in kwargs:
        cmd += ["--model-kwargs", kw]
    cmd += ["--data", data, "--epochs", str(epochs), "-b", "32", "--warmup-epochs", "1", "--output", str(run),
            "--no-progress"]
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=work)
    return run


def publish(src: Path, name: str, width: int, colors: int = 256) -> Path:
    """``src`` as ``docs/img/<name>``: at most ``width`` px wide, ``colors`` colours, optimised."""
    from PIL import Image

    im = Image.open(src).convert("RGB")
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    out = IMG / name
    im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"{out.relative_to(ROOT)}: {im.width}x{im.height}, {out.stat().st_size / 1024:.0f} KiB", flush=True)
    return out


def analyses(work: Path, runs: dict, width: int) -> dict:
    """Run the analyses of the pages; publish the figures the commands draw. Returns the results."""
    import spectrascope

    out = work / "runs"
    demo = str(runs["synthetic-demo"] / "last.pth")
    common = dict(data=DATA, overwrite=True, seed=0)
    res = {}

    res["amplitude"] = spectrascope.run("amplitude", model="dfformer_s18", checkpoint=demo, num_images=64,
                                        output=out / "amplitude", **common)
    publish(out / "amplitude" / "amplitude.png", "amplitude.png", width)
    spectrascope.plot(out / "amplitude", output=out / "amplitude-true-freq", formats=("png",), overwrite=True,
                      options={"freq_axis": "true"})
    publish(out / "amplitude-true-freq" / "amplitude.png", "plot.png", width)

    spectrascope.run("spectrum", model="dfformer_s18", checkpoint=demo, num_images=64, output=out / "spectrum",
                     **common)
    publish(out / "spectrum" / "spectrum.png", "spectrum.png", width)

    spectrascope.run("filters", model="dfformer_s18", checkpoint=demo, layers="1", output=out / "filters",
                     **common)
    publish(out / "filters" / "basis_filters.png", "filters-trained.png", width)
    kwargs = MODELS["synthetic-demo"][1]
    spectrascope.run("filters", model="dfformer_s18", model_kwargs=kwargs, img_size=64, layers="1",
                     output=out / "filters-init", **common)
    publish(out / "filters-init" / "basis_filters.png", "filters-init.png", width)

    res["cam"] = spectrascope.run("cam", model="dfformer_s18", checkpoint=demo, num_images=4, ncols=2,
                                  output=out / "cam", **common)                # default target: stage 2 at 64 px
    publish(out / "cam" / "grid.png", "cam.png", width * 6 // 7, colors=48)     # photographs: few colours

    spectrascope.run("context", model="spanet_s", model_kwargs=SPANET, img_size=64, num_images=3,
                     output=out / "context", **common)
    publish(out / "context" / "grid.png", "context.png", width * 6 // 7, colors=48)

    spectrascope.run("throughput", model=S18, resolutions="64,128,192", batch_size=2, warmup=2, iters=5,
                     device="cpu", output=out / "throughput", overwrite=True)
    publish(out / "throughput" / "throughput_vs_resolution.png", "throughput.png", width)

    res["flops"] = spectrascope.run("flops", model=S18, by="stage")
    res["predict"] = spectrascope.run("predict", model="dfformer_s18", checkpoint=demo, data=DATA, num_images=8,
                                      topk=1)
    runs["synthetic-gf"] = train(work, "synthetic-gf")          # the second model of the CKA tutorial
    spectrascope.run("cka", model=["gfformer_s18", "dfformer_s18"],
                     checkpoint=[str(runs["synthetic-gf"] / "last.pth"), demo], num_images=256, batch_size=32,
                     output=out / "cka", **common)
    publish(out / "cka" / "cka.png", "cka.png", width)
    res["evaluate"] = {f: spectrascope.run("evaluate", checkpoint=str(runs[f] / "last.pth"), data=DATA)
                       for f in MODELS}
    return res


def draw_flops(result, width: int, work: Path) -> None:
    """FLOPs by stage of the S18 models: one group of bars per stage."""
    from spectrascope.report.style import new_figure, paper_name, save_figure

    counts = result.counts
    totals = [{k: sum(v.values()) for k, v in c.by_stage().items()} for c in counts]
    stages = sorted({k for t in totals for k in t if k.startswith("stage")}, key=lambda k: int(k.split()[-1]))
    fig = new_figure(4.2, 2.4)
    ax = fig.add_subplot(1, 1, 1)
    n = len(counts)
    for i, (c, by) in enumerate(zip(counts, totals)):
        xs = [j + (i - (n - 1) / 2) * 0.8 / n for j in range(len(stages))]
        ax.bar(xs, [by.get(s, 0) / 1e9 for s in stages], width=0.8 / n, label=paper_name(c.model))
    ax.set_xticks(range(len(stages)), [st.split()[-1] for st in stages])
    ax.set_xlabel("stage")
    ax.set_ylabel("FLOPs (G, FFTs left out)")
    ax.set_title("FLOPs by stage at 224 px")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    path = save_figure(fig, work / "runs" / "flops-figure", "flops", formats=("png",), dpi=200)[0]
    publish(path, "flops.png", width)


def draw_predict(result, width: int, work: Path) -> None:
    """The first images with the predicted class, its probability and the true class."""
    import numpy as np
    from PIL import Image

    from spectrascope.io.sources import ImageSource
    from spectrascope.report.style import new_figure, save_figure

    src = ImageSource.resolve(data=DATA, num_images=len(result.predictions))
    fig = new_figure(4.8, 1.5)
    for i, (path, pred) in enumerate(zip(src.paths, result.predictions)):
        ax = fig.add_subplot(1, len(result.predictions), i + 1)
        ax.imshow(np.asarray(Image.open(path).convert("RGB")))
        ax.set_axis_off()
        cls, prob = pred["classes"][0], pred["probabilities"][0]
        ax.set_title(f"{cls} ({prob:.2f})\n[{src.labels[i]}]", fontsize=6)
    path = save_figure(fig, work / "runs" / "predict-figure", "predict", formats=("png",), dpi=200)[0]
    publish(path, "predict.png", width)


def draw_evaluate(evaluations: dict, runs: dict, width: int, work: Path) -> None:
    """Validation top-1 per epoch of each reduced model (metrics.csv) and its final evaluation."""
    from matplotlib.ticker import MaxNLocator

    from spectrascope.report.style import new_figure, paper_name, save_figure

    fig = new_figure(3.6, 2.2)
    ax = fig.add_subplot(1, 1, 1)
    for folder, run in runs.items():
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        epochs = [int(r["epoch"]) for r in rows]
        line, = ax.plot(epochs, [float(r["top1"]) for r in rows], marker="o", ms=3,
                        label=f"{paper_name(MODELS[folder][0])} (reduced)")
        ax.plot([epochs[-1]], [evaluations[folder].results["top1"]], marker="*", ms=9, color=line.get_color(),
                linestyle="none")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("reduced models on synthetic textures (star: evaluate)")
    ax.axhline(12.5, color="0.6", lw=0.7, ls="--")
    ax.text(1.0, 14, "chance", color="0.4", fontsize=6)
    ax.legend(loc="lower right", frameon=False)
    path = save_figure(fig, work / "runs" / "evaluate-figure", "evaluate", formats=("png",), dpi=200)[0]
    publish(path, "evaluate.png", width)


def main(argv=None) -> int:
    """Train (if needed), run the analyses and write ``docs/img/``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "docs-figures",
                    help="folder for the training runs and results (reused: existing runs are not trained again)")
    ap.add_argument("--width", type=int, default=700, help="largest width of a published figure (px)")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SPECTRASCOPE_CACHE", str(work / "cache"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.chdir(work)
    IMG.mkdir(parents=True, exist_ok=True)
    runs = {"synthetic-demo": train(work, "synthetic-demo")}
    res = analyses(work, runs, args.width)
    draw_flops(res["flops"], args.width, work)
    draw_predict(res["predict"], args.width, work)
    draw_evaluate(res["evaluate"], runs, args.width, work)
    total = sum(p.stat().st_size for p in IMG.glob("*.png"))
    print(f"docs/img: {len(list(IMG.glob('*.png')))} figures, {total / 1024:.0f} KiB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
