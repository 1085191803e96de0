"""Training across processes (torchrun, gloo): a run stopped on one number of processes resumes
on another with exactly the samples it had not seen (2 -> 1 and 1 -> 2, checked index by index
with their augmentation seeds), and DDP with --channels-last keeps every gradient in its
bucket's layout (no "Grad strides do not match bucket view strides")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spectrascope.train.sampler import EpochBatchSampler

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "dfformer_s18", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=16,32,48,64"]
N, BATCH, SEED = 64, 4, 5
DATA = f"synthetic:num_classes=4,train_size={N},val_size=8,size=32"

#: runs ``spectrascope`` with the training sampler recording every batch it hands out
#: (``SAMPLES_LOG``/rank<r>.jsonl) and, on rank 0, a SIGTERM raised once ``STOP_AFTER``
#: batches of epoch 0 were handed out (the update that follows is the last one)
WRAPPER = textwrap.dedent("""
    import json, os, signal, sys
    from spectrascope.train.sampler import EpochBatchSampler

    log_dir = os.environ["SAMPLES_LOG"]
    rank = int(os.environ.get("RANK", "0"))
    stop_after = int(os.environ.get("STOP_AFTER", "0"))
    original = EpochBatchSampler.__iter__

    def recording(self):
        for k, batch in enumerate(original(self)):
            if stop_after and rank == 0 and self.epoch == 0 and k == stop_after:
                signal.raise_signal(signal.SIGTERM)
            with open(os.path.join(log_dir, f"rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"epoch": self.epoch, "batch": batch}) + "\\n")
            yield batch

    EpochBatchSampler.__iter__ = recording
    from spectrascope.cli import main
    sys.exit(main(prog_name="spectrascope"))
""")


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               **{k: str(v) for k, v in extra.items()})
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _launch(script, args, nproc, cwd, **env):
    pre = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               f"--nproc_per_node={nproc}"]
    return subprocess.run([*pre, str(script), *map(str, args)], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=300)


def _logged(log_dir: Path, nproc: int) -> list[list]:
    """Per rank, the batches of epoch 0 the sampler handed out (lists of [index, seed])."""
    out = []
    for r in range(nproc):
        lines = (log_dir / f"rank{r}.jsonl").read_text().splitlines()
        out.append([json.loads(line)["batch"] for line in lines if json.loads(line)["epoch"] == 0])
    return out


def _global_batches(per_rank: list[list]) -> list[list]:
    """Rank batches zipped into global batches."""
    return [sum(group, []) for group in zip(*per_rank)]


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_processes_sees_exactly_the_rest_of_the_epoch(tmp_path, first, then):
    script = tmp_path / "recording.py"
    script.write_text(WRAPPER)
    out = tmp_path / "run"
    args = ["train", *MODEL, "--data", DATA, "--epochs", "1", "-b", BATCH, "--seed", SEED, "--no-progress",
            "--limit-val-batches", "1"]
    logs = [tmp_path / "log1", tmp_path / "log2"]
    for d in logs:
        d.mkdir()
    # the first run stops after its 4th update (mid-epoch), by SIGTERM on rank 0
    r = _launch(script, [*args, "--output", out], first, tmp_path, SAMPLES_LOG=logs[0], STOP_AFTER=3)
    assert r.returncode != 0 and "stopped by SIGTERM" in r.stderr, r.stderr[-3000:]
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    g1, g2 = BATCH * first, BATCH * then
    assert (ck["epoch"], ck["step"], ck["sample"]) == (0, 4, 4 * g1)
    seen = _global_batches([b[:ck["step"]] for b in _logged(logs[0], first)])
    # the resumed run, on the other number of processes
    r = _launch(script, ["train", "--resume", out / "last.pth", "--no-progress"], then, tmp_path, SAMPLES_LOG=logs[1])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"used {first} process(es) and resumes on {then}" in r.stderr
    rest = _global_batches(_logged(logs[1], then))
    assert all(len(b) == g1 for b in seen) and all(len(b) == g2 for b in rest)
    # one uninterrupted process: the epoch's (index, augmentation seed) pairs in order
    whole = EpochBatchSampler(N, BATCH, seed=SEED)
    whole.set_epoch(0)
    expected = [tuple(p) for b in whole for p in b]
    got = [tuple(p) for b in seen + rest for p in b]
    assert sorted(got) == sorted(expected)                       # every sample once, nothing repeated
    assert [tuple(p) for b in seen for p in b] and sorted(i for i, _ in got) == list(range(N))
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "completed" and res["run"]["world_size"] == then
    assert res["history"][0]["epoch"] == 1


def test_ddp_with_channels_last_keeps_gradient_layouts(tmp_path):
    """The FFT filters stay contiguous under --channels-last, and gradients whose strides differ
    from their parameter's only in size-1 dimensions (the 1x1 frequency grid of the last stage
    at 32 px) are re-viewed, so DDP never warns about (and copies) a gradient layout."""
    from tests.distributed import torchrun
    out = tmp_path / "run"
    r = torchrun(["train", *MODEL, "--data", "synthetic:num_classes=4,train_size=32,val_size=8,size=32",
                  "--epochs", "1", "-b", "4", "--channels-last", "--limit-train-batches", "2", "--no-progress",
                  "--output", out],
                 cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Grad strides do not match bucket view strides" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.count("done:") == 1                          # rank 0 reports for every process
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["channels_last"] is True and res["run"]["world_size"] == 2


#: runs ``spectrascope`` with one failure injected on rank FAIL_RANK (FAIL_WHERE: ``train`` -- a
#: training sample that cannot be read, ``eval`` -- a validation sample, ``save`` -- a full disk
#: when the checkpoint is written) and records how each rank ended in MARKS/rank<r>.json
FAILING = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from spectrascope.errors import DataError
    from spectrascope.io.datasets import TransformedDataset

    rank, marks = int(os.environ.get("RANK", "0")), Path(os.environ["MARKS"])
    where = os.environ["FAIL_WHERE"]
    if rank == int(os.environ["FAIL_RANK"]):
        if where in ("train", "eval"):
            original, calls = TransformedDataset.__getitem__, [0]

            def unreadable(self, key):
                if isinstance(key, tuple) == (where == "train"):       # training items are (index, seed)
                    calls[0] += 1
                    if calls[0] == 3:
                        raise DataError("image 7 of the split cannot be read (truncated file)")
                return original(self, key)
            TransformedDataset.__getitem__ = unreadable
        else:
            import torch
            save = torch.save

            def full(obj, f, *args, **kwargs):          # the disk fills up under a checkpoint write
                if ".pth" in str(getattr(f, "name", f)):
                    raise OSError(28, "No space left on device")
                return save(obj, f, *args, **kwargs)
            torch.save = full
    from spectrascope.cli import main
    try:
        main.main(args=sys.argv[1:], prog_name="spectrascope", standalone_mode=False)
        code, kind, line = 0, None, ""
    except BaseException as exc:
        code, kind = getattr(exc, "exit_code", getattr(exc, "code", 1)), type(exc).__name__
        line = str(exc).strip().splitlines()[0]
    (marks / f"rank{rank}.json").write_text(json.dumps({"code": code, "kind": kind, "line": line}))
    sys.exit(code)
""")


