"""Training throughput (img/s) and peak memory of ``spectrascope.train.loop`` steps.

    python benchmarks/bench_train.py                                   # GPU: dfformer_s18, 224 px
    python benchmarks/bench_train.py --device cpu                      # CPU: a reduced model at 64 px
    python benchmarks/bench_train.py --compile --loop                  # + torch.compile, + the full loop
    python benchmarks/bench_train.py --device cpu --eval               # + evaluation through the runner

Two measurements:

* ``step``: forward + backward + AdamW step on a fixed batch already on the device (data
  loading excluded), for each precision/layout configuration: fp32, bf16 autocast, and
  bf16 + channels-last (+ compiled when ``--compile``). Prints img/s, peak memory (CUDA:
  ``max_memory_allocated``; CPU: the process's peak RSS, which only grows) and the speed-up
  over fp32.
* ``loop`` (with ``--loop``): the real ``spectrascope.train.loop.train`` for ``--steps`` updates on
  ``synthetic`` at the same size (data generation, augmentation, loader, EMA and per-step
  loss checks included), with the fastest step configuration; prints the loop's img/s as
  reported in its results.json and its ratio to the bare step.
* ``eval`` (with ``--eval``): ``spectrascope.train.evaluate.evaluate_model`` (the engine's runner:
  batching, inference mode, the non-finite check, the exact per-batch accuracy sums) on a
  synthetic validation split against a bare ``inference_mode`` loop over the same batches;
  prints both img/s and the ratio (runner / bare; 1.00 means no overhead).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time

import torch
import torch.nn.functional as F

import benchkit
import spectrascope
from spectrascope.engine.device import resolve_device
from spectrascope.train.loop import TrainConfig, param_groups, train


def peak_mb(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_step(args, dev, amp: bool, channels_last: bool, compile_: bool) -> dict:
    torch.manual_seed(0)
    model = spectrascope.create_model(args.model, num_classes=1000, img_size=args.img_size, **args.kw).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    step_model = torch.compile(model) if compile_ else model
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(step_model(x).float(), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(dev)
    dt = time.perf_counter() - t0
    out = {"img_s": args.batch_size * args.steps / dt, "peak_mb": peak_mb(dev)}
    del model, opt, step_model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_loop(args, dev, amp: bool, channels_last: bool, compile_: bool) -> dict:
    out = tempfile.mkdtemp(prefix="bench_train_")
    try:
        n = args.batch_size * (args.steps + args.warmup)
        cfg = TrainConfig(model=args.model, data=f"synthetic:num_classes=8,train_size={n},val_size={args.batch_size}",
                          img_size=args.img_size, epochs=1, batch_size=args.batch_size, amp="bf16" if amp else "off",
                          channels_last=channels_last, compile=compile_, device=str(dev), output=out + "/run",
                          progress=False, model_kwargs=dict(args.kw), workers=args.workers, model_ema=True)
        res = train(cfg)
        row = res["final"]
        return {"img_s": row["throughput_img_s"], "peak_mb": row["peak_mem_mb"]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_eval(args, dev) -> dict:
    from spectrascope.engine.runner import RunConfig, Runner
    from spectrascope.io.bundles import load_data
    from spectrascope.io.transforms import EvalTransform, TransformedDataset
    from spectrascope.train.evaluate import evaluate_model
    torch.manual_seed(0)
    model = spectrascope.create_model(args.model, num_classes=8, img_size=args.img_size, **args.kw).to(dev).eval()
    n = args.batch_size * (args.steps + args.warmup)
    bundle = load_data(f"synthetic:num_classes=8,train_size=8,val_size={n},size={args.img_size}")
    ds = TransformedDataset(bundle.val, EvalTransform((args.img_size, args.img_size), center_crop=False))
    cached = [(torch.stack([ds[i][0] for i in range(j, min(n, j + args.batch_size))]),
               torch.tensor([ds[i][1] for i in range(j, min(n, j + args.batch_size))]))
              for j in range(0, n, args.batch_size)]

    class Cached(torch.utils.data.Dataset):       # decoded once: both sides time the forward and the metric
        def __len__(self):
            return n

        def __getitem__(self, i):
            x, y = cached[i // args.batch_size]
            return x[i % args.batch_size], int(y[i % args.batch_size])

    def bare():
        hits = 0
        with torch.inference_mode():
            for x, y in cached:
                hits += int((model(x.to(dev)).argmax(-1).cpu() == y).sum())
        return hits

    runner = Runner(RunConfig(device=dev, batch_size=args.batch_size))
    bare()
    evaluate_model(model, Cached(), runner)                 # both warmed up, then interleaved repeats
    wall, cpu = benchkit.interleave({"bare": bare, "runner": lambda: evaluate_model(model, Cached(), runner)},
                                    args.repeats, str(dev))
    return {"bare_img_s": n / min(wall["bare"]), "runner_img_s": n / min(wall["runner"]),
            "ratio": min(wall["runner"]) / min(wall["bare"]), "wall": wall, "cpu": cpu, "images": n}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dfformer_s18")
    p.add_argument("--img-size", type=int, default=None, help="default: 224 on GPU, 64 on CPU")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on GPU, 16 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 on GPU, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--loop", action="store_true", help="also time the full training loop")
    p.add_argument("--eval", action="store_true", help="also time evaluation through the runner")
    p.add_argument("--eval-only", action="store_true", help="time only the evaluation through the runner")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the evaluation timing")
    benchkit.add_rows_option(p)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--model-kwargs", default=None, help='JSON, e.g. \'{"dims": [32, 64, 96, 128]}\'')
    args = p.parse_args()
    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    args.img_size = args.img_size or (224 if gpu else 64)
    args.batch_size = args.batch_size or (128 if gpu else 16)
    args.steps = args.steps or (30 if gpu else 5)
    args.kw = json.loads(args.model_kwargs) if args.model_kwargs else (
        {} if gpu else {"depths": [1, 1, 3, 1], "dims": [32, 64, 96, 128]})
    name = torch.cuda.get_device_name(dev) if gpu else "cpu"
    print(f"{args.model} {args.kw or ''} at {args.img_size}px, batch {args.batch_size}, {args.steps} steps on {name}")
    configs = [("fp32", False, False, False), ("bf16", True, False, False), ("bf16+channels_last", True, True, False)]
    if args.compile:
        configs.append(("bf16+channels_last+compile", True, True, True))
    results = {}
    start = benchkit.machine(str(dev))
    if args.eval_only:
        configs, args.loop, args.eval = [], False, True
    for label, amp, cl, comp in configs:
        r = bench_step(args, dev, amp, cl, comp)
        results[label] = r
        ratio = r["img_s"] / results["fp32"]["img_s"]
        print(f"step  {label:28s} {r['img_s']:9.1f} img/s  peak {r['peak_mb']:8.0f} MB  x{ratio:.2f} vs fp32")
    if args.loop:
        label, amp, cl, comp = max(configs, key=lambda c: results[c[0]]["img_s"])
        r = bench_loop(args, dev, amp, cl, comp)
        print(f"loop  {label:28s} {r['img_s']:9.1f} img/s  peak {r['peak_mb']:8.0f} MB  "
              f"x{r['img_s'] / results[label]['img_s']:.2f} of the bare step")
    if args.eval:
        r = bench_eval(args, dev)
        print(f"eval  runner {r['runner_img_s']:9.1f} img/s  bare loop {r['bare_img_s']:9.1f} img/s  "
              f"runner/bare time x{r['ratio']:.2f} (best of {args.repeats})")
        what = "reduced " if not gpu and not args.model_kwargs else ""
        row = benchkit.Row("train", f"evaluate through the runner vs a bare loop, {what}{args.model} "
                                    f"{args.img_size}px, {r['images']} images in batches of {args.batch_size}",
                           torch.get_num_threads(), str(dev), r["wall"]["runner"], r["wall"]["bare"], None, "lower",
                           reference_label="bare inference loop", ours_cpu=r["cpu"]["runner"],
                           reference_cpu=r["cpu"]["bare"])
        benchkit.print_table([row])
        benchkit.write_rows([row], args.rows, dict(start, load_average_end=benchkit.load_average()))


if __name__ == "__main__":
    main()
