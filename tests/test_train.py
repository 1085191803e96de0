"""Training: schedule/sampler/EMA closed forms, recipes, CLI input errors, and end-to-end
CPU runs of a tiny DFFormer on ``synthetic``: it learns (accuracy well above chance), a run
killed with SIGKILL and stopped with SIGTERM mid-epoch resumes to exactly the state of the
uninterrupted run, checkpoints load with ``create_model``/``evaluate``, a non-finite loss
stops the run, gradient accumulation and a two-process torchrun (gloo) run match a single
process with the same global batch."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.train import loop as tr
from spectrascope.cli import main
from spectrascope.io.results import MANIFEST
from spectrascope.train.loop import (CosineWarmup, EpochBatchSampler, ModelEma, TrainConfig, TrainingInterrupted,
                                derive_seed, resolve_config)

ROOT = Path(__file__).resolve().parents[1]
MODEL_KW = {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}
DATA = "synthetic:num_classes=4,train_size=512,val_size=128,size=32,patch=0.9"
CHANCE = 25.0


def _cli_args(out, epochs=2, extra=()):
    return ["train", "--model", "dfformer_s18", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs",
            "dims=16,32,48,64", "--data", DATA, "--epochs", str(epochs), "-b", "16", "--lr", "1e-3", "--warmup-epochs", "0.5",
            "--model-ema", "--model-ema-decay", "0.9", "--seed", "3", "--no-progress", "--output", str(out), *extra]


def _cfg(out, **kw):
    base = dict(model="dfformer_s18", data=DATA, epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0.5, model_ema=True,
                model_ema_decay=0.9, seed=3, progress=False, output=str(out), model_kwargs=dict(MODEL_KW))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def one_thread():
    """Single-threaded CPU maths: bitwise reproducible, and the same as the subprocesses."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_state(a, b, exact=True, atol=0.0):
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            if exact:
                assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs"
            else:
                assert torch.allclose(a[key][k], b[key][k], atol=atol, rtol=0), f"{key}.{k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][k], sb[i][k]) if exact else torch.allclose(sa[i][k], sb[i][k], atol=atol)


# ---------------------------------------------------------------------------- units

def test_cosine_warmup_closed_form():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    s = CosineWarmup(opt, lr=1e-3, total_steps=110, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    assert s.lr_at(0) == pytest.approx(1e-6)
    assert s.lr_at(5) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert s.lr_at(10) == pytest.approx(1e-3)
    assert s.lr_at(60) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert s.lr_at(110) == pytest.approx(1e-5)
    assert s.step_to(60) == opt.param_groups[0]["lr"]


def test_sampler_global_batches_do_not_depend_on_world_size():
    single = EpochBatchSampler(50, 8, seed=1)
    ranks = [EpochBatchSampler(50, 4, seed=1, rank=r, world=2) for r in range(2)]
    for s in [single] + ranks:
        s.set_epoch(2)
    assert single.num_batches == ranks[0].num_batches == 6
    for b, b0, b1 in zip(single, *ranks):
        assert sorted(b) == sorted(b0 + b1)          # same images, same augmentation seeds
    s = EpochBatchSampler(50, 8, seed=1)
    s.set_epoch(2, start_batch=4)
    assert list(s) == list(single)[4:]
    s.set_epoch(3)
    assert [i for i, _ in next(iter(s))] != [i for i, _ in next(iter(single))]
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)


def test_ema_and_weight_decay_groups():
    m = torch.nn.Linear(3, 2)
    ema = ModelEma(m, decay=0.75)
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    assert torch.allclose(ema.state_dict()["weight"], 0.75 * old["weight"] + 0.25 * m.weight)
    groups = tr.param_groups(spectrascope.create_model("dfformer_s18", num_classes=4, img_size=32, **MODEL_KW), 0.05)
    assert all(p.ndim <= 1 for p in groups[0]["params"]) and all(p.ndim > 1 for p in groups[1]["params"])
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05


