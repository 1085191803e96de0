"""The full Fourier heat map of a small model on 32 px labelled images: spectrascope's batched loop
against the common implementation's algorithm, same maps, speed ratio and memory.

    python benchmarks/bench_fourier_heatmap.py                            # reduced dfformer_s18, 128 images
    python benchmarks/bench_fourier_heatmap.py --model poolformerv2_s12 --num-images 256 --threads 2
    python benchmarks/bench_fourier_heatmap.py --device cuda --num-images 1024 --forward-batch 4096

The images are synthetic textures (``spectrascope.io.datasets``, labelled) written once as PNG files
in class folders under a temporary directory, so that both sides really decode files.

* anchor: the algorithm of gatheluck/FourierHeatmap (``fhmap/fourier/heatmap.py``, ``basis.py``,
  ``noise.py``, ``factory/dataset.py``), written here from its description: for every point of
  the rfft grid H x (H/2 + 1) (544 at 32 px, 30 of them duplicates) the basis is the inverse rfft
  of a one-hot spectrum divided by its norm, times eps; a new data set and a new DataLoader
  (``--anchor-batch-size`` 512, ``--anchor-workers``) decode every image again and apply a
  per-sample CPU transform (to tensor, ``clamp(x + basis repeated per channel x a sign per
  channel, 0, 1)``, normalise); the model runs on each batch outside ``no_grad`` (as its
  ``eval_mean_errors``); the error of a basis is the mean of its batches' error percentages; the
  map is the error matrix flipped and concatenated about DC (the Nyquist row and column dropped).
  The reference draws its signs from unseeded ``random`` in the workers; here its transform reads
  the same seeded signs as spectrascope (``ops.fourier_basis.basis_signs``) so that both maps
  must be equal.
* ours: every image decoded once, batch by batch (``--batch-size``), and
  ``engine.heatmap.run_heatmap`` over the 514 distinct bases, ``--forward-batch`` perturbed images
  per forward under ``inference_mode``.

Prints both times (decoding included on both sides), the ratio anchor / ours (target >= 5 on a
CPU), the largest difference between the maps on their common 31 x 31 frequencies, and (unless
``--skip-memory``) the peak resident memory of our loop for two numbers of images, each in a fresh
subprocess (flat = 1.00). On CUDA it also prints images x bases per second.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import spectrascope
from spectrascope.engine.device import resolve_device
from spectrascope.engine.heatmap import HeatmapProgress, HeatmapSpec, heatmap_maps, run_heatmap
from spectrascope.engine.runner import RunConfig, Runner
from spectrascope.io.datasets import SyntheticConfig, SyntheticTextures
from spectrascope.ops.fourier_basis import basis_ids, basis_signs, half_plane, half_plane_index

TARGET = 5.0
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------- data and model


def write_images(root: Path, n: int, size: int) -> list[tuple[Path, int]]:
    """n labelled synthetic textures as PNGs in class folders; returns (path, label) in order."""
    ds = SyntheticTextures(SyntheticConfig(size=size, val_size=n), "val")
    items = []
    for i in range(n):
        img, label, _ = ds.load(i)
        folder = root / ds.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.png"
        Image.fromarray(img).save(path)
        items.append((path, label))
    return items


def to_tensor(path: Path) -> torch.Tensor:
    """Decode like torchvision's ``default_loader`` + ``ToTensor``: RGB uint8 -> float CHW in [0, 1]."""
    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div(255.0)


def parse_kwargs(items: list[str]) -> dict:
    out = {}
    for text in items:
        key, _, value = text.partition("=")
        parts = [int(v) if v.lstrip("-").isdigit() else float(v) for v in value.split(",")]
        out[key] = parts if "," in value else parts[0]
    return out


def build_model(args, num_classes: int, dev):
    torch.manual_seed(0)
    model = spectrascope.create_model(args.model, num_classes=num_classes, img_size=args.img_size,
                                      **parse_kwargs(args.model_kwargs))
    return model.eval().to(dev)


# ---------------------------------------------------------------------------- the anchor


class AnchorNoise:
    """The reference's per-sample noise transform: the scaled basis repeated on every channel, one
    sign per channel, added and clamped to [0, 1] (signs read from a table instead of ``random``)."""

    def __init__(self, basis: torch.Tensor, signs: torch.Tensor):
        self.basis, self.signs = basis, signs

    def __call__(self, x: torch.Tensor, index: int) -> torch.Tensor:
        c = x.shape[0]
        noise = self.basis.unsqueeze(0).repeat(c, 1, 1)
        for ch in range(c):
            noise[ch, :, :] *= float(self.signs[index, ch])
        return torch.clamp(x + noise, min=0.0, max=1.0)


