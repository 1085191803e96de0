"""Score-CAM speed and peak memory: spectrascope's ``ScoreCam`` vs pytorch-grad-cam's ``ScoreCAM``.

Both run the same model, target layer, images and classes, each at its own defaults (masked
inputs per forward: spectrascope's automatic choice, pytorch-grad-cam's 16; ``--batch-size`` /
``--ref-batch-size`` change them), and the maps must agree (gradcam-lib flavour, max abs
difference <= 1e-5). Timing: both in this process on the same model, ``--repeats`` interleaved
repeats (ours, theirs / theirs, ours / ...); the paired ratio of each repeat (with each side's
system time and minor page faults) and their median are printed, with the load average before
and after. Peak memory: each side once more in a fresh subprocess (CUDA:
``max_memory_allocated``; CPU: the resident set sampled every 2 ms, above its level right before
the call). Without pytorch-grad-cam (``pip install -c constraints.txt torch==2.13.0 grad-cam``)
the reference is a naive Score-CAM that materialises all masked inputs at once and keeps its hook
alive, as pytorch-grad-cam does.

    python benchmarks/bench_scorecam.py                                 # dfformer_s18, 96 px, 2 images
    python benchmarks/bench_scorecam.py --img-size 224 --num-images 1 --threads 1
    python benchmarks/bench_scorecam.py --amp bf16                      # ours in bf16 autocast
    python benchmarks/bench_scorecam.py --model spanet_s --img-size 224 --device cuda --num-images 4

Targets: on a CPU both sides run the same forwards, so the bound is the forward passes: speed
ratio >= 1.0; on a GPU >= 1.5 at 224 px and peak memory <= 1/4 of the reference's (where the
reference holds every masked input in device memory; on a CPU the memory ratio is printed for
information).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import threading
import time

import torch

import benchkit

MAP_TOL = 1e-5


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a thread; ``peak - base`` is the call's extra memory."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())
        return False

    @property
    def extra(self) -> int:
        return self.peak - self.base


def build(args):
    import spectrascope
    from spectrascope.engine.cam import default_target_layer
    torch.manual_seed(0)
    kw = json.loads(args.model_kwargs) if args.model_kwargs else {}
    model = spectrascope.create_model(args.model, num_classes=1000, img_size=args.img_size, **kw).eval()
    model.to(args.device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.num_images, 3, args.img_size, args.img_size, generator=g).to(args.device)
    tl = default_target_layer(model)
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    return model, x, tl, classes


def naive_score_cam(model, module, reshape, x, classes, batch_size):
    """All masked inputs at once, hook alive during scoring (pytorch-grad-cam's scheme)."""
    import torch.nn.functional as F
    store = []
    h = module.register_forward_hook(lambda _m, _i, o: store.append(reshape(o).detach().cpu()))
    try:
        with torch.no_grad():
            model(x)
            acts = store[0].to(x.device)
            up = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=True)
            lo = up.flatten(2).min(-1).values[..., None, None]
            hi = up.flatten(2).max(-1).values[..., None, None]
            up = (up - lo) / (hi - lo + 1e-8)
            masked = x[:, None] * up[:, :, None]                        # (B, C, 3, H, W) at once
            scores = []
            for b in range(x.shape[0]):
                for i in range(0, masked.shape[1], batch_size):
                    scores.append(model(masked[b, i:i + batch_size])[:, classes[b]].float().cpu())
            w = torch.softmax(torch.cat(scores).view(x.shape[0], -1), dim=-1)
            cam = (w[:, :, None, None] * acts.cpu()).sum(1).clamp_min(0)
            cam = cam - cam.flatten(1).min(1).values[:, None, None]
            cam = cam / (cam.flatten(1).max(1).values[:, None, None] + 1e-7)
            cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            cam = cam.clamp_min(0)
            cam = cam - cam.flatten(1).min(1).values[:, None, None]
            return cam / (cam.flatten(1).max(1).values[:, None, None] + 1e-7)
    finally:
        h.remove()