def test_recipes_scale_lr_and_set_per_model_values():
    c = resolve_config(TrainConfig(model="dfformer_s18", data="synthetic", recipe="dfformer", batch_size=128))
    assert c.lr == pytest.approx(1e-3 * 128 / 1024) and c.warmup_epochs == 20 and c.drop_path == 0.2
    assert (c.mixup, c.cutmix, c.reprob, c.aa, c.smoothing) == (0.8, 1.0, 0.25, "rand-m9-mstd0.5-inc1", 0.1)
    c = resolve_config(TrainConfig(model="caformer_s36", data="synthetic", recipe="metaformer", batch_size=256,
                                   grad_accum=4), world_size=4)
    assert c.lr == pytest.approx(8e-3) and c.drop_path == 0.3 and c.model_kwargs == {"head_dropout": 0.4}
    c = resolve_config(TrainConfig(model="dfformer_s18", data="imagefolder:x", recipe="affnet", lr=5e-4, mixup=0.0,
                                   aa="none"))
    assert c.lr == 5e-4 and c.mixup == 0.0 and c.model_ema and c.model_ema_decay == 0.9995 and c.img_size == 256
    assert c.aa is None and c.clip_grad == 10.0
    assert resolve_config(TrainConfig(model="dfformer_s18", data="synthetic", recipe="affnet")).img_size is None
    c = resolve_config(TrainConfig(model="dfformer_s18", data="synthetic"))
    assert (c.lr, c.epochs, c.mixup, c.aa, c.amp) == (1e-3, 10, 0.0, None, "off")


# ---------------------------------------------------------------------------- CLI input errors

@pytest.mark.parametrize("args, message", [
    (["--model", "dfformer_s99", "--data", "synthetic"], "unknown model"),
    (["--model", "dfformer_s18", "--data", "mnist:/x"], "unknown data spec"),
    (["--model", "dfformer_s18", "--data", "samples"], "analyses"),
    (["--model", "dfformer_s18", "--data", "cifar10:/nonexistent"], "not found"),
    (["--model", "dfformer_s18", "--data", "synthetic", "--model-kwargs", "colour=3"], "colour"),
    (["--model", "dfformer_s18", "--data", "synthetic:train_size=8", "-b", "16"], "fewer than one batch"),
    (["--model", "dfformer_s18", "--data", "synthetic", "--epochs", "0"], "--epochs"),
    (["--resume", "missing.pth"], "not found"),
])
def test_train_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", *args, "--output", str(out)])
    assert r.exit_code != 0 and message in r.output, r.output
    assert r.output.strip().count("\n") <= 1 and "Traceback" not in r.output
    assert not out.exists()


def test_train_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    r = CliRunner().invoke(main, ["train", "--model", "dfformer_s18", "--data", "synthetic", "--output", str(tmp_path)])
    assert r.exit_code != 0 and "not empty" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "last.pth"
    tr.save_checkpoint(target, {"format": tr.CHECKPOINT_FORMAT, "x": torch.ones(3)})
    before = target.read_bytes()

    def crash(tmp):
        Path(tmp).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.atomic_write(target, crash)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


# ---------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run every resumed run is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = tr.train(_cfg(out))
    finally:
        torch.set_num_threads(old)
    return out, res


def test_training_learns_and_writes_its_outputs(reference_run):
    out, res = reference_run
    assert res["status"] == "completed" and len(res["history"]) == 2
    final = res["final"]
    assert final["top1"] >= CHANCE + 45, f"top-1 {final['top1']:.1f}% (chance {CHANCE}%)"
    assert final["ema_top1"] >= CHANCE + 35
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["final"]["top1"] == final["top1"]
    assert on_disk["checkpoint_sha256"] is None and on_disk["versions"]["torch"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,train_loss,val_loss,top1,top5,lr,throughput_img_s")
    for row in res["history"]:
        assert row["throughput_img_s"] > 0 and row["peak_mem_mb"] > 0 and 0 < row["lr"] <= 1e-3
    assert {p.name for p in out.iterdir()} == {"args.json", "last.pth", "best.pth", "metrics.csv", "results.json",
                                               MANIFEST}
    assert sorted(json.loads((out / MANIFEST).read_text())["files"]) == sorted(
        ["args.json", "last.pth", "best.pth", "metrics.csv", "results.json"])


def test_checkpoints_load_with_create_model_and_evaluate(reference_run, one_thread):
    from spectrascope.train.evaluate import evaluate
    out, res = reference_run
    last = out / "last.pth"
    spec = tr.model_spec_from_checkpoint(last)
    assert (spec.name, spec.num_classes, spec.img_size, spec.overrides) == ("dfformer_s18", 4, (32, 32), MODEL_KW)
    model = spectrascope.create_model("dfformer_s18", checkpoint=last, num_classes=4, img_size=32, **MODEL_KW)
    assert model.checkpoint_report.ok and model.checkpoint_info["entry"] == "model"
    ema = tr.create_model_from_checkpoint(last, use_ema=True)
    assert ema.checkpoint_info["entry"] == "model_ema"
    state, ema_state = _load(last)["model"], _load(last)["model_ema"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, ema_state[k]) for k, v in ema.state_dict().items())
    ev = evaluate(None, checkpoint=last, data=DATA, batch_size=16, device="cpu")
    assert ev["n"] == 128 and ev["top1"] == pytest.approx(res["final"]["top1"], abs=1e-9)
    assert ev["loss"] == pytest.approx(res["final"]["val_loss"], rel=1e-5)
    ev = evaluate("dfformer_s18", checkpoint=last, data=DATA, batch_size=16, device="cpu", use_ema=True)
    assert ev["top1"] == pytest.approx(res["final"]["ema_top1"], abs=1e-9)
    best = _load(out / "best.pth")
    assert best["epoch"] == res["best"]["epoch"]


