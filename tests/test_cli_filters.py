"""spectrascope filters: bases, global filters, adaptive masks, SPF masks (CLI)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.ops import filters as fl
from spectrascope.cli import main

DF_TINY = ["--img-size", "32", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32"]
CAM_TINY = ["--img-size", "64", *DF_TINY[2:]]          # stage 4 at 2x2 (at 32 px it is one pixel: a flat map)
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


def test_filters_dfformer_bases_routing_effective(tmp_path):
    model = spectrascope.create_model("dfformer_s18", num_classes=1000, img_size=32, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32])
    ck = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), ck)
    out = tmp_path / "out"
    res = ok(["filters", "--model", "dfformer_s18", "--checkpoint", str(ck), *DF_TINY, "--routing",
              "--effective", "1", "--num-images", "2", "--output", str(out)])
    assert "basis_filters.png" in res.output
    doc = json.loads((out / "results.json").read_text())
    assert [x["name"] for x in doc["layers"]] == ["s1.b0", "s2.b0", "s3.b0", "s4.b0"]
    assert doc["provenance"]["random_weights"] is False and doc["provenance"]["checkpoint_sha256"]
    npz = np.load(out / "filters.npz")
    ref = fl.filter_amplitude(fl.param_to_filters(model.stages[3][0].token_mixer.complex_weights.detach()))
    assert np.abs(npz["amplitude/s4.b0"] - ref.numpy()).max() <= 1e-6
    assert npz["amplitude/s1.b0"].shape == (4, 8, 8)
    share = doc["routing"]["s2.b0"]["argmax_share"]
    assert len(share) == 4 and abs(sum(share) - 1) < 1e-5
    assert npz["routing_mean/s3.b0"].shape == (4, 48)
    assert npz["effective_amplitude/s1.b0"].shape == (1, 4, 8, 8)
    for f in ("basis_filters.png", "routing.png"):
        assert (out / f).stat().st_size > 1000


def test_filters_layer_selection_and_global_filters(tmp_path):
    out = tmp_path / "gf"
    ok(["filters", "--model", "gfformer_s18", *DF_TINY, "--layers", "3,s4.*", "--channels", "0-5",
        "--output", str(out)])
    doc = json.loads((out / "results.json").read_text())
    assert [x["name"] for x in doc["layers"]] == ["s3.b0", "s4.b0"]
    assert doc["layers"][0]["kind"] == "global" and doc["layers"][0]["filters"] == 48
    assert doc["provenance"]["random_weights"] is True
    assert (out / "global_filters.png").exists()


def test_filters_gfnet(tmp_path):
    need("gfnet_ti")
    out = tmp_path / "gfnet"
    ok(["filters", "--model", "gfnet_ti", "--img-size", "64", "--model-kwargs", "depth=2", "--model-kwargs",
        "embed_dim=16", "--output", str(out)])
    doc = json.loads((out / "results.json").read_text())
    assert [x["grid"] for x in doc["layers"]] == [[4, 4], [4, 4]]
    assert doc["layers"][0]["parameter"] == "blocks.0.filter.complex_weight"


def test_filters_affnet_masks_and_kernel_equivalence(tmp_path):
    need("affnet_et")
    out = tmp_path / "aff"
    res = ok(["filters", "--model", "affnet_et", "--img-size", "64", "--num-images", "1", "--layers", "s5.*",
              "--output", str(out)])
    assert "circular convolution" in res.output
    doc = json.loads((out / "results.json").read_text())
    assert [a["name"] for a in doc["aff"]] == ["s5.b0", "s5.b1", "s5.b2"]
    for a in doc["aff"]:
        assert a["equivalence_max_abs_error"] <= 1e-4
    npz = np.load(out / "filters.npz")
    mask, kernel = npz["aff_mask/s5.b0"], npz["aff_kernel/s5.b0"]
    assert mask.shape[-2:] == (2, 2) and kernel.shape[-2:] == (2, 2)
    assert np.abs(fl.equivalent_kernel(torch.from_numpy(mask), width=2).numpy() - kernel).max() <= 1e-6


def test_filters_spanet_masks(tmp_path):
    need("spanet_s")
    out = tmp_path / "spf"
    ok(["filters", "--model", "spanet_s", *SPANET_TINY, "--output", str(out)])
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["spf"]) == 12                                     # 4 stages x 3 lambdas
    s1 = [r for r in doc["spf"] if r["stage"] == 1][0]
    assert s1["radius"] == 2 and s1["grid"] == [8, 8]
    assert s1["values"] == pytest.approx(sorted([0.3, 1 / 3, 0.7]), abs=1e-5)


@pytest.mark.parametrize("args,msg", [
    (["filters", "--model", "nope"], "unknown model"),
    (["filters", "--model", "convformer_s18", *DF_TINY], "no frequency filters"),
    (["filters", "--model", "dfformer_s18", *DF_TINY, "--layers", "s9.*"], "matches none"),
    (["filters", "--model", "dfformer_s18", *DF_TINY, "--channels", "a-b"], "channel list"),
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


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = run(["filters", "--model", "dfformer_s18", *DF_TINY, "--output", str(out)])
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert (out / "keep.txt").exists()


@pytest.mark.parametrize("figure,files", [("affnet-kernels", ["affnet/results.json"])])
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


def _tiny_checkpoint(tmp_path, poison=None):
    torch.manual_seed(1)
    model = spectrascope.create_model("dfformer_s18", num_classes=1000, img_size=32, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32])
    state = model.state_dict()
    if poison is not None:
        key, value = poison
        state[key] = state[key].clone()
        state[key].view(-1)[0] = value
    ck = tmp_path / f"tiny-{abs(hash(str(poison))) % 1000}.pth"
    torch.save(state, ck)
    return ck


@pytest.mark.parametrize("key,value,routing", [
    ("stages.2.0.token_mixer.complex_weights", float("nan"), False),     # the filters themselves
    ("stages.0.0.mlp.fc1.weight", float("inf"), True),                   # elsewhere in the weights
])
def test_nonfinite_checkpoint_stops_in_one_line_and_writes_nothing(tmp_path, key, value, routing):
    ck = _tiny_checkpoint(tmp_path, (key, value))
    out = tmp_path / "never"
    res = run(["filters", "--model", "dfformer_s18", "--checkpoint", str(ck), *DF_TINY, "--num-images", "2",
               *(["--routing"] if routing else []), "--output", str(out)])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "non-finite" in errors[0] and key in errors[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_nonfinite_forward_names_the_first_tap(tmp_path):
    """Finite weights, a NaN pixel in image 4: the runner names the first non-finite tap, the batch and the cause."""
    from spectrascope.analyses.filters import routing_statistics
    from spectrascope.engine.runner import RunConfig, Runner
    from spectrascope.errors import NonFiniteError
    model = spectrascope.create_model("dfformer_s18", num_classes=3, img_size=32, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32]).eval()
    data = [torch.randn(3, 32, 32) for _ in range(4)]
    data[3][1, 5, 7] = float("nan")
    with pytest.raises(NonFiniteError, match=r"tap s1\.b0\.df_routing in batch 2 \(images 3-4\).*input"):
        routing_statistics(model, data, Runner(RunConfig("cpu", batch_size=2)))


def test_routing_under_torchrun_equals_one_process(tmp_path):
    from tests.distributed import torchrun
    ck = _tiny_checkpoint(tmp_path)
    args = ["filters", "--model", "dfformer_s18", "--checkpoint", str(ck), *DF_TINY, "--routing", "--num-images", "5",
            "--batch-size", "2", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    ok([*args, "--output", str(one)])
    res = torchrun([*args, "--output", str(two)], cwd=tmp_path, nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("filters of dfformer_s18") == 1                # rank 0 reports
    d1, d2 = (json.loads((p / "results.json").read_text()) for p in (one, two))
    assert d1["provenance"]["world_size"] == 1 and d2["provenance"]["world_size"] == 2
    assert list(d1["routing"]) == list(d2["routing"]) == ["s1.b0", "s2.b0", "s3.b0", "s4.b0"]
    for name, r1 in d1["routing"].items():
        r2 = d2["routing"][name]
        assert r1["images"] == r2["images"] == 5
        assert np.allclose(r2["argmax_share"], r1["argmax_share"], rtol=1e-6, atol=0)
        assert r2["mean_entropy_nats"] == pytest.approx(r1["mean_entropy_nats"], rel=1e-6)
    n1, n2 = np.load(one / "filters.npz"), np.load(two / "filters.npz")
    assert sorted(n1.files) == sorted(n2.files)
    for k in n1.files:
        assert np.allclose(n2[k], n1[k], rtol=1e-6, atol=1e-7), k
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
