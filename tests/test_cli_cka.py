"""`spectrascope cka`: report directory, self-comparison, engines, bad input, and a
two-process torchrun (CPU, gloo) run that gives the single-process matrix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spectrascope.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,8,16,16", "--img-size", "32"]


def run(args, **kw):
    return CliRunner().invoke(main, ["cka", *args], catch_exceptions=False, **kw)


def matrix(path: Path) -> np.ndarray:
    js = json.loads((path / "results.json").read_text())
    return np.array([[np.nan if v is None else v for v in row] for row in js["matrix"]], dtype=np.float64)


@pytest.fixture(scope="module")
def noise_images(tmp_path_factory):
    """16 small random RGB images (sorted names img00..img15)."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(16):
        arr = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
    return folder


def test_cka_report_on_sample_photos(tmp_path):
    out = tmp_path / "rep"
    res = run(["--model-a", "gfformer_s18", "--model-b", "dfformer_s18", *TINY, "--batch-size", "5",
               "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "random weights" in res.output and "12x12 over 5 images" in res.output
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(["cka.png", "cka.pdf", "cka_matrix.csv", "best_match.csv", "results.json", "report.html"])
    js = json.loads((out / "results.json").read_text())
    # the Fig. 7 preset in execution order: per stage the downsampling output, then (residual, block) per block
    assert js["labels_a"] == ["stem", "s1.b0.residual", "s1.b0.block", "downsample2", "s2.b0.residual",
                              "s2.b0.block", "downsample3", "s3.b0.residual", "s3.b0.block", "downsample4",
                              "s4.b0.residual", "s4.b0.block"]
    assert js["labels_b"] == js["labels_a"]
    assert js["shapes_a"]["stem"] == [8, 8, 8] and js["shapes_b"]["s4.b0.block"] == [1, 1, 16]
    assert js["examples"] == 5 and js["batches"] == 1 and js["engine"] == "spectrascope"
    assert js["model_a"]["random_weights"] and js["provenance"]["random_weights"] is True
    assert js["provenance"]["command"] == "cka" and len(js["provenance"]["images_sha256"]) == 64
    assert js["images"] == ["astronaut.jpg", "cat.jpg", "coffee.jpg", "grace_hopper.jpg", "rocket.jpg"]
    m = matrix(out)
    assert m.shape == (12, 12) and np.isfinite(m).all() and np.abs(m).max() <= 1 + 1e-12
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "s3.b0.residual" in html


def test_self_comparison_shares_the_model_and_gives_a_unit_diagonal(tmp_path, noise_images):
    out = tmp_path / "self"
    res = run(["--model-a", "convformer_s18", "--model-b", "convformer_s18", *TINY, "--images", str(noise_images),
               "--batch-size", "8", "--estimator", "biased", "--output", str(out)])
    assert res.exit_code == 0, res.output
    js = json.loads((out / "results.json").read_text())
    assert js["same_model_object"] is True and js["estimator"] == "biased" and js["batches"] == 2
    m = matrix(out)
    assert np.abs(np.diag(m) - 1).max() < 1e-12 and np.abs(m - m.T).max() < 1e-12


def test_torch_cka_engine_and_skipped_batch_warning(tmp_path, noise_images):
    out = tmp_path / "tc"
    res = run(["--model-a", "convformer_s18", "--model-b", "dfformer_s18", *TINY, "--images", str(noise_images),
               "--num-images", "11", "--batch-size", "5", "--taps", "stem,block", "--engine", "torch-cka",
               "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped a batch of 1" in res.output
    js = json.loads((out / "results.json").read_text())
    assert js["engine"] == "torch-cka" and js["batches"] == 2 and js["skipped_batches"] == 1
    assert len(js["labels_a"]) == 5 and js["labels_a"][0] == "stem"
    assert matrix(out).shape == (5, 5)


@pytest.mark.parametrize("args, message", [
    (["--model-a", "dfformer_s19", "--model-b", "dfformer_s18"], "unknown model 'dfformer_s19'"),
    (["--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, "--taps", "fig7,bogus"], "unknown tap 'bogus'"),
    (["--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, "--num-images", "3"],
     "no batch with at least 4 images"),
    (["--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, "--batch-size", "2"], "at least 4"),
    (["--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, "--images", "/nonexistent/dir"],
     "image folder not found"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "bad"
    res = CliRunner().invoke(main, ["cka", *args, "--output", str(out)])
    assert res.exit_code != 0
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(err) == 1 and message in err[0], res.output
    assert not out.exists() and not any(p.name.startswith(".bad") for p in tmp_path.iterdir())


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = CliRunner().invoke(main, ["cka", "--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY,
                                    "--output", str(out)])
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert (out / "keep.txt").read_text() == "x"


def test_torchrun_two_cpu_processes_give_the_single_process_matrix(tmp_path, noise_images):
    args = ["cka", "--model-a", "dfformer_s18", "--model-b", "convformer_s18", *TINY, "--images", str(noise_images),
            "--batch-size", "4", "--device", "cpu"]
    one = tmp_path / "one"
    res = run(args[1:] + ["--output", str(one)])
    assert res.exit_code == 0, res.output
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "spectrascope.cli", *args, "--output", str(two)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    js1 = json.loads((one / "results.json").read_text())
    js2 = json.loads((two / "results.json").read_text())
    assert js2["world_size"] == 2 and js1["world_size"] == 1
    assert js2["batches"] == js1["batches"] == 4 and js2["examples"] == 16
    assert js2["labels_a"] == js1["labels_a"] and js2["labels_b"] == js1["labels_b"]
    m1, m2 = matrix(one), matrix(two)
    assert np.isfinite(m1).all()
    assert np.abs(m1 - m2).max() < 1e-10
    assert np.abs(np.array(js1["hsic_xy"]) - np.array(js2["hsic_xy"])).max() <= 1e-10 * np.abs(js1["hsic_xy"]).max()


def test_float32_precision_matches_float64(tmp_path, noise_images):
    base = ["--model-a", "gfformer_s18", "--model-b", "dfformer_s18", *TINY, "--images", str(noise_images),
            "--batch-size", "8"]
    r64 = run(base + ["--precision", "float64", "--output", str(tmp_path / "f64")])
    r32 = run(base + ["--precision", "float32", "--output", str(tmp_path / "f32")])
    r_auto = run(base + ["--output", str(tmp_path / "auto")])
    assert r64.exit_code == 0 and r32.exit_code == 0 and r_auto.exit_code == 0, r64.output + r32.output + r_auto.output
    js = {k: json.loads((tmp_path / k / "results.json").read_text()) for k in ("f64", "f32", "auto")}
    assert (js["f64"]["precision"], js["f64"]["gram_products"]) == ("float64", ["float64"])
    assert (js["f32"]["precision"], js["f32"]["gram_products"]) == ("float32", ["float32"])
    # the default takes float32 products for these float32 features, and says so
    assert (js["auto"]["precision"], js["auto"]["gram_products"]) == ("auto", ["float32"])
    assert np.abs(matrix(tmp_path / "f64") - matrix(tmp_path / "f32")).max() < 1e-5
    assert np.array_equal(matrix(tmp_path / "auto"), matrix(tmp_path / "f32"))


def test_fig7_recipe(tmp_path, noise_images):
    from spectrascope.recipes import cka_fig7
    assert [(a, b) for _, a, b in cka_fig7.PAIRS] == [
        ("gfformer_s18", "dfformer_s18"), ("caformer_s18", "cdfformer_s18"), ("convformer_s18", "dfformer_s18")]
    out = tmp_path / "fig7"
    res = cka_fig7.compute(out, images=str(noise_images), num_images=8, batch_size=8, img_size=32, progress=False,
                       overrides={"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}, pairs=cka_fig7.PAIRS[1:2])
    assert list(res) == ["b"]
    summary = json.loads((out / "summary.json").read_text())["panels"]["b"]
    assert (summary["model_a"], summary["model_b"], summary["taps"]) == ("caformer_s18", "cdfformer_s18", 12)
    assert summary["random_weights"] == ["caformer_s18", "cdfformer_s18"]
    assert (out / summary["report"] / "report.html").is_file()
    assert (out / "fig7.png").read_bytes()[:4] == b"\x89PNG" and (out / "fig7.pdf").is_file()