def test_kill_and_resume_reproduce_the_uninterrupted_run(reference_run, tmp_path, monkeypatch, one_thread):
    ref_out, ref = reference_run
    out = tmp_path / "run"
    # 1) a separate process that also checkpoints every 16 updates, killed with SIGKILL at some
    #    moment after its first checkpoint (mid-epoch 1)
    proc = subprocess.Popen([sys.executable, "-m", "spectrascope.cli", *_cli_args(out, extra=("--checkpoint-steps", "16"))],
                            env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "last.pth").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    ck = _load(out / "last.pth")
    assert ck["epoch"] < 1 and ck["step"] % 16 == 0 and ck["step"] > 0
    (out / ".last.pth.tmp-999999").write_bytes(b"what a kill -9 during a save leaves behind")

    # 2) resume, and stop with SIGTERM in the middle of the next epoch
    fired = []
    orig_iter = EpochBatchSampler.__iter__

    def iter_then_signal(self):
        for k, batch in enumerate(orig_iter(self)):
            yield batch
            if self.epoch == 1 and self.start + k == 5 and not fired:
                fired.append(True)
                signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(EpochBatchSampler, "__iter__", iter_then_signal)
    with pytest.raises(TrainingInterrupted) as exc:
        tr.train(TrainConfig(), resume=str(out / "last.pth"))
    assert exc.value.exit_code == 128 + signal.SIGTERM and "--resume" in str(exc.value)
    mid = _load(out / "last.pth")
    assert (mid["epoch"], mid["step"]) == (1, 7)
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"

    # 3) resume again and finish
    res = tr.train(TrainConfig(), resume=str(out))
    _assert_same_state(_load(out / "last.pth"), _load(ref_out / "last.pth"), exact=True)
    assert res["history"] == [dict(r, throughput_img_s=h["throughput_img_s"], epoch_time_s=h["epoch_time_s"],
                                   eval_time_s=h["eval_time_s"], peak_mem_mb=h["peak_mem_mb"])
                              for r, h in zip(ref["history"], res["history"])]
    assert res["best"] == ref["best"]


def test_sigterm_during_evaluation_saves_the_trained_epoch(reference_run, tmp_path, monkeypatch, one_thread):
    """A stop during a (long) evaluation ends it within a batch and saves the trained epoch as its
    last update; the resumed run evaluates that epoch and ends exactly as the uninterrupted run."""
    from spectrascope.train.metrics import AccuracyReducer
    ref_out, ref = reference_run
    out = tmp_path / "run"
    batches = []
    orig = AccuracyReducer.update

    def update_then_signal(self, number, logits, target):
        orig(self, number, logits, target)
        batches.append(number)
        if len(batches) == 3:                        # the 3rd of the 8 evaluation batches of epoch 1
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(AccuracyReducer, "update", update_then_signal)
    with pytest.raises(TrainingInterrupted, match="at epoch 1 update 32") as exc:
        tr.train(_cfg(out))
    assert exc.value.exit_code == 128 + signal.SIGTERM
    assert batches == [0, 1, 2]                      # neither the rest of it nor the EMA evaluation ran
    ck = _load(out / "last.pth")
    assert (ck["epoch"], ck["step"], ck["sample"]) == (0, 32, 512) and ck["history"] == []
    monkeypatch.undo()
    res = tr.train(TrainConfig(), resume=str(out))
    _assert_same_state(_load(out / "last.pth"), _load(ref_out / "last.pth"), exact=True)
    timing = ("throughput_img_s", "epoch_time_s", "eval_time_s", "peak_mem_mb")
    assert [{k: v for k, v in r.items() if k not in timing} for r in res["history"]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in ref["history"]]
    assert res["best"] == ref["best"]


