"""Bad inputs through the command line, second round: manifests that point outside their
folder, folders another command holds, resumed runs beside the user's own files, hostile
results files and ``--add`` documents, colour maps, channels, degenerate maps, integer and
device checkpoints, undecodable file names, exit statuses and misleading messages.

Every case keeps the contract of ``test_bad_input``: exit status != 0, stderr is exactly one
``Error: ...`` line (after any progress bar, on a line of its own) naming what was wrong, no
traceback, and the whole workspace -- the output folder, the user's files, the inputs -- byte
for byte unchanged (no output, no staging folder, no lock file, no empty folder left behind).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import spectrascope
from spectrascope.cli import main
from spectrascope.io.claims import FolderClaim
from spectrascope.io.results import MANIFEST, record_outputs

TINY = ["--model-kwargs", "depths=1,1,2,1", "--model-kwargs", "dims=8,16,24,32"]
TINY_KW = dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32])
SMALL = ["--img-size", "32", "--num-images", "2"]
SYNTH = "synthetic:num_classes=4,train_size=8,val_size=8,size=32"
PROGRESS = re.compile(r"\d+%\|")


# ---------------------------------------------------------------------------- workspace


def _tiny_training_run(folder: Path) -> Path:
    """A real (tiny) training run: its last.pth is a spectrascope training checkpoint."""
    res = CliRunner().invoke(main, ["train", "--model", "dfformer_s18", *TINY, "--data", SYNTH, "--epochs", "1",
                                    "-b", "8", "--limit-train-batches", "1", "--limit-val-batches", "1",
                                    "--no-progress", "--output", str(folder)])
    assert res.exit_code == 0, res.output
    return folder / "last.pth"


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Inputs shared by the cases (their bytes are checked after every case)."""
    root = tmp_path_factory.mktemp("assets2")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(imgs / f"photo{i}.png")
    undecodable = root / "undecodable"
    undecodable.mkdir()
    for name in (b"\xffphoto.png", b"ok.png", b"ok2.png", b"ok3.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(undecodable / os.fsdecode(name))
    torch.manual_seed(0)
    state = spectrascope.create_model("dfformer_s18", num_classes=4, **TINY_KW).state_dict()
    torch.save({k: (v * 100).to(torch.int64) if v.is_floating_point() else v for k, v in state.items()},
               root / "int.pth")
    (root / "zero.pth").symlink_to("/dev/zero")
    (root / "a.pth").write_bytes(b"a checkpoint to convert")
    (root / "a_link.pth").symlink_to(root / "a.pth")
    with open(root / "evil.pth", "wb") as f:
        pickle.dump({"format": "spectrascope-train", "model": _Evil()}, f, protocol=2)
    _tiny_training_run(root / "run")
    # results files as a hostile or careless user would hand them over
    good = _amplitude_doc()
    hostile = {
        "nan": json.dumps(good).replace('"high_freq_delta": -1.5', '"high_freq_delta": NaN'),
        "inf": json.dumps(good).replace('"curve": [0.0, -1.0, -1.5]', '"curve": [0.0, -Infinity, -1.5]'),
        "version": json.dumps(dict(good, schema_version=99)),
        "notaps": json.dumps(_amplitude_doc(taps=[])),
        "badtype": json.dumps(good).replace('"curve": [0.0, -1.0, -1.5]', '"curve": "0, -1, -1.5"'),
        "nokey": json.dumps(_amplitude_doc(drop="normalised_depth")),
        "deep": json.dumps(dict(good, extra=json.loads("[" * 200 + "]" * 200))),
        "onepoint": json.dumps(_amplitude_doc(curve=[0.0])),
        "nomodels": json.dumps(dict(good, models={})),
        "binary": b"\xff\xfe{\x00".decode("latin1"),
    }
    for name, text in hostile.items():
        (root / f"{name}.json").write_bytes(text.encode("latin1") if name == "binary" else text.encode())
    adds = {"neg": {"top1": -5, "params": 1000, "flops": 1000}, "bool": {"top1": True, "params": 1000, "flops": 1000},
            "absurd": {"top1": 80.0, "params": 10 ** 20, "flops": 1000}, "str": {"top1": "80", "model": "dfformer_s18"},
            "list": [{"top1": 80}], "noint": {"top1": 80.0, "params": 1.5, "flops": 1000}}
    for name, doc in adds.items():
        (root / f"add_{name}.json").write_text(json.dumps(doc))
    (root / "add_nan.json").write_text('{"top1": NaN, "params": 1000, "flops": 1000}')
    (root / "add_inf.json").write_text('{"top1": 80, "params": Infinity, "flops": 1000}')
    (root / "add_deep.json").write_text('{"top1": 80, "x": ' + "[" * 100 + "]" * 100 + "}")
    return root


def _amplitude_doc(taps=None, curve=None, drop=None) -> dict:
    tap = {"name": "s1.b0.block", "role": "block", "stage": 1, "index": 0, "mixer": "fft", "normalised_depth": 0.0,
           "shape": [8, 6, 6], "curve": curve or [0.0, -1.0, -1.5], "freq_index_pi": [0.0, 0.5, 1.0],
           "freq_true_pi": [0.0, 0.33, 0.67], "high_freq_delta": -1.5}
    if drop:
        del tap[drop]
    return {"schema_version": 1, "kind": "amplitude", "method": {"freq_axis": "index", "eps": 1e-6},
            "images": {"count": 2}, "models": [{"model": "m", "random_weights": True,
                                                "taps": [tap] if taps is None else taps}]}


@pytest.fixture
def ws(tmp_path, assets, monkeypatch):
    """A workspace: the user's own files, hostile result folders and a run beside them."""
    monkeypatch.setenv("SPECTRASCOPE_CACHE", str(assets.parent / "cache2"))
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    (tmp_path / "victim.txt").write_text("a file outside every result folder\n")
    for name, command, entry in (("up", "amplitude", "../victim.txt"), ("abs", "amplitude", str(tmp_path / "victim.txt")),
                                 ("dotted", "amplitude", "./results.json"), ("camup", "cka", "../victim.txt"),
                                 ("trainup", "train", "../victim.txt"), ("linked", "amplitude", "sub/notes.txt")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text("{}\n")
        (folder / MANIFEST).write_text(json.dumps({"command": command, "files": ["results.json", entry]}))
    (tmp_path / "linked" / "sub").symlink_to(user)
    man_link = tmp_path / "manlink"
    man_link.mkdir()
    (man_link / "results.json").write_text("{}\n")
    record_outputs(tmp_path / "ours", command="amplitude", files=["results.json"])
    (tmp_path / "ours" / "results.json").write_text("{}\n")
    (man_link / MANIFEST).symlink_to(tmp_path / "ours" / MANIFEST)
    # a copy of a run beside the user's own files of the same names (no manifest)
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(assets / "run" / "last.pth", mine / "last.pth")
    (mine / "results.json").write_text('{"mine": "the user\'s own results"}\n')
    for name in ("metrics.csv", "best.pth"):
        (mine / name).write_text(f"the user's own {name}\n")
    return tmp_path


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` (links as their target, not followed) with its bytes' digest."""
    import hashlib
    out = {}
    for root in roots:
        out[str(root)] = None
        for p in sorted(root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = None
    return out


def fill(args, ws: Path, assets: Path) -> list[str]:
    names = {"ws": ws, "imgs": assets / "imgs", "undecodable": assets / "undecodable", "assets": assets,
             "run": assets / "run", "out": ws / "out", "user": ws / "user", "mine": ws / "mine"}
    return [str(a).format(**{k: str(v) for k, v in names.items()}) for a in args]


def assert_contract(res, needles, absent, before, after):
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.stderr.split("\n") if ln.split("\r")[-1].strip()
             and not any(PROGRESS.search(part) for part in ln.split("\r"))]
    err = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(err) == 1 and lines[-1] == err[0], res.stderr
    assert not [ln for ln in lines if not ln.startswith(("Error: ", "note: ", "warning: ", "training "))], res.stderr
    for n in needles:
        assert n in err[0], err[0]
    for n in absent:
        assert n not in res.output, res.output
    assert ".partial-" not in err[0] and "spectrascope-claim" not in err[0], err[0]
    assert after == before                                 # nothing written, nothing lost


@dataclass
class Case:
    id: str
    args: list
    needles: tuple = ()
    absent: tuple = ()
    hold: str | None = None                 # a folder another command holds during the run
    code: int = 2


def _c(id, args, *needles, absent=(), hold=None, code=2):
    return pytest.param(Case(id, args, needles, tuple(absent), hold, code), id=id)


AMP = ["amplitude", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}"]
CKA = ["cka", "--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, "--img-size", "32", "--num-images",
       "4", "--images", "{imgs}"]
TRAIN = ["train", "--model", "dfformer_s18", *TINY, "--data", SYNTH, "--epochs", "1", "-b", "8",
         "--limit-train-batches", "1", "--limit-val-batches", "1", "--no-progress"]
PRED = ["predict", "--model", "dfformer_s18", *TINY, "--num-images", "1", "--images", "{imgs}"]
PLOT = ["plot", "--output", "{ws}/plotted"]
CHART = ["figure", "spanet-fig5", "--output", "{ws}/figs"]

CASES = [
    # -- a manifest is data: entries outside the folder are refused, nothing is deleted
    _c("manifest-parent-entry", [*AMP, "--output", "{ws}/up", "--overwrite"], "--output", "../victim.txt", "manifest"),
    _c("manifest-absolute-entry", [*AMP, "--output", "{ws}/abs", "--overwrite"], "--output", "absolute"),
    _c("manifest-unnormalised-entry", [*AMP, "--output", "{ws}/dotted", "--overwrite"], "./results.json"),
    _c("manifest-entry-through-a-link", [*AMP, "--output", "{ws}/linked", "--overwrite"], "symbolic link"),
    _c("manifest-is-a-link", [*AMP, "--output", "{ws}/manlink", "--overwrite"], "symbolic link"),
    _c("cka-manifest-parent-entry", [*CKA, "--output", "{ws}/camup", "--overwrite"], "../victim.txt"),
    _c("train-manifest-parent-entry", [*TRAIN, "--output", "{ws}/trainup", "--overwrite"], "../victim.txt"),
    # -- a folder another command holds is refused at once, never waited for or emptied
    _c("amplitude-into-a-claimed-folder", [*AMP, "--output", "{out}"], "being written", hold="{out}"),
    _c("cka-into-a-claimed-folder", [*CKA, "--output", "{out}"], "being written", hold="{out}"),
    _c("train-into-a-claimed-folder", [*TRAIN, "--output", "{out}"], "being written", hold="{out}"),
    _c("spectrum-into-a-claimed-folder", ["spectrum", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}",
                                          "--output", "{user}/new"], "being written", hold="{user}/new"),
    # -- a resumed run never replaces or claims the user's files of the same names
    _c("resume-in-place-over-user-files", ["train", "--resume", "{mine}/last.pth", "--output", "{mine}",
                                           "--no-progress"], "results.json", "--output"),
    _c("resume-over-user-files-default-output", ["train", "--resume", "{mine}/last.pth", "--no-progress"],
       "best.pth", "another folder"),
    # -- convert never replaces its own input
    _c("convert-onto-its-input", ["convert", "{assets}/a.pth", "{assets}/a.pth", "--to", "timm", "--overwrite"],
       "TARGET", "input"),
    _c("convert-onto-a-link-to-its-input", ["convert", "{assets}/a.pth", "{assets}/a_link.pth", "--to", "timm",
                                            "--overwrite"], "TARGET", "input"),
    _c("convert-into-a-missing-folder", ["convert", "{assets}/a.pth", "{ws}/nowhere/b.pth", "--to", "timm"],
       "TARGET", "does not exist"),
    # -- plot: results files checked against their schema
    _c("plot-nan-token", [*PLOT, "{assets}/nan.json"], "RESULTS", "NaN"),
    _c("plot-infinity-token", [*PLOT, "{assets}/inf.json"], "RESULTS", "Infinity"),
    _c("plot-unknown-schema-version", [*PLOT, "{assets}/version.json"], "schema_version 99"),
    _c("plot-empty-tap-list", [*PLOT, "{assets}/notaps.json"], "models[0].taps"),
    _c("plot-wrong-type", [*PLOT, "{assets}/badtype.json"], "models[0].taps[0].curve", "not a list"),
    _c("plot-missing-key", [*PLOT, "{assets}/nokey.json"], "normalised_depth", "missing"),
    _c("plot-deep-nesting", [*PLOT, "{assets}/deep.json"], "nested"),
    _c("plot-one-point-curve", [*PLOT, "{assets}/onepoint.json"], "curve", "at least 2"),
    _c("plot-models-not-a-list", [*PLOT, "{assets}/nomodels.json"], "models", "not a list"),
    _c("plot-not-utf8", [*PLOT, "{assets}/binary.json"], "UTF-8"),
    _c("plot-unknown-format", [*PLOT, "{ws}/ours", "--format", "exe"], "--format", "exe"),
    # -- figure --add: finite, typed, plausible (the refusal leaves no empty figures folder)
    _c("add-negative-top1", [*CHART, "--add", "x={assets}/add_neg.json"], "--add x", "top1", "outside"),
    _c("add-boolean-top1", [*CHART, "--add", "x={assets}/add_bool.json"], "top1", "not a number"),
    _c("add-absurd-params", [*CHART, "--add", "x={assets}/add_absurd.json"], "params"),
    _c("add-string-top1", [*CHART, "--add", "x={assets}/add_str.json"], "top1", "not a number"),
    _c("add-not-an-object", [*CHART, "--add", "x={assets}/add_list.json"], "not an object"),
    _c("add-fractional-params", [*CHART, "--add", "x={assets}/add_noint.json"], "params", "integer"),
    _c("add-nan-token", [*CHART, "--add", "x={assets}/add_nan.json"], "NaN"),
    _c("add-infinity-token", [*CHART, "--add", "x={assets}/add_inf.json"], "Infinity"),
    _c("add-deep-nesting", [*CHART, "--add", "x={assets}/add_deep.json"], "nested"),
    # -- colour maps against matplotlib's registry
    _c("cmap-spectrum", ["spectrum", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}", "--cmap",
                         "viridiss", "--output", "{out}"], "--cmap", "viridis"),
    _c("cmap-filters", ["filters", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--cmap", "jet2",
                        "--output", "{out}"], "--cmap"),
    _c("cmap-plot", [*PLOT, "{ws}/ours", "--cmap", "no-such-map"], "--cmap"),
    _c("cmap-figure-recipe", ["figure", "dfformer-fig9", "--output", "{ws}/figs", "--cmap", "rainbowz"], "--cmap"),
    # -- channels against the layers
    _c("channels-beyond-global-filters", ["filters", "--model", "gfnet_ti", "--model-kwargs", "embed_dim=16",
                                          "--model-kwargs", "depth=1", "--img-size", "32", "--channels", "8-20",
                                          "--output", "{out}"], "--channels", "16 channels"),
    _c("channels-beyond-effective-filters", ["filters", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{imgs}",
                                             "--effective", "1", "--channels", "0,40", "--output", "{out}"],
       "--channels", "40"),
    _c("channels-too-many", ["filters", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--channels",
                             "0-999999999", "--output", "{out}"], "--channels", "more than"),
    # -- degenerate maps: refused when no tap has 2 frequency points
    _c("amplitude-only-degenerate-maps", ["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "7",
                                          "--num-images", "2", "--images", "{imgs}", "--output", "{out}"],
       "--img-size", "fewer than 2 frequency points"),
    _c("throughput-resolution-too-small", ["throughput", "--model", "dfformer_s18", "--resolutions", "1",
                                           "--iters", "1", "--warmup", "0", "--output", "{out}"], "--resolutions",
       absent=("--img-size",)),
    # -- checkpoints
    _c("checkpoint-integer-weights", [*PRED, "--checkpoint", "{assets}/int.pth"], "int.pth", "integer"),
    _c("checkpoint-linked-to-dev-zero", [*PRED, "--checkpoint", "{assets}/zero.pth"], "zero.pth",
       "not a regular file", absent=("not found",)),
    _c("resume-pickled-code", ["train", "--resume", "{assets}/evil.pth", "--output", "{out}"], "evil.pth",
       "Python code", absent=("weights_only` set to `False", "weights_only=False", "trusted source")),
    # -- file names that are not UTF-8
    _c("amplitude-undecodable-name", [*AMP[:-1], "{undecodable}", "--output", "{out}"], "UTF-8"),
    _c("cka-undecodable-name", [*CKA[:-1], "{undecodable}", "--output", "{out}"], "UTF-8"),
    _c("cam-undecodable-name", ["cam", "--model", "dfformer_s18", *TINY, *SMALL, "--images", "{undecodable}",
                                "--output", "{out}"], "UTF-8"),
    # -- exit status 2 for every bad input
    _c("models-no-match", ["models", "zzz"], "zzz"),
    _c("figure-unknown", ["figure", "no-such-fig"], "no-such-fig"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, ws, assets):
    args = fill(case.args, ws, assets)
    before = snapshot(ws, assets)
    held = FolderClaim(fill([case.hold], ws, assets)[0], command="spectrum").acquire() if case.hold else None
    try:
        res = CliRunner().invoke(main, args)
    finally:
        if held is not None:
            held.release()
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert res.exit_code == case.code, res.output
    assert_contract(res, [n.format(ws=ws) for n in case.needles], case.absent, before, snapshot(ws, assets))


def test_at_least_forty_new_cases():
    assert len(CASES) >= 40


# ---------------------------------------------------------------------------- misleading messages


def test_resuming_a_moved_run_continues_where_it_now_is(tmp_path, assets):
    """A run folder moved elsewhere resumes in its new place (never the folder named in its args,
    never a suggestion to --overwrite)."""
    moved = tmp_path / "moved"
    shutil.copytree(assets / "run", moved)
    old = Path(json.loads((moved / "args.json").read_text())["output"])
    res = CliRunner().invoke(main, ["train", "--resume", str(moved / "last.pth"), "--epochs", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert str(moved) in res.output and "--overwrite" not in res.output
    assert json.loads((moved / "results.json").read_text())["final"]["epoch"] == 2
    assert old == assets / "run" and torch.load(assets / "run" / "last.pth", weights_only=True)["epoch"] == 1


def test_errors_start_on_their_own_line_after_a_progress_bar(tmp_path, monkeypatch):
    """A progress bar ends with a carriage return: the Error line still starts a line of its own.
    (Bars are drawn on terminals only; here they are drawn on the runner's captured stderr.)"""
    import tqdm.auto
    real = tqdm.auto.tqdm

    def drawn(*args, **kwargs):
        kwargs["disable"] = False
        return real(*args, **kwargs)
    monkeypatch.setattr(tqdm.auto, "tqdm", drawn)
    res = CliRunner().invoke(main, ["cka", "--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY,
                                    "--img-size", "32", "--num-images", "2", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "%|" in res.stderr, res.stderr
    assert "\rError" not in res.stderr and any(ln.startswith("Error: ") for ln in res.stderr.split("\n"))


@pytest.mark.parametrize("delay", [0.5, 1.2])
def test_ctrl_c_at_start_up_is_quiet(tmp_path, delay):
    """Ctrl-C while the command line is still importing (torch alone takes about 2 s here; a signal
    once the command runs gets its one "stopped by SIGINT" line instead): exit 130, nothing on stderr."""
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", "spectrascope.cli", "models"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, MPLBACKEND="Agg"))
    time.sleep(delay)
    if proc.poll() is not None:
        pytest.skip("the command finished before the signal")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "", err
