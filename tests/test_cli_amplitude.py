"""`spectrascope amplitude | spectrum | plot | figure`: outputs, end-to-end values, bad inputs."""
from __future__ import annotations

import csv
import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.cli import main
from spectrascope.io.images import load_batch, paths_digest, sample_images
from spectrascope.zoo.build import build_for_inference
from spectrascope.ops.fourier import relative_log_amplitude
from spectrascope.probe import Probe, model_taps

TINY_KW = ["--model-kwargs", "depths=1,1,2,1", "--model-kwargs", "dims=8,16,24,32"]
FAST = ["--img-size", "64", "--num-images", "2"]


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(res, *needles):
    assert res.exit_code != 0
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
    for n in needles:
        assert n in lines[0], lines[0]


def assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def load(out):
    return json.loads((out / "results.json").read_text())


def assert_figures(out, *stems):
    for stem in stems:
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert pdf.read_bytes()[:5] == b"%PDF-"


# ---------------------------------------------------------------------------- amplitude

def test_amplitude_outputs_and_end_to_end_values(tmp_path):
    out = tmp_path / "amp"
    torch.manual_seed(0)
    res = run(["amplitude", "--model", "dfformer_s18", *TINY_KW, *FAST, "--output", out])
    assert res.exit_code == 0, res.output
    assert "random weights" in res.output and str(out) in res.output
    doc = load(out)
    paths = sample_images()[:2]
    assert doc["kind"] == "amplitude" and doc["schema_version"] == 2 and doc["analysis"] == "amplitude"
    prov = doc["provenance"]
    assert prov["command"] == "amplitude" and prov["random_weights"] is True and prov["model"] == "dfformer_s18"
    assert prov["images_sha256"] == paths_digest(paths) == doc["images"]["sha256"]
    assert prov["checkpoint_sha256"] is None and "torch" in prov["versions"] and prov["wall_time_s"] > 0
    assert doc["method"]["eps"] == 1e-6 and doc["method"]["curve"] == "diagonal"
    (m,) = doc["models"]
    assert m["random_weights"] is True and m["num_images"] == 2 and m["input_size"] == [64, 64]
    taps = m["taps"]
    # 64 px: stage 4's maps are 2x2 (one frequency point), left out of the curves with a warning;
    # the depths stay those of all 14 latents
    assert len(taps) == 4 + 2 * 5 - 3
    assert [t["name"] for t in m["left_out"]] == ["downsample4", "s4.b0.residual", "s4.b0.block"]
    assert all(t["shape"][1:] == [2, 2] for t in m["left_out"])
    assert "fewer than 2 frequency points" in res.stderr and "downsample4 (2x2)" in res.stderr
    assert [t["normalised_depth"] for t in taps] == pytest.approx(np.linspace(0, 1, 14)[:11].tolist())
    for t in taps:
        C, H, W = t["shape"]
        assert t["layout"] == "NHWC" and t["curve"][0] == 0.0 and len(t["curve"]) == math.ceil(H / 2)
        assert t["high_freq_delta"] == t["curve"][-1] and t["num_maps"] == 2 * C
    # end to end: the same seed builds the same random model; capture the taps directly and compare
    torch.manual_seed(0)
    model, cfg = build_for_inference("dfformer_s18", img_size=64, depths=[1, 1, 2, 1], dims=[8, 16, 24, 32])
    x = load_batch(paths, cfg["size"], cfg["crop_pct"], cfg["mean"], cfg["std"])
    specs = {t.name: t for t in model_taps(model)}
    with torch.inference_mode(), Probe(model, [specs[t["name"]] for t in taps]) as probe:
        model(x)
    cap = probe.pop()
    for t in taps:
        ref = relative_log_amplitude(cap[t["name"]])
        assert np.allclose(t["curve"], ref.numpy(), atol=1e-5), t["name"]
    rows = list(csv.DictReader(open(out / "amplitude.csv")))
    assert len(rows) == sum(len(t["curve"]) for t in taps)
    assert {"model", "tap", "role", "stage", "k", "freq_index_pi", "delta_log_amplitude"} <= set(rows[0])
    assert not (out / "maps.npz").exists()          # maps only with --save-maps
    assert_figures(out, "amplitude", "highfreq")


