"""What a command says about its inputs: class names in ``predict`` (the shipped ImageNet-1k list,
a training run's recorded classes), ``convert --to timm`` refusing families timm has no model for,
the note when ``--data`` is not the data a training checkpoint records, ``amplitude`` on several
models, and progress bars (stderr, only on a terminal, only with the progress switch)."""
from __future__ import annotations

import csv
import io
import json
import re
import sys

import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.cli import main
from spectrascope.io.classnames import (IMAGENET_CLASSES_FILE, imagenet_classes, imagenet_lines, imagenet_synsets,
                                        timm_imagenet_info)
from spectrascope.io.specs import data_spec_differences

KW = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
TINY = ["--img-size", "32", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _checkpoint(path, num_classes: int, favour: int, args: dict | None = None, name: str = "dfformer_s18"):
    """A tiny checkpoint whose head outputs only its bias, ``favour`` by 30 logits (probability 1.000)."""
    model = spectrascope.create_model(name, num_classes=num_classes, img_size=32, **KW)
    state = model.state_dict()
    state["head.fc2.weight"].zero_()
    state["head.fc2.bias"].zero_()
    state["head.fc2.bias"][favour] = 30.0
    torch.save({"model": state, **({"args": args} if args else {})}, path)
    return path


def _top(output: str) -> list[str]:
    return [line for line in output.splitlines() if " top-" in line]


# ---------------------------------------------------------------------------- predict: class names

def test_shipped_imagenet_names_in_class_order():
    names, ids = imagenet_classes(), imagenet_synsets()
    assert len(names) == len(ids) == 1000 and len(set(ids)) == 1000
    assert (ids[0], names[0]) == ("n01440764", "tench")
    assert (ids[207], names[207]) == ("n02099601", "golden retriever")
    assert (names[281], names[999]) == ("tabby", "toilet tissue")
    assert "timm" in IMAGENET_CLASSES_FILE.read_text().splitlines()[2]        # the header names the source


def test_shipped_imagenet_names_are_those_of_the_installed_timm():
    """The file is what ``write_imagenet_classes`` makes from timm's metadata (the header's version aside)."""
    found = timm_imagenet_info()
    if found is None:
        pytest.skip("timm is not installed")
    synsets, lemmas, _ = found
    shipped = [line for line in IMAGENET_CLASSES_FILE.read_text().splitlines() if not line.startswith("#")]
    made = [line for line in imagenet_lines(synsets, lemmas, "timm") if not line.startswith("#")]
    assert shipped == made


def test_predict_names_imagenet_classes_of_a_1000_class_head(tmp_path):
    ck = _checkpoint(tmp_path / "in1k.pth", 1000, favour=207)
    r = run("predict", "--model", "dfformer_s18", "--checkpoint", ck, "--num-images", "2", "--topk", "3", *TINY)
    assert r.exit_code == 0, r.output
    lines = _top(r.output)
    assert len(lines) == 2
    assert lines[0].startswith("astronaut.jpg: logits (1000,) top-3 [207 golden retriever:1.000, ")
    for line in lines:                                   # every printed name is the one of its index
        for idx, name in re.findall(r"(\d+) ([^:\[,]+):", line.split("[", 1)[1]):
            assert imagenet_classes()[int(idx)] == name


def test_predict_names_the_classes_a_training_checkpoint_records(tmp_path):
    spec = {"model": "dfformer_s18", "num_classes": 3, "img_size": [32, 32], "overrides": KW,
            "classes": ["calm", "ripples", "storm"]}
    ck = _checkpoint(tmp_path / "last.pth", 3, favour=2, args={"model": "dfformer_s18", "spectrascope": spec})
    r = run("predict", "--model", "dfformer_s18", "--checkpoint", ck, "--num-images", "1", "--topk", "2")
    assert r.exit_code == 0, r.output
    assert _top(r.output)[0] in ("astronaut.jpg: logits (3,) top-2 [2 storm:1.000, 0 calm:0.000]",
                                 "astronaut.jpg: logits (3,) top-2 [2 storm:1.000, 1 ripples:0.000]")


def test_predict_without_names_prints_indices(tmp_path):
    ck = _checkpoint(tmp_path / "three.pth", 3, favour=1)
    r = run("predict", "--model", "dfformer_s18", "--checkpoint", ck, "--num-images", "1", "--topk", "2", *TINY)
    assert r.exit_code == 0, r.output
    assert _top(r.output)[0].startswith("astronaut.jpg: logits (3,) top-2 [1:1.000, ")


# ---------------------------------------------------------------------------- convert --to timm

ACCEPTED = "--to timm accepts convformer, caformer, poolformerv2, poolformer"


@pytest.mark.parametrize("name, key", [("dfformer_s18", "stages.0.0.token_mixer.complex_weights"),
                                       ("gfformer_s18", "stages.0.0.token_mixer.complex_weights"),
                                       ("randformer_s12", "stages.2.0.token_mixer.random_matrix")])  # pooling in stages 1-2
def test_convert_to_timm_refuses_families_timm_lacks(tmp_path, name, key):
    model = spectrascope.create_model(name, num_classes=3, img_size=32,
                                      **({"depths": [1, 1, 1, 1]} if name != "randformer_s12" else {}))
    src = tmp_path / "m.pth"
    torch.save(model.state_dict(), src)
    r = run("convert", src, tmp_path / "out.pth", "--to", "timm")
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"Error: --to: {src}: its token mixers ({key}) are of a family timm has no model for; {ACCEPTED}"]
    assert not (tmp_path / "out.pth").exists()
    r = run("convert", src, tmp_path / "out.pth", "--to", "timm", "--model", name)
    family = name.split("_")[0]
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"Error: --to: {src}: a {family} checkpoint ({name}), a family timm has no model for; {ACCEPTED}"]


