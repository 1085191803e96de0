"""Does the Fourier heat map see what a model depends on? A study on the synthetic textures, whose
classes are frequency bands x orientations (``spectrascope.io.datasets.SyntheticConfig``).

    spectrascope train --model dfformer_s18 --model-kwargs depths=1,1,1,1 --model-kwargs dims=16,32,64,96 \\
        --data synthetic:patch=0.75,size=32 --epochs 4 -b 32 --warmup-epochs 1 --output runs/study/synthetic32
    python benchmarks/freq_signal_study.py --checkpoint runs/study/synthetic32/last.pth --data patch=0.75,size=32

For the trained model and for the same architecture with random weights, on the validation images:

* the full Fourier heat map (``engine.heatmap``; eps, random seeded signs), summarised by where its
  error mass above the clean error lies by radius (``ops.spectra.radial_mass`` /
  ``band_concentration``: the share of the excess error inside the radial span of the class bands
  over the share of the bases there; 1 = no preference);
* the error under band-limited noise of fixed L2 norm in circular rings (``engine.variants``).

Prints a table per model and writes everything to ``--output`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from spectrascope.engine.heatmap import HeatmapProgress, HeatmapSpec, run_heatmap
from spectrascope.engine.variants import NoiseSpec, band_noise_counts
from spectrascope.io.datasets import SyntheticConfig, SyntheticTextures, to_float
from spectrascope.ops.bands import ring_partition
from spectrascope.ops.fourier_basis import basis_ids, half_plane
from spectrascope.ops.spectra import band_concentration, basis_radii, concentration, in_bands, radial_mass
from spectrascope.zoo.build import build_for_inference, model_spec_from_checkpoint


def images(cfg: SyntheticConfig, n: int):
    val = SyntheticTextures(cfg, "val")
    xs, ys = zip(*[(to_float(val.load(i)[0]), val.label(i)) for i in range(n)])
    return torch.stack(xs), torch.tensor(ys)


def heatmap(model, x, y, norm, args):
    H, W = x.shape[-2:]
    ids = basis_ids(H, W)
    progress = HeatmapProgress(len(ids))
    batches = [(range(a, min(a + args.batch_size, len(x))), x[a:a + args.batch_size], y[a:a + args.batch_size])
               for a in range(0, len(x), args.batch_size)]
    run_heatmap(model, batches, ids, HeatmapSpec(eps=args.eps, sign="random", seed=args.seed), normalization=norm,
                progress=progress, forward_batch=args.forward_batch)
    return progress.errors.double() / progress.n.double()


def summarise(name, err, clean, noise_err, cfg, H, W, rings):
    freqs = half_plane(H, W)
    bands = cfg.band_edges()
    inside = in_bands(basis_radii(freqs, H, W), bands)
    top = torch.argsort(err, descending=True)[:20]
    edges = [0.0] + [e for b in bands for e in b] + [math.inf]
    mass = radial_mass(err, freqs, H, W, edges, baseline=clean)
    centres = torch.tensor([(a + b) / 2 for a, b in rings])
    ring_in = in_bands(centres, bands)
    out = {"model": name, "clean_error": clean, "map_min": float(err.min()), "map_max": float(err.max()),
           "class_bands_cycles": [list(b) for b in bands],
           "share_of_bases_in_class_bands": float(inside.double().mean()),
           "mean_error_in_class_bands": float(err[inside].mean()), "mean_error_elsewhere": float(err[~inside].mean()),
           "band_concentration": band_concentration(err, freqs, H, W, bands, baseline=clean),
           "top20_in_class_bands": int(inside[top].sum()),
           "radial_mass": {"edges": edges, "mass": mass["mass"].tolist(), "area": mass["area"].tolist(),
                           "mean": mass["mean"].tolist()},
           "noise_rings_cycles": rings, "noise_error": noise_err.tolist(),
           "noise_mean_error_in_class_bands": float(noise_err[ring_in].mean()),
           "noise_mean_error_elsewhere": float(noise_err[~ring_in].mean()),
           "noise_concentration": concentration(noise_err, centres, bands, baseline=clean),
           "noise_worst_ring": rings[int(torch.argmax(noise_err))]}
    print(f"\n{name}: clean error {clean:.3f}; heat map {out['map_min']:.3f}-{out['map_max']:.3f}")
    print(f"  heat map: mean error in the class bands {out['mean_error_in_class_bands']:.3f} vs elsewhere "
          f"{out['mean_error_elsewhere']:.3f}; concentration {out['band_concentration']:.2f} "
          f"({out['share_of_bases_in_class_bands']:.2f} of the bases in the bands); top-20 errors in the bands: "
          f"{out['top20_in_class_bands']}/20")
    print("  excess error mass/area by radius (below band 0, band 0, gap, band 1, gap, ..., band 3, above):",
          " ".join(f"{m:.2f}/{a:.2f}" for m, a in zip(out["radial_mass"]["mass"], out["radial_mass"]["area"])))
    print(f"  band-limited noise: mean error in rings inside the bands {out['noise_mean_error_in_class_bands']:.3f}"
          f" vs elsewhere {out['noise_mean_error_elsewhere']:.3f}; concentration {out['noise_concentration']:.2f};"
          f" worst ring [{out['noise_worst_ring'][0]:.3f}, {out['noise_worst_ring'][1]:.3f})")
    print("  noise error by ring:", " ".join(f"[{a:.3f},{b:.3f}):{e:.2f}" for (a, b), e in zip(rings, out["noise_error"])))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="patch=0.75,size=32", help="the synthetic options of the training run")
    ap.add_argument("--num-images", type=int, default=256)
    ap.add_argument("--eps", type=float, default=4.0)
    ap.add_argument("--noise-l2", type=float, default=4.0, help="L2 norm per channel of the band-limited noise")
    ap.add_argument("--rings", type=int, default=16, help="noise rings of equal width from DC to 0.5 c/px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--forward-batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", default="runs/study/freq_signal.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = dict(kv.split("=") for kv in args.data.split(",") if kv)
    cfg = SyntheticConfig(**{k: (int(v) if k in ("size", "num_classes", "val_size") else float(v))
                             for k, v in opts.items()}, val_size=args.num_images)
    x, y = images(cfg, args.num_images)
    H, W = x.shape[-2:]
    spec = model_spec_from_checkpoint(args.checkpoint)
    trained, pre = build_for_inference(spec.name, checkpoint=args.checkpoint)
    torch.manual_seed(args.seed)
    random, _ = build_for_inference(spec.name, img_size=spec.img_size, num_classes=spec.num_classes,
                                    **spec.overrides)
    norm = (pre["mean"], pre["std"])
    edges = [0.5 * k / args.rings for k in range(args.rings + 1)]
    rings = [[edges[k], edges[k + 1]] for k in range(args.rings)]
    masks = ring_partition(H, W, edges, "circle")                    # the corners beyond 0.5 c/px are left out
    results = []
    for name, model in (("trained", trained), ("random weights", random)):
        t = time.perf_counter()
        with torch.inference_mode():
            clean = float((model((x - torch.tensor(norm[0]).view(3, 1, 1)) / torch.tensor(norm[1]).view(3, 1, 1))
                           .argmax(1) != y).double().mean())
        err = heatmap(model, x, y, norm, args)
        noise = band_noise_counts(model, x, y, masks, NoiseSpec(eps=1.0, base="gaussian", l2=args.noise_l2,
                                                                seed=args.seed), normalization=norm,
                                  forward_batch=args.forward_batch)
        out = summarise(name, err, clean, noise.error_rate, cfg, H, W, rings)
        out["seconds"] = time.perf_counter() - t
        out["heatmap_error"] = err.tolist()
        results.append(out)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"args": vars(args), "classes": cfg.describe()["classes"],
                                             "results": results}, indent=1))
    print(f"\nwritten {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
