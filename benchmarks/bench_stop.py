"""Time from SIGTERM to a saved checkpoint of ``spectrascope train`` under ``torchrun``.

    python benchmarks/bench_stop.py                          # 2 CPU processes (gloo)
    python benchmarks/bench_stop.py --device cuda --nproc 2  # 2 GPUs (nccl)
    python benchmarks/bench_stop.py --source OTHER_CHECKOUT  # the same run with another checkout's code

torchrun gives its workers ``--shutdown-timeout`` seconds (30 by default) between the SIGTERM it
forwards and SIGKILL, so a stop must reach a checkpoint within that. The run here is built so
that the signal lands where a stop used to be slow: inside a long evaluation. Each epoch has
two updates and a validation split of ``--val-size`` images; the run also checkpoints after
every update, so the moment its first ``last.pth`` appears the second update starts, and the
signal is sent to torchrun ``--delay`` seconds later (inside the evaluation). Printed per
repetition: where the run says it stopped, the seconds from the signal to the new
``last.pth`` (its rename into place) and to the exit of torchrun, and the time the
uninterrupted evaluation takes (the epoch's ``eval_time_s`` of a run that is not stopped).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "dfformer_s18", "--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=16,32,48,64"]


def _command(args, out: Path, epochs: int) -> list[str]:
    data = f"synthetic:num_classes=4,train_size={4 * args.batch * args.nproc},val_size={args.val_size},size=64"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
            "-m", "spectrascope.cli", "train", *MODEL, "--data", data, "--epochs", str(epochs), "-b", str(args.batch),
            "--limit-train-batches", "2", "--checkpoint-steps", "1", "--device", args.device, "--no-progress",
            "--output", str(out)]


def _env(args) -> dict:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(Path(args.source).resolve()), OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _wait_for(path: Path, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before {path.name} appeared:\n{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"no {path.name} after {timeout} s")
        time.sleep(0.01)


def stopped_run(args, tmp: Path, rep: int) -> dict:
    """One run, SIGTERM inside its evaluation; the seconds to the new checkpoint and to the exit."""
    out = tmp / f"stop{rep}"
    proc = subprocess.Popen(_command(args, out, 3), cwd=tmp, env=_env(args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    last = out / "last.pth"
    _wait_for(last, proc, 600)
    first = os.stat(last).st_ino
    time.sleep(args.delay)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)                     # torchrun forwards it to every worker
    saved = None
    while proc.poll() is None:
        if saved is None and last.exists() and os.stat(last).st_ino != first:
            saved = time.monotonic() - t0
        time.sleep(0.005)
    exited = time.monotonic() - t0
    if saved is None and last.exists() and os.stat(last).st_ino != first:
        saved = exited
    stderr = proc.stderr.read()
    where = next((line.split("Error: ")[-1] for line in stderr.splitlines() if "stopped by" in line), "?")
    return {"rep": rep, "exit_status": proc.returncode, "stopped": where.split(";")[0], "to_checkpoint_s": saved,
            "to_exit_s": exited}


def evaluation_time(args, tmp: Path) -> float:
    out = tmp / "whole"
    subprocess.run(_command(args, out, 1), cwd=tmp, env=_env(args), capture_output=True, check=True, timeout=900)
    return json.loads((out / "results.json").read_text())["history"][0]["eval_time_s"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16, help="per process, training and evaluation")
    ap.add_argument("--val-size", type=int, default=4096, help="validation images (the evaluation's length)")
    ap.add_argument("--delay", type=float, default=3.0, help="seconds after the first checkpoint")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--source", default=str(ROOT), help="the checkout whose code runs")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-stop-"))
    try:
        rows = [stopped_run(args, tmp, r) for r in range(args.reps)]
        ev = evaluation_time(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"torchrun x{args.nproc} on {args.device}, {args.val_size} validation images (an uninterrupted evaluation "
          f"takes {ev:.1f} s), SIGTERM {args.delay} s after the first checkpoint; code: {args.source}")
    print(f"{'rep':<4}{'exit':<6}{'to checkpoint (s)':>18}{'to exit (s)':>13}  stopped")
    for r in rows:
        saved = "none" if r["to_checkpoint_s"] is None else f"{r['to_checkpoint_s']:.2f}"
        print(f"{r['rep']:<4}{r['exit_status']:<6}{saved:>18}{r['to_exit_s']:>13.2f}  {r['stopped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