def test_convert_to_timm_refuses_a_dfformer_training_checkpoint(tmp_path):
    spec = {"model": "dfformer_s18", "num_classes": 3, "img_size": [32, 32], "overrides": KW}
    ck = _checkpoint(tmp_path / "last.pth", 3, favour=0, args={"model": "dfformer_s18", "spectrascope": spec})
    r = run("convert", ck, tmp_path / "out.pth", "--to", "timm")
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"Error: --to: {ck}: a dfformer checkpoint (dfformer_s18), a family timm has no model for; {ACCEPTED}"]
    assert not (tmp_path / "out.pth").exists()


def test_convert_to_timm_still_takes_the_families_timm_has(tmp_path):
    for name in ("convformer_s18", "caformer_s18", "poolformerv2_s12", "poolformer_s12"):
        model = spectrascope.create_model(name, num_classes=3, img_size=32)
        src = tmp_path / f"{name}.pth"
        torch.save(model.state_dict(), src)
        r = run("convert", src, tmp_path / f"{name}-timm.pth", "--to", "timm")
        assert r.exit_code == 0, r.output
        assert (tmp_path / f"{name}-timm.pth").is_file()


# ---------------------------------------------------------------------------- --data vs the training data

def test_data_spec_differences():
    assert data_spec_differences("synthetic:patch=0.75", "synthetic") == ["patch 0.5 (trained at 0.75)"]
    assert data_spec_differences("synthetic:patch=0.5,train_size=64,seed=3", "synthetic:size=128") == []
    assert data_spec_differences("synthetic:num_classes=4", "synthetic:num_classes=4,noise=0.2") == [
        "noise 0.2 (trained at 0.5)"]
    assert data_spec_differences("cifar10:/data/c10", "synthetic") == ["synthetic data (trained on cifar10)"]
    assert data_spec_differences("cifar10:/data/c10", "cifar10:/data/c10/") == []


def test_note_when_data_is_not_the_training_data(tmp_path):
    spec = {"model": "dfformer_s18", "num_classes": 8, "img_size": [32, 32], "overrides": KW}
    ck = _checkpoint(tmp_path / "last.pth", 8, favour=0,
                     args={"model": "dfformer_s18", "data": "synthetic:patch=0.75", "spectrascope": spec})
    r = run("predict", "--model", "dfformer_s18", "--checkpoint", ck, "--data", "synthetic", "--num-images", "1")
    assert r.exit_code == 0, r.output
    assert ("note: dfformer_s18: --data synthetic is not the data it was trained on (synthetic:patch=0.75): "
            "patch 0.5 (trained at 0.75)") in r.output.splitlines()
    r = run("predict", "--model", "dfformer_s18", "--checkpoint", ck, "--data", "synthetic:patch=0.75,val_size=4",
            "--num-images", "1")
    assert r.exit_code == 0 and "not the data it was trained on" not in r.output


# ---------------------------------------------------------------------------- amplitude on several models

def test_amplitude_of_two_models_keeps_both(tmp_path):
    """``--model A --model B``: one result with both models, each with the curves of its own run."""
    common = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32", "--img-size", "32",
              "--num-images", "2", "--seed", "0"]
    assert run("amplitude", "--model", "dfformer_s18", "--model", "gfformer_s18", *common,
               "--output", tmp_path / "both").exit_code == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    assert [m["model"] for m in both["models"]] == ["dfformer_s18", "gfformer_s18"]
    with open(tmp_path / "both" / "amplitude.csv") as f:
        assert {row["model"] for row in csv.DictReader(f)} == {"dfformer_s18", "gfformer_s18"}
    for k, name in enumerate(["dfformer_s18", "gfformer_s18"]):
        assert run("amplitude", "--model", name, *common, "--output", tmp_path / name).exit_code == 0
        alone = json.loads((tmp_path / name / "results.json").read_text())["models"][0]
        assert [(t["name"], t["curve"]) for t in both["models"][k]["taps"]] == \
            [(t["name"], t["curve"]) for t in alone["taps"]]


# ---------------------------------------------------------------------------- progress bars

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _cam(progress: bool):
    return spectrascope.run("cam", model="dfformer_s18", model_kwargs=KW, img_size=32, num_images=2, data="synthetic",
                            seed=0, progress=progress)


def test_score_cam_progress_bar_on_a_terminal_only(monkeypatch):
    """A bar per model over the images (with the rate and ETA) and one per image over the masks, on
    stderr when it is a terminal and the progress switch is on; nothing otherwise."""
    import tqdm.auto
    real = tqdm.auto.tqdm

    def every_step(*args, **kwargs):          # redraw at every step (a fast run otherwise skips 2/2)
        return real(*args, mininterval=0, miniters=1, **kwargs)
    monkeypatch.setattr(tqdm.auto, "tqdm", every_step)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    _cam(progress=True)
    text = term.getvalue()
    assert re.search(r"scorecam dfformer_s18: +\d+%.*\| 2/2 \[\d\d:\d\d<\d\d:\d\d, ", text), text[-500:]
    assert re.search(r"score-cam: +100%.*\| 8/8 \[", text), text[-500:]          # stage 1 of 8 channels
    for stream, progress in ((io.StringIO(), True), (_Terminal(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        _cam(progress=progress)
        assert stream.getvalue() == ""
