"""The frequency-robustness analyses on the seam (fourier-heatmap, freq-noise, freq-filter,
freq-sensitivity): each against its definition computed by hand on the same images with the same
model (closed-form Fourier bases, band-limited noise from the documented seeds, filtered images,
autograd gradients and numpy FFTs), the map's symmetry and layout, the tidy CSV, redrawing from
results.json, resuming an interrupted heat map (in process and by SIGTERM), and bad input."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import spectrascope
from spectrascope.cli import main
from spectrascope.engine.variants import NoiseSpec, base_noise
from spectrascope.io.datasets import SyntheticConfig, SyntheticTextures, to_float
from spectrascope.ops.binomial import wilson_interval
from spectrascope.ops.fourier_basis import map_frequencies
from spectrascope.zoo.build import build_for_inference

ROOT = Path(__file__).resolve().parents[1]
KW = {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}
TINY = ["--model", "dfformer_s18", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,8,16,16"]


def cli(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def synthetic(spec: str, n: int):
    """[0, 1] images (N, 3, H, W) float64 and labels of the first n validation images of a synthetic spec,
    decoded here as the data set writes them (uint8, then / 255)."""
    opts = dict(kv.split("=") for kv in spec.split(":", 1)[1].split(","))
    cfg = SyntheticConfig.from_options({k: int(v) if v.isdigit() else float(v) for k, v in opts.items()})
    val = SyntheticTextures(cfg, "val")
    xs = torch.stack([to_float(val.load(i)[0]) for i in range(n)]).double()
    return xs, torch.tensor([val.label(i) for i in range(n)])


def model_of(seed: int, H: int, W: int, classes: int = 8):
    """The model a run with --seed builds (random weights drawn under that seed)."""
    torch.manual_seed(seed)
    model, pre = build_for_inference("dfformer_s18", img_size=(H, W), num_classes=classes, **KW)
    return model.eval(), (pre["mean"], pre["std"])


def normalise(x, norm):
    m, s = (torch.tensor(v, dtype=x.dtype).view(3, 1, 1) for v in norm)
    return (x - m) / s


def logits_of(model, norm, x, chunk: int = 512):
    """Logits of (..., 3, H, W) images (float64 pixels cast to the model's float32), any leading shape."""
    flat = x.reshape(-1, *x.shape[-3:]).float()
    with torch.no_grad():
        out = torch.cat([model(normalise(flat[a:a + chunk], norm)) for a in range(0, len(flat), chunk)])
    return out.reshape(*x.shape[:-3], -1)


def counts(model, norm, x, y):
    """(errors, summed cross-entropy) of images x (..., N, 3, H, W) with labels y (N,), per leading index."""
    logits = logits_of(model, norm, x)
    yy = y.expand(logits.shape[:-1])
    wrong = (logits.argmax(-1) != yy).sum(-1)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yy.reshape(-1), reduction="none")
    ce = ce.reshape(yy.shape).sum(-1)
    if wrong.ndim == 0:
        return int(wrong), float(ce)
    return wrong.numpy(), ce.double().numpy()


def results(folder):
    return json.loads((Path(folder) / "results.json").read_text())


# ---------------------------------------------------------------------------- fourier-heatmap


