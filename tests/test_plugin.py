"""An analysis from outside the project: ``examples/sparsity`` installed with pip (into a folder of
its own, so the test environment is left as it is) adds ``spectrascope sparsity`` through the
``spectrascope.analyses`` entry-point group, with the shared options, results.json, ``plot`` and
``torchrun`` giving the one-process numbers; the numbers equal a direct count of zeros."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import spectrascope

ROOT = Path(__file__).resolve().parents[1]
TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
KW = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32", "--img-size", "32"]
TAPS = "path:stages.0.0.mlp.act:NHWC,path:stages.2.0.mlp.act:NHWC"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The example plug-in installed into its own folder (put on PYTHONPATH by ``cli``)."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-q", "--target", str(target),
                           str(ROOT / "examples" / "sparsity")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def _env(plugin) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin), str(ROOT)]), MPLBACKEND="Agg",
                OMP_NUM_THREADS="1")


def cli(plugin, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "spectrascope.cli", *map(str, args)], capture_output=True,
                          text=True, env=_env(plugin), cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = spectrascope.create_model("dfformer_s18_relu", img_size=32, **TINY)
    path = tmp_path_factory.mktemp("ck") / "relu.pth"
    torch.save(model.state_dict(), path)
    return path


def _direct(checkpoint) -> dict:
    """The fraction of exact zeros after each MLP's ReLU, counted here with plain forward hooks."""
    from spectrascope.io.sources import ImageSource
    from spectrascope.zoo.build import build_for_inference
    model, pre = build_for_inference("dfformer_s18_relu", checkpoint=str(checkpoint), img_size=32, **TINY)
    x = ImageSource.resolve(None, None, 3).load(pre)
    counts: dict[str, list] = {}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda _m, _i, out, p=p: counts.setdefault(p, []).append(((out == 0).sum().item(), out.numel())))
        for p in ("stages.0.0.mlp.act", "stages.2.0.mlp.act")]
    with torch.no_grad():
        for part in x.split(2):                                     # the command's batches
            model(part)
    for h in hooks:
        h.remove()
    return {p: sum(z for z, _ in v) / sum(n for _, n in v) for p, v in counts.items()}


def test_the_plugin_command_has_the_shared_options(plugin):
    top = cli(plugin, "--help")
    assert top.returncode == 0 and "sparsity" in top.stdout
    own = cli(plugin, "sparsity", "--help")
    assert own.returncode == 0, own.stderr
    for flag in ("--model", "--checkpoint", "--img-size", "--data", "--batch-size", "--amp", "--channels-last",
                 "--output", "--overwrite", "--seed", "--threshold", "--taps"):
        assert flag in own.stdout, flag


def test_the_plugin_counts_zeros_writes_results_and_redraws(plugin, checkpoint, tmp_path):
    out = tmp_path / "sp"
    res = cli(plugin, "sparsity", "--model", "dfformer_s18_relu", "--checkpoint", checkpoint, *KW, "--taps", TAPS,
              "--num-images", "3", "--batch-size", "2", "--output", out)
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["analysis"] == "sparsity" and doc["provenance"]["command"] == "sparsity"
    got = {t["name"]: t["sparsity"] for t in doc["models"][0]["taps"]}
    want = _direct(checkpoint)
    assert got == pytest.approx({"stages.0.0.mlp.act": want["stages.0.0.mlp.act"],
                                 "stages.2.0.mlp.act": want["stages.2.0.mlp.act"]}, abs=1e-12)
    assert 0.2 < got["stages.0.0.mlp.act"] < 0.8                   # a ReLU of random weights: about half
    assert sorted(doc["files"]) == ["sparsity.csv", "sparsity.pdf", "sparsity.png"]
    (out / "sparsity.png").unlink()
    again = cli(plugin, "plot", out, "--format", "png")
    assert again.returncode == 0, again.stderr
    assert (out / "sparsity.png").is_file()


def test_the_plugin_under_torchrun_gives_the_one_process_numbers(plugin, checkpoint, tmp_path):
    args = ["sparsity", "--model", "dfformer_s18_relu", "--checkpoint", checkpoint, *KW, "--taps", TAPS,
            "--num-images", "5", "--batch-size", "2", "--device", "cpu"]
    one = cli(plugin, *args, "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "spectrascope.cli", *map(str, args), "--output", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, env=_env(plugin), cwd=tmp_path, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    d1, d2 = (json.loads((tmp_path / k / "results.json").read_text()) for k in ("one", "two"))
    assert d1["provenance"]["world_size"] == 1 and d2["provenance"]["world_size"] == 2
    assert d1["models"] == d2["models"]                             # float64 counts: exactly equal