def reference_name() -> str:
    """``gradcam-lib`` when pytorch-grad-cam imports, else ``naive``."""
    try:
        from spectrascope.compat import import_torchvision
        import_torchvision()
        import pytorch_grad_cam  # noqa: F401
        return "gradcam-lib"
    except Exception:
        return "naive"


def reference_label(ref: str) -> str:
    if ref == "naive":
        return "naive all-masks Score-CAM"
    import importlib.metadata as md
    return f"pytorch-grad-cam {md.version('grad-cam')}"


def make_call(impl, args, model, x, tl, classes, info: dict):
    """The callable computing one implementation's maps (CPU tensor (B, H, W))."""
    if impl == "gradcam-lib":
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def call():
            cam = ScoreCAM(model=model, target_layers=[tl.module], reshape_transform=tl.to_nchw)
            cam.batch_size = args.ref_batch_size
            with contextlib.redirect_stderr(io.StringIO()):           # its tqdm bars
                out = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
            cam.activations_and_grads.release()
            return torch.from_numpy(out)
        return call
    if impl == "naive":
        return lambda: naive_score_cam(model, tl.module, tl.to_nchw, x, classes, args.ref_batch_size)
    from spectrascope.engine.cam import ScoreCam
    from spectrascope.engine.runner import RunConfig, Runner
    cfg = RunConfig(device=args.device, amp=args.amp, compile=args.compile)
    if args.channels_last is not None:
        cfg.channels_last = bool(args.channels_last)
    runner = Runner(cfg)
    if cfg.channels_last:
        runner.prepare(model)

    def call():
        cam = ScoreCam(model, tl, batch_size=args.batch_size or None, runner=runner, workers=args.workers or None,
                       input_size=tuple(x.shape[-2:]))
        out = cam(x, classes)
        info.update(cam.plan_)
        return out
    return call


def memory_worker(args):
    """One implementation in a fresh process: prints JSON with its peak extra memory."""
    model, x, tl, classes = build(args)
    call = make_call(args.worker, args, model, x, tl, classes, {})
    with torch.no_grad():
        model(x)                                                   # warm-up
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as mem:
        call()
        if cuda:
            torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base if cuda else mem.extra
    print(json.dumps({"impl": args.worker, "peak_extra_bytes": int(extra)}))