@pytest.mark.parametrize("H,W", [(16, 16), (9, 12)])
def test_heatmap_equals_the_direct_per_basis_loop_at_any_size(tmp_path, H, W):
    spec, n, eps = f"synthetic:height={H},width={W},val_size=8", 6, 3.0
    out = tmp_path / "hm"
    res = cli(["fourier-heatmap", *TINY, "--data", spec, "--num-images", n, "--eps", eps, "--sign", "+1",
               "--seed", 3, "--batch-size", 4, "--forward-batch", 50, "--output", out])
    assert res.exit_code == 0, res.output
    r = spectrascope.load_result(out)
    err, loss, cnt = r.model_map(0, "error"), r.model_map(0, "loss"), r.model_map(0, "n")
    fy, fx = r.axes(0)
    assert list(fy) == list(range(-(H // 2), H // 2 + 1)) and list(fx) == list(range(-(W // 2), W // 2 + 1))
    np.testing.assert_array_equal(err, err[::-1, ::-1])                     # a basis and its conjugate
    assert (cnt == n).all()

    model, norm = model_of(3, H, W)
    x, y = synthetic(spec, n)
    yy, xx = np.mgrid[:H, :W]
    bases = []
    for a in map_frequencies(H).tolist():
        for b in map_frequencies(W).tolist():
            c = np.cos(2 * np.pi * (a * yy / H + b * xx / W))
            bases.append(c / np.linalg.norm(c))
    U = torch.from_numpy(np.stack(bases))[:, None, None]                  # (K, 1, 1, H, W)
    e, s = counts(model, norm, (x + eps * U).clamp(0, 1), y)
    want_err, want_loss = e.reshape(err.shape) / n, s.reshape(err.shape) / n
    np.testing.assert_array_equal(err, want_err)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-4)
    assert len(np.unique(err)) > 1

    # the CSV: one row per frequency; the interval is the Wilson interval of the counts
    rows = (out / "heatmap.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert {"fy", "fx", "error", "loss", "n", "error_low", "error_high"} <= set(head)
    assert len(rows) - 1 == err.size
    row = dict(zip(head, rows[1 + err.size // 2].split(",")))               # DC
    assert (int(row["fy"]), int(row["fx"])) == (0, 0)
    lo, hi = wilson_interval(round(float(row["error"]) * n), n)
    assert float(row["error_low"]) == pytest.approx(float(lo), abs=1e-6)
    assert float(row["error_high"]) == pytest.approx(float(hi), abs=1e-6)


def test_heatmap_max_freq_is_the_centre_of_the_whole_map_and_plot_redraws(tmp_path):
    args = ["fourier-heatmap", *TINY, "--data", "synthetic:size=16,val_size=8", "--num-images", 5, "--seed", 1,
            "--eps", 4]
    assert cli(args + ["--output", tmp_path / "all"]).exit_code == 0
    res = cli(args + ["--max-freq", 3, "--output", tmp_path / "k3"])
    assert res.exit_code == 0, res.output
    whole, part = spectrascope.load_result(tmp_path / "all"), spectrascope.load_result(tmp_path / "k3")
    assert part.model_map(0).shape == (7, 7)
    np.testing.assert_array_equal(part.model_map(0), whole.model_map(0)[8 - 3:8 + 4, 8 - 3:8 + 4])
    assert part.models[0]["bases"] == 25                                   # (7 * 7 + 1) / 2
    doc = results(tmp_path / "all")
    assert doc["method"]["sign"] == "random" and doc["method"]["seed"] == 1
    assert {"heatmap.png", "heatmap.pdf", "heatmap_loss.png", "heatmap.csv", "heatmap.npz"} <= set(doc["files"])
    before = (tmp_path / "all" / "heatmap.png").stat().st_mtime_ns
    res = cli(["plot", tmp_path / "all", "--cmap", "magma"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "all" / "heatmap.png").stat().st_mtime_ns > before


def test_two_models_share_one_colour_scale_and_are_told_apart(tmp_path):
    ck = tmp_path / "w.pth"
    torch.manual_seed(7)
    torch.save(spectrascope.create_model("dfformer_s18", num_classes=8, img_size=16, **KW).state_dict(), ck)
    res = cli(["fourier-heatmap", *TINY, "--model", "dfformer_s18", "--checkpoint", ck, "--checkpoint", "-",
               "--data", "synthetic:size=16,val_size=8", "--num-images", 4, "--seed", 2, "--max-freq", 2,
               "--output", tmp_path / "two"])
    assert res.exit_code == 0, res.output
    doc = results(tmp_path / "two")
    assert [m["label"] for m in doc["models"]] == ["dfformer_s18 (w.pth)", "dfformer_s18 (random weights)"]
    assert doc["models"][0]["weights_sha256"] != doc["models"][1]["weights_sha256"]
    assert "random weights" in res.output
    from spectrascope.report import frequency as rfq       # figures print the papers' names
    made = []
    with mock.patch.object(rfq, "save_figure", lambda fig, *a, **kw: made.append(fig) or []):
        rfq.draw_heatmaps(spectrascope.load_result(tmp_path / "two"), tmp_path / "two", None)
    titles = [ax.get_title().split("\n")[0] for ax in made[0].axes if ax.get_title()]
    assert titles == ["DFFormer-S18 (w.pth)", "DFFormer-S18 (random weights)"], titles


def test_a_timm_model_at_a_non_square_size_equals_the_direct_loop(tmp_path):
    pytest.importorskip("timm")
    spec, n, H, W = "synthetic:height=24,width=20,val_size=4", 4, 24, 20
    res = cli(["fourier-heatmap", "--model", "timm:resnet10t", "--data", spec, "--eps", 6, "--sign", "-1",
               "--max-freq", 1, "--seed", 2, "--output", tmp_path / "t"])
    assert res.exit_code == 0, res.output
    r = spectrascope.load_result(tmp_path / "t")
    assert r.models[0]["input_size"] == [24, 20] and r.model_map(0).shape == (3, 3)
    torch.manual_seed(2)
    model, pre = build_for_inference("timm:resnet10t", img_size=(H, W), num_classes=8)
    x, y = synthetic(spec, n)
    yy, xx = np.mgrid[:H, :W]
    for i, a in enumerate((-1, 0, 1)):
        for j, b in enumerate((-1, 0, 1)):
            c = np.cos(2 * np.pi * (a * yy / H + b * xx / W))
            e, _ = counts(model.eval(), (pre["mean"], pre["std"]), (x - 6 * torch.from_numpy(c / np.linalg.norm(c)))
                          .clamp(0, 1), y)
            assert r.model_map(0)[i, j] * n == e, (a, b)


def _interrupt_after(monkeypatch, saves: int):
    from spectrascope.analyses import fourier_heatmap as fh
    real = fh.ProgressStore.save
    calls = {"n": 0}

    def save(self, progress):
        path = real(self, progress)
        calls["n"] += 1
        if calls["n"] == saves:
            raise KeyboardInterrupt
        return path
    monkeypatch.setattr(fh.ProgressStore, "save", save)
    return calls


def test_an_interrupted_heatmap_resumes_from_its_partial_map(tmp_path, monkeypatch):
    opts = dict(model="dfformer_s18", model_kwargs=KW, data="synthetic:size=16,val_size=8", num_images=8,
                batch_size=5, seed=4, save_every=20, forward_batch=64)
    whole = spectrascope.run("fourier-heatmap", output=str(tmp_path / "whole"), **opts)
    out = tmp_path / "run"
    calls = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        spectrascope.run("fourier-heatmap", output=str(out), **opts)
    progress = tmp_path / ".run.fourier-heatmap-progress"
    files = list(progress.glob("*.rank0.json"))
    assert not out.exists() and len(files) == 1                          # nothing committed, the partial map kept
    state = json.loads(files[0].read_text())
    # three saves of 20 bases over the first batch of 5 images: 60 bases begun
    assert len(state["bases"]) == 60 and {v[2] for v in state["bases"].values()} == {5}
    monkeypatch.undo()

    # other settings neither use nor remove it
    spectrascope.run("fourier-heatmap", output=str(tmp_path / "other"), **dict(opts, seed=5, max_freq=1))
    assert files[0].exists()

    resumed = spectrascope.run("fourier-heatmap", output=str(out), **opts)
    assert resumed.models[0]["resumed_bases"] == 60 and any("resumed" in n for n in resumed.notes)
    np.testing.assert_array_equal(resumed.model_map(0, "error"), whole.model_map(0, "error"))
    np.testing.assert_allclose(resumed.model_map(0, "loss"), whole.model_map(0, "loss"), rtol=1e-5)
    assert not progress.exists() and calls["n"] >= 3                       # removed at commit


def test_sigterm_leaves_the_partial_map_intact_and_the_same_command_finishes_it(tmp_path):
    args = [*TINY, "--data", "synthetic:size=16,val_size=48", "--num-images", 48, "--batch-size", 8,
            "--save-every", 8, "--seed", 6, "--forward-batch", 16]
    out = tmp_path / "hm"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "spectrascope.cli", "fourier-heatmap", *map(str, args), "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / ".hm.fourier-heatmap-progress"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(folder.glob("*.rank0.json")):
        time.sleep(0.2)
    time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    assert not out.exists() and not list(tmp_path.glob(".hm.partial-*"))
    (saved,) = folder.glob("*.rank0.json")
    state = json.loads(saved.read_text())                                  # a whole file, not a part of one
    done = sum(v[2] for v in state["bases"].values())
    assert 0 < done < 136 * 48
    assert not list(folder.glob(".*tmp*"))
    res = cli(["fourier-heatmap", *args, "--output", out])
    assert res.exit_code == 0, res.output
    doc = results(out)
    assert doc["models"][0]["resumed_bases"] > 0 and not folder.exists()
    assert (spectrascope.load_result(out).model_map(0, "n") == 48).all()


@pytest.mark.parametrize("args,message", [
    (["--eps", "-1"], "--eps"),
    (["--eps", "nan"], "--eps"),
    (["--max-freq", "-2"], "--max-freq"),
    (["--save-every", "0"], "--save-every"),
    (["--data", "samples"], "no labels"),
    (["--data", "cifar10:/nonexistent/folder"], "not found"),
    (["--model-kwargs", "num_classes=5"], "num_classes=5 does not fit"),
    (["--cmap", "nope"], "--cmap"),
])
def test_heatmap_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    data = [] if any(a == "--data" for a in args) else ["--data", "synthetic:size=16,val_size=4"]
    out = tmp_path / "bad"
    res = cli(["fourier-heatmap", *TINY, *data, *args, "--output", out])
    assert res.exit_code == 2, res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(err) == 1 and message in err[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists() and not list(tmp_path.glob(".bad*"))


def test_a_checkpoint_whose_head_does_not_fit_the_data_is_refused(tmp_path):
    ck = tmp_path / "w.pth"
    torch.save(spectrascope.create_model("dfformer_s18", num_classes=3, img_size=16, **KW).state_dict(), ck)
    res = cli(["freq-noise", *TINY, "--checkpoint", ck, "--data", "synthetic:size=16,val_size=4", "--output",
               tmp_path / "o"])
    assert res.exit_code == 2 and "has 3 output classes but synthetic" in res.output, res.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- freq-noise


def test_noise_curve_equals_band_limited_noise_added_by_hand(tmp_path):
    spec, n = "synthetic:size=16,val_size=8", 7
    res = cli(["freq-noise", *TINY, "--data", spec, "--num-images", n, "--bands", 4, "--shape", "circle",
               "--eps", 3, "--seed", 9, "--batch-size", 3, "--output", tmp_path / "n"])
    assert res.exit_code == 0, res.output
    m = results(tmp_path / "n")["models"][0]
    assert m["low"] == [0.0, 0.125, 0.25, 0.375] and m["high"] == [0.125, 0.25, 0.375, 0.5]
    model, norm = model_of(9, 16, 16)                                    # --seed draws the weights too
    x, y = synthetic(spec, n)
    z = base_noise(range(n), (3, 16, 16), NoiseSpec(eps=1.0, seed=9))
    fy = torch.fft.fftfreq(16, dtype=torch.float64)
    d = torch.sqrt(fy[:, None] ** 2 + fy[None, :] ** 2)
    for b, (lo, hi) in enumerate(zip(m["low"], m["high"])):
        mask = (d >= lo) & ((d < hi) | (hi >= 0.5) & (d <= hi))
        noise = torch.fft.ifft2(torch.fft.fft2(z) * mask).real
        noise = noise * (3.0 / noise.flatten(-2).norm(dim=-1)[..., None, None])
        e, s = counts(model, norm, (x + noise).clamp(0, 1), y)
        assert m["errors"][b] == e, b
        assert m["loss"][b] == pytest.approx(s / n, rel=1e-4)
    assert m["clean"]["errors"] == counts(model, norm, x, y)[0]
    rows = (tmp_path / "n" / "noise.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("model,band,low,high,centre")


def test_noise_of_zero_size_is_the_clean_error_in_every_band(tmp_path):
    res = cli(["freq-noise", *TINY, "--data", "synthetic:size=16,val_size=8", "--num-images", 6, "--eps", 0,
               "--seed", 1, "--output", tmp_path / "z"])
    assert res.exit_code == 0, res.output
    m = results(tmp_path / "z")["models"][0]
    assert len(m["error"]) == 8 and set(m["errors"]) == {m["clean"]["errors"]}


# ---------------------------------------------------------------------------- freq-filter


def test_filter_at_radius_zero_and_infinity(tmp_path):
    spec, n = "synthetic:size=16,val_size=8", 8
    res = cli(["freq-filter", *TINY, "--data", spec, "--num-images", n, "--radii", "0,3,inf", "--seed", 2,
               "--output", tmp_path / "f"])
    assert res.exit_code == 0, res.output
    m = results(tmp_path / "f")["models"][0]
    assert m["low"]["radius"] == [0.0, 3.0, None]
    model, norm = model_of(2, 16, 16)
    x, y = synthetic(spec, n)
    dc = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)                   # radius 0 keeps DC alone
    assert m["low"]["errors"][0] == counts(model, norm, dc, y)[0]
    assert m["low"]["errors"][2] == m["clean"]["errors"] == counts(model, norm, x, y)[0]
    assert m["high"]["errors"][2] == counts(model, norm, torch.zeros_like(x), y)[0]
    assert m["high"]["errors"][0] == counts(model, norm, x - dc, y)[0]
    yy = torch.fft.fftfreq(16, 1 / 16, dtype=torch.float64)
    mask = (torch.sqrt(yy[:, None] ** 2 + yy[None, :] ** 2) <= 3).double()
    low3 = torch.fft.ifft2(torch.fft.fft2(x) * mask).real
    assert m["low"]["errors"][1] == counts(model, norm, low3, y)[0]
    assert m["high"]["errors"][1] == counts(model, norm, x - low3, y)[0]


def test_filter_hfc_mask_halves_what_lies_outside(tmp_path):
    spec, n = "synthetic:size=16,val_size=8", 5
    res = cli(["freq-filter", *TINY, "--data", spec, "--num-images", n, "--radii", "2", "--outside", "0.5",
               "--seed", 2, "--output", tmp_path / "f"])
    assert res.exit_code == 0, res.output
    m = results(tmp_path / "f")["models"][0]
    model, norm = model_of(2, 16, 16)
    x, y = synthetic(spec, n)
    yy = torch.fft.fftfreq(16, 1 / 16, dtype=torch.float64)
    inside = torch.sqrt(yy[:, None] ** 2 + yy[None, :] ** 2) <= 2
    low = torch.fft.ifft2(torch.fft.fft2(x) * torch.where(inside, 1.0, 0.5)).real
    assert m["low"]["errors"] == [counts(model, norm, low, y)[0]]
    assert m["high"]["errors"] == [counts(model, norm, x - low, y)[0]]
    assert cli(["freq-filter", *TINY, "--data", spec, "--outside", "2"]).exit_code == 2
    assert cli(["freq-filter", *TINY, "--data", spec, "--radii", "1,x"]).exit_code == 2


# ---------------------------------------------------------------------------- freq-sensitivity


def test_sensitivity_equals_the_gradient_spectrum_by_hand(tmp_path):
    spec, n = "synthetic:height=16,width=12,val_size=8", 6
    res = cli(["freq-sensitivity", *TINY, "--data", spec, "--num-images", n, "--seed", 5, "--batch-size", 4,
               "--output", tmp_path / "s"])
    assert res.exit_code == 0, res.output
    r = spectrascope.load_result(tmp_path / "s")
    m = r.models[0]
    model, norm = model_of(5, 16, 12)
    x, y = synthetic(spec, n)
    xi = x.float().requires_grad_(True)
    F.cross_entropy(model(normalise(xi, norm)), y, reduction="sum").backward()
    g = xi.grad.double().mean(dim=1).numpy()
    P = np.abs(np.fft.fft2(g, norm="ortho")) ** 2
    fy = np.fft.fftfreq(16, 1 / 16) * 12 / 16
    fx = np.fft.fftfreq(12, 1 / 12)
    ring = np.round(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)).astype(int)
    sums = np.stack([[P[k][ring == q].sum() for q in range(1, ring.max() + 1)] for k in range(n)])
    prof = sums / sums.sum(1, keepdims=True)
    np.testing.assert_allclose(m["profile"], prof.mean(0), rtol=1e-5, atol=1e-9)
    assert m["rings"] == list(range(1, ring.max() + 1)) and m["images_used"] == n
    assert m["radius_cycles"][0] == pytest.approx(1 / 12)
    Pn = P.copy()
    Pn[:, 0, 0] = 0
    want = np.fft.fftshift((Pn / Pn.sum(axis=(1, 2), keepdims=True)).mean(0))
    np.testing.assert_allclose(r.maps["m0_power"], want, rtol=1e-5, atol=1e-12)
    assert {"sensitivity.png", "sensitivity_maps.png", "sensitivity.csv"} <= set(r.files)


# ---------------------------------------------------------------------------- every analysis, two processes


@pytest.mark.parametrize("command,extra", [
    ("fourier-heatmap", ["--max-freq", "3", "--save-every", "5"]),
    ("freq-noise", ["--bands", "4"]),
    ("freq-filter", ["--radii", "0,2,inf"]),
    ("freq-sensitivity", []),
])
def test_torchrun_two_processes_give_the_one_process_numbers(tmp_path, command, extra):
    from tests.distributed import torchrun
    args = [command, *TINY, "--data", "synthetic:size=16,val_size=12", "--num-images", 10, "--batch-size", 3,
            "--seed", 8, "--device", "cpu", *extra]
    assert cli(args + ["--output", tmp_path / "one"]).exit_code == 0
    proc = torchrun(args + ["--output", tmp_path / "two"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = results(tmp_path / "one"), results(tmp_path / "two")
    assert two["run"]["world_size"] == 2 and one["run"]["world_size"] == 1
    a, b = one["models"][0], two["models"][0]
    assert a["weights_sha256"] == b["weights_sha256"]
    for key in ("errors", "error", "profile", "low", "high", "clean", "images_used", "bases", "error_min"):
        if key in a:
            assert _close(a[key], b[key]), key
    if command == "fourier-heatmap":
        m1, m2 = spectrascope.load_result(tmp_path / "one"), spectrascope.load_result(tmp_path / "two")
        np.testing.assert_array_equal(m1.model_map(0), m2.model_map(0))
        np.testing.assert_allclose(m1.model_map(0, "loss"), m2.model_map(0, "loss"), rtol=1e-5)
        assert not list(tmp_path.glob(".two.fourier-heatmap-progress"))


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(u, v) for u, v in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)
    return a == b


# ---------------------------------------------------------------------------- other labelled data


def test_image_folders_and_cifar_archives_are_labelled_data(tmp_path):
    from PIL import Image

    from spectrascope.io.pixels import eval_transform, load_image
    from tests.test_datasets import make_cifar10
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("ant", "bee", "cat"):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "f" / split / c / f"{i}.png")
    res = cli(["freq-filter", *TINY, "--data", f"imagefolder:{tmp_path / 'f'}", "--num-images", 5, "--img-size", 32,
               "--radii", "inf", "--seed", 1, "--output", tmp_path / "o1"])
    assert res.exit_code == 0, res.output
    doc = results(tmp_path / "o1")
    # five images evenly spaced over the class-sorted folder: every class is there
    assert doc["images"]["class_counts"] == [2, 1, 2] and doc["models"][0]["num_classes"] == 3
    model, norm = model_of(1, 32, 32, classes=3)
    crop = doc["models"][0]["preprocessing"]["crop_pct"]
    picked = [(c, i) for c in ("ant", "bee", "cat") for i in range(3)][::2]
    x = torch.stack([eval_transform(load_image(tmp_path / "f" / "val" / c / f"{i}.png"), (32, 32), crop,
                                    (0, 0, 0), (1, 1, 1)) for c, i in picked])
    y = torch.tensor([("ant", "bee", "cat").index(c) for c, _ in picked])
    assert doc["models"][0]["clean"]["errors"] == counts(model, norm, x.double(), y)[0]
    assert doc["images"]["files"] == [f"{i}.png" for _, i in picked]

    _, _, va_imgs, va_labels = make_cifar10(tmp_path / "c")
    res = cli(["freq-filter", *TINY, "--data", f"cifar10:{tmp_path / 'c'}", "--num-images", 2, "--radii", "0",
               "--seed", 1, "--output", tmp_path / "o2"])
    assert res.exit_code == 0, res.output
    doc = results(tmp_path / "o2")
    assert doc["models"][0]["input_size"] == [32, 32] and doc["models"][0]["num_classes"] == 10
    model, norm = model_of(1, 32, 32, classes=10)
    x = torch.from_numpy(va_imgs[:2]).permute(0, 3, 1, 2).double() / 255
    assert doc["models"][0]["clean"]["errors"] == counts(model, norm, x, torch.tensor(va_labels[:2]))[0]
