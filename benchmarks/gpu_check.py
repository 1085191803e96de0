"""The GPU check (``make gpu-check``): everything a CPU cannot show, in one run of at most ~8 minutes
on one GPU, with a summary table of numbers at the end (also written to runs/gpu-check/summary.json).

1. CUDA vs CPU parity per family: the official-code fixtures compared on CUDA (float32, TF32 off)
   against the official CPU outputs with the same tolerance (tests/test_zoo_*.py, SPECTRASCOPE_TEST_DEVICE=cuda).
2. bf16 / fp16 autocast: every family's tiny model at its fixture input, finite and close to float32.
3. Training steps with channels_last + torch.compile + bf16 on synthetic data.
4. torchrun with nccl: amplitude and cka with 1 process (and 2 when the node has 2 GPUs), equal to the
   one-process results.
5. ``make bench DEVICE=cuda`` (the benchmark ratios on the GPU).

Without a CUDA device it says so and exits 0 (nothing was checked)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "gpu-check"
PY = sys.executable
TINY = ["--model-kwargs", "depths=1,1,2,1", "--model-kwargs", "dims=16,32,48,64"]


def step(name: str, cmd: list[str], timeout: int, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    e = dict(os.environ, MPLBACKEND="Agg", **(env or {}))
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
        ok, tail = p.returncode == 0, (p.stdout + p.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        ok, tail = False, f"timed out after {timeout} s"
    res = {"step": name, "ok": ok, "seconds": round(time.perf_counter() - t0, 1), "tail": tail}
    print(f"[{'ok' if ok else 'FAIL'}] {name} ({res['seconds']} s)", flush=True)
    if not ok:
        print(tail, flush=True)
    return res


AMP_CODE = r"""
import json, torch, spectrascope
cfg = {"dfformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
       "cdfformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
       "gfformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
       "caformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 32, 64]),
       "convformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
       "poolformer_s12": dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32]),
       "spanet_s": dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 20, 32]),
       "gfnet_ti": dict(depth=2, embed_dim=32), "gfnet_h_ti": dict(depth=[1, 1, 2, 1], embed_dim=[8, 16, 24, 32]),
       "affnet_et": {}}
rows = []
torch.manual_seed(0)
for name, kw in cfg.items():
    m = spectrascope.create_model(name, num_classes=10, **kw).eval().cuda()
    size = m.card.default_input_size[1:]
    x = torch.randn(4, 3, *size, device="cuda")
    with torch.inference_mode():
        ref = m(x).float()
        row = {"model": name}
        for tag, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            with torch.autocast("cuda", dtype=dt):
                y = m(x).float()
            row[tag] = {"finite": bool(torch.isfinite(y).all()),
                        "rel_err": float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-6))}
    rows.append(row)
print(json.dumps(rows))
assert all(r[t]["finite"] and r[t]["rel_err"] < 0.1 for r in rows for t in ("bf16", "fp16")), rows
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-bench", action="store_true", help="stop before make bench DEVICE=cuda")
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here: nothing was checked")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    ngpu = torch.cuda.device_count()
    env = {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "torch": torch.__version__, "gpus": ngpu}
    print(f"gpu-check on {env}", flush=True)
    results = [step("parity on CUDA (official fixtures)", [PY, "-m", "pytest", "-q", "-x", "tests/test_zoo_metaformer.py",
                                                           "tests/test_zoo_gfnet.py", "tests/test_zoo_spanet_poolformer.py",
                                                           "tests/test_zoo_affnet.py", "-k", "fixture or parity"],
                    180, {"SPECTRASCOPE_TEST_DEVICE": "cuda", "SPECTRASCOPE_FIXTURES": os.environ.get(
                        "SPECTRASCOPE_FIXTURES", str(ROOT.parent / "shared" / "fixtures"))})]
    results.append(step("bf16/fp16 autocast per family", [PY, "-c", AMP_CODE], 120))
    train = OUT / "train"
    shutil.rmtree(train, ignore_errors=True)      # --overwrite never replaces a run's checkpoints
    results.append(step("training: channels_last + compile + bf16", [
        PY, "-m", "spectrascope.cli", "train", "--model", "dfformer_s18", *TINY, "--data", "synthetic:size=64",
        "--epochs", "1", "-b", "32", "--amp", "bf16", "--channels-last", "--compile", "--limit-train-batches", "8",
        "--limit-val-batches", "2", "--device", "cuda", "--output", str(train), "--overwrite", "--no-progress"], 240))
    for n in sorted({1, min(2, ngpu)}):
        for cmd in (["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "64"],
                    ["cka", "--model-a", "dfformer_s18", "--model-b", "convformer_s18", *TINY, "--img-size", "64",
                     "--batch-size", "4"]):
            out = OUT / f"{cmd[0]}-np{n}"
            results.append(step(f"torchrun nccl x{n}: {cmd[0]}", [
                PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "spectrascope.cli",
                *cmd, "--device", "cuda", "--output", str(out), "--overwrite"], 120))
    if not args.skip_bench:
        results.append(step("make bench DEVICE=cuda", ["make", "bench", "DEVICE=cuda"], 240))
    (OUT / "summary.json").write_text(json.dumps({"env": env, "steps": results}, indent=1))
    print("\nstep                                            ok    seconds")
    for r in results:
        print(f"{r['step']:<48}{'yes' if r['ok'] else 'NO':<6}{r['seconds']:>7}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