def test_amplitude_full_size_dfformer_s18(tmp_path):
    out = tmp_path / "s18"
    res = run(["amplitude", "--model", "dfformer_s18", "--img-size", "64", "--num-images", "1", "--output", out])
    assert res.exit_code == 0, res.output
    m = load(out)["models"][0]
    taps = m["taps"]
    assert len(taps) + len(m["left_out"]) == 4 + 18 + 18
    assert len(m["left_out"]) == 1 + 2 * 3              # stage 4 (3 blocks) is 2x2 at 64 px
    assert [t["role"] for t in taps][:3] == ["stem", "residual", "block"]


def test_amplitude_spanet_stage3(tmp_path):
    if "spanet_s" not in spectrascope.list_models():
        pytest.skip("spanet_s is not in this version's model zoo")
    out = tmp_path / "spa"
    res = run(["amplitude", "--model", "spanet_s", "--stage", "3", "--img-size", "64", "--num-images", "1",
               "--model-kwargs", "layers=1,1,3,1", "--model-kwargs", "embed_dims=8,16,20,32", "--output", out])
    assert res.exit_code == 0, res.output
    taps = load(out)["models"][0]["taps"]
    assert {t["stage"] for t in taps} == {3} and taps[0]["role"] == "downsample"
    assert {t["role"] for t in taps[1:]} == {"residual", "block"} and len(taps) == 1 + 2 * 3


def test_non_square_maps_need_the_radial_method(tmp_path):
    out = tmp_path / "rect"
    base = ["amplitude", "--model", "dfformer_s18", *TINY_KW, "--img-size", "64x96", "--num-images", "1",
            "--output", out]
    assert_one_line_error(run(base), "square", "radial")
    assert_nothing_written(out)
    res = run(base + ["--method", "radial"])
    assert res.exit_code == 0, res.output
    doc = load(out)
    assert doc["method"]["curve"] == "radial" and (out / "maps.npz").exists()
    for t in doc["models"][0]["taps"]:
        _, H, W = t["shape"]
        assert H != W and len(t["curve"]) == math.ceil(min(H, W) / 2) and t["curve"][0] == 0.0


def test_amplitude_timm_vit(tmp_path):
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm')")
    out = tmp_path / "vit"
    res = run(["amplitude", "--model", "timm:vit_tiny_patch16_224", "--img-size", "64", "--num-images", "1",
               "--output", out])
    assert res.exit_code == 0, res.output
    taps = load(out)["models"][0]["taps"]
    assert len(taps) == 1 + 2 * 12 and taps[0]["num_prefix_tokens"] == 1 and taps[0]["layout"] == "NLC"


# ---------------------------------------------------------------------------- spectrum and plot

