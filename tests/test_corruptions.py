"""`corruptions` and the imagecorruptions compatibility shim: the analysis equals imagecorruptions
applied by hand to the same images with the documented seeds (errors per corruption and severity,
spectra of corrupted - clean); the shim's stand-in pkg_resources is gone after the import, and the
three corruptions that newer numpy / scikit-image broke equal their recipes computed by hand; a
missing package or too small an input is one line; two processes give the one-process numbers."""
from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.cli import main
from spectrascope.io.datasets import SyntheticConfig, SyntheticTextures

if importlib.util.find_spec("imagecorruptions") is None:
    pytest.skip("imagecorruptions is not installed (pip install imagecorruptions)", allow_module_level=True)

from spectrascope.compat import _resource_filename, import_imagecorruptions  # noqa: E402
from spectrascope.engine.corruptions import corruption_number, corruption_seed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KW = {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}
TINY = ["--model", "dfformer_s18", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,8,16,16"]
DATA = "synthetic:size=32,val_size=8"


def cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def corrupt(name, image, severity, seed):
    ic = import_imagecorruptions()
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ic.corrupt(image, severity=severity, corruption_name=name)


def images(n):
    val = SyntheticTextures(SyntheticConfig(size=32, val_size=8), "val")
    return [val.load(i)[0] for i in range(n)], [val.label(i) for i in range(n)]


# ---------------------------------------------------------------------------- the shim


def test_the_stand_in_pkg_resources_is_only_there_during_the_import():
    module = import_imagecorruptions()
    real = importlib.util.find_spec("pkg_resources") is not None
    assert ("pkg_resources" in sys.modules) <= real
    frost = Path(_resource_filename(module.corruptions.__name__, "./frost/frost1.png"))
    assert frost.is_file() and frost.parent.name == "frost"
    assert len(module.get_corruption_names("all")) == 19


def test_gaussian_blur_and_glass_blur_use_the_channel_axis_recipe():
    from skimage.filters import gaussian
    img = images(1)[0][0]
    for sev, sigma in ((1, 1), (4, 4)):
        want = np.uint8(np.clip(gaussian(img / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255)
        np.testing.assert_array_equal(corrupt("gaussian_blur", img, sev, 0), want)
    a, b, c = (corrupt("glass_blur", img, 2, s) for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # glass blur is a blur, a local shuffle and a blur: its mean stays close to the image's
    assert abs(float(a.mean()) - float(img.mean())) < 3.0


def test_fog_is_the_plasma_fractal_recipe():
    module = import_imagecorruptions()
    img = images(2)[0][1]
    for sev, (c0, decay) in ((1, (1.5, 2.0)), (5, (3.0, 1.4))):
        np.random.seed(11)
        plasma = module.corruptions.plasma_fractal(mapsize=32, wibbledecay=decay)[:32, :32, None]
        x = img / 255.0
        top = x.max()
        want = np.uint8(np.clip((x + c0 * plasma) * top / (top + c0), 0, 1) * 255)
        np.testing.assert_array_equal(corrupt("fog", img, sev, 11), want)


def test_impulse_noise_follows_numpys_seed():
    from skimage.util import random_noise
    img = images(1)[0][0]
    a, b, c = (corrupt("impulse_noise", img, 3, s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    np.random.seed(1)                                   # the recipe: the generator's seed drawn from numpy's state
    want = np.uint8(np.clip(random_noise(img / 255.0, mode="s&p", amount=0.09,
                                         rng=int(np.random.randint(0, 2 ** 31 - 1))), 0, 1) * 255)
    np.testing.assert_array_equal(a, want)
    assert 0.05 < (a != img).mean() < 0.1                                 # 9 % of the values salted or peppered


def test_a_missing_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)
    res = cli(["corruptions", *TINY, "--data", DATA, "--output", tmp_path / "o"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "pip install imagecorruptions" in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,message", [
    (["--corruptions", "rain"], "--corruptions: 'rain' is not a corruption"),
    (["--severities", "0,6"], "--severities"),
    (["--severities", "1,2", "--spectrum-severity", "3"], "--spectrum-severity"),
    (["--img-size", "16"], "at least 32 x 32"),
    (["--heatmap", "/nonexistent/folder"], "no results file"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    res = cli(["corruptions", *TINY, "--data", DATA, "--num-images", 2, "--corruptions", "contrast", *args,
               "--output", tmp_path / "o"])                             # a repeated option: the last one counts
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- the analysis


NAMES = ("gaussian_noise", "impulse_noise", "contrast", "fog", "gaussian_blur", "glass_blur")


def test_corruptions_equal_imagecorruptions_applied_by_hand(tmp_path):
    n, seed, sevs = 5, 4, (1, 3)
    hm = tmp_path / "hm"
    assert cli(["fourier-heatmap", *TINY, "--data", DATA, "--num-images", 2, "--max-freq", 2, "--seed", seed,
                "--output", hm]).exit_code == 0
    res = cli(["corruptions", *TINY, "--data", DATA, "--num-images", n, "--corruptions", ",".join(NAMES),
               "--severities", "1,3", "--seed", seed, "--batch-size", 2, "--heatmap", hm, "--output",
               tmp_path / "c"])
    assert res.exit_code == 0, res.output
    r = spectrascope.load_result(tmp_path / "c")
    m = r.models[0]

    torch.manual_seed(seed)
    model, pre = spectrascope.zoo.build.build_for_inference("dfformer_s18", img_size=32, num_classes=8, **KW)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (pre["mean"], pre["std"]))
    imgs, labels = images(n)
    y = torch.tensor(labels)
    for name in NAMES:
        for s_i, sev in enumerate(sevs):
            bad = [corrupt(name, im, sev, corruption_seed(seed, i, corruption_number(name), sev))
                   for i, im in enumerate(imgs)]
            x = torch.from_numpy(np.stack(bad)).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                wrong = int((model((x - mean) / std).argmax(1) != y).sum())
            assert round(m["per_corruption"][name]["by_severity"][s_i] * n) == wrong, (name, sev)
            clean = np.stack(imgs).astype(np.float64) / 255
            diff = np.stack(bad).astype(np.float64) / 255 - clean
            want = np.fft.fftshift(np.abs(np.fft.fft2(diff, axes=(1, 2), norm="ortho")).mean(axis=(0, 3)))
            np.testing.assert_allclose(r.maps[f"spectrum_32x32_{name}_s{sev}"], want, rtol=1e-9, atol=1e-12)
    assert m["mean_error"] == pytest.approx(np.mean([m["per_corruption"][c]["error"] for c in NAMES]))
    # Yin et al.'s reading: noise adds high frequencies, contrast and fog low ones
    share = r.high_freq_share
    assert share["gaussian_noise"] > 0.5 > share["fog"] and share["gaussian_noise"] > share["contrast"]
    assert r.heatmap["label"] == "dfformer_s18" and r.maps["heatmap_error"].shape == (5, 5)
    assert {"corruptions.png", "corruption_severity.png", "corruption_spectra.pdf", "corruptions.csv"} <= \
        set(r.files)
    rows = (tmp_path / "c" / "corruptions.csv").read_text().splitlines()
    assert len(rows) == 1 + len(NAMES) * len(sevs)


def test_torchrun_two_processes_give_the_one_process_numbers(tmp_path):
    from tests.distributed import torchrun
    args = ["corruptions", *TINY, "--data", DATA, "--num-images", 6, "--batch-size", 2, "--seed", 3, "--device",
            "cpu", "--corruptions", "gaussian_noise,fog,pixelate", "--severities", "2,5", "--spectrum-severity", 2]
    assert cli(args + ["--output", tmp_path / "one"]).exit_code == 0
    proc = torchrun(args + ["--output", tmp_path / "two"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f / "results.json").read_text()) for f in ("one", "two"))
    assert two["run"]["world_size"] == 2
    for name, per in one["models"][0]["per_corruption"].items():
        other = two["models"][0]["per_corruption"][name]
        assert per["by_severity"] == other["by_severity"], name
        assert per["loss_by_severity"] == pytest.approx(other["loss_by_severity"], rel=1e-5)
    assert one["models"][0]["clean"]["errors"] == two["models"][0]["clean"]["errors"]
    a, b = (spectrascope.load_result(tmp_path / f) for f in ("one", "two"))
    for key in a.maps:
        np.testing.assert_allclose(a.maps[key], b.maps[key], rtol=1e-9, atol=1e-12)
