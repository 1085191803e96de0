"""`spectrascope evaluate` and `predict`: a two-process torchrun (gloo) evaluation equals one
process exactly and equals top-k counted directly from the logits; NaN weights stop both
commands with one line and write nothing; a head-size override that does not fit the
checkpoint is one line; --overwrite never deletes a training run's checkpoints; SIGTERM
ends evaluate and train with 128 + signal and nothing half-written."""
import json
import os
import signal

import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.cli import main
from spectrascope.engine.runner import Runner
from spectrascope.io.bundles import load_data
from spectrascope.io.transforms import EvalTransform, TransformedDataset
from spectrascope.io.results import loads
from spectrascope.train import loop as tr
from spectrascope.train.loop import EpochBatchSampler, TrainConfig
from tests.distributed import torchrun

MODEL_KW = {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}
KW_ARGS = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=16,32,48,64"]
DATA = "synthetic:num_classes=4,train_size=128,val_size=44,size=32,patch=0.9"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A short real training run (one epoch) whose folder and checkpoints the tests use."""
    out = tmp_path_factory.mktemp("train") / "run"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr.train(TrainConfig(model="dfformer_s18", data=DATA, epochs=1, batch_size=16, lr=2e-3, seed=5,
                             progress=False, output=str(out), model_kwargs=dict(MODEL_KW)))
    finally:
        torch.set_num_threads(old)
    return out


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") == 0, r.output
    assert r.output.startswith("Error: "), r.output
    for w in words:
        assert w in r.output, r.output


def _direct_counts(checkpoint):
    """top-1/top-5 hits and the mean cross-entropy, from logits computed here image by image."""
    model = tr.create_model_from_checkpoint(checkpoint).eval()
    ds = TransformedDataset(load_data(DATA).val, EvalTransform((32, 32), center_crop=False,
                                                               mean=model.card.mean, std=model.card.std))
    c1 = c5 = 0
    loss = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i][:2]
            logits = model(x[None])[0]
            order = logits.argsort(descending=True).tolist()
            c1 += order[0] == y
            c5 += y in order[:5]
            loss += float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([y])))
    return c1, c5, loss / len(ds)


# ---------------------------------------------------------------------------- distributed = one process

def test_evaluate_under_torchrun_equals_one_process(run_dir, tmp_path, one_thread):
    ckpt = run_dir / "last.pth"
    common = ["evaluate", "--model", "dfformer_s18", "--checkpoint", ckpt, "--data", DATA, "-b", "8", "--device", "cpu"]
    r = torchrun([*common, "--output", tmp_path / "two"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    two = loads((tmp_path / "two" / "results.json").read_text())
    r1 = _cli(*common, "--output", tmp_path / "one")
    assert r1.exit_code == 0, r1.output
    one = loads((tmp_path / "one" / "results.json").read_text())
    assert two["provenance"]["world_size"] == 2 and one["provenance"]["world_size"] == 1
    assert two["results"]["world_size"] == 2
    a, b = one["results"], two["results"]
    assert a["n"] == b["n"] == 44                            # 6 batches of 8 (the last of 4) over 2 ranks, none twice
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])   # counts: exact
    # the per-batch sums are merged without rounding, so the loss is identical whenever both sides run the
    # forward with the same number of threads (as here); the bound for sums is 1e-6 relative
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=0)
    c1, c5, loss = _direct_counts(ckpt)
    assert a["top1"] == pytest.approx(100 * c1 / 44, abs=1e-12) and a["top5"] == pytest.approx(100 * c5 / 44)
    assert a["loss"] == pytest.approx(loss, rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [".spectrascope-manifest.json", "results.json"]


def test_evaluate_limit_batches_is_global(run_dir, tmp_path, one_thread):
    from spectrascope.train.evaluate import evaluate
    ev = evaluate("dfformer_s18", checkpoint=run_dir / "last.pth", data=DATA, batch_size=8, device="cpu",
                  limit_batches=2)
    full = evaluate("dfformer_s18", checkpoint=run_dir / "last.pth", data=DATA, batch_size=16, device="cpu")
    assert ev["n"] == 16 and full["n"] == 44 and full["world_size"] == 1


# ---------------------------------------------------------------------------- NaN weights

def _bad_weights(folder, value: str):
    """A tiny model whose classifier weights are all ``value`` (nan or inf)."""
    model = spectrascope.create_model("dfformer_s18", num_classes=4, img_size=32, **MODEL_KW)
    state = model.state_dict()
    state["head.fc2.weight"] = torch.full_like(state["head.fc2.weight"], float(value))
    path = folder / f"{value}.pth"
    torch.save({"model": state}, path)
    return path


@pytest.fixture(params=["nan", "inf"])
def nan_checkpoint(tmp_path, request):
    return _bad_weights(tmp_path, request.param)


def test_nan_weights_stop_evaluate_with_one_line(nan_checkpoint, tmp_path):
    out = tmp_path / "ev"
    r = _cli("evaluate", "--model", "dfformer_s18", "--checkpoint", nan_checkpoint, *KW_ARGS, "--data", DATA,
             "-b", "8", "--device", "cpu", "--output", out)
    _one_line_error(r, "non-finite", "batch 1", "weights")
    assert not out.exists() and not list(tmp_path.glob(".ev.partial-*"))


def test_nan_weights_stop_predict_with_one_line(nan_checkpoint):
    r = _cli("predict", "--model", "dfformer_s18", "--checkpoint", nan_checkpoint, *KW_ARGS, "--img-size", "32",
             "--num-images", "2", "--device", "cpu")
    _one_line_error(r, "non-finite", "weights")
    assert "top-" not in r.output


def test_nan_weights_stop_evaluate_under_torchrun(tmp_path):
    nan_checkpoint = _bad_weights(tmp_path, "nan")
    out = tmp_path / "ev2"
    r = torchrun(["evaluate", "--model", "dfformer_s18", "--checkpoint", nan_checkpoint, *KW_ARGS, "--data", DATA,
                  "-b", "8", "--device", "cpu", "--output", out], cwd=tmp_path)
    assert r.returncode != 0, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "non-finite" in errors[0] and "weights" in errors[0], r.stderr[-3000:]
    frames = [line for line in r.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "spectrascope" in f], r.stderr[-3000:]     # only the launcher's own report
    assert not out.exists()


# ---------------------------------------------------------------------------- input validation

def test_num_classes_override_that_does_not_fit_the_checkpoint(run_dir, tmp_path):
    out = tmp_path / "ev"
    r = _cli("evaluate", "--model", "dfformer_s18", "--checkpoint", run_dir / "last.pth", "--data", DATA,
             "--model-kwargs", "num_classes=8", "--device", "cpu", "--output", out)
    _one_line_error(r, "--model-kwargs", "num_classes=8", "4 classes")
    assert not out.exists()
    r = _cli("train", "--model", "dfformer_s18", "--data", DATA, "--model-kwargs", "num_classes=8", "--output", out)
    _one_line_error(r, "--model-kwargs", "num_classes")
    assert not out.exists()


def test_overwrite_never_deletes_training_checkpoints(run_dir, tmp_path):
    before = {n: (run_dir / n).read_bytes() for n in ("last.pth", "best.pth")}
    listing = sorted(p.name for p in run_dir.iterdir())
    r = _cli("evaluate", "--model", "dfformer_s18", "--checkpoint", run_dir / "last.pth", "--data", DATA,
             "--device", "cpu", "--output", run_dir, "--overwrite")
    _one_line_error(r, "input")                              # the checkpoint is in the folder
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(before["last.pth"])
    r = _cli("evaluate", "--model", "dfformer_s18", "--checkpoint", other, "--data", DATA,
             "--device", "cpu", "--output", run_dir, "--overwrite")
    _one_line_error(r, "spectrascope train")                 # another command's outputs are not replaced
    r = _cli("train", "--model", "dfformer_s18", "--data", DATA, *KW_ARGS, "--epochs", "1", "--output", run_dir,
             "--overwrite")
    _one_line_error(r, "checkpoint", "--resume")
    assert sorted(p.name for p in run_dir.iterdir()) == listing
    assert all((run_dir / n).read_bytes() == b for n, b in before.items())


def test_train_overwrite_replaces_its_own_files_without_checkpoints(tmp_path):
    out = tmp_path / "run"
    from spectrascope.io.results import record_outputs
    record_outputs(out, command="train", files=["args.json", "results.json"])
    (out / "args.json").write_text("{}")
    r = _cli("train", "--model", "dfformer_s18", "--data", DATA, *KW_ARGS, "--epochs", "1", "-b", "16",
             "--limit-train-batches", "1", "--limit-val-batches", "1", "--no-progress", "--output", out)
    _one_line_error(r, "not empty", "--overwrite")
    r = _cli("train", "--model", "dfformer_s18", "--data", DATA, *KW_ARGS, "--epochs", "1", "-b", "16",
             "--limit-train-batches", "1", "--limit-val-batches", "1", "--no-progress", "--output", out,
             "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "args.json").read_text())["model"] == "dfformer_s18"


# ---------------------------------------------------------------------------- signals

def test_sigterm_during_evaluate_writes_nothing(run_dir, tmp_path, monkeypatch):
    orig = Runner.forward
    calls = []

    def forward_then_signal(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
        return orig(self, *a, **k)

    monkeypatch.setattr(Runner, "forward", forward_then_signal)
    out = tmp_path / "ev"
    r = _cli("evaluate", "--model", "dfformer_s18", "--checkpoint", run_dir / "last.pth", "--data", DATA, "-b", "8",
             "--device", "cpu", "--output", out)
    assert r.exit_code == 128 + signal.SIGTERM and "SIGTERM" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ev")]


def test_sigterm_during_train_through_the_cli(tmp_path, monkeypatch):
    orig = EpochBatchSampler.__iter__

    def iter_then_signal(self):
        for k, batch in enumerate(orig(self)):
            yield batch
            if k == 2:
                signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(EpochBatchSampler, "__iter__", iter_then_signal)
    out = tmp_path / "run"
    r = _cli("train", "--model", "dfformer_s18", "--data", DATA, *KW_ARGS, "--epochs", "2", "-b", "16",
             "--no-progress", "--output", out)
    assert r.exit_code == 128 + signal.SIGTERM and "--resume" in r.output and "Traceback" not in r.output, r.output
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (0, 4)      # the signal came while update 4 fetched its batch
    assert sorted(p.name for p in out.iterdir()) == [".spectrascope-manifest.json", "args.json", "last.pth"]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name] and os.path.getsize(out / "last.pth") > 0


@pytest.mark.parametrize("args, words", [
    (["evaluate", "--limit-batches", "0"], ["--limit-batches"]),
    (["evaluate", "-b", "0"], ["--batch-size"]),
    (["evaluate", "--device", "foo"], ["--device", "foo"]),
    (["evaluate", "--model-kwargs", "img_size=64"], ["--model-kwargs", "--img-size"]),
    (["evaluate", "--model-kwargs", "colour=3"], ["--model-kwargs", "colour"]),
    (["evaluate", "--data", "samples"], ["train/evaluate need"]),
    (["predict", "--topk", "0"], ["--topk"]),
    (["predict", "--batch-size", "0"], ["--batch-size"]),
    (["predict", "--model-kwargs", "colour=3"], ["--model-kwargs", "colour"]),
])
def test_bad_evaluate_and_predict_options_are_one_line(tmp_path, args, words):
    out = tmp_path / "out"
    cmd, *rest = args
    base = ["--model", "dfformer_s18", *KW_ARGS, "--img-size", "32"]
    if cmd == "evaluate":
        base += ["--data", DATA, "--output", out] if "--data" not in rest else ["--output", out]
    r = _cli(cmd, *base, *rest)
    _one_line_error(r, *words)
    assert not out.exists()


def test_evaluate_output_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = _cli("evaluate", "--model", "dfformer_s18", *KW_ARGS, "--data", DATA, "--output", tmp_path / "file" / "sub")
    _one_line_error(r, "file")
    assert (tmp_path / "file").read_text() == "x"


def test_predict_under_torchrun_prints_what_one_process_prints(run_dir, tmp_path, one_thread):
    args = ["predict", "--model", "dfformer_s18", "--checkpoint", run_dir / "last.pth", "--data", DATA,
            "--num-images", "7", "--batch-size", "2", "--topk", "3", "--device", "cpu"]
    r = torchrun(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    one = _cli(*args)
    assert one.exit_code == 0, one.output
    lines = [line for line in r.stdout.splitlines() if "top-3" in line]
    assert len(lines) == 7 and lines == [line for line in one.output.splitlines() if "top-3" in line]


def test_a_run_never_writes_into_another_commands_folder(tmp_path):
    from spectrascope.errors import OutputError
    from spectrascope.io.results import StagedOutput
    from spectrascope.train.state import prepare_output
    folder = tmp_path / "ev"
    with StagedOutput(folder, command="evaluate") as st:
        (st / "results.json").write_text("{}")
    for resuming in (False, True):
        with pytest.raises(OutputError, match="spectrascope evaluate"):
            prepare_output(folder, True, resuming=resuming)
    assert sorted(p.name for p in folder.iterdir()) == [".spectrascope-manifest.json", "results.json"]
