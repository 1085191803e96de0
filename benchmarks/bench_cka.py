"""Mini-batch CKA: spectrascope's engine vs torch-cka 0.21 on the same models, taps, images and
batch size. Prints the speed ratio (target, at the default precision: >= 20x on the tanh nets,
>= 17.7x on the Fig. 7 pair at 64 px), the peak-memory ratio (target <= 1/4) and the max
difference of the matrices.
The spectrascope side runs ``compare_models``: Probe callbacks into the CKA reducer, forwards
through the engine's runner with its NaN/inf check, as the ``cka`` command does.

    python benchmarks/bench_cka.py                       # both configs, CPU
    python benchmarks/bench_cka.py --config tanh --device cuda

Configs:
  tanh  two deep bias-free conv/tanh networks (40 taps each) on zero-mean noise images:
        well-conditioned features, where torch-cka's float32 arithmetic is trustworthy, so the
        max difference measures agreement.
  fig7  GFFormer-S18 vs DFFormer-S18 (random weights) with 40 forward-hook taps each (stem,
        3 downsampling outputs, 18 token-mixer outputs, 18 block outputs) at --img-size; these
        features have large means, so differences there are torch-cka's float32 error.

Timing: both engines in one fresh subprocess per config and mode, ``--repeat`` interleaved runs
(torch-cka, spectrascope / spectrascope, torch-cka / ...); the table gives the ratio of the best
times and the median of the per-repeat paired ratios. Two modes:
  CKA computation  the tap features are captured once and replayed through identity modules,
                   so both engines' timings contain only the CKA work (hooks, Gram matrices,
                   HSIC terms) on identical tensors;
  end to end       torch-cka's ``compare()`` vs ``compare_models`` on the real models (torch-cka
                   runs its forwards with autograd on and keeps every hooked output of a batch).
Time = wall time of the comparison. Peak memory (end to end, each engine once more in its own
fresh subprocess) = peak RSS (CPU) or peak allocated CUDA memory during the comparison minus the
level before it (models and images already in memory).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from unittest import mock


#: speed-ratio targets per config (CKA computation vs torch-cka, default precision, at the config's size)
SPEED_TARGETS = {"tanh": 20.0, "fig7": 17.7}
#: each config's own image size (``--img-size`` default)
DEFAULT_SIZE = {"tanh": 32, "fig7": 64}


# ---------------------------------------------------------------------------- models and data
def _tanh_net(width: int, depth: int, seed: int):
    import torch
    import torch.nn as nn
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers).eval()


def build(config: str, img_size: int, n_images: int, device: str):
    """(model_a, model_b, module names a, module names b, images)."""
    import torch
    g = torch.Generator().manual_seed(0)
    if config == "tanh":
        a, b = _tanh_net(16, 20, 1), _tanh_net(24, 20, 2)
        names_a = [n for n, _ in a.named_modules() if n]
        names_b = [n for n, _ in b.named_modules() if n]
        x = torch.randn(n_images, 3, img_size, img_size, generator=g)
    else:
        import spectrascope
        from spectrascope.probe import model_taps
        torch.manual_seed(0)
        a = spectrascope.create_model("gfformer_s18", img_size=img_size).eval()
        b = spectrascope.create_model("dfformer_s18", img_size=img_size).eval()
        roles = ("stem", "downsample", "mixer", "block")
        names_a = [t.path for t in model_taps(a) if t.role in roles and t.hook == "forward"]
        names_b = [t.path for t in model_taps(b) if t.role in roles and t.hook == "forward"]
        x = torch.randn(n_images, 3, img_size, img_size, generator=g)
    return a.to(device), b.to(device), names_a, names_b, x


# ---------------------------------------------------------------------------- measuring
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Meter:
    def __init__(self, device: str):
        import torch
        self.torch = torch
        self.cuda = device.startswith("cuda")

    def start(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
        else:
            self.base = _rss_bytes()
            self.base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, int]:
        if self.cuda:
            self.torch.cuda.synchronize()
        dt = time.perf_counter() - self.t0
        if self.cuda:
            peak = self.torch.cuda.max_memory_allocated() - self.base
        else:
            # ru_maxrss never decreases: if setup peaked higher, the measured delta is an over-estimate
            peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, self.base_peak) - self.base
        return dt, int(peak)


class Replay:
    """A module that re-emits stored features through one child ``nn.Identity`` per tap, so
    both engines hook the same names and the timing contains only the CKA computation. Its
    input is a batch of consecutive example indices; the features it emits are views (no copy)."""

    @staticmethod
    def make(feats: dict):
        import torch.nn as nn

        class _Replay(nn.Module):
            def __init__(self):
                super().__init__()
                self.names = list(feats)
                self.taps = nn.ModuleList(nn.Identity() for _ in self.names)
                self.store = feats

            def forward(self, idx):
                lo, hi = int(idx[0]), int(idx[-1]) + 1
                for name, tap in zip(self.names, self.taps):
                    tap(self.store[name][lo:hi])
                return idx

        return _Replay()


def _capture(model, names, x, batch_size, device):
    import torch
    feats, handles = {n: [] for n in names}, []
    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: feats[n].append(out.detach().clone())))
    with torch.inference_mode():
        for xb in x.split(batch_size):
            model(xb.to(device))
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in feats.items()}


def _setup(args):
    """The two models (or their replayed features), tap names and batches of one config and mode."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    a, b, names_a, names_b, x = build(args.config, args.img_size, args.images, args.device)
    if args.mode == "cka":  # replay stored features: the CKA computation alone
        fa, fb = _capture(a, names_a, x, args.batch_size, args.device), _capture(b, names_b, x, args.batch_size,
                                                                                 args.device)
        a, b = Replay.make(fa), Replay.make(fb)
        names_a = [f"taps.{i}" for i in range(len(fa))]
        names_b = [f"taps.{i}" for i in range(len(fb))]
        x = torch.arange(args.images, device=args.device)
    with torch.no_grad():  # warm-up (first-call allocations, lazy inits)
        a(x[:4].to(args.device))
        b(x[:4].to(args.device))
    return a, b, names_a, names_b, x


