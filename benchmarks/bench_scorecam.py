"""Score-CAM speed and peak memory: spectrascope.score_cam vs pytorch-grad-cam's ScoreCAM.

Both run the same model, target layer, images and classes; the maps must agree
(gradcam-lib flavour). Masked inputs per forward: ``--batch-size`` for spectrascope (default:
``score_cam``'s automatic choice) and ``--ref-batch-size`` for the reference (default: 16,
pytorch-grad-cam's own), so by default each runs as its users get it; give both the same
value to compare at equal batch size. Each implementation runs in its own subprocess so
that peak memory is measured cleanly: on CUDA ``torch.cuda.max_memory_allocated``, on CPU
the peak resident set size sampled every 2 ms above the level right before the call.
Without pytorch-grad-cam (``pip install grad-cam``, with torch pinned) the reference is
a naive Score-CAM that materialises all masked inputs at once and keeps its hook alive,
as pytorch-grad-cam does.

    python benchmarks/bench_scorecam.py                       # dfformer_s18 at 96 px, 2 images
    python benchmarks/bench_scorecam.py --model spanet_s --img-size 224 --device cuda --num-images 4

Prints the maps' max abs difference, the speed ratio (target >= 1.5x) and the peak
memory ratio (target <= 1/4).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import sys
import threading
import time

import torch


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
    from spectrascope.analysis.cam import default_target_layer
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


def worker(args):
    model, x, tl, classes = build(args)
    impl = args.worker
    if impl == "gradcam-lib":
        from spectrascope.compat import import_torchvision
        import_torchvision()
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def call():
            cam = ScoreCAM(model=model, target_layers=[tl.module], reshape_transform=tl.to_nchw)
            cam.batch_size = args.batch_size                     # the reference's batch (see run_worker)
            import contextlib
            import io
            with contextlib.redirect_stderr(io.StringIO()):           # its tqdm bars
                out = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
            cam.activations_and_grads.release()
            return torch.from_numpy(out)
    elif impl == "naive":
        def call():
            return naive_score_cam(model, tl.module, tl.to_nchw, x, classes, args.batch_size)
    else:
        from spectrascope import score_cam
        runner = None
        if args.channels_last is not None:
            from spectrascope.engine.runner import RunConfig, Runner
            runner = Runner(RunConfig(device=args.device, channels_last=bool(args.channels_last)))
            runner.prepare(model)

        def call():
            return score_cam(model, tl, x, classes, batch_size=args.batch_size or None, runner=runner)
    with torch.no_grad():
        model(x)                                                  # warm-up
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, out, extra = [], None, 0
    for _ in range(args.repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = call()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        extra = max(extra, mem.extra)
    if cuda:
        extra = torch.cuda.max_memory_allocated() - base
    torch.save(out, args.out)
    print(json.dumps({"impl": impl, "seconds": min(times), "peak_extra_bytes": int(extra),
                      "target_layer": tl.path}))


def run_worker(args, impl):
    out = os.path.join(tempfile.gettempdir(), f"bench_scorecam_{os.getpid()}_{impl}.pt")
    batch = args.batch_size if impl == "spectrascope" else args.ref_batch_size
    cmd = [sys.executable, __file__, "--worker", impl, "--out", out, "--model", args.model, "--img-size",
           str(args.img_size), "--num-images", str(args.num_images), "--batch-size", str(batch),
           "--device", args.device, "--repeats", str(args.repeats), "--threads", str(args.threads)]
    if args.model_kwargs:
        cmd += ["--model-kwargs", args.model_kwargs]
    if impl == "spectrascope" and args.channels_last is not None:
        cmd += ["--channels-last", str(args.channels_last)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{res.stderr[-3000:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["maps"] = torch.load(out, weights_only=True)
    os.remove(out)
    return info


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dfformer_s18")
    p.add_argument("--model-kwargs", default=None, help='JSON overrides, e.g. \'{"dims": [32, 64, 96, 128]}\'')
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--num-images", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0,
                   help="masked inputs per forward for spectrascope (default 0: score_cam's automatic choice)")
    p.add_argument("--ref-batch-size", type=int, default=16,
                   help="masked inputs per forward for the reference (default: 16, pytorch-grad-cam's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--channels-last", type=int, choices=(0, 1), default=None,
                   help="spectrascope only: 1 = channels-last weights and inputs, 0 = contiguous "
                        "(default: score_cam's own default)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    try:
        from spectrascope.compat import import_torchvision
        import_torchvision()
        import pytorch_grad_cam  # noqa: F401
        ref = "gradcam-lib"
    except Exception:
        ref = "naive"
        print("pytorch-grad-cam is not installed: comparing with a naive all-masks-at-once Score-CAM")
    theirs = run_worker(args, ref)
    ours = run_worker(args, "spectrascope")
    diff = float((ours["maps"] - theirs["maps"].to(ours["maps"].dtype)).abs().max())
    speed = theirs["seconds"] / ours["seconds"]
    mem = ours["peak_extra_bytes"] / max(theirs["peak_extra_bytes"], 1)
    mib = 2 ** 20
    print(f"model {args.model} at {args.img_size}px, {args.num_images} images, target {ours['target_layer']}, "
          f"device {args.device}, threads {torch.get_num_threads()}")
    print(f"{ref:>14}: {theirs['seconds']:.2f} s, peak extra memory {theirs['peak_extra_bytes'] / mib:.1f} MiB "
          f"(batch {args.ref_batch_size})")
    print(f"{'spectrascope':>14}: {ours['seconds']:.2f} s, peak extra memory {ours['peak_extra_bytes'] / mib:.1f} MiB "
          f"(batch {args.batch_size or 'auto'})")
    print(f"maps max abs difference: {diff:.2e}")
    print(f"speed ratio (reference time / ours): {speed:.2f}x  (target >= 1.5x)")
    print(f"peak memory ratio (ours / reference): {mem:.3f}  (target <= 0.25)")


if __name__ == "__main__":
    main()
