"""``cam`` and ``context`` under ``torchrun --nproc_per_node=2`` (gloo): the images are sharded,
the maps gathered, and every map equals the one-process run; results.json records world_size."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from distributed import torchrun
from spectrascope.cli import main
from spectrascope.io.results import loads

CAM_TINY = ["--img-size", "64", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32"]
SPANET_TINY = ["--img-size", "32", "--model-kwargs", "layers=1,1,1,1", "--model-kwargs", "embed_dims=8,16,20,32"]


def _checkpoint(tmp_path, name, **kw):
    """A saved state dict, so that both runs see the same weights."""
    import torch

    import spectrascope
    torch.manual_seed(3)
    path = tmp_path / f"{name}.pth"
    torch.save(spectrascope.create_model(name, num_classes=1000, **kw).state_dict(), path)
    return str(path)


def _one_process(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output


def _same_maps(a, b):
    ma, mb = np.load(a / "maps.npz"), np.load(b / "maps.npz")
    assert sorted(ma.files) == sorted(mb.files)
    for k in ma.files:
        assert np.array_equal(ma[k], mb[k]), k
    return ma


def _results(folder):
    return loads((folder / "results.json").read_text())


@pytest.mark.parametrize("method", ["scorecam", "gradcam"])
def test_cam_under_torchrun_equals_one_process(tmp_path, method):
    ck = _checkpoint(tmp_path, "dfformer_s18", img_size=64, depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
    args = ["cam", "--model", "dfformer_s18", "--checkpoint", ck, *CAM_TINY, "--num-images", "3", "--method", method,
            "--batch-size", "2" if method == "gradcam" else "16"]
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process([*args, "--output", str(one)])
    res = torchrun([*args, "--output", str(two)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    maps = _same_maps(one, two)
    assert len(maps.files) == 3
    r1, r2 = _results(one), _results(two)
    assert r1["provenance"]["world_size"] == 1 and r2["provenance"]["world_size"] == 2
    for k in ("classes", "top1", "target_layer", "target_layout"):
        assert r1["models"][0][k] == r2["models"][0][k], k
    assert r1["models"][0]["class_probability"] == pytest.approx(r2["models"][0]["class_probability"], abs=1e-7)
    assert res.stdout.count("-> ") == 1                   # one rank speaks


def test_context_under_torchrun_equals_one_process(tmp_path):
    ck = _checkpoint(tmp_path, "spanet_s", img_size=32, layers=[1, 1, 1, 1], embed_dims=[8, 16, 20, 32])
    args = ["context", "--model", "spanet_s", "--checkpoint", ck, *SPANET_TINY, "--num-images", "3",
            "--batch-size", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process([*args, "--output", str(one)])
    res = torchrun([*args, "--output", str(two)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(_same_maps(one, two).files) == 3 * 4
    assert _results(two)["provenance"]["world_size"] == 2
    assert json.loads((one / "results.json").read_text())["block"] == _results(two)["block"]
