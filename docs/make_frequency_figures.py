"""The figures of the frequency-robustness pages (docs/analyses/*.md): a tiny DFFormer trained with
``spectrascope train`` on the synthetic textures (four classes, one per frequency band), beside the
same architecture with random weights, through the five analyses.

    python docs/make_frequency_figures.py                       # -> docs/analyses/figures/*.png
    python docs/make_frequency_figures.py --work runs/docs --num-images 64

The training recipe (``SYNTHETIC``, ``MODEL_KWARGS``, ``TRAIN_ARGS``, ``train``) is the one the
real-signal test (tests/test_frequency_signal.py) trains and measures.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

#: the data: 32 x 32 textures filling the image, one class per frequency band (no orientation classes)
SYNTHETIC = "synthetic:size=32,patch=1.0,num_classes=4,orientations=1,train_size=384,val_size=64"
#: the tiny DFFormer
MODEL = "dfformer_s18"
MODEL_KWARGS = ("depths=1,1,1,1", "dims=8,16,32,48")
#: four epochs, no label smoothing
TRAIN_ARGS = ("--epochs", "4", "-b", "32", "--lr", "3e-3", "--smoothing", "0", "--seed", "42", "--no-progress")
FIGURES = Path(__file__).resolve().parent / "analyses" / "figures"


def _cli(args) -> None:
    from click.testing import CliRunner

    from spectrascope.cli import main
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if res.exit_code != 0:
        raise RuntimeError(f"spectrascope {args[0]} failed:\n{res.output}")


def model_args() -> list[str]:
    """``--model`` and ``--model-kwargs`` of the tiny DFFormer."""
    out = ["--model", MODEL]
    for kw in MODEL_KWARGS:
        out += ["--model-kwargs", kw]
    return out


def train(folder) -> Path:
    """Train the tiny DFFormer into ``folder`` (``spectrascope train``); returns its last checkpoint."""
    folder = Path(folder)
    _cli(["train", *model_args(), "--data", SYNTHETIC, *TRAIN_ARGS, "--output", folder, "--overwrite"])
    return folder / "last.pth"


def trained_vs_random(checkpoint) -> list[str]:
    """The options of a run comparing the trained model with its random-weights twin (--seed 0)."""
    return [*model_args(), "--model", MODEL, "--checkpoint", str(checkpoint), "--checkpoint", "-", "--seed", "0"]


def analyses(work, checkpoint, num_images: int = 64) -> dict[str, Path]:
    """Run the five analyses on the trained model and its random twin; returns their folders."""
    work = Path(work)
    common = [*trained_vs_random(checkpoint), "--data", SYNTHETIC, "--num-images", num_images, "--batch-size", 32]
    runs = {
        "fourier-heatmap": ["--forward-batch", 1024],
        "freq-noise": ["--shape", "circle"],
        "freq-filter": ["--units", "cycles"],
        "freq-sensitivity": [],
    }
    out = {}
    for name, extra in runs.items():
        out[name] = work / name
        _cli([name, *common, *extra, "--output", out[name], "--overwrite"])
    out["corruptions"] = work / "corruptions"
    _cli(["corruptions", *common, "--heatmap", out["fourier-heatmap"], "--output", out["corruptions"],
          "--overwrite"])
    return out


#: which figure of each result illustrates its page
PAGE_FIGURE = {"fourier-heatmap": "heatmap.png", "freq-noise": "noise.png", "freq-filter": "filter.png",
               "freq-sensitivity": "sensitivity.png", "corruptions": "corruption_spectra.png"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/docs-frequency", help="folder for the training run and the results")
    ap.add_argument("--output", default=str(FIGURES), help="where the pages' figures go")
    ap.add_argument("--num-images", type=int, default=64)
    args = ap.parse_args(argv)
    work = Path(args.work)
    checkpoint = work / "train" / "last.pth"
    if checkpoint.is_file():
        print(f"using the trained model {checkpoint} (another --work trains a new one)")
    else:
        checkpoint = train(work / "train")
    folders = analyses(work, checkpoint, args.num_images)
    dest = Path(args.output)
    dest.mkdir(parents=True, exist_ok=True)
    for name, folder in folders.items():
        shutil.copyfile(folder / PAGE_FIGURE[name], dest / f"{name}.png")
        print(f"{name}: {dest / (name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