def test_spectrum_two_models_and_plot(tmp_path):
    out = tmp_path / "spec"
    res = run(["spectrum", "--model", "convformer_s18", "--model", "dfformer_s18", *TINY_KW, "--img-size", "64",
               "--num-images", "1", "--output", out])
    assert res.exit_code == 0, res.output
    doc = load(out)
    assert doc["kind"] == "spectrum" and [m["model"] for m in doc["models"]] == ["convformer_s18", "dfformer_s18"]
    for m in doc["models"]:
        assert [t["name"] for t in m["taps"]] == ["s1.b0.mixer", "s2.b0.mixer", "s3.b1.mixer", "s4.b0.mixer"]
        for t in m["taps"]:
            a = np.asarray(t["map"])
            H, W = a.shape
            assert [H, W] == t["shape"][1:] and a[H // 2, W // 2] == 0.0
            assert np.allclose(np.diagonal(a)[H // 2:], t["curve"], atol=1e-5)
    assert_figures(out, "spectrum")
    for f in ("spectrum.png", "spectrum.pdf"):
        (out / f).unlink()
    res = run(["plot", out / "results.json"])
    assert res.exit_code == 0 and (out / "spectrum.png").exists() and (out / "spectrum.pdf").exists()
    other = tmp_path / "redraw"
    res = run(["plot", out, "--output", other, "--format", "png"])
    assert res.exit_code == 0 and (other / "spectrum.png").exists() and not (other / "spectrum.pdf").exists()


def test_plot_redraws_amplitude_and_refuses_other_files(tmp_path):
    out = tmp_path / "amp"
    fast = tmp_path / "fast"
    torch.manual_seed(0)          # same seed, same random model for both runs
    assert run(["amplitude", "--model", "dfformer_s18", *TINY_KW, *FAST, "--output", fast]).exit_code == 0
    torch.manual_seed(0)
    assert run(["amplitude", "--model", "dfformer_s18", *TINY_KW, *FAST, "--save-maps", "--output", out]).exit_code == 0
    # the 2-D map reduction and the half-diagonal reduction give the same curves
    maps = np.load(out / "maps.npz")
    for t, tf in zip(load(out)["models"][0]["taps"], load(fast)["models"][0]["taps"]):
        a = maps[f"dfformer_s18/{t['name']}"]
        H = a.shape[0]
        d = np.diagonal(a)[H // 2:]
        assert np.allclose(d - d[0], t["curve"], atol=1e-5)
        assert np.allclose(t["curve"], tf["curve"], atol=1e-4)     # two float32 paths: the fixtures' f32 bound
    for f in ("amplitude.png", "highfreq.pdf"):
        (out / f).unlink()
    res = run(["plot", out / "results.json", "--freq-axis", "true"])
    assert res.exit_code == 0, res.output
    assert_figures(out, "amplitude", "highfreq")
    bogus = tmp_path / "other.json"
    bogus.write_text(json.dumps({"kind": "cka"}))
    assert_one_line_error(run(["plot", bogus]), "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    assert_one_line_error(run(["plot", tmp_path / "broken.json"]), "not a results.json")


# ---------------------------------------------------------------------------- bad input

@pytest.fixture()
def bad_dirs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "text"
    text.mkdir()
    (text / "notes.txt").write_text("not an image")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "photo.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return empty, text, corrupt


def test_bad_inputs_one_line_and_nothing_written(tmp_path, bad_dirs):
    empty, text, corrupt = bad_dirs
    out = tmp_path / "out"
    base = ["amplitude", "--model", "dfformer_s18", *TINY_KW, "--img-size", "64", "--output", out]
    assert_one_line_error(run(base + ["--taps", "bogus"]), "unknown tap 'bogus'")
    assert_one_line_error(run(base + ["--taps", "df_routing"]), "layout raw", "spatial")
    assert_one_line_error(run(base + ["--taps", "path:stages.9"]), "no module")
    assert_one_line_error(run(base + ["--stage", "9"]), "stage(s) 9 not in this model")
    assert_one_line_error(run(base + ["--images", empty]), "no images")
    assert_one_line_error(run(base + ["--images", text]), "no images")
    assert_one_line_error(run(base + ["--images", corrupt]), "cannot decode image")
    assert_one_line_error(run(base + ["--images", tmp_path / "missing"]))
    from safetensors.torch import save_file
    wrong = tmp_path / "wrong.safetensors"
    save_file({"not.a.key": torch.zeros(3)}, str(wrong))
    assert_one_line_error(run(base + ["--checkpoint", wrong]), "does not fit")
    assert_one_line_error(run(base + ["--checkpoint", tmp_path / "nope.pth"]))
    assert_one_line_error(run(["amplitude", "--model", "dfformer_s99", "--output", out]), "unknown model")
    assert_nothing_written(out)
    assert_one_line_error(run(["spectrum", "--model", "dfformer_s18", "--model", "convformer_s18", "--checkpoint",
                               wrong, "--output", out]), "--checkpoint")
    assert_nothing_written(out)


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["amplitude", "--model", "dfformer_s18", *TINY_KW, "--img-size", "32", "--num-images", "1",
            "--output", out]
    assert_one_line_error(run(args), "exists and is not empty")
    assert (out / "keep.txt").exists()
    # --overwrite never deletes a file spectrascope did not write
    assert_one_line_error(run(args + ["--overwrite"]), "did not write")
    assert (out / "keep.txt").read_text() == "x" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # a folder of its own outputs is replaced
    mine = tmp_path / "mine"
    args[-1] = mine
    assert run(args).exit_code == 0
    assert_one_line_error(run(args), "exists and is not empty")
    (mine / "results.json").write_text("{}")
    res = run(args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((mine / "results.json").read_text())["kind"] == "amplitude"


def test_taps_listing():
    res = run(["taps", "--model", "dfformer_s18", "--stage", "3", "--role", "mixer,residual"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].split() == ["name", "role", "stage", "layout", "grid", "module"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["s3.b0.mixer", "s3.b0.residual"] and len(lines) == 1 + 2 * 9
    assert "stages.2.0.norm2 (input)" in res.output and "14x14" in res.output
    doc = json.loads(run(["taps", "--model", "dfformer_s18", "--json"]).output)
    assert doc[0]["name"] == "stem" and {"df_routing", "pool"} <= {t["role"] for t in doc}
    assert_one_line_error(run(["taps", "--model", "dfformer_s18", "--role", "nope"]), "unknown tap role")


# ---------------------------------------------------------------------------- figures

def test_figure_list_and_unknown_figure():
    res = run(["figure", "list"])
    assert res.exit_code == 0
    for name in ("dfformer-fig1", "dfformer-fig8", "spanet-fig1", "spanet-fig2"):
        assert name in res.output
    assert_one_line_error(run(["figure", "dfformer-fig9x"]), "unknown figure", "dfformer-fig")


@pytest.fixture()
def fake_recipes(tmp_path, monkeypatch):
    import spectrascope.recipes as pkg
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "fake_fig.py").write_text(textwrap.dedent('''
        from spectrascope.recipes import FigureSpec
        import spectrascope
        FIGURE = FigureSpec(name="fake-fig", title="A test figure", paper="nobody 2024, Fig. 0",
                            models=("dfformer_s18", "not_a_model"), num_images=1)
        def run(ctx):
            kw = ctx.analysis_kwargs()
            kw["img_size"] = 32
            result = spectrascope.run("amplitude", model_kwargs={"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 32]}, **kw)
            ctx.save(result, title=ctx.spec.title)
            return {"n": result.images["count"]}
    '''))
    (folder / "broken_fig.py").write_text(textwrap.dedent('''
        from spectrascope.errors import FigureError
        from spectrascope.recipes import FigureSpec
        FIGURE = FigureSpec(name="broken-fig", title="fails", paper="-", models=("dfformer_s18",))
        def run(ctx):
            (ctx.output / "half.txt").write_text("half")
            raise FigureError("recipe failed half way")
    '''))
    (folder / "buggy_fig.py").write_text(textwrap.dedent('''
        from spectrascope.recipes import FigureSpec
        FIGURE = FigureSpec(name="buggy-fig", title="a bug", paper="-", models=("dfformer_s18",))
        def run(ctx):
            (ctx.output / "half.txt").write_text("half")
            raise ValueError("a bug in the recipe")
    '''))
    monkeypatch.setattr(pkg, "__path__", list(pkg.__path__) + [str(folder)])
    yield
    for name in ("spectrascope.recipes.fake_fig", "spectrascope.recipes.broken_fig",
                 "spectrascope.recipes.buggy_fig"):
        sys.modules.pop(name, None)


def test_figure_framework_generic_recipe(tmp_path, fake_recipes):
    assert "fake-fig" in run(["figure", "list"]).output
    out = tmp_path / "figs"
    assert_one_line_error(run(["figure", "fake-fig", "--output", out]), "not_a_model", "--skip-unavailable")
    assert_one_line_error(run(["figure", "fake-fig", "--output", out, "--checkpoint", "x.pth"]), "MODEL=PATH")
    res = run(["figure", "fake_fig", "--output", out, "--skip-unavailable"])
    assert res.exit_code == 0, res.output
    folder = out / "fake-fig"
    doc = json.loads((folder / "figure.json").read_text())
    assert doc["models"] == ["dfformer_s18"] and doc["skipped_models"][0]["model"] == "not_a_model"
    assert doc["random_weights"] == ["dfformer_s18"] and doc["summary"] == {"n": 1}
    assert doc["provenance"]["command"] == "figure fake-fig" and doc["provenance"]["random_weights"] is True
    assert load(folder)["title"] == "A test figure"
    assert_figures(folder, "amplitude", "highfreq")
    assert_one_line_error(run(["figure", "broken-fig", "--output", out]), "recipe failed half way")
    assert_nothing_written(out / "broken-fig")
    # a builtin exception is a bug: it keeps its traceback (never a one-liner), and still nothing is written
    with pytest.raises(ValueError, match="a bug in the recipe"):
        run(["figure", "buggy-fig", "--output", out])
    assert_nothing_written(out / "buggy-fig")


def test_figure_dfformer_fig8_stage3(tmp_path):
    out = tmp_path / "figs"
    res = run(["figure", "dfformer-fig8", "--output", out, "--img-size", "64", "--num-images", "1"])
    assert res.exit_code == 0, res.output
    doc = load(out / "dfformer-fig8")
    assert [m["label"] for m in doc["models"]] == ["CAFormer-S18", "CDFFormer-S18"]
    for m in doc["models"]:
        assert {t["stage"] for t in m["taps"]} == {3} and len(m["taps"]) == 1 + 2 * 9
    assert_figures(out / "dfformer-fig8", "amplitude", "highfreq")
