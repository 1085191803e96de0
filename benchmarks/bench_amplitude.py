"""Cost of the streaming amplitude analysis relative to plain forward passes, and its
peak memory as the number of images grows.

    python benchmarks/bench_amplitude.py                      # dfformer_s18, 224 px, auto device
    python benchmarks/bench_amplitude.py --model convformer_s18 --batch-size 32 --batches 8 --device cuda

Prints two ratios:

* time: (forward passes + hooks + FFT reduction + curves) / (the same forward passes alone),
  on the same pre-generated batches (image decoding excluded from both), best of the
  interleaved repeats (robust to a shared machine) with the medians and CPU-time ratios
  beside it; for the default run (half-diagonal reduction) and with --save-maps (2-D maps);
  target <= 1.10;
* memory: memory with N_large images / with N_small images (flat = 1.00), each N in a fresh
  subprocess. On CUDA: ``torch.cuda.max_memory_allocated``. On CPU: the largest resident set
  peak resident set size (ru_maxrss, model and runtime included) and the resident size sampled
  after every batch, with glibc told to serve large blocks from mmap so that freed memory
  leaves the resident set (otherwise the allocator's high-water mark varies by +-10%).
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

from spectrascope.analysis.fourier import choose_taps, reduce_spectra
from spectrascope.engine.device import resolve_device
from spectrascope.zoo.build import build_for_inference
from spectrascope.ops.fourier import curve_from_map

TARGET = 1.10


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_batches(n_batches, batch, size, dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, *size, generator=g).to(dev) for _ in range(n_batches)]


def lazy_batches(n_images, batch, size, dev):
    """Batches generated on the fly: the input never holds more than one batch."""
    g = torch.Generator().manual_seed(0)
    done = 0
    while done < n_images:
        b = min(batch, n_images - done)
        yield torch.randn(b, 3, *size, generator=g).to(dev)
        done += b


def plain(model, batches, dev):
    sync(dev)
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for x in batches:
            model(x)
    sync(dev)
    return time.perf_counter() - t, time.process_time() - c


def amplitude(model, batches, taps, dev, maps=False):
    """What `spectrascope amplitude` does per model: hooks + streaming reduction + curves."""
    sync(dev)
    t, c = time.perf_counter(), time.process_time()
    stats, _, _ = reduce_spectra(model, batches, taps, device=dev, maps=maps)
    curves = [curve_from_map(s.mean_map()) if maps else s.curve() for s in stats.values()]
    sync(dev)
    assert all(cv[0].item() == 0.0 for cv in curves)
    return time.perf_counter() - t, time.process_time() - c


def in_run_share(model, batches, taps, dev, maps=False):
    """Fraction of an amplitude run spent inside the reducer callbacks (timed in the same run,
    so machine load affects the forward and the reduction alike)."""
    from spectrascope.engine.reducers.amplitude import AmplitudeReducer
    from spectrascope.probe import Probe
    red = AmplitudeReducer(taps, maps=maps)
    spent = [0.0]

    def timed(tap, x):
        sync(dev)
        t = time.perf_counter()
        red(tap, x)
        sync(dev)
        spent[0] += time.perf_counter() - t
    sync(dev)
    t = time.perf_counter()
    with torch.inference_mode(), Probe(model, taps, callback=timed, **red.probe_kwargs):
        for x in batches:
            model(x)
    sync(dev)
    total = time.perf_counter() - t
    return spent[0], total


def build(args, dev):
    model, cfg = build_for_inference(args.model, img_size=args.img_size, device=dev)
    taps = choose_taps(model, roles=args.taps.split(",") if args.taps else None, input_size=cfg["size"])
    return model, cfg, taps


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(args):
    """One N in a fresh process: prints JSON with the peak memory and, on CPU, the resident
    set size sampled after every batch (glibc's allocator makes ru_maxrss noisy)."""
    import resource
    dev = resolve_device(args.device)
    model, cfg, taps = build(args, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    samples = []

    def batches():
        for x in lazy_batches(args.child_n, args.batch_size, cfg["size"], dev):
            yield x
            if dev.type != "cuda":
                samples.append(_rss())
    reduce_spectra(model, batches(), taps, device=dev)
    if dev.type != "cuda":
        samples.append(_rss())
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n": args.child_n, "peak_bytes": peak, "rss_after_batches": samples[1:]}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dfformer_s18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4, help="batches per timed run")
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
    model, cfg, taps = build(args, dev)
    batches = make_batches(args.batches, args.batch_size, cfg["size"], dev)
    n = args.batches * args.batch_size
    print(f"model {args.model} on {dev} ({torch.get_num_threads()} threads), input {cfg['size'][0]}x{cfg['size'][1]}, "
          f"{len(taps)} taps, {n} images per run in batches of {args.batch_size}")
    plain(model, batches[:1], dev)                      # warm-up (first-call costs)
    amplitude(model, batches[:1], taps, dev)
    amplitude(model, batches[:1], taps, dev, maps=True)
    runs = {"plain": [], "amplitude": [], "amplitude --save-maps": []}
    for _ in range(args.repeats):                       # interleaved, so drifting load hits all alike
        runs["plain"].append(plain(model, batches, dev))
        runs["amplitude"].append(amplitude(model, batches, taps, dev))
        runs["amplitude --save-maps"].append(amplitude(model, batches, taps, dev, maps=True))
    best = {k: min(w for w, _ in v) for k, v in runs.items()}
    med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: min(c for _, c in v) for k, v in runs.items()}
    for k in runs:
        print(f"{k:22s}: best {best[k]:.3f} s ({1e3 * best[k] / n:.1f} ms/image), median {med[k]:.3f} s, "
              f"cpu {cpu[k]:.3f} s  runs {[round(w, 3) for w, _ in runs[k]]}")
    for k in ("amplitude", "amplitude --save-maps"):
        ratio = best[k] / best["plain"]
        print(f"time ratio {k}/forward = {ratio:.3f} (best of {args.repeats}; median {med[k] / med['plain']:.3f}; "
              f"cpu time {cpu[k] / cpu['plain']:.3f})  target <= {TARGET:.2f}: {'ok' if ratio <= TARGET else 'MISSED'}")

    shares = [in_run_share(model, batches, taps, dev) for _ in range(args.repeats)]
    spent, total = min(shares, key=lambda st: st[0] / st[1])
    med = statistics.median(sp / (tt - sp) for sp, tt in shares)
    print(f"in-run estimate: reduction {spent:.3f} s of {total:.3f} s -> ratio {total / (total - spent):.3f} "
          f"(median over runs {1 + med:.3f}); the reduction alone, measured inside the same forward passes")

    if args.skip_memory:
        return 0
    small, large = (int(v) for v in args.memory_n.split(","))
    runs = {}
    for k in (small, large):
        cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--img-size", str(args.img_size),
               "--batch-size", str(args.batch_size), "--device", args.device, "--child-n", str(k)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.taps:
            cmd += ["--taps", args.taps]
        # large blocks straight from mmap, so freed memory leaves the resident set at once (glibc)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        runs[k] = json.loads(out)
    mib = 2 ** 20
    if dev.type == "cuda":
        ps, pl = runs[small]["peak_bytes"], runs[large]["peak_bytes"]
        print(f"peak memory (CUDA max_memory_allocated): N={small}: {ps / mib:.0f} MiB, N={large}: {pl / mib:.0f} MiB")
        print(f"memory ratio N={large}/N={small} = {pl / ps:.3f}  (flat = 1.00)")
        return 0
    ps, pl = runs[small]["peak_bytes"], runs[large]["peak_bytes"]
    rs, rl = max(runs[small]["rss_after_batches"]), max(runs[large]["rss_after_batches"])
    print(f"resident memory after each batch (max): N={small}: {rs / mib:.0f} MiB, N={large}: {rl / mib:.0f} MiB "
          f"(samples of the N={large} run: {[round(v / mib) for v in runs[large]['rss_after_batches']]})")
    print(f"peak RSS (ru_maxrss): N={small}: {ps / mib:.0f} MiB, N={large}: {pl / mib:.0f} MiB")
    print(f"memory ratio N={large}/N={small} = {pl / ps:.3f} peak, {rl / rs:.3f} between batches  (flat = 1.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
