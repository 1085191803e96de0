"""Cost of the streaming amplitude analysis relative to plain forward passes, the early stop
of a run whose taps end at stage 1, and peak memory as the number of images grows.

    python benchmarks/bench_amplitude.py                      # dfformer_s18, 224 px, auto device
    python benchmarks/bench_amplitude.py --model convformer_s18 --batch-size 32 --batches 8 --device cuda

Prints three ratios, each the best of interleaved repeats (robust to a shared machine) with
the medians beside it, on the same pre-generated images (decoding excluded from both sides):

* ``amplitude run / plain forward``: what ``spectrascope amplitude`` does per model (engine
  runner batching the images, Probe hooks, half-diagonal FFT reduction, non-finite check,
  curves) over the same forward passes alone (``model(x)`` under inference mode); target
  <= 1.02; the 2-D map reduction (``--save-maps``) is printed beside it;
* ``--stage 1 run / full forward``: the same run with the stage-1 taps only, which stops the
  forward after stage 1 (``Probe(stop_early=True)``): well under 1;
* memory (unless ``--skip-memory``): peak memory with N_large images / with N_small images
  (flat = 1.00), each N in a fresh subprocess (CUDA ``max_memory_allocated``; on CPU the peak
  resident set, with glibc serving large blocks from mmap so that freed memory leaves it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from spectrascope.analysis.fourier import choose_taps, reduce_dataset
from spectrascope.engine import dist as _dist
from spectrascope.engine.device import resolve_device
from spectrascope.engine.runner import RunConfig, Runner
from spectrascope.zoo.build import build_for_inference

TARGET = 1.02


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Images(torch.utils.data.Dataset):
    """Pre-generated normalised images (what the runner batches)."""

    def __init__(self, n, size, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, *size, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def plain(model, ds, batch, dev):
    """The forward passes alone, on the same batches already stacked on the device."""
    xs = [ds.x[i:i + batch].to(dev) for i in range(0, len(ds), batch)]
    sync(dev)
    t = time.perf_counter()
    with torch.inference_mode():
        for x in xs:
            model(x)
    sync(dev)
    return time.perf_counter() - t


def amplitude(model, ds, taps, runner, maps=False):
    """What `spectrascope amplitude` does per model: runner + hooks + streaming reduction + curves."""
    t = time.perf_counter()
    stats, n, _, run = reduce_dataset(model, ds, taps, runner, maps=maps)
    curves = [s.curve() if not maps else s.mean_map() for s in stats.values()]
    sync(runner.device)
    assert n == len(ds) and curves
    return time.perf_counter() - t, run.stopped_early


def build(args, dev):
    model, cfg = build_for_inference(args.model, img_size=args.img_size, device=dev)
    taps = choose_taps(model, roles=args.taps.split(",") if args.taps else None, input_size=cfg["size"])
    return model, cfg, taps


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(args):
    """One N in a fresh process: prints JSON with the peak memory (and the resident set after the run on CPU)."""
    import resource
    dev = resolve_device(args.device)
    model, cfg, taps = build(args, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runner = Runner(RunConfig(device=dev, batch_size=args.batch_size), dist=_dist.Dist())
    reduce_dataset(model, Images(args.child_n, cfg["size"]), taps, runner, maps=False)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n": args.child_n, "peak_bytes": peak, "rss_after": _rss()}))


def _ratio_line(label, num, den, target=None) -> str:
    best = min(num) / min(den)
    med = statistics.median(num) / statistics.median(den)
    tail = f"  target <= {target:.2f}: {'ok' if best <= target else 'MISSED'}" if target else ""
    return f"{label} = {best:.3f} (best of {len(num)}; median {med:.3f}){tail}"


def timing(args, dev) -> dict:
    model, cfg, taps = build(args, dev)
    stage1 = choose_taps(model, roles=args.taps.split(",") if args.taps else None, stages=[1],
                         input_size=cfg["size"])
    ds = Images(args.batches * args.batch_size, cfg["size"])
    runner = Runner(RunConfig(device=dev, batch_size=args.batch_size), dist=_dist.Dist())
    print(f"model {args.model} on {dev} ({torch.get_num_threads()} threads), input {cfg['size'][0]}x{cfg['size'][1]}, "
          f"{len(taps)} taps ({len(stage1)} at stage 1), {len(ds)} images per run in batches of {args.batch_size}")
    plain(model, ds, args.batch_size, dev)                     # warm-up (first-call costs)
    amplitude(model, ds, taps, runner)
    amplitude(model, ds, taps, runner, maps=True)
    amplitude(model, ds, stage1, runner)
    runs = {"plain forward": [], "amplitude": [], "amplitude --save-maps": [], "amplitude --stage 1": []}
    stopped = True
    for _ in range(args.repeats):                              # interleaved, so drifting load hits all alike
        runs["plain forward"].append(plain(model, ds, args.batch_size, dev))
        runs["amplitude"].append(amplitude(model, ds, taps, runner)[0])
        runs["amplitude --save-maps"].append(amplitude(model, ds, taps, runner, maps=True)[0])
        t, s = amplitude(model, ds, stage1, runner)
        runs["amplitude --stage 1"].append(t)
        stopped = stopped and s
    n = len(ds)
    for k, v in runs.items():
        print(f"{k:22s}: best {min(v):.3f} s ({1e3 * min(v) / n:.1f} ms/image), median {statistics.median(v):.3f} s"
              f"  runs {[round(w, 3) for w in v]}")
    p = runs["plain forward"]
    print(_ratio_line("time ratio amplitude run / plain forward", runs["amplitude"], p, TARGET))
    print(_ratio_line("time ratio amplitude --save-maps / plain forward", runs["amplitude --save-maps"], p))
    print(_ratio_line("time ratio amplitude --stage 1 / full forward", runs["amplitude --stage 1"], p)
          + f"  (stopped early: {stopped})")
    return runs


def memory(args, dev) -> None:
    small, large = (int(v) for v in args.memory_n.split(","))
    res = {}
    for k in (small, large):
        cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--img-size", str(args.img_size),
               "--batch-size", str(args.batch_size), "--device", args.device, "--child-n", str(k)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.taps:
            cmd += ["--taps", args.taps]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        res[k] = json.loads(out)
    mib = 2 ** 20
    ps, pl = res[small]["peak_bytes"], res[large]["peak_bytes"]
    what = "CUDA max_memory_allocated" if dev.type == "cuda" else "peak RSS"
    print(f"peak memory ({what}): N={small}: {ps / mib:.0f} MiB, N={large}: {pl / mib:.0f} MiB")
    print(f"memory ratio N={large}/N={small} = {pl / ps:.3f}  (flat = 1.00)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dfformer_s18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=3, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--taps", default=None, help="roles (default: the amplitude command's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--memory-n", default="16,64", help="N_small,N_large images for the memory ratio")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--child-n", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_n is not None:
        return memory_child(args)
    dev = resolve_device(args.device)
    timing(args, dev)
    if not args.skip_memory:
        memory(args, dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
