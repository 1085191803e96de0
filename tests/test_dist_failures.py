"""No rank waits for a failed one: every analysis on two gloo ranks with an undecodable image in the
batch of rank 0 or of rank 1 ends on both ranks by itself, with the same one ``Error:`` line and exit
status 2, before any collective could block (on NCCL a rank left waiting blocks until the watchdog).
The ranks are started as torchrun starts them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...) but
without an agent that would stop the slower rank once the first has failed, so each rank's own exit
status is seen: a rank that hung would run into the test's timeout instead."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DF = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=8,16,24,32"]
SPANET = ["--model-kwargs", "layers=1,1,1,1", "--model-kwargs", "embed_dims=8,16,20,32"]

#: one command per analysis that reads images (batch i is rank (i mod 2)'s)
COMMANDS = {
    "amplitude": ["amplitude", "--model", "dfformer_s18", *DF, "--img-size", "32"],
    "spectrum": ["spectrum", "--model", "dfformer_s18", *DF, "--img-size", "32"],
    "cka": ["cka", "--model", "dfformer_s18", "--model", "convformer_s18", *DF, "--img-size", "32"],
    "cam": ["cam", "--model", "dfformer_s18", *DF, "--img-size", "64", "--method", "gradcam"],
    "context": ["context", "--model", "spanet_s", *SPANET, "--img-size", "32"],
    "filters": ["filters", "--model", "dfformer_s18", *DF, "--img-size", "32", "--routing"],
    "predict": ["predict", "--model", "dfformer_s18", *DF, "--img-size", "32"],
}


#: images per batch (CKA's unbiased estimator needs 4)
BATCH = {"cka": 4}


def _folder(tmp_path, rank: int, batch: int) -> Path:
    """Images ``img00`` ... in batches of ``batch``; the first image of batch ``rank`` (rank ``rank``'s
    first batch) is not an image."""
    folder = tmp_path / f"bad_on_rank{rank}"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2 * batch + 1):
        path = folder / f"img{i:02d}.png"
        if i == rank * batch:
            path.write_bytes(b"this is not a png")
        else:
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(path)
    return folder


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_ranks(args, cwd, timeout=300):
    """Both ranks' exit statuses and their output together."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT),
                   RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "spectrascope.cli", *map(str, args)], cwd=cwd,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs, codes = [], []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"a rank did not end by itself within {timeout} s")
        outputs.append(out)
        codes.append(proc.returncode)
    return codes, "\n".join(outputs)


#: every analysis with the failure on rank 1 (which does not speak), two of them on rank 0 too
CASES = [(name, 1) for name in sorted(COMMANDS)] + [("amplitude", 0), ("cka", 0)]


@pytest.mark.parametrize("name,rank", CASES)
def test_a_bad_image_on_one_rank_ends_every_rank_by_itself(name, rank, tmp_path):
    out = tmp_path / "out"
    batch = BATCH.get(name, 1)
    args = [*COMMANDS[name], "--images", _folder(tmp_path, rank, batch), "--batch-size", batch, "--device", "cpu"]
    if name != "predict":
        args += ["--output", out]
    codes, text = _two_ranks(args, tmp_path)
    errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert codes == [2, 2], text[-3000:]                                 # each rank ended by itself, status 2
    bad = f"img{rank * batch:02d}.png"
    assert len(errors) == 1 and "cannot decode image" in errors[0] and bad in errors[0], text[-3000:]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
