"""Running a spectrascope command under ``torchrun`` (gloo, CPU processes) from a test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torchrun(args, *, cwd, nproc: int = 2, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=NPROC -m spectrascope.cli ARGS`` in ``cwd``."""
    e = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT), **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}",
           "-m", "spectrascope.cli", *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