def peak_memory(args, impl) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--model", args.model, "--img-size",
           str(args.img_size), "--num-images", str(args.num_images), "--batch-size", str(args.batch_size),
           "--ref-batch-size", str(args.ref_batch_size), "--device", args.device, "--threads", str(args.threads),
           "--workers", str(args.workers), "--amp", args.amp]
    if args.model_kwargs:
        cmd += ["--model-kwargs", args.model_kwargs]
    if args.channels_last is not None:
        cmd += ["--channels-last", str(args.channels_last)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{res.stderr[-3000:]}")
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def timing(args, ref: str) -> dict:
    model, x, tl, classes = build(args)
    plan: dict = {}
    calls = {"ours": make_call("spectrascope", args, model, x, tl, classes, plan),
             "reference": make_call(ref, args, model, x, tl, classes, {})}
    with torch.no_grad():
        model(x.repeat(max(1, 16 // x.shape[0]), 1, 1, 1)[:16])    # warm-up: first-call costs of both sides
    maps, kernel = {}, {}

    def run(name):
        def call():
            before = resource.getrusage(resource.RUSAGE_SELF)
            maps[name] = calls[name]()
            after = resource.getrusage(resource.RUSAGE_SELF)
            kernel[name] = (after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt)
        return call

    def show(r, last):
        sys_s = ", ".join(f"{k} {kernel[k][0]:.2f} s / {kernel[k][1]} faults" for k in ("ours", "reference"))
        print(f"  repeat {r + 1}: ours {last['ours']:.2f} s, reference {last['reference']:.2f} s, "
              f"ratio {last['reference'] / last['ours']:.3f}, load {benchkit.load_average()}; "
              f"system time / minor page faults: {sys_s}", flush=True)
    wall, cpu = benchkit.interleave({"ours": run("ours"), "reference": run("reference")}, args.repeats,
                                    args.device, show)
    diff = float((maps["ours"] - maps["reference"].to(maps["ours"].dtype)).abs().max())
    return {"times": wall, "cpu": cpu, "diff": diff, "plan": plan, "target_layer": tl.path}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dfformer_s18")
    p.add_argument("--model-kwargs", default=None, help='JSON overrides, e.g. \'{"dims": [32, 64, 96, 128]}\'')
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--num-images", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0,
                   help="masked inputs per forward for spectrascope (default 0: its automatic choice)")
    p.add_argument("--ref-batch-size", type=int, default=16,
                   help="masked inputs per forward for the reference (default: 16, pytorch-grad-cam's default)")
    p.add_argument("--workers", type=int, default=0,
                   help="spectrascope's concurrent masked forwards on a CPU (default 0: automatic)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="spectrascope's masked forwards under autocast (the reference stays float32)")
    p.add_argument("--compile", action="store_true", help="spectrascope: torch.compile the masked forward")
    p.add_argument("--channels-last", type=int, choices=(0, 1), default=None,
                   help="spectrascope only: 1 = channels-last weights and inputs, 0 = contiguous "
                        "(default: its own default)")
    p.add_argument("--skip-memory", action="store_true", help="time only (no peak-memory subprocesses)")
    benchkit.add_rows_option(p)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    if args.worker:
        if args.worker != "spectrascope":
            reference_name()
        return memory_worker(args)
    ref = reference_name()
    if ref == "naive":
        print("pytorch-grad-cam is not installed: comparing with a naive all-masks-at-once Score-CAM")
    start = benchkit.machine(args.device)
    print(f"model {args.model} at {args.img_size}px, {args.num_images} image(s), device {args.device}, "
          f"threads {args.threads}, amp {args.amp}; {start['cpu']}, load average {start['load_average']}", flush=True)
    res = timing(args, ref)
    mem = None
    if not args.skip_memory:
        mem = (peak_memory(args, "spectrascope"), peak_memory(args, ref))
    end_load = benchkit.load_average()
    plan = res["plan"]
    amp = "" if args.amp == "off" else f", ours {args.amp}"
    setting = (f"{args.model} {args.img_size}px, {args.num_images} image(s), batch {plan.get('batch_size')} "
               f"x {plan.get('workers')} workers vs {args.ref_batch_size}{amp}")
    notes = f"maps max diff {res['diff']:.1e}"
    if mem:
        notes += f"; peak memory {mem[0] / 2**20:.0f} vs {mem[1] / 2**20:.0f} MiB ({mem[0] / max(mem[1], 1):.3f})"
    target = 1.5 if args.device.startswith("cuda") else 1.0
    row = benchkit.Row("scorecam", setting, args.threads, args.device, res["times"]["ours"],
                       res["times"]["reference"], target, "higher", reference_label=reference_label(ref), notes=notes,
                       extra={"max_diff": res["diff"], "maps_equal": res["diff"] <= MAP_TOL, "plan": plan,
                              "peak_bytes": mem, "target_layer": res["target_layer"], "amp": args.amp,
                              "load_average_end": end_load},
                       ours_cpu=res["cpu"]["ours"], reference_cpu=res["cpu"]["reference"])
    print(f"target layer {res['target_layer']}; ours: batch {plan.get('batch_size')}, {plan.get('workers')} "
          f"concurrent forward(s) x {plan.get('threads')} thread(s); reference: batch {args.ref_batch_size}")
    print(f"maps max abs difference: {res['diff']:.2e} ({'equal' if res['diff'] <= MAP_TOL else 'DIFFERENT'}: "
          f"tolerance {MAP_TOL:g})")
    if mem:
        print(f"peak extra memory: ours {mem[0] / 2**20:.1f} MiB, reference {mem[1] / 2**20:.1f} MiB, ratio "
              f"{mem[0] / max(mem[1], 1):.3f}{' (target <= 0.25)' if args.device.startswith('cuda') else ''}")
    print(f"load average: start {start['load_average']}, end {end_load}")
    benchkit.print_table([row])
    benchkit.write_rows([row], args.rows, dict(start, load_average_end=end_load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
