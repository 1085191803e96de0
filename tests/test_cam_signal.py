"""The default CAM target on a trained model: a reduced DFFormer trained with ``spectrascope train``
on synthetic textures (two frequency bands, each in a box of half the image side on noise) localises
the texture with Score-CAM at its default target (stage 2, the last map of at least 7x7 at 64 px)
better than the same network with random weights, measured by the pointing game on the boxes the
data records. The stage-4 map (2x2 at 64 px), the former default, scored below random weights on
such a model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from spectrascope.cli import main

DATA = "synthetic:size=64,num_classes=2,orientations=1,train_size=768,val_size=64,noise=0.3,contrast=2"
MODEL = ["--model", "dfformer_s18", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=16,32,64,96"]
TRAIN = ["--epochs", "6", "-b", "32", "--lr", "5e-3", "--warmup-epochs", "0.5", "--smoothing", "0", "--seed", "42",
         "--no-progress"]


def _cli(args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cam-signal") / "train"
    _cli(["train", *MODEL, "--data", DATA, *TRAIN, "--output", folder])
    return folder / "last.pth"


def test_default_target_of_the_trained_model_beats_random_weights_on_the_pointing_game(trained, tmp_path):
    out = tmp_path / "cam"
    text = _cli(["cam", *MODEL, "--img-size", 64, "--model", "dfformer_s18", "--checkpoint", trained,
                 "--checkpoint", "-", "--seed", 0, "--data", DATA, "--num-images", 24, "--output", out])
    doc = json.loads((out / "results.json").read_text())
    assert "note: dfformer_s18: target layer stage2 (8x8 at 64 px): the last map of at least 7x7" in text
    trained_m, random_m = doc["models"]
    assert not trained_m["random_weights"] and random_m["random_weights"]
    assert trained_m["target_tap"] == random_m["target_tap"] == "stage2"
    got = [m["localisation"]["pointing_accuracy"] for m in doc["models"]]
    assert got[0] >= got[1] + 0.25, got
    assert got[0] >= 0.75, got
