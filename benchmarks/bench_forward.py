"""Forward time of our CAFormer-S18 vs timm's ``caformer_s18`` (same input, inference mode).

Prints the median time per batch of each and the ratio ours / timm (<= 1.0: ours is at
least as fast; the table row takes the median of the per-round paired ratios). Both use
random weights (the timing does not depend on them); the explicit softmax(q k^T) v attention
of earlier versions can be timed too (``--explicit``) to show what the fused kernel gains.

    python benchmarks/bench_forward.py [--img-size 224] [--batch-size 8] [--iters 10] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import benchkit
import spectrascope.compat  # noqa: F401  (timm compatibility shims, before timm is imported)
import spectrascope


def _once(model, x) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def _time(models: dict, x, warmup: int, iters: int) -> dict[str, list[float]]:
    """Interleaved timings (one forward of each model per round), so load changes hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for m in models.values():
                m(x)
        for _ in range(iters):
            for k, m in models.items():
                times[k].append(_once(m, x))
    return times


def _explicit(model) -> None:
    """Swap the fused attention for the explicit matmul-softmax-matmul form (reference timing)."""
    import types

    def forward(self, x):
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, H, W, self.attention_dim))
    from spectrascope.models.metaformer import Attention
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(forward, m)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--explicit", action="store_true", help="also time the explicit attention")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    benchkit.add_rows_option(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = benchkit.machine(args.device)
    try:
        timm = spectrascope.compat.import_timm()
    except ImportError as exc:
        print(f"{str(exc).splitlines()[0]} (pip install -c constraints.txt torch==2.13.0 timm)")
        return 1
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)
    ours = spectrascope.create_model("caformer_s18", img_size=args.img_size).eval().to(dev)
    ref = timm.create_model("caformer_s18", pretrained=False).eval().to(dev)
    models = {"timm": ref, "ours": ours}
    if args.explicit:
        import copy
        models["explicit"] = copy.deepcopy(ours)
        _explicit(models["explicit"])
    times = _time(models, x, args.warmup, args.iters)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"caformer_s18 forward, batch {args.batch_size} at {args.img_size} px on {dev} "
          f"(torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"{args.iters} interleaved rounds, median)")
    print(f"  timm caformer_s18          {1e3 * med['timm']:9.1f} ms/batch")
    label = {"ours": "spectrascope caformer_s18", "explicit": "ours, explicit attention"}
    for k in [k for k in models if k != "timm"]:
        paired = statistics.median(a / b for a, b in zip(times[k], times["timm"]))
        print(f"  {label[k]:<26s} {1e3 * med[k]:9.1f} ms/batch   ours/timm {med[k] / med['timm']:.3f} "
              f"(paired median {paired:.3f})")
    row = benchkit.Row("forward", f"caformer_s18 forward, batch {args.batch_size} at {args.img_size}px, "
                                  f"{args.iters} interleaved rounds", torch.get_num_threads(), str(dev), times["ours"],
                       times["timm"], 1.0, "lower", reference_label=f"timm {timm.__version__} caformer_s18")
    benchkit.print_table([row])
    benchkit.write_rows([row], args.rows, dict(start, load_average_end=benchkit.load_average()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