def test_tf32_is_applied_during_the_run_and_recorded(tmp_path, monkeypatch, one_thread):
    """TF32 is a no-op on CPUs: what can be checked here is that the switch is set for the run
    (train's default: on), restored after it, recorded, and that --tf32 off is honoured."""
    from spectrascope.engine.device import set_tf32, tf32_state
    seen = []
    orig = tr.run_epoch

    def recording(*a, **kw):
        seen.append(tf32_state())
        return orig(*a, **kw)

    monkeypatch.setattr(tr, "run_epoch", recording)
    before = set_tf32("off")
    try:
        kw = dict(epochs=1, limit_train_batches=1, limit_val_batches=1, model_ema=False)
        res = tr.train(_cfg(tmp_path / "on", **kw))
        assert seen == [{"matmul": True, "cudnn": True}] and res["config"]["tf32"] == "on"
        assert tf32_state() == {"matmul": False, "cudnn": False}
        set_tf32("on")
        res = tr.train(_cfg(tmp_path / "off", tf32="off", **kw))
        assert seen[-1] == {"matmul": False, "cudnn": False} and res["config"]["tf32"] == "off"
        assert json.loads((tmp_path / "off" / "args.json").read_text())["tf32"] == "off"
        assert tf32_state() == {"matmul": True, "cudnn": True}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before["matmul"], before["cudnn"]
    r = CliRunner().invoke(main, ["train", "--model", "dfformer_s18", "--data", "synthetic", "--tf32", "fast"])
    assert r.exit_code == 2 and "--tf32" in r.output and "Traceback" not in r.output


def test_resume_refuses_to_change_the_recipe(reference_run):
    with pytest.raises(ValueError, match="--lr cannot change"):
        tr.train(TrainConfig(lr=0.5), resume=str(reference_run[0] / "last.pth"))


def test_non_finite_loss_stops_the_run(tmp_path, monkeypatch, one_thread):
    from spectrascope.io.transforms import TransformedDataset
    orig = TransformedDataset.__getitem__
    calls = []

    def poisoned(self, key):
        item = orig(self, key)
        if isinstance(key, tuple):
            calls.append(1)
            if len(calls) == 16 * 4 + 16 + 5:          # an image of the second epoch's 2nd batch
                item = (torch.full_like(item[0], float("nan")), *item[1:])
        return item

    monkeypatch.setattr(TransformedDataset, "__getitem__", poisoned)
    out = tmp_path / "run"
    with pytest.raises(tr.NonFiniteLossError, match="non-finite training loss .* epoch 2, update 2"):
        tr.train(_cfg(out, epochs=2, model_ema=False, limit_train_batches=4, limit_val_batches=1))
    ck = _load(out / "last.pth")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert json.loads((out / "results.json").read_text())["status"] == "failed: non-finite loss"


def test_grad_accumulation_matches_the_full_batch(tmp_path, one_thread):
    kw = dict(epochs=1, limit_train_batches=5, limit_val_batches=1, model_ema=False)
    tr.train(_cfg(tmp_path / "full", batch_size=16, **kw))
    tr.train(_cfg(tmp_path / "accum", batch_size=8, grad_accum=2, **dict(kw, limit_train_batches=10)))
    a, b = _load(tmp_path / "full" / "last.pth"), _load(tmp_path / "accum" / "last.pth")
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=2e-5, rtol=0), k


def test_bf16_autocast_trains(tmp_path, one_thread):
    res = tr.train(_cfg(tmp_path / "bf16", amp="bf16", epochs=1, limit_train_batches=3, limit_val_batches=1,
                        channels_last=True, model_ema=False))
    assert math.isfinite(res["final"]["train_loss"])


def test_torchrun_two_processes_match_one_process(tmp_path, one_thread):
    common = ["--limit-train-batches", "4", "--limit-val-batches", "1", "-vb", "16"]
    out = tmp_path / "ddp"
    args = _cli_args(out, epochs=1, extra=common)
    b = args.index("-b")
    args[b + 1] = "8"                                        # 2 processes x 8 = the single run's 16
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "spectrascope.cli", *args], env=_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["run"]["world_size"] == 2 and res["run"]["global_batch"] == 16
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "args.json", "best.pth", "last.pth",
                                                            "metrics.csv", "results.json"])
    single = tmp_path / "single"
    ref = tr.train(_cfg(single, epochs=1, limit_train_batches=4, limit_val_batches=2, val_batch_size=16))
    _assert_same_state(_load(out / "last.pth"), _load(single / "last.pth"), exact=False, atol=2e-5)
    assert res["final"]["val_loss"] == pytest.approx(ref["final"]["val_loss"], rel=1e-4)


def test_torchrun_refused_output_stops_every_process(tmp_path):
    """Rank 0 checks the run folder; when it refuses, every rank stops (none waits in a collective)."""
    from tests.distributed import torchrun
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = torchrun(["train", "--model", "dfformer_s18", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs",
                  "dims=16,32,48,64", "--data", DATA, "--epochs", "1", "-b", "8", "--output", out, "--overwrite",
                  "--no-progress"], cwd=tmp_path, timeout=240)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "did not write" in errors[0], r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
