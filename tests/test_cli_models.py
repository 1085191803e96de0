"""`spectrascope models` and `spectrascope predict`."""
import json

import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.cli import main

TINY = ["--img-size", "64", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32"]


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_models_table_and_json():
    r = run("models")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].split() == ["name", "family", "params", "input", "weights"]
    row = next(line for line in lines if line.startswith("dfformer_s18 "))
    assert row.split()[1:4] == ["dfformer", "30.32M", "224x224"]
    r = run("models", "convformer", "--json")
    cards = json.loads(r.output)
    assert [c["name"] for c in cards] == ["convformer_b36", "convformer_m36", "convformer_s18", "convformer_s36"]
    assert cards[2]["params"] == 26_774_448 and "mixer" in cards[2]["taps"]


def test_models_no_match_is_an_error():
    r = run("models", "nosuchfamily")
    assert r.exit_code != 0 and "no model matches" in r.output


def test_predict_on_bundled_photos_with_a_checkpoint(tmp_path):
    model = spectrascope.create_model("dfformer_s18", num_classes=3, img_size=64, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32])
    path = tmp_path / "m.pth"
    torch.save({"model": model.state_dict()}, path)
    r = run("predict", "--model", "dfformer_s18", "--checkpoint", str(path), "--num-images", "2", "--topk", "2", *TINY)
    assert r.exit_code == 0, r.output
    out = [line for line in r.output.splitlines() if "top-2" in line]
    assert len(out) == 2 and out[0].startswith("astronaut.jpg: logits (3,)")
    probs = [float(t.split(":")[1].rstrip("],")) for t in out[0].split("[")[1].split(", ")]
    assert 0 < probs[1] <= probs[0] <= 1


def test_predict_bad_inputs_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"junk")
    for args in (["--model", "dfformer_s17"], ["--model", "dfformer_s18", "--checkpoint", str(bad)],
                 ["--model", "dfformer_s18", "--images", str(tmp_path)]):
        r = run("predict", *args, *TINY)
        assert r.exit_code != 0
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, r.output


def test_training_checkpoint_carries_its_architecture(tmp_path):
    """A spectrascope training checkpoint rebuilds its reduced architecture and input size by itself."""
    overrides = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
    model = spectrascope.create_model("dfformer_s18", num_classes=3, img_size=(64, 64), **overrides)
    path = tmp_path / "last.pth"
    torch.save({"model": model.state_dict(),
                "args": {"model": "dfformer_s18", "spectrascope": {"model": "dfformer_s18", "num_classes": 3,
                                                                    "img_size": [64, 64], "overrides": overrides}}},
               path)
    r = run("predict", "--model", "dfformer_s18", "--checkpoint", str(path), "--num-images", "1")
    assert r.exit_code == 0, r.output
    assert "logits (3,)" in r.output
    r = run("predict", "--model", "convformer_s18", "--checkpoint", str(path), "--num-images", "1")
    assert r.exit_code != 0 and "trained as dfformer_s18" in r.output