def _engine(engine: str, precision: str, args, a, b, names_a, names_b, x):
    """A callable running one comparison and returning its matrix (float64, CPU). Every engine
    computes once on a small batch first, so that lazily loaded kernels (e.g. the float64 BLAS
    code pages) and first-call allocations are counted neither as its time nor as its memory."""
    import torch
    if engine == "torch-cka":
        import torch_cka
        from torch.utils.data import DataLoader, TensorDataset
        dl = DataLoader(TensorDataset(x), batch_size=args.batch_size, shuffle=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cka = torch_cka.CKA(a, b, model1_name="A", model2_name="B", model1_layers=names_a,
                                model2_layers=names_b, device=args.device)
            with mock.patch("torch_cka.cka.tqdm", lambda it, **_: it):
                cka.compare(DataLoader(TensorDataset(x[:8]), batch_size=8))

        def run():
            with warnings.catch_warnings(), mock.patch("torch_cka.cka.tqdm", lambda it, **_: it):
                warnings.simplefilter("ignore")
                cka.compare(dl, dl)
            return cka.export()["CKA"].double()
        return run
    from spectrascope.analyses.cka import compare_models
    from spectrascope.probe import TapSpec
    ta = [TapSpec(name=n, role="path", path=n, layout="raw") for n in names_a]
    tb = [TapSpec(name=n, role="path", path=n, layout="raw") for n in names_b]
    dtype = {"auto": None, "float32": torch.float32, "float64": torch.float64}[precision]
    batches = list(x.split(args.batch_size))
    compare_models(a, b, [x[:8]], taps_a=ta, taps_b=tb, dtype=dtype)
    return lambda: compare_models(a, b, batches, taps_a=ta, taps_b=tb, dtype=dtype).matrix


def worker(args) -> dict:
    """One engine once in this process: its time and peak memory (what the end-to-end memory
    ratio compares; each engine in a fresh process)."""
    setup = _setup(args)
    run = _engine(args.engine, args.precision, args, *setup)
    m = Meter(args.device)
    m.start()
    mat = run()
    dt, peak = m.stop()
    return {"engine": args.engine, "time_s": dt, "peak_bytes": peak, "matrix": mat.tolist(),
            "shape": list(mat.shape), "batches": -(-args.images // args.batch_size)}


def timing_worker(args) -> dict:
    """torch-cka and spectrascope (each precision) in this process, ``--repeat`` interleaved runs."""
    import benchkit
    setup = _setup(args)
    precisions = args.precisions.split(",")
    fns = {"torch-cka": _engine("torch-cka", "float32", args, *setup)}
    for p in precisions:
        fns[p] = _engine("spectrascope", p, args, *setup)
    mats = {}
    wall, cpu = benchkit.interleave({k: (lambda k=k: mats.__setitem__(k, fns[k]())) for k in fns},
                                    max(1, args.repeat), args.device)
    return {"wall": wall, "cpu": cpu, "matrix": {k: v.tolist() for k, v in mats.items()},
            "shape": list(mats["torch-cka"].shape), "batches": -(-args.images // args.batch_size)}


def _run(ns, cmd_tail: list[str], env=None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--config", ns.config, "--img-size", str(ns.img_size),
           "--images", str(ns.images), "--batch-size", str(ns.batch_size), "--device", ns.device,
           "--threads", str(ns.threads or 0), "--repeat", str(ns.repeat)] + cmd_tail
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd_tail)} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_worker(ns, engine: str, precision: str, mode: str) -> dict:
    """One engine in a fresh process (its peak memory)."""
    # end to end (where peak memory is reported): a fixed glibc mmap threshold, so large buffers
    # are returned to the OS when freed and peak RSS follows the live tensors instead of the
    # allocator's cache (same setting for both engines)
    env = dict(os.environ)
    if mode == "e2e" and not ns.device.startswith("cuda"):
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    return _run(ns, ["--_worker", engine, "--mode", mode, "--precision", precision], env)


def report(ns, precisions) -> list:
    import torch

    import benchkit
    threads = ns.threads or torch.get_num_threads()
    print(f"[{ns.config}] {ns.images} images {ns.img_size}px, batch {ns.batch_size}, device {ns.device}, "
          f"threads {threads}, {ns.repeat} interleaved repeats; load average {benchkit.load_average()}", flush=True)
    rows = []
    for mode in ns.modes.split(","):
        t = _run(ns, ["--_worker", "timing", "--mode", mode, "--precisions", ",".join(precisions)])
        mem = {}
        if mode == "e2e":
            mem = {e: run_worker(ns, e, p, mode)["peak_bytes"] for e, p in [("torch-cka", "float32")] +
                   [("spectrascope", q) for q in precisions]}
        ref_wall, ref_cpu = t["wall"]["torch-cka"], t["cpu"]["torch-cka"]
        b = torch.tensor(t["matrix"]["torch-cka"])
        for p in precisions:
            a = torch.tensor(t["matrix"][p])
            diff = float((a - b).abs().nan_to_num(0).max())
            n_a, n_b = t["shape"]
            what = "CKA computation (replayed features)" if mode == "cka" else "end to end (forward passes included)"
            label = "auto (float32 for float32 features: the default)" if p == "auto" else p
            # the targets are the default precision's at the config's own size (float64 products, an
            # option, cost twice the float32 ones by construction; other sizes are shown for information)
            own = ns.img_size == DEFAULT_SIZE[ns.config]
            target = SPEED_TARGETS[ns.config] if mode == "cka" and p == "auto" and own else None
            notes = f"max diff {diff:.2g}"
            if mem:
                notes += (f"; peak memory {mem['spectrascope'] / 2**20:.0f} vs {mem['torch-cka'] / 2**20:.0f} MiB "
                          f"({mem['spectrascope'] / max(mem['torch-cka'], 1):.3f})")
            setting = (f"{ns.config} {ns.img_size}px, {ns.images} images, {n_a}x{n_b} taps, "
                       f"{'CKA computation' if mode == 'cka' else 'end to end'}"
                       + ("" if p == "auto" else f", ours {p}"))
            row = benchkit.Row("cka", setting, threads, ns.device, t["wall"][p], ref_wall, target, "higher",
                               reference_label="torch-cka 0.21", notes=notes, ours_cpu=t["cpu"][p],
                               reference_cpu=ref_cpu, extra={"max_diff": diff, "peak_bytes": mem or None})
            rows.append(row)
            print(f"  {what}, {n_a}x{n_b} taps, {t['batches']} batches, spectrascope Gram products {label}:")
            met = "" if target is None else f" (target >= {target}x: {'met' if row.met else 'NOT met'})"
            print(f"    time     torch-cka {statistics.median(ref_wall):8.2f} s    spectrascope "
                  f"{statistics.median(t['wall'][p]):7.2f} s    speed ratio {row.ratio_median:6.1f}x median, "
                  f"{row.ratio_best:.1f}x best{met}")
            if mem:
                print(f"    peak mem torch-cka {mem['torch-cka'] / 2**20:8.1f} MiB  spectrascope "
                      f"{mem['spectrascope'] / 2**20:7.1f} MiB  ratio "
                      f"{mem['spectrascope'] / max(mem['torch-cka'], 1):6.3f} (target <= 0.25)")
            print(f"    max |diff| {diff:.3g}  (torch-cka NaN cells: {int(torch.isnan(b).sum())}; "
                  f"{'well-conditioned' if ns.config == 'tanh' else 'large-mean features: torch-cka float32 error'})")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=["tanh", "fig7", "all"], default="all")
    ap.add_argument("--img-size", type=int, default=None, help="default: 32 (tanh), 64 (fig7)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["auto", "float64", "float32", "both"], default="both",
                    help="precision of spectrascope's centred Gram products (accumulation is always float64); "
                         "auto (the default of the library and CLI) = float32 for these float32 features; "
                         "both = auto and float64")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch default)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timing repeats per measurement")
    ap.add_argument("--modes", default="cka,e2e", help="cka (replayed features), e2e (real models) or both")
    ap.add_argument("--mode", default="cka", help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help="also write the table rows as JSON to this file")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precisions", default="auto", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns._worker:
        ns.engine = ns._worker
        ns.img_size = ns.img_size or DEFAULT_SIZE[ns.config]
        print(json.dumps(timing_worker(ns) if ns._worker == "timing" else worker(ns)))
        return
    configs = ["tanh", "fig7"] if ns.config == "all" else [ns.config]
    precisions = ["auto", "float64"] if ns.precision == "both" else [ns.precision]
    import benchkit
    start = benchkit.machine(ns.device)
    rows = []
    for c in configs:
        sub = argparse.Namespace(**vars(ns))
        sub.config = c
        sub.img_size = ns.img_size or DEFAULT_SIZE[c]
        rows += report(sub, precisions)
    end_load = benchkit.load_average()
    print(f"load average: start {start['load_average']}, end {end_load}")
    benchkit.print_table(rows)
    benchkit.write_rows(rows, ns.rows, dict(start, load_average_end=end_load))


if __name__ == "__main__":
    main()