class AnchorFolder(torch.utils.data.Dataset):
    """A folder data set decoding one file per item, then to tensor, the noise and Normalize."""

    def __init__(self, items, noise: AnchorNoise):
        self.items, self.noise = items, noise
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        x = self.noise(to_tensor(path), i)
        return (x - self.mean) / self.std, label


def anchor_spectra(H: int):
    """One-hot rfft spectra in the reference's low-centred order (rows rolled by half)."""
    Wr = H // 2 + 1
    B = H * Wr
    idx = torch.arange(B)
    idx = torch.cat([idx[B // 2:], idx[:B // 2]])
    for k in idx.tolist():
        yield torch.nn.functional.one_hot(torch.tensor(k), B).view(H, Wr).float()


def anchor_heatmap(model, items, H: int, eps: float, signs_of, args, dev) -> torch.Tensor:
    """The reference algorithm (module doc); returns the (H - 1) x (H - 1) centred error map in [0, 1]."""
    Wr = H // 2 + 1
    errors = torch.zeros(H * Wr)
    for i, spectrum in enumerate(anchor_spectra(H)):
        basis = torch.fft.irfftn(spectrum, s=(H, H), dim=(-2, -1))
        basis = basis / basis.norm(dim=(-2, -1)) * eps
        row, col = divmod(int(spectrum.flatten().argmax()), Wr)
        loader = torch.utils.data.DataLoader(AnchorFolder(items, AnchorNoise(basis, signs_of(row, col))),
                                             args.anchor_batch_size, shuffle=False, num_workers=args.anchor_workers)
        errs = []
        for x, t in loader:
            x, t = x.to(dev), t.to(dev)
            output = model(x)                               # outside no_grad, as the reference
            wrong = (output.argmax(dim=1) != t).float().sum()
            errs.append(float(wrong) * 100.0 / t.size(0))
        errors[i] = sum(errs) / len(errs)
    matrix = errors.view(H, Wr) / 100.0
    right = matrix[1:, :-1]
    left = torch.flip(right, (0, 1))
    return torch.cat([left[:, :-1], right], dim=1)


# ---------------------------------------------------------------------------- ours


def our_batches(items, batch_size: int, dev):
    """Each image decoded once, batch by batch: (indices, x on the device, labels)."""
    for a in range(0, len(items), batch_size):
        chunk = items[a:a + batch_size]
        x = torch.stack([to_tensor(p) for p, _ in chunk]).to(dev)
        yield range(a, a + len(chunk)), x, torch.tensor([lab for _, lab in chunk], device=dev)


def our_heatmap(model, items, H: int, spec: HeatmapSpec, args, runner: Runner) -> HeatmapProgress:
    ids = basis_ids(H, H)
    progress = HeatmapProgress(len(ids))
    return run_heatmap(model, our_batches(items, args.batch_size, runner.device), ids, spec,
                       normalization=(MEAN, STD), progress=progress, runner=runner, forward_batch=args.forward_batch)


# ---------------------------------------------------------------------------- timing and memory


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timing(args, dev) -> None:
    H = args.img_size
    with tempfile.TemporaryDirectory() as tmp:
        items = write_images(Path(tmp), args.num_images, H)
        classes = len({lab for _, lab in items})
        model = build_model(args, 8, dev)
        spec = HeatmapSpec(eps=args.eps, sign=args.sign, seed=args.seed)
        runner = Runner(RunConfig(device=dev, batch_size=args.batch_size))
        grid = half_plane_index(H, H)
        signs = basis_signs(range(len(items)), basis_ids(H, H), H, H, 3, seed=args.seed, sign=args.sign)

        def signs_of(row, col):
            return signs[int(grid[row, col])]

        print(f"model {args.model} {args.model_kwargs} on {dev} ({torch.get_num_threads()} threads), "
              f"{len(items)} PNG images of {H} px ({classes} classes), eps {args.eps}, sign {args.sign}; "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"anchor: {H * (H // 2 + 1)} passes, batch {args.anchor_batch_size}, {args.anchor_workers} workers; "
              f"ours: {len(half_plane(H, H))} bases, decode batch {args.batch_size}, forward batch {args.forward_batch}")
        times = {"anchor": [], "ours": []}
        maps = {}
        for rep in range(args.repeats):                   # interleaved: drifting load hits both alike
            t = time.perf_counter()
            maps["anchor"] = anchor_heatmap(model, items, H, args.eps, signs_of, args, dev)
            _sync(dev)
            times["anchor"].append(time.perf_counter() - t)
            t = time.perf_counter()
            progress = our_heatmap(model, items, H, spec, args, runner)
            _sync(dev)
            times["ours"].append(time.perf_counter() - t)
            maps["ours"] = heatmap_maps(progress, H, H, max_freq=(H - 1) // 2)["error"].float()
            print(f"  run {rep + 1}: anchor {times['anchor'][-1]:.1f} s, ours {times['ours'][-1]:.1f} s "
                  f"(load average {os.getloadavg()[0]:.2f})")
        diff = (maps["anchor"] - maps["ours"]).abs()
        n_img_basis = len(items) * len(half_plane(H, H))
        print(f"maps on the common {tuple(diff.shape)} frequencies: max |difference| {float(diff.max()):.2e}, "
              f"{int((diff > 1e-6).sum())} cells differ; error range {float(maps['ours'].min()):.3f}-"
              f"{float(maps['ours'].max()):.3f}")
        best = min(times["anchor"]) / min(times["ours"])
        print(f"time anchor best {min(times['anchor']):.1f} s, ours best {min(times['ours']):.1f} s "
              f"({n_img_basis / min(times['ours']):.0f} img*basis/s)")
        print(f"speed ratio anchor / ours = {best:.2f} (best of {args.repeats})  target >= {TARGET:.0f}: "
              f"{'ok' if best >= TARGET else 'MISSED'}")


def memory_child(args) -> None:
    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        items = write_images(Path(tmp), args.child_n, args.img_size)
        model = build_model(args, 8, dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        runner = Runner(RunConfig(device=dev, batch_size=args.batch_size))
        ids = basis_ids(args.img_size, args.img_size)[: args.memory_bases]
        progress = HeatmapProgress(len(half_plane(args.img_size, args.img_size)))
        run_heatmap(model, our_batches(items, args.batch_size, dev), ids, HeatmapSpec(eps=args.eps, seed=args.seed),
                    normalization=(MEAN, STD), progress=progress, runner=runner, forward_batch=args.forward_batch)
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n": args.child_n, "peak_bytes": peak}))


def memory(args) -> None:
    small, large = (int(v) for v in args.memory_n.split(","))
    res = {}
    for n in (small, large):
        cmd = [sys.executable, os.path.abspath(__file__), "--child-n", str(n), "--model", args.model,
               "--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--forward-batch",
               str(args.forward_batch), "--device", args.device, "--memory-bases", str(args.memory_bases),
               "--threads", str(torch.get_num_threads())]
        for kw in args.model_kwargs:
            cmd += ["--model-kwargs", kw]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        res[n] = json.loads(out)["peak_bytes"]
    mib = 2 ** 20
    print(f"peak memory of our loop ({args.memory_bases} bases): N={small}: {res[small] / mib:.0f} MiB, "
          f"N={large}: {res[large] / mib:.0f} MiB; ratio {res[large] / res[small]:.3f} (flat = 1.00)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dfformer_s18")
    ap.add_argument("--model-kwargs", action="append", default=None,
                    help="constructor overrides k=v (repeatable); default depths=1,1,1,1 dims=8,16,24,32")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--num-images", type=int, default=128)
    ap.add_argument("--eps", type=float, default=4.0)
    ap.add_argument("--sign", default="random", choices=["+1", "-1", "random"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128, help="our decode batch")
    ap.add_argument("--forward-batch", type=int, default=512, help="our perturbed images per forward")
    ap.add_argument("--anchor-batch-size", type=int, default=512, help="the reference's default batch size")
    ap.add_argument("--anchor-workers", type=int, default=0,
                    help="DataLoader workers of the anchor (the reference uses 8; 0 is its fastest on 2 cores)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--memory-n", default="64,512", help="N_small,N_large images for the memory ratio")
    ap.add_argument("--memory-bases", type=int, default=16, help="bases evaluated in each memory run")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--child-n", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.model_kwargs is None:
        args.model_kwargs = ["depths=1,1,1,1", "dims=8,16,24,32"] if args.model == "dfformer_s18" else []
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    if args.child_n is not None:
        return memory_child(args)
    timing(args, resolve_device(args.device))
    if not args.skip_memory:
        memory(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