@pytest.mark.parametrize("fail_rank, where, message", [
    (1, "train", "image 7 of the split cannot be read"),
    (1, "eval", "image 7 of the split cannot be read"),
    (0, "save", ".pth: no space left on the device"),
])
def test_a_failure_on_one_rank_ends_every_rank_with_the_same_error(tmp_path, fail_rank, where, message):
    """Without agreement the other rank would wait in its next collective (on nccl until the
    watchdog); here both end by themselves, with the failing rank's one line and exit status 2."""
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "run"
    args = ["train", *MODEL, "--data", "synthetic:num_classes=4,train_size=32,val_size=16,size=32", "--epochs", "1",
            "-b", "4", "-vb", "4", "--limit-train-batches", "2", "--no-progress", "--output", out]
    r = _launch(script, args, 2, tmp_path, MARKS=marks, FAIL_RANK=fail_rank, FAIL_WHERE=where)
    assert r.returncode != 0
    ends = [json.loads((marks / f"rank{k}.json").read_text()) for k in range(2)]     # both ended by themselves
    assert ends[0]["line"] == ends[1]["line"] and message in ends[0]["line"], ends
    # bad input is exit status 2, a write the machine refused 1 (the same on both ranks)
    assert ends[0]["code"] == ends[1]["code"] == (1 if where == "save" else 2), ends
    # no traceback from spectrascope's code and no gloo error of a rank left in a collective (torchrun
    # itself reports the failed workers)
    assert "/spectrascope/" not in r.stderr and "Connection closed" not in r.stderr, r.stderr[-3000:]
    assert not (out / "last.pth").exists()
