"""Cost of the streaming amplitude analysis relative to plain forward passes, split into the
hooks and the reduction; the early stop of a run whose taps end at stage 1; peak memory as the
number of images grows.

    python benchmarks/bench_amplitude.py                      # dfformer_s18, 224 px, auto device
    python benchmarks/bench_amplitude.py --threads 1 --skip-memory
    python benchmarks/bench_amplitude.py --model convformer_s18 --batch-size 32 --batches 8 --device cuda

Every timed run uses the same pre-generated images (decoding excluded from all sides); the runs
are interleaved per repeat in alternating order, and each ratio is printed as the ratio of the
best times and as the median of the per-repeat paired ratios (robust to a shared machine):

* ``amplitude run / plain forward``: what ``spectrascope amplitude`` does per model (engine
  runner batching the images, Probe hooks, half-diagonal reduction, non-finite check, curves)
  over the same forward passes alone (``model(x)`` under inference mode); target <= 1.02;
* ``hooks only / plain forward``: the same runner and Probe with a callback that does nothing
  (hooks, batching, the early stop after the last tap; no reduction and no NaN/inf check);
* ``reduction alone / plain forward``: the reducer applied to one batch's captured maps outside
  any forward (its read of every tapped map, the length-N DFTs, the logs, the finiteness value
  handed to the probe), times the number of batches;
* ``--save-maps``: the 2-D map reduction (``rfft2`` of every map) instead of the half-diagonal;
* ``--stage 1 run / full forward``: the stage-1 taps only, which stops the forward after stage 1
  (``Probe(stop_early=True)``): well under 1;
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

import torch

import benchkit
from spectrascope.engine.reducers.amplitude import AmplitudeReducer
from spectrascope.probe.grammar import choose_taps
from spectrascope.engine import dist as _dist
from spectrascope.engine.device import resolve_device
from spectrascope.engine.reducers.amplitude import AmplitudeReducer
from spectrascope.engine.runner import RunConfig, Runner
from spectrascope.probe import Probe
from spectrascope.zoo.build import build_for_inference

TARGET = 1.02


class Images(torch.utils.data.Dataset):
    """Pre-generated normalised images (what the runner batches)."""

    def __init__(self, n, size, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, *size, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def plain(model, xs):
    """The forward passes alone, on the same batches already stacked on the device."""
    with torch.inference_mode():
        for x in xs:
            model(x)


def amplitude(model, ds, taps, runner, maps=False) -> bool:
    """What `spectrascope amplitude` does per model: runner + hooks + streaming reduction + curves;
    returns whether the forwards stopped early."""
    reducer = AmplitudeReducer(taps, maps=maps)
    run = runner.reduce(model, ds, reducer)
    stats = reducer.finalise()
    curves = [s.curve() if not maps else s.mean_map() for s in stats.values()]
    assert run.images == len(ds) and curves
    return run.stopped_early


def hooks_only(model, ds, taps, runner) -> None:
    """The same runner and Probe (hooks, batching, early stop) with a callback that does nothing
    (and hands the probe no finiteness value: no NaN/inf check either)."""
    with Probe(model, taps, callback=lambda _tap, _x: None, nchw=False, clone=False,
               finite_from_callback=True) as probe:
        runner.run(model, ds, probe, need_output=False)


def captured_batch(model, ds, taps, batch, dev):
    """The tapped maps of the first batch, in firing order (what the reducer's hooks receive)."""
    got = []
    with Probe(model, taps, callback=lambda tap, x: got.append((tap, x.clone())), nchw=False, clone=False):
        with torch.inference_mode():
            model(ds.x[:batch].to(dev))
    return got


def reduction_alone(taps, maps_of_batch, batches) -> None:
    """The reducer over one batch's captured maps, ``batches`` times (no forward, no hooks), with
    the probe's one finiteness check per forward. The maps come from memory, where in a run the
    hook hands over a map just written (in cache): an upper bound of the reduction's cost."""
    red = AmplitudeReducer(taps, maps=False)
    with torch.inference_mode():
        for _ in range(batches):
            fin = [red(tap, x) for tap, x in maps_of_batch]
            bool(torch.isfinite(torch.stack([f.reshape(()).float() for f in fin])).all())
        red.finalise()


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
    runner.reduce(model, Images(args.child_n, cfg["size"]), AmplitudeReducer(taps, maps=False))
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n": args.child_n, "peak_bytes": peak, "rss_after": _rss()}))


def timing(args, dev) -> list:
    """The interleaved timings; returns the table rows."""
    model, cfg, taps = build(args, dev)
    stage1 = choose_taps(model, roles=args.taps.split(",") if args.taps else None, stages=[1],
                         input_size=cfg["size"])
    ds = Images(args.batches * args.batch_size, cfg["size"])
    runner = Runner(RunConfig(device=dev, batch_size=args.batch_size), dist=_dist.Dist())
    threads = torch.get_num_threads()
    print(f"model {args.model} on {dev} ({threads} threads), input {cfg['size'][0]}x{cfg['size'][1]}, "
          f"{len(taps)} taps ({len(stage1)} at stage 1), {len(ds)} images per run in batches of {args.batch_size}; "
          f"load average {benchkit.load_average()}", flush=True)
    maps_of_batch = captured_batch(model, ds, taps, args.batch_size, dev)
    xs = [ds.x[i:i + args.batch_size].to(dev) for i in range(0, len(ds), args.batch_size)]
    fns = {"plain forward": lambda: plain(model, xs),
           "amplitude": lambda: amplitude(model, ds, taps, runner),
           "hooks only": lambda: hooks_only(model, ds, taps, runner),
           "reduction alone": lambda: reduction_alone(taps, maps_of_batch, args.batches),
           "amplitude --save-maps": lambda: amplitude(model, ds, taps, runner, maps=True),
           "amplitude --stage 1": lambda: amplitude(model, ds, stage1, runner)}
    for f in fns.values():                                     # warm-up (first-call costs)
        f()
    assert amplitude(model, ds, stage1, runner), "the --stage 1 run did not stop early"
    runs, cpu = benchkit.interleave(fns, args.repeats, str(dev))
    n = len(ds)
    for k, v in runs.items():
        print(f"{k:22s}: best {min(v):.3f} s ({1e3 * min(v) / n:.1f} ms/image), median {statistics.median(v):.3f} s"
              f"  runs {[round(w, 3) for w in v]}")
    p = runs["plain forward"]
    setting = f"{args.model} {cfg['size'][0]}px, {len(taps)} taps, {n} images in batches of {args.batch_size}"
    dev_name = str(dev)

    def row(name, label, target=None):
        return benchkit.Row("amplitude", f"{setting}: {label}", threads, dev_name, runs[name], p, target, "lower",
                            reference_label="plain forward passes", ours_cpu=cpu[name],
                            reference_cpu=cpu["plain forward"])
    rows = [row("amplitude", "amplitude run vs plain forward", TARGET),
            row("hooks only", "hooks only (no reduction) vs plain forward"),
            row("reduction alone", "reduction alone vs plain forward"),
            row("amplitude --save-maps", "--save-maps vs plain forward"),
            row("amplitude --stage 1", "--stage 1 run vs full forward")]
    for r in rows:
        tail = f"  target {r.target_text}: {'met' if r.met else 'MISSED'}" if r.target is not None else ""
        print(f"time ratio {r.setting.split(': ', 1)[1]} = {r.ratio_best:.3f} (best of {len(r.ours)}; median "
              f"{r.ratio_median:.3f}; CPU-time median {r.ratio_median_cpu:.3f}){tail}")
    return rows


def memory(args, dev) -> str:
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
    return f"peak memory {large} vs {small} images: {pl / ps:.3f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dfformer_s18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=3, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats")
    ap.add_argument("--taps", default=None, help="roles (default: the amplitude command's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--memory-n", default="16,64", help="N_small,N_large images for the memory ratio")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    benchkit.add_rows_option(ap)
    ap.add_argument("--child-n", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_n is not None:
        return memory_child(args)
    dev = resolve_device(args.device)
    start = benchkit.machine(str(dev))
    rows = timing(args, dev)
    if not args.skip_memory:
        rows[0].notes = memory(args, dev)
    end_load = benchkit.load_average()
    print(f"load average: start {start['load_average']}, end {end_load}")
    benchkit.print_table(rows)
    benchkit.write_rows(rows, args.rows, dict(start, load_average_end=end_load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
