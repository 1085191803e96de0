"""``make gpu-check`` (benchmarks/gpu_check.py) cannot pass without a GPU, and its logic works:
one line and a non-zero exit on a machine without CUDA; in the CPU dry run a selection of checks
passes and prints the table, a skipped parity test fails the run, and a crashing or overlong
check is reported as a failure, never as a pass."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args, env=None, timeout=600):
    e = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod               # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("gpu_check", None)


def test_without_a_gpu_it_says_so_in_one_line_and_fails(tmp_path):
    r = _run("--output", tmp_path / "out")
    assert r.returncode != 0
    assert r.stdout.strip().splitlines() == [r.stdout.strip()] and "needs a CUDA GPU" in r.stdout, r.stdout
    assert r.stderr == "" and not (tmp_path / "out").exists()


def test_the_checks_cover_every_family_and_each_item(gc):
    names = [c.name for c in gc.CHECKS]
    assert len(names) == len(set(names))
    for name in gc.FAMILIES:
        assert f"family:{name}" in names
    for prefix in ("parity, TF32 off", "parity, TF32 on", "collectives", "ddp-train", "cam:scorecam", "cam:gradcam",
                   "amplitude", "cka", "evaluate", "throughput", "compile:dfformer_s18", "compile:gfnet_ti"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert names.index("collectives") < names.index("cam:scorecam")      # the analyses run in the group


def test_a_crash_or_an_overlong_check_fails(gc, tmp_path):
    ctx = gc.Ctx(torch.device("cpu"), True, tmp_path)

    def crash(ctx):
        raise RuntimeError("boom")

    def slow(ctx):
        time.sleep(5)
        return "never"

    with open(tmp_path / "log", "w") as log:
        rows = [gc.run_check(ctx, gc.Check("crash", crash, 10), time.monotonic() + 60, log),
                gc.run_check(ctx, gc.Check("slow", slow, 0.3), time.monotonic() + 60, log),
                gc.run_check(ctx, gc.Check("late", lambda c: "x", 10), time.monotonic(), log),
                gc.run_check(ctx, gc.Check("fine", lambda c: "42 things", 10), time.monotonic() + 60, log)]
    assert [r["ok"] for r in rows] == [False, False, False, True]
    assert "RuntimeError: boom" in rows[0]["detail"] and "over its budget" in rows[1]["detail"]
    assert "not run" in rows[2]["detail"] and "boom" in (tmp_path / "log").read_text()
    text = gc.table(rows)
    assert text.splitlines()[-1] == "1/4 checks ok, 3 FAILED" and "FAIL" in text.splitlines()[1]


def test_fft_inputs_are_recorded(gc):
    with gc.fft_inputs() as seen:
        torch.fft.irfft2(torch.fft.rfft2(torch.randn(2, 4, 4)))
        torch.fft.fft(torch.randn(4, dtype=torch.float64))
    assert seen == [("rfft2", torch.float32), ("irfft2", torch.complex64), ("fft", torch.float64)]
    assert torch.fft.rfft2.__name__ == "fft_rfft2"                       # restored


def test_cpu_dry_run_passes_its_checks_and_prints_one_table(tmp_path):
    r = _run("--cpu-dry-run", "--only", "collectives", "--only", "family:gfnet_ti", "--output", tmp_path / "out")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = r.stdout.split("\n\n")[-1].strip().splitlines()
    assert table[0].split() == ["check", "result", "seconds", "detail"]
    assert [line.split()[1] for line in table[1:-1]] == ["ok", "ok"] and table[-1] == "2/2 checks ok"
    assert "fft irfft2+rfft2" in r.stdout and "gloo world 1" in r.stdout
    assert (tmp_path / "out" / "table.txt").read_text().strip().splitlines() == table


def test_a_skipped_parity_test_fails_the_run(tmp_path):
    empty = tmp_path / "no-fixtures"
    empty.mkdir()
    r = _run("--cpu-dry-run", "--only", "parity, TF32 off", "--output", tmp_path / "out",
             env={"SPECTRASCOPE_FIXTURES": str(empty)})
    assert r.returncode == 1, r.stdout[-3000:]
    row = [line for line in r.stdout.splitlines() if line.startswith("parity, TF32 off")][-1]
    assert "FAIL" in row and "16 skipped" in row, row


def test_a_folder_it_did_not_write_is_never_emptied(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    r = _run("--cpu-dry-run", "--only", "collectives", "--output", tmp_path)
    assert r.returncode == 2 and r.stdout.startswith("Error: --output:") and len(r.stdout.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
