"""Bad inputs through the command line, one case per row, written from the failure classes of
reliability: data loss (overwrite policy), non-finite weights, bad option values of every kind,
misleading messages and interrupted runs.

Every case asserts the same contract: exit status != 0, stderr is exactly one line ``Error: ...``
naming the option (or what was wrong) with no traceback, and the whole workspace -- the
output folder, the user's files, the images and checkpoints -- is byte-for-byte unchanged (no
output, no staging folder left behind)."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import spectrascope
from spectrascope.cli import main

TINY = ["--model-kwargs", "depths=1,1,2,1", "--model-kwargs", "dims=8,16,24,32"]
TINY_KW = dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32])
SMALL = ["--img-size", "32", "--num-images", "2"]
PROGRESS = re.compile(r"\d+%\|")                          # a progress bar line, not a message
SYNTH = "synthetic:num_classes=4,train_size=8,val_size=8,size=32"


# ---------------------------------------------------------------------------- workspace


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Images and checkpoints shared by the cases (their bytes are checked after every case)."""
    root = tmp_path_factory.mktemp("assets")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(imgs / f"photo{i}.png")
    bad = root / "badimgs"
    bad.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(bad / "good.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    torch.manual_seed(0)
    model = spectrascope.create_model("dfformer_s18", num_classes=4, **TINY_KW)
    state = model.state_dict()
    torch.save(state, root / "good.pth")
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad_state = {k: v.clone() for k, v in state.items()}
        bad_state["downsample_layers.0.conv.weight"].fill_(value)
        torch.save(bad_state, root / f"{name}.pth")
    (root / "garbage.pth").write_bytes(b"this is not a checkpoint")
    return root


@pytest.fixture
def ws(tmp_path, assets, monkeypatch):
    """A workspace: a folder of the user's own files, a plain file, the shared assets."""
    monkeypatch.setenv("SPECTRASCOPE_CACHE", str(assets.parent / "cache"))
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    (user / "thesis.pdf").write_bytes(b"%PDF-1.4 precious")
    (tmp_path / "afile.txt").write_text("a file, not a folder\n")
    ours = tmp_path / "ours"                                   # outputs of another command
    ours.mkdir()
    (ours / "results.json").write_text("{}\n")
    from spectrascope.io.results import record_outputs
    record_outputs(ours, command="spectrum", files=["results.json"])
    mixed = tmp_path / "mixed"                                 # our outputs plus a user file
    mixed.mkdir()
    (mixed / "results.json").write_text("{}\n")
    record_outputs(mixed, command="amplitude", files=["results.json"])
    (mixed / "mine.txt").write_text("mine\n")
    run = tmp_path / "trainrun"                                # a training run folder
    run.mkdir()
    (run / "last.pth").write_bytes(b"weights of a long run")
    record_outputs(run, command="train", files=["last.pth"])
    return tmp_path


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` with the sha256 of its bytes (folders as None)."""
    out = {}
    for root in roots:
        out[str(root)] = None
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def fill(args, ws: Path, assets: Path) -> list[str]:
    names = {"ws": ws, "imgs": assets / "imgs", "badimgs": assets / "badimgs", "user": ws / "user",
             "afile": ws / "afile.txt", "out": ws / "out", "ours": ws / "ours", "mixed": ws / "mixed",
             "trainrun": ws / "trainrun",
             **{k: assets / f"{k}.pth" for k in ("good", "nan", "inf", "garbage")}}
    return [str(a).format(**{k: str(v) for k, v in names.items()}) for a in args]


def assert_contract(res, needles, before, after):
    assert res.exit_code not in (0, None), res.output
    err = [ln for ln in res.stderr.splitlines() if ln.strip() and not PROGRESS.search(ln)]
    assert "Traceback" not in res.output, res.output
    assert len(err) == 1 and err[0].startswith("Error: "), res.stderr
    for n in needles:
        assert n in err[0], err[0]
    assert ".partial-" not in err[0], err[0]                 # never an internal staging path
    assert after == before                                 # nothing written, nothing lost


@dataclass
class Case:
    id: str
    args: list
    needles: tuple = ()
    xfail: str | None = None


def _c(id, args, *needles, xfail=None):
    return pytest.param(Case(id, args, needles, xfail), id=id,
                        marks=[pytest.mark.xfail(strict=True, reason=xfail)] if xfail else [])


AMP = ["amplitude", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}"]
AMP_NO_IMAGES = ["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--output", "{out}"]
PRED = ["predict", "--model", "dfformer_s18", *TINY, "--num-images", "1", "--images", "{imgs}"]

CASES = [
    # -- data loss: the overwrite policy never deletes what spectrascope did not write
    _c("out-holds-user-files", [*AMP, "--output", "{user}"], "--output", "not empty"),
    _c("overwrite-user-files", [*AMP, "--output", "{user}", "--overwrite"], "--output", "did not write"),
    _c("overwrite-images-folder", [*AMP, "--output", "{imgs}", "--overwrite"], "--output", "input"),
    _c("overwrite-parent-of-images", ["amplitude", "--model", "dfformer_s18", *TINY, *SMALL, "--images",
                                      "{ws}/user", "--output", "{ws}", "--overwrite"], "--output"),
    _c("output-inside-images", [*AMP, "--output", "{imgs}/results"], "--output", "input"),
    _c("overwrite-other-commands-outputs", [*AMP, "--output", "{ours}", "--overwrite"], "--output", "spectrum"),
    _c("overwrite-mixed-folder", [*AMP, "--output", "{mixed}", "--overwrite"], "--output", "mine.txt"),
    _c("overwrite-training-run", [*AMP, "--output", "{trainrun}", "--overwrite"], "--output", "train"),
    _c("checkpoint-inside-output", [*AMP, "--checkpoint", "{trainrun}/last.pth", "--output", "{trainrun}",
                                    "--overwrite"], "--output"),
    _c("output-is-a-file", [*AMP, "--output", "{afile}"], "--output", "file"),
    _c("output-under-a-file", [*AMP, "--output", "{afile}/sub"], "--output", "file"),
    _c("output-not-creatable", [*AMP, "--output", "/proc/spectrascope-test/out"], "--output", "cannot"),
    _c("cam-overwrite-user-files", ["cam", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}",
                                    "--output", "{user}", "--overwrite"], "--output"),
    _c("evaluate-overwrite-user-files", ["evaluate", "--model", "dfformer_s18", *TINY, "--img-size", "32",
                                         "--checkpoint", "{good}", "--data", SYNTH, "--output", "{user}",
                                         "--overwrite"], "--output"),
    # -- non-finite weights: a one-line stop, never NaN results
    _c("amplitude-nan-weights", [*AMP, "--checkpoint", "{nan}", "--output", "{out}"], "non-finite"),
    _c("amplitude-inf-weights", [*AMP, "--checkpoint", "{inf}", "--output", "{out}"], "non-finite"),
    _c("spectrum-nan-weights", ["spectrum", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}",
                                "--checkpoint", "{nan}", "--output", "{out}"], "non-finite"),
    _c("predict-nan-weights", [*PRED, "--checkpoint", "{nan}"], "non-finite"),
    _c("cam-nan-weights", ["cam", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}", "--method",
                           "gradcam", "--checkpoint", "{nan}", "--output", "{out}"], "non-finite"),
    _c("cka-nan-weights", ["cka", "--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, *SMALL,
                           "--images", "{imgs}", "--num-images", "4", "--checkpoint-a", "{nan}", "--output", "{out}"],
       "non-finite"),
    _c("filters-nan-weights", ["filters", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}",
                               "--checkpoint", "{nan}", "--output", "{out}"], "non-finite"),
    _c("evaluate-nan-weights", ["evaluate", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--checkpoint",
                                "{nan}", "--data", SYNTH, "--output", "{out}"], "non-finite"),
    # -- bad option values: sizes
    _c("img-size-zero", [*PRED, "--img-size", "0"], "--img-size"),
    _c("img-size-negative", [*PRED, "--img-size=-5"], "--img-size"),
    _c("img-size-zero-side", [*PRED, "--img-size", "64x0"], "--img-size"),
    _c("img-size-text", [*PRED, "--img-size", "big"], "--img-size"),
    _c("img-size-three-sides", [*PRED, "--img-size", "3x64x64"], "--img-size"),
    _c("img-size-fraction", [*PRED, "--img-size", "64.5"], "--img-size"),
    _c("img-size-huge", [*PRED, "--img-size", "100000"], "--img-size", "8192"),
    _c("img-size-beyond-memory", ["predict", "--model", "caformer_s18", "--num-images", "1", "--images", "{imgs}",
                                  "--img-size", "8192"], "--img-size", "caformer_s18", "GiB"),
    _c("img-size-below-minimum", ["predict", "--model", "gfnet_ti", "--num-images", "1", "--images", "{imgs}",
                                  "--model-kwargs", "embed_dim=16", "--model-kwargs", "depth=1", "--img-size", "8"],
       "--img-size", "gfnet_ti", "16x16"),
    # -- model overrides
    _c("override-unknown-name", [*PRED, "--model-kwargs", "no_such_arg=1"], "--model-kwargs", "no_such_arg",
       "depths", "token_mixers"),
    _c("override-wrong-type", ["predict", "--model", "dfformer_s18", "--num-images", "1", "--images", "{imgs}",
                               "--model-kwargs", "dims=abc"], "--model-kwargs", "dims", "integer"),
    _c("override-wrong-type-float", [*PRED, "--model-kwargs", "drop_path_rate=lots"], "--model-kwargs",
       "drop_path_rate", "number"),
    _c("override-flag-not-bool", [*PRED, "--model-kwargs", "fork_feat=7"], "--model-kwargs", "fork_feat"),
    _c("override-stage-mismatch", ["predict", "--model", "dfformer_s18", "--num-images", "1", "--images", "{imgs}",
                                   "--model-kwargs", "depths=1,1,1", "--model-kwargs", "dims=8,16,24,32"],
       "--model-kwargs", "depths"),
    _c("override-unknown-mixer", [*PRED, "--model-kwargs", "token_mixers=fourier"], "--model-kwargs", "fourier"),
    _c("override-not-key-value", [*PRED, "--model-kwargs", "depths"], "--model-kwargs"),
    _c("override-empty-key", [*PRED, "--model-kwargs", "=3"], "--model-kwargs"),
    _c("override-bad-json", [*PRED, "--model-kwargs", "mixer_kwargs={{num_filters:"], "--model-kwargs", "JSON"),
    _c("override-own-option", [*PRED, "--model-kwargs", "input_size=3,64,64"], "--model-kwargs", "--img-size"),
    _c("evaluate-num-classes-override", ["evaluate", "--model", "dfformer_s18", *TINY, "--img-size", "32",
                                         "--model-kwargs", "num_classes=8", "--data", SYNTH, "--output", "{out}"],
       "--model-kwargs", "num_classes"),
    _c("unknown-model", ["predict", "--model", "dfformer_s81", "--images", "{imgs}"], "dfformer_s18"),
    # -- devices
    _c("device-unknown", [*PRED, "--device", "foo"], "--device", "cpu"),
    _c("device-missing-index", [*PRED, "--device", "cuda:97"], "--device"),
    _c("device-empty", [*PRED, "--device", "gpu0"], "--device"),
    # -- data specs and image sources
    _c("data-value-type", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "synthetic:num_classes=abc"], "--data", "num_classes",
       "integer"),
    _c("data-unknown-key", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "synthetic:colour=red"], "--data", "colour", "num_classes"),
    _c("data-not-key-value", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "synthetic:8"], "--data", "KEY=VALUE"),
    _c("data-classes-not-a-grid", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "synthetic:num_classes=7,bands=2"], "--data",
       "num_classes"),
    _c("data-float-size", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "synthetic:size=32.5"], "--data", "size"),
    _c("data-unknown-kind", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "webdataset:/x"], "--data"),
    _c("data-empty-path", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "imagefolder:"], "--data", "PATH"),
    _c("data-missing-folder", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "imagefolder:{ws}/nowhere"], "nowhere"),
    _c("data-cifar-missing", [*AMP_NO_IMAGES, "--num-images", "2", "--data", "cifar10:{ws}/nowhere"], "nowhere"),
    _c("evaluate-classes-mismatch", ["evaluate", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--checkpoint",
                                     "{good}", "--data", SYNTH.replace("num_classes=4", "num_classes=8"), "--output",
                                     "{out}"], "classes"),
    _c("images-and-data", [*AMP, "--data", "samples", "--output", "{out}"], "--data"),
    _c("images-missing", [*AMP_NO_IMAGES, "--images", "{ws}/nowhere"], "nowhere"),
    _c("images-undecodable", [*AMP_NO_IMAGES, "--images", "{badimgs}", "--num-images", "2"], "broken.png"),
    _c("num-images-zero", [*AMP_NO_IMAGES, "--images", "{imgs}", "--num-images", "0"], "--num-images"),
    _c("batch-size-zero", [*AMP, "--batch-size", "0", "--output", "{out}"], "--batch-size"),
    _c("evaluate-samples", ["evaluate", "--model", "dfformer_s18", *TINY, "--data", "samples", "--output", "{out}"],
       "samples"),
    # -- checkpoints
    _c("checkpoint-missing", [*PRED, "--checkpoint", "{ws}/none.pth"], "none.pth"),
    _c("checkpoint-garbage", [*PRED, "--checkpoint", "{garbage}"], "garbage.pth"),
    _c("checkpoint-wrong-arch", ["predict", "--model", "dfformer_s18", "--num-images", "1", "--images", "{imgs}",
                                 "--model-kwargs", "depths=1,1,2,1", "--model-kwargs", "dims=8,16,24,40",
                                 "--checkpoint", "{good}"], "good.pth"),
    # -- ranges and selections
    _c("channels-reversed-range", ["filters", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}",
                                   "--channels", "5-2", "--output", "{out}"], "--channels"),
    _c("stage-out-of-range", [*AMP, "--stage", "9", "--output", "{out}"], "--stage"),
    _c("taps-unknown-role", [*AMP, "--taps", "no_such_role", "--output", "{out}"], "no_such_role"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, ws, assets):
    args = fill(case.args, ws, assets)
    before = snapshot(ws, assets)
    res = CliRunner().invoke(main, args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert_contract(res, [n.format(ws=ws) for n in case.needles], before, snapshot(ws, assets))


def test_output_dot_with_overwrite_in_a_user_folder(ws, assets, monkeypatch):
    """``--output . --overwrite`` inside a folder of the user's files: refused, no staging copy left."""
    monkeypatch.chdir(ws / "user")
    before = snapshot(ws, assets)
    res = CliRunner().invoke(main, fill([*AMP, "--output", ".", "--overwrite"], ws, assets))
    assert_contract(res, ["--output", "did not write"], before, snapshot(ws, assets))


def test_at_least_forty_cases():
    assert len(CASES) >= 40


def test_huge_size_fails_at_once(ws, assets):
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, fill(["predict", "--model", "caformer_s18", "--num-images", "1", "--images",
                                         "{imgs}", "--img-size", "8192x8192"], ws, assets))   # the full model
    assert res.exit_code == 2 and "GiB" in res.stderr
    assert time.perf_counter() - t0 < 30


# ---------------------------------------------------------------------------- interrupted runs


def _spawn(args, cwd):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.Popen([sys.executable, "-m", "spectrascope.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_analysis_leaves_nothing(ws, assets, signum):
    """SIGTERM/SIGINT while an analysis is writing into its staging folder: exit 128 + signal,
    one line, no output folder and no staging folder left."""
    out = ws / "run"
    args = fill(["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "64", "--data",
                 "synthetic:num_classes=4,train_size=8,val_size=4000,size=64", "--num-images", "4000",
                 "--batch-size", "8", "--output", "{ws}/run"], ws, assets)
    before = snapshot(assets, ws / "user")
    proc = _spawn(args, ws)
    deadline = time.time() + 120
    while time.time() < deadline and not list(ws.glob(".run.partial-*")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert "Traceback" not in err and len(lines) == 1 and signal.Signals(signum).name in lines[0], err
    assert not out.exists() and not list(ws.glob(".run.partial-*"))
    assert snapshot(assets, ws / "user") == before


def test_stale_staging_of_a_dead_process_is_cleaned(ws, assets):
    """A staging folder left by a killed run (dead PID) is removed by the next run into the same place."""
    from spectrascope.io.results import _HOST
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = ws / f".out.partial-{_HOST}-{dead}"
    stale.mkdir()
    (stale / "half.json").write_text("{")
    res = CliRunner().invoke(main, fill([*AMP, "--output", "{out}"], ws, assets))
    assert res.exit_code == 0, res.output
    assert not stale.exists() and (ws / "out" / "results.json").is_file()
