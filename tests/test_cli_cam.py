"""spectrascope cam and context: CAM maps and SPANet context maps (CLI)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.cli import main

DF_TINY = ["--img-size", "32", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32"]
CAM_TINY = ["--img-size", "64", *DF_TINY[2:]]          # default target: stage 2 (8x8)
SPANET_TINY = ["--img-size", "32", "--model-kwargs", "layers=1,1,1,1", "--model-kwargs", "embed_dims=8,16,20,32"]


def run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res


def ok(args):
    res = run(args)
    assert res.exit_code == 0, res.output
    return res


def need(name):
    if name not in spectrascope.list_models():
        pytest.skip(f"{name} is not in the zoo yet")


def test_cam_scorecam_grid_of_two_models(tmp_path):
    out = tmp_path / "cam"
    # stage 4 (2x2): every layer pixel is a corner of the bilinear upsampling, so the maximum stays 1
    res = ok(["cam", "--model", "dfformer_s18", "--model", "gfformer_s18", *CAM_TINY, "--num-images", "2",
              "--batch-size", "16", "--flavour", "torchcam", "--target-layer", "stage4", "--output", str(out)])
    assert "random weights" in res.output
    doc = json.loads((out / "results.json").read_text())
    assert [m["model"] for m in doc["models"]] == ["dfformer_s18", "gfformer_s18"]
    assert doc["models"][0]["target_layer"] == "stages.3" and doc["models"][0]["flavour"] == "torchcam"
    maps = np.load(out / "maps.npz")
    assert len(maps.files) == 4
    m = maps[maps.files[0]]
    assert m.shape == (64, 64) and m.min() >= 0 and m.max() == pytest.approx(1, abs=1e-5)
    assert (out / "grid.png").exists() and len(list((out / "overlays" / "dfformer_s18").glob("*.png"))) == 2


def test_cam_scorecam_batch_is_automatic_unless_given(tmp_path, monkeypatch):
    """Without --batch-size Score-CAM chooses its own masked-input batch (None reaches score_cam);
    with it, the given number is used."""
    import spectrascope.analyses.cam as cam_run
    seen = []
    real = cam_run.make_cam

    def spy(*args, **kw):
        seen.append(kw["batch_size"])
        return real(*args, **kw)

    monkeypatch.setattr(cam_run, "make_cam", spy)
    base = ["cam", "--model", "dfformer_s18", *CAM_TINY, "--num-images", "1"]
    ok(base + ["--output", str(tmp_path / "auto")])
    ok(base + ["--batch-size", "12", "--output", str(tmp_path / "given")])
    assert seen == [None, 12]


def test_cam_gradcam_with_class_and_target_layer(tmp_path):
    out = tmp_path / "gc"
    ok(["cam", "--model", "dfformer_s18", *CAM_TINY, "--num-images", "1", "--method", "gradcam++",
        "--target-layer", "s3.b0.block", "--class", "7", "--output", str(out)])
    doc = json.loads((out / "results.json").read_text())
    assert doc["models"][0]["target_layer"] == "stages.2.0" and doc["models"][0]["classes"] == [7]


def test_cam_localisation_on_synthetic_boxes(tmp_path):
    out = tmp_path / "loc"
    ok(["cam", "--model", "dfformer_s18", *CAM_TINY, "--data", "synthetic:num_classes=4", "--num-images", "3",
        "--method", "gradcam", "--output", str(out)])
    doc = json.loads((out / "results.json").read_text())
    loc = doc["models"][0]["localisation"]
    assert len(loc["pointing_hits"]) == 3 and 0 <= loc["mean_energy_in_box"] <= 1
    assert doc["models"][0]["classes"] == [0, 1, 2]                 # synthetic labels are the targets
    x0, y0, x1, y1 = doc["boxes"][0][0]
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    maps = np.load(out / "maps.npz")
    cam = torch.from_numpy(np.stack([maps[f"dfformer_s18/synthetic_{i:03d}"] for i in range(3)]))
    assert loc["energy_in_box"] == pytest.approx(spectrascope.energy_in_box(cam, doc["boxes"]).tolist(), abs=1e-6)


def test_context_maps(tmp_path):
    need("spanet_s")
    out = tmp_path / "ctx"
    res = ok(["context", "--model", "spanet_s", *SPANET_TINY, "--num-images", "2", "--output", str(out)])
    assert "s4.b0" in res.output
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["maps"]) == ["spg0", "spg1", "spg2", "context"]
    assert doc["maps"]["spg0"].endswith("0.7")
    maps = np.load(out / "maps.npz")
    assert maps[maps.files[0]].shape == (32, 32)
    ok(["context", "--model", "spanet_s", *SPANET_TINY, "--num-images", "1", "--block", "2",
        "--output", str(tmp_path / "ctx2")])
    assert json.loads((tmp_path / "ctx2" / "results.json").read_text())["block"] == "s2.b0"


@pytest.mark.parametrize("args,msg", [
    (["cam", "--model", "dfformer_s18", *DF_TINY, "--target-layer", "stages.9"], "unknown tap"),
    (["cam", "--model", "dfformer_s18", *DF_TINY, "--class", "5000", "--num-images", "1"], "outside"),
    (["cam", "--model", "dfformer_s18", "--model", "gfformer_s18", "--checkpoint", "a.pth"], "2 model(s)"),
    (["cam", "--model", "dfformer_s18", "--checkpoint", "missing.pth"], "not found"),
    (["cam", "--model", "dfformer_s18", *DF_TINY, "--images", "no_such_dir"], "not found"),
    (["context", "--model", "dfformer_s18", *DF_TINY], "context taps"),
])
def test_bad_inputs_fail_clearly(tmp_path, args, msg):
    out = tmp_path / "never"
    res = run([*args, "--output", str(out)])
    assert res.exit_code != 0
    assert msg in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and msg in errors[0] and "Traceback" not in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


@pytest.mark.parametrize("figure,files", [("spanet-fig4", ["context/grid.png"])])
def test_figure_recipes(tmp_path, figure, files):
    figures = pytest.importorskip("spectrascope.recipes")
    get_figure, run_figure = figures.get_figure, figures.run_figure
    spec, _ = get_figure(figure)
    for m in spec.models:
        need(m)
    folder, doc = run_figure(figure, output=tmp_path, img_size=64, num_images=1, device="cpu")
    for f in files:
        assert (folder / f).exists(), f
    assert doc["random_weights"] == list(spec.models)
    if figure == "affnet-kernels":
        assert doc["summary"]["equivalence_max_abs_error"] <= 1e-4
    if figure == "spanet-fig4":
        assert doc["summary"]["block"] == "s4.b3"


def _nan_checkpoint(tmp_path, name, **kw):
    torch.manual_seed(0)
    model = spectrascope.create_model(name, num_classes=1000, **kw)
    state = model.state_dict()
    key = [k for k, v in state.items() if v.is_floating_point() and v.ndim >= 2][1]
    state[key].view(-1)[0] = float("nan")
    path = tmp_path / f"{name}_nan.pth"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("command", ["scorecam", "gradcam", "context"])
def test_nonfinite_checkpoint_stops_in_one_line_and_writes_nothing(tmp_path, command):
    """NaN weights: one 'Error:' line naming the first non-finite tap and the weights, exit 2, no
    output folder and no staging leftovers (never an all-NaN map with 'top-1 class 0')."""
    out = tmp_path / "out"
    if command == "context":
        need("spanet_s")
        ck = _nan_checkpoint(tmp_path, "spanet_s", img_size=32, layers=[1, 1, 1, 1], embed_dims=[8, 16, 20, 32])
        args = ["context", "--model", "spanet_s", "--checkpoint", ck, *SPANET_TINY]
    else:
        ck = _nan_checkpoint(tmp_path, "dfformer_s18", img_size=64, depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
        args = ["cam", "--model", "dfformer_s18", "--checkpoint", ck, *CAM_TINY, "--method", command]
    res = run([*args, "--num-images", "1", "--output", str(out)])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "non-finite" in errors[0] and "model weights" in errors[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_results_json_is_strict(tmp_path):
    from spectrascope.io.results import loads
    out = tmp_path / "gc"
    ok(["cam", "--model", "dfformer_s18", *CAM_TINY, "--num-images", "2", "--method", "gradcam",
        "--output", str(out)])
    doc = loads((out / "results.json").read_text())         # refuses NaN / Infinity tokens
    assert doc["provenance"]["world_size"] == 1 and doc["models"][0]["target_tap"] == "stage2"


def test_cam_default_target_fits_the_input_and_is_named_in_a_note(tmp_path):
    """At 64 px the default is stage 2 (8x8), the last map of at least 7x7, for both models; a note
    names it (printed and kept in results.json)."""
    out = tmp_path / "cam"
    res = ok(["cam", "--model", "dfformer_s18", "--model", "gfformer_s18", *CAM_TINY, "--num-images", "2",
              "--method", "gradcam", "--output", str(out)])
    doc = json.loads((out / "results.json").read_text())
    assert [(m["target_tap"], m["target_layer"]) for m in doc["models"]] == [("stage2", "stages.1")] * 2
    assert "note: dfformer_s18: target layer stage2 (8x8 at 64 px): the last map of at least 7x7" in res.output
    assert "gfformer_s18: target layer stage2 (8x8 at 64 px): the last map of at least 7x7" in doc["notes"]
    assert "dfformer_s18: gradcam at stage2 on 2 images" in res.output


def test_cam_target_layer_stage_number_is_the_stage_output(tmp_path):
    """``--target-layer 4`` on DFFormer is the stage-4 output (not ``s4.b0.df_routing``); the
    summary line names the tap with its 1-based stage; a stage the model lacks is one line, exit 2."""
    out = tmp_path / "cam4"
    res = ok(["cam", "--model", "dfformer_s18", *CAM_TINY, "--num-images", "2", "--method", "gradcam",
              "--target-layer", "4", "--output", str(out)])
    doc = json.loads((out / "results.json").read_text())
    m = doc["models"][0]
    assert (m["target_tap"], m["target_layer"], m["target_layout"]) == ("stage4", "stages.3", "NHWC")
    assert "dfformer_s18: gradcam at stage4 on 2 images" in res.output
    assert "target layer" not in res.output                   # an explicit target has no note
    bad = run(["cam", "--model", "dfformer_s18", *CAM_TINY, "--num-images", "2", "--method", "gradcam",
               "--target-layer", "5", "--output", str(tmp_path / "cam5")])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1] == ("Error: --target-layer: stage 5 is not a stage of dfformer_s18 "
                                                   "(stages 1, 2, 3, 4; or give a tap name or path:MODULE)")
    assert not (tmp_path / "cam5").exists()
