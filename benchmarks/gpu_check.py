"""The GPU check (``make gpu-check``): what a CPU cannot show, in at most 6 minutes of one GPU.

    python benchmarks/gpu_check.py                       # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --list                # the checks, in order
    python benchmarks/gpu_check.py --only family --only collectives
    python benchmarks/gpu_check.py --cpu-dry-run         # every check's logic on the CPU, tiny sizes

Every check is one small function registered with ``@check(name, budget_s)`` in ``CHECKS``;
it returns a one-line detail (its numbers) or raises ``CheckFailed``. The run prints one
table (check, ok/FAIL, seconds, detail), writes it with the full output of every failure to
``runs/gpu-check/`` and exits non-zero when any check failed, ran out of its time budget or
of the run's 6 minutes. Without a CUDA device it says so in one line and exits non-zero:
nothing passes without a GPU. ``--cpu-dry-run`` runs the same checks on the CPU (gloo for
nccl, the aot_eager backend for inductor, 64 px) to exercise their logic where no GPU is.

The checks and their bounds (CUDA against the CPU, float32, TF32 off unless said):

- parity, TF32 off / on: the official-code fixture tests on the GPU (``SPECTRASCOPE_TEST_DEVICE``;
  their tolerance: 1e-5 of the output scale, 1e-2 with TF32, see tests/parity.py); any skipped,
  failed or missing test fails the check.
- family:<model>: one model per family at its card's input size, fp32 / bf16 / fp16 autocast,
  each with and without channels-last: forward within 1e-4 (fp32 channels-last) or 0.1 (AMP)
  of the fp32 output relative to its scale; one training step with a GradScaler (fp16) with
  finite loss and gradients and moved weights; every ``torch.fft`` input float32/complex64
  (``torch.fft`` is wrapped to see them) and FFT families calling it; channels-last on the
  convolution weights only (filters and their gradients contiguous).
- collectives: a one-process nccl group initialised here (as a library caller would) and
  joined by ``engine.dist.init`` (CUDA device set): every collective of ``engine.dist``
  (all_reduce sum/max/min of CPU and CUDA tensors, all_gather_object, gather_object,
  broadcast_object, any, barrier) and the reducers' all_reduce; the later checks run in it.
- ddp-train: ``train`` under DDP with --compile, bf16, --channels-last, --grad-accum 2 and EMA
  for two updates, then resumed for two more: no gradient-layout warning, finite checkpoints
  that load with ``weights_only=True``.
- cam:<method>: Score-CAM and Grad-CAM maps (maps.npz, in [0, 1]) with --amp off / bf16 / fp16
  against the CPU: max difference 5e-3 (off); mean 0.05 and max 0.25 (AMP).
- amplitude, cka, evaluate: against the CPU: log-amplitude curves within 2e-3, CKA within 2e-3,
  loss within 1e-4 relative and top-1/top-5 within one image.
- throughput: two models in one ``throughput`` run: rows ok, cudnn.benchmark on, the peak
  memory reset per model (the smaller model's peak below the larger's).
- compile:<model>: per FFT family, a bf16 channels-last training step eager vs torch.compile:
  the compiled first loss within 2e-2 of the eager one; step times reported.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import faulthandler
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
TOTAL_BUDGET_S = 360
NEEDS_GPU = "gpu-check: needs a CUDA GPU and torch.cuda.is_available() is False here; nothing was checked"


# ---------------------------------------------------------------------------- registry

class CheckFailed(Exception):
    """A check's own verdict: the message says what was wrong."""


class _OverBudget(Exception):
    pass


@dataclass
class Check:
    name: str
    fn: Callable
    budget_s: float


CHECKS: list[Check] = []


def check(name: str, budget_s: float):
    """Register ``fn(ctx) -> str`` (its detail line) as a check named ``name``."""
    def deco(fn):
        CHECKS.append(Check(name, fn, budget_s))
        return fn
    return deco


def expect(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


@dataclass
class Ctx:
    """What the checks share: the device, sizes, the output folder, lazily made inputs, and the
    factor on every time budget (1 on the GPU; a loaded CPU in the dry run is far slower)."""

    device: "torch.device"
    dry: bool
    out: Path
    cache: dict = field(default_factory=dict)
    slack: float = 1.0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def size(self, card_size: int) -> int:
        return 64 if self.dry else card_size

    def folder(self, name: str) -> Path:
        path = self.out / name.replace(":", "-").replace(" ", "-")
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


# ---------------------------------------------------------------------------- models

#: one model per family, with small widths and depths (the card's input size on the GPU)
FAMILIES = {
    "dfformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
    "cdfformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
    "gfformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
    "caformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 32, 64]),
    "convformer_s18": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
    "identityformer_s12": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
    "randformer_s12": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
    "poolformerv2_s12": dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32]),
    "poolformer_s12": dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32]),
    "spanet_s": dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 20, 32]),
    "gfnet_ti": dict(depth=2, embed_dim=32),
    "gfnet_h_ti": dict(depth=[1, 1, 2, 1], embed_dim=[8, 16, 24, 32]),
    "affnet_et": {},
    "affnet_fno": "tiny",
}
#: a small AFFNet (cvnets' layer dictionary) for the FNO ablation and the CPU dry run
AFF_TINY = {
    "layer1": {"out_channels": 16, "expand_ratio": 2, "num_blocks": 1, "stride": 1, "block_type": "mv2"},
    "layer2": {"out_channels": 16, "expand_ratio": 2, "num_blocks": 1, "stride": 2, "block_type": "mv2"},
    **{f"layer{k}": {"out_channels": c, "transformer_channels": c, "ffn_dim": 2 * c, "transformer_blocks": 1,
                     "patch_h": 2, "patch_w": 2, "stride": 2, "mv_expand_ratio": 2, "head_dim": None,
                     "num_heads": None, "block_type": "aff_block"} for k, c in [(3, 16), (4, 24), (5, 32)]},
    "last_layer_exp_factor": 4,
}
TINY_CLI = ["--model-kwargs", "depths=1,1,1,1", "--model-kwargs", "dims=16,32,48,64"]
#: the families whose token mixers run through torch.fft
FFT_FAMILIES = {"dfformer", "cdfformer", "gfformer", "gfnet", "gfnet_h", "spanet", "affnet"}
FFT_FUNCS = ("fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2", "rfftn", "irfftn",
             "hfft", "ihfft")


def family_model(ctx: Ctx, name: str, num_classes: int = 10, tiny_affnet: bool = False):
    """``(model on the CPU, input size)`` of a family's small model (seeded); AFFNets in their
    tiny configuration in the dry run and with ``tiny_affnet``."""
    import torch

    import spectrascope
    kw = FAMILIES[name]
    if kw == "tiny" or ((ctx.dry or tiny_affnet) and name.startswith("affnet")):
        kw = {"config": AFF_TINY}
    size = ctx.size(int(spectrascope.get_card(name).default_input_size[-1]))
    torch.manual_seed(0)
    return spectrascope.create_model(name, num_classes=num_classes, img_size=size, **kw), size


@contextlib.contextmanager
def fft_inputs():
    """Record ``(function, input dtype)`` of every ``torch.fft`` call in the block."""
    import torch
    seen, saved = [], {f: getattr(torch.fft, f) for f in FFT_FUNCS}

    def wrap(name, fn):
        def recorded(x, *a, **kw):
            seen.append((name, x.dtype))
            return fn(x, *a, **kw)
        return recorded
    for f, fn in saved.items():
        setattr(torch.fft, f, wrap(f, fn))
    try:
        yield seen
    finally:
        for f, fn in saved.items():
            setattr(torch.fft, f, fn)


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


def checkpoint_of(ctx: Ctx, name: str, num_classes: int = 8) -> Path:
    """A seeded small model's state_dict saved once (the CPU and GPU runs load the same weights)."""
    import torch

    import spectrascope
    key = ("ckpt", name)
    if key not in ctx.cache:
        torch.manual_seed(0)
        model = spectrascope.create_model(name, num_classes=num_classes, depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])
        path = ctx.out / "models" / f"{name}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        ctx.cache[key] = path
    return ctx.cache[key]


def cli(args: list[str]) -> str:
    """``spectrascope ARGS`` in this process (the same interface as the command line); its output."""
    import click

    from spectrascope.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            main.main(args=[str(a) for a in args], prog_name="spectrascope", standalone_mode=False)
        except (SystemExit, click.exceptions.Exit) as exc:
            code = getattr(exc, "code", getattr(exc, "exit_code", 1))
            if code not in (0, None):
                raise CheckFailed(f"spectrascope {args[0]} exited {code}: {buf.getvalue()[-300:]}") from None
        except Exception as exc:
            raise CheckFailed(f"spectrascope {args[0]}: {str(exc).splitlines()[0] if str(exc) else exc!r} "
                              f"{buf.getvalue()[-300:]}") from None
    return buf.getvalue()


# ---------------------------------------------------------------------------- parity

def _parity(ctx: Ctx, tf32: str) -> str:
    import xml.etree.ElementTree as ET
    report = ctx.folder(f"parity-{tf32}") / "junit.xml"
    env = dict(os.environ, MPLBACKEND="Agg", SPECTRASCOPE_TEST_DEVICE=str(ctx.device), SPECTRASCOPE_TEST_TF32=tf32)
    files = ["tests/test_zoo_metaformer.py", "tests/test_zoo_gfnet.py", "tests/test_zoo_spanet_poolformer.py",
             "tests/test_zoo_affnet.py"]
    p = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "-k", "fixture or parity",
                        f"--junitxml={report}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    (report.parent / "pytest.txt").write_text(p.stdout + p.stderr)
    expect(report.exists(), f"pytest wrote no report: {(p.stdout + p.stderr)[-300:]}")
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n, skipped, failed = (int(suite.get(k, 0)) for k in ("tests", "skipped", "failures"))
    failed += int(suite.get("errors", 0))
    detail = f"{n - skipped - failed}/{n} passed, {skipped} skipped, {failed} failed (pytest exit {p.returncode})"
    expect(n >= 16 and skipped == 0 and failed == 0 and p.returncode == 0, detail)
    return detail


@check("parity, TF32 off", 100)
def parity_tf32_off(ctx: Ctx) -> str:
    return _parity(ctx, "off")


@check("parity, TF32 on", 100)
def parity_tf32_on(ctx: Ctx) -> str:
    return _parity(ctx, "on")


# ---------------------------------------------------------------------------- per family

def _layouts_ok(model) -> None:
    import torch
    import torch.nn as nn
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            conv = isinstance(mod, nn.Conv2d) and pname == "weight" and p.ndim == 4
            if conv:
                expect(p.is_contiguous(memory_format=torch.channels_last), f"{mod_name}.{pname} is not channels-last")
            elif "complex_weight" in pname or pname in ("weights1", "weights2"):
                expect(p.is_contiguous() and (p.grad is None or p.grad.is_contiguous()),
                       f"{mod_name}.{pname} (an FFT filter) or its gradient is not contiguous")


def _train_step(ctx: Ctx, model, x, y, dtype) -> int:
    """One SGD step under autocast ``dtype``; with fp16 through a GradScaler, which skips the steps
    whose scaled gradients overflow and lowers its scale (at most 24 tries). Returns the skipped
    steps; the loss and the gradients of the step taken are finite and the weights moved."""
    import torch
    import torch.nn.functional as F
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16)
    before = [p.detach().clone() for p in model.parameters()]
    for skipped in range(24):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        expect(bool(torch.isfinite(loss)), f"non-finite loss {float(loss.detach())}")
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        expect(not bad or scaler.is_enabled(), f"non-finite gradients in {bad[:2]}")
        scaler.step(opt)
        scaler.update()
        if not bad:
            break
    else:
        raise CheckFailed(f"the GradScaler skipped every step (scale {scaler.get_scale():.3g})")
    moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    expect(moved and all(torch.isfinite(p).all() for p in model.parameters()), "the step did not update the weights")
    return skipped


def _family(ctx: Ctx, name: str) -> str:
    import torch

    import spectrascope
    from spectrascope.engine.device import tf32, to_memory_format
    base, size = family_model(ctx, name)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2 if ctx.dry else 4, 3, size, size, generator=gen).to(ctx.device)
    y = torch.randint(0, 10, (x.shape[0],), generator=gen).to(ctx.device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    errs, ffts, skips = {}, set(), {}
    with tf32("off"):
        ref_model = copy.deepcopy(base).to(ctx.device).eval()
        with torch.no_grad():
            ref = ref_model(x).float()
        for cl in (False, True):
            for tag, dt in dtypes.items():
                key = f"{tag}{'+cl' if cl else ''}"
                model = to_memory_format(copy.deepcopy(base).to(ctx.device).eval(), cl)
                xin = to_memory_format(x, cl)
                with fft_inputs() as seen:
                    with torch.no_grad(), torch.autocast(ctx.device.type, dtype=dt or torch.float32,
                                                         enabled=dt is not None):
                        out = model(xin).float()
                    skips[key] = _train_step(ctx, model, xin, y, dt)
                if cl:
                    _layouts_ok(model)
                errs[key] = rel_err(out, ref)
                expect(torch.isfinite(out).all().item(), f"{key}: non-finite output")
                expect(errs[key] <= (1e-4 if dt is None else 0.1), f"{key}: relative error {errs[key]:.2g}")
                wrong = sorted({f"{f}({d})" for f, d in seen if d not in (torch.float32, torch.complex64)})
                expect(not wrong, f"{key}: FFT inputs not float32/complex64: {wrong}")
                ffts |= {f for f, _ in seen}
    fft_family = spectrascope.get_card(name).family in FFT_FAMILIES
    expect(bool(ffts) == fft_family, f"torch.fft calls {sorted(ffts)} for a {'' if fft_family else 'non-'}FFT model")
    ctx.cache.setdefault("fft_models", []).extend([name] if ffts else [])
    worst = max((k for k in errs if k != "fp32"), key=errs.get)
    return (f"{size}px, worst rel err {errs[worst]:.1e} ({worst}), fp16 steps skipped {max(skips.values())}, "
            f"fft {'+'.join(sorted(ffts)) or 'none'}")


for _name in FAMILIES:
    check(f"family:{_name}", 60)(lambda ctx, _n=_name: _family(ctx, _n))


# ---------------------------------------------------------------------------- process group

def process_group(ctx: Ctx):
    """The one-process group of the run (nccl; gloo in the dry run), initialised once, joined
    through ``engine.dist.init``."""
    import torch.distributed as td

    from spectrascope.engine import dist
    if not td.is_initialized():
        store = td.FileStore(str(ctx.out / "store"), 1)
        kw = {"device_id": ctx.device} if ctx.cuda else {}
        td.init_process_group("nccl" if ctx.cuda else "gloo", store=store, rank=0, world_size=1, **kw)
    return dist.init(ctx.device)


@check("collectives", 60)
def collectives(ctx: Ctx) -> str:
    import torch

    from spectrascope.engine.reducers import Reducer
    from spectrascope.train.metrics import AccuracyReducer
    d, dev = process_group(ctx)
    expect(d.enabled and d.backend == ("nccl" if ctx.cuda else "gloo"), f"joined {d}")
    if ctx.cuda:
        expect(torch.cuda.current_device() == dev.index, "the CUDA device of the group was not set")
    ops = 0
    for t in (torch.tensor([1.0, -2.0]), torch.arange(3, dtype=torch.float64), torch.tensor([4, -5])):
        for where in ([t, t.to(dev)] if ctx.cuda else [t]):
            for op in ("sum", "max", "min"):
                out = d.all_reduce(where, op)
                expect(out.device == where.device and torch.equal(out.cpu(), t), f"all_reduce {op} {where.dtype}")
                ops += 1
    expect(d.all_gather_object({"a": [1, 2]}) == [{"a": [1, 2]}], "all_gather_object")
    expect(d.gather_object("x") == ["x"] and d.broadcast_object((1, "b")) == (1, "b"), "gather/broadcast_object")
    expect(d.any(True) and not d.any(False), "any")
    d.barrier()
    acc = AccuracyReducer(2)
    acc.update(1, torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], device=dev), torch.tensor([0, 2]))
    before = acc.metrics()
    acc.all_reduce(d)
    expect(acc.metrics() == before, f"AccuracyReducer.all_reduce changed {before} to {acc.metrics()}")

    class Sums(Reducer):
        def __init__(self):
            self.s = {"x": torch.tensor([0.5, 1.5], dtype=torch.float64, device=dev), "n": 2}

        def state(self):
            return self.s

        def load_state(self, state):
            self.s = state
    r = Sums()
    r.all_reduce(d)
    expect(r.s["n"] == 2 and torch.equal(r.s["x"].cpu(), torch.tensor([0.5, 1.5], dtype=torch.float64)), "Reducer")
    return f"{d.backend} world {d.world} on {dev}: {ops} all_reduce, 4 object collectives, barrier, 2 reducers"


# ---------------------------------------------------------------------------- training under DDP

def _train_cfg(ctx: Ctx, out: Path, **kw):
    from spectrascope.train.loop import TrainConfig
    base = dict(model="dfformer_s18", model_kwargs={"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]},
                data="synthetic:num_classes=4,train_size=64,val_size=16,size=64", epochs=1, batch_size=8,
                grad_accum=2, amp="bf16", channels_last=True, compile=True, model_ema=True, model_ema_decay=0.9,
                limit_train_batches=4, limit_val_batches=1, device=str(ctx.device), output=str(out), progress=False,
                seed=0)
    base.update(kw)
    return TrainConfig(**base)


@check("ddp-train: compile+bf16+channels-last+accum+EMA, resume", 150)
def ddp_train(ctx: Ctx) -> str:
    import torch

    from spectrascope.train import loop, prepare
    process_group(ctx)
    out = ctx.folder("ddp-train") / "run"
    wrapped = []
    orig = prepare.data_parallel
    prepare.data_parallel = lambda m, dev: wrapped.append(dev) or orig(m, dev)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = loop.train(_train_cfg(ctx, out), log=lambda msg: None)
            res2 = loop.train(_train_cfg(ctx, out, epochs=2), resume=str(out / "last.pth"), log=lambda msg: None)
    finally:
        prepare.data_parallel = orig
    expect(len(wrapped) == 2, "the model was not wrapped in DDP")
    strides = [str(w.message).splitlines()[0] for w in caught if "bucket view strides" in str(w.message)]
    expect(not strides, f"DDP gradient layout warning: {strides[:1]}")
    expect(res["status"] == res2["status"] == "completed" and res["run"]["steps_per_epoch"] == 2, "status")
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    expect(ck["epoch"] == 2 and len(ck["history"]) == 2 and "model_ema" in ck, f"checkpoint at epoch {ck['epoch']}")
    finite = all(torch.isfinite(v).all() for part in ("model", "model_ema") for v in ck[part].values()
                 if v.is_floating_point())
    expect(finite and res2["history"][0] == res["history"][0], "non-finite weights or a rewritten history")
    return (f"2 + 2 updates, loss {res['final']['train_loss']:.3f} -> {res2['final']['train_loss']:.3f}, "
            f"{res2['final']['throughput_img_s']:.0f} img/s")


# ---------------------------------------------------------------------------- analyses vs the CPU

def _cam_maps(folder: Path) -> dict:
    import numpy as np
    with np.load(folder / "maps.npz") as z:
        return {k: z[k].astype(np.float64) for k in z.files}


def _cam(ctx: Ctx, method: str) -> str:
    import numpy as np
    process_group(ctx)
    ck = checkpoint_of(ctx, "dfformer_s18")
    folder = ctx.folder(f"cam-{method}")
    args = ["cam", "--model", "dfformer_s18", "--checkpoint", ck, *TINY_CLI, "--img-size", 64, "--num-images", 2,
            "--method", method, "--overwrite"]
    cli([*args, "--device", "cpu", "--output", folder / "cpu"])
    ref = _cam_maps(folder / "cpu")
    parts = []
    for amp in ("off", "bf16", "fp16"):
        cli([*args, "--device", ctx.device, "--amp", amp, "--output", folder / amp])
        got = _cam_maps(folder / amp)
        expect(got.keys() == ref.keys(), f"{amp}: maps {sorted(got)} vs {sorted(ref)}")
        diff = np.concatenate([np.abs(got[k] - ref[k]).ravel() for k in ref])
        expect(np.isfinite(diff).all(), f"{amp}: non-finite maps")
        mx, mean = float(diff.max()), float(diff.mean())
        ok = mx <= 5e-3 if amp == "off" else (mean <= 0.05 and mx <= 0.25)
        expect(ok, f"{amp}: maps differ from the CPU's by max {mx:.3g}, mean {mean:.3g}")
        parts.append(f"{amp} max {mx:.1e}")
    return ", ".join(parts)


@check("cam:scorecam", 45)
def cam_scorecam(ctx: Ctx) -> str:
    return _cam(ctx, "scorecam")


@check("cam:gradcam", 30)
def cam_gradcam(ctx: Ctx) -> str:
    return _cam(ctx, "gradcam")


def _csv_numbers(path: Path, column: str | None = None):
    import csv
    with open(path) as f:
        rows = list(csv.reader(f))
    if column is not None:
        k = rows[0].index(column)
        return [float(r[k]) for r in rows[1:]]
    return [float(v) for r in rows[1:] for v in r[1:]]


def _max_diff(a, b) -> float:
    expect(len(a) == len(b) and len(a) > 0, f"{len(a)} vs {len(b)} values")
    return max(abs(x - y) for x, y in zip(a, b))


@check("amplitude", 40)
def amplitude(ctx: Ctx) -> str:
    process_group(ctx)
    ck, folder = checkpoint_of(ctx, "dfformer_s18"), ctx.folder("amplitude")
    args = ["amplitude", "--model", "dfformer_s18", "--checkpoint", ck, *TINY_CLI, "--img-size", 64, "--num-images", 4,
            "--overwrite"]
    cli([*args, "--device", "cpu", "--output", folder / "cpu"])
    cli([*args, "--device", ctx.device, "--output", folder / "gpu"])
    diff = _max_diff(*(_csv_numbers(folder / d / "amplitude.csv", "delta_log_amplitude") for d in ("cpu", "gpu")))
    expect(diff <= 2e-3, f"log-amplitude curves differ by {diff:.3g}")
    return f"max |delta log amplitude| {diff:.1e}"


@check("cka", 40)
def cka(ctx: Ctx) -> str:
    process_group(ctx)
    a, b, folder = checkpoint_of(ctx, "dfformer_s18"), checkpoint_of(ctx, "convformer_s18"), ctx.folder("cka")
    args = ["cka", "--model-a", "dfformer_s18", "--model-b", "convformer_s18", "--checkpoint-a", a, "--checkpoint-b", b,
            *TINY_CLI, "--img-size", 64, "--data", "synthetic:num_classes=8,val_size=16,size=64", "--num-images", 16,
            "--batch-size", 8, "--overwrite"]
    cli([*args, "--device", "cpu", "--output", folder / "cpu"])
    cli([*args, "--device", ctx.device, "--output", folder / "gpu"])
    diff = _max_diff(*(_csv_numbers(folder / d / "cka_matrix.csv") for d in ("cpu", "gpu")))
    expect(diff <= 2e-3, f"CKA matrices differ by {diff:.3g}")
    return f"max |delta CKA| {diff:.1e}"


@check("evaluate", 40)
def evaluate(ctx: Ctx) -> str:
    process_group(ctx)
    ck, folder = checkpoint_of(ctx, "dfformer_s18"), ctx.folder("evaluate")
    args = ["evaluate", "--model", "dfformer_s18", "--checkpoint", ck, *TINY_CLI, "--data",
            "synthetic:num_classes=8,val_size=64,size=64", "-b", 16, "--overwrite"]
    res = {}
    for dev in ("cpu", str(ctx.device)):
        cli([*args, "--device", dev, "--output", folder / dev.replace(":", "")])
        doc = json.loads((folder / dev.replace(":", "") / "results.json").read_text())
        res[dev] = doc.get("results", doc)             # the metrics, in the results section when there is one
    c, g = res["cpu"], res[str(ctx.device)]
    one = 100.0 / c["n"] + 1e-9
    ok = abs(c["loss"] - g["loss"]) <= 1e-4 * abs(c["loss"]) and abs(c["top1"] - g["top1"]) <= one \
        and abs(c["top5"] - g["top5"]) <= one and c["n"] == g["n"] == 64
    expect(ok, f"cpu {c['loss']:.6f}/{c['top1']}/{c['top5']} vs {g['loss']:.6f}/{g['top1']}/{g['top5']}")
    return f"loss {g['loss']:.5f} (rel diff {abs(c['loss'] - g['loss']) / c['loss']:.1e}), top-1 {g['top1']:.1f}"


@check("throughput", 40)
def throughput(ctx: Ctx) -> str:
    folder = ctx.folder("throughput")
    size = ctx.size(224)
    cli(["throughput", "--model", "convformer_s18", "--model", "poolformer_s12", "--resolutions", size,
         "--batch-size", 2 if ctx.dry else 16, "--warmup", 2, "--iters", 3 if ctx.dry else 10, "--device", ctx.device,
         "--output", folder / "run", "--overwrite"])
    doc = json.loads((folder / "run" / "results.json").read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    expect(all(r["status"] == "ok" for r in rows.values()) and len(rows) == 2, f"rows {list(rows.values())}")
    expect(doc["protocol"].get("cudnn_benchmark") is ctx.cuda, f"cudnn.benchmark {doc['protocol']}")
    big, small = rows["convformer_s18"]["peak_memory_mib"], rows["poolformer_s12"]["peak_memory_mib"]
    if ctx.cuda:
        expect(big is not None and small is not None and small < big, f"peak memory {big} then {small} MiB")
    rate = ", ".join(f"{m} {r['throughput_img_s']:.0f} img/s / {r['peak_memory_mib'] or 0:.0f} MiB"
                     for m, r in rows.items())
    return f"{size}px: {rate}"


# ---------------------------------------------------------------------------- compile vs eager

def _step_ms(ctx: Ctx, fn, model, x, y, steps: int) -> tuple[float, float]:
    """(first loss, ms per bf16 training step after the first two)."""
    import torch
    import torch.nn.functional as F
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    first, t0 = None, None
    for i in range(steps + 2):
        if i == 2:
            if ctx.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(fn(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        first = float(loss.detach()) if first is None else first
    if ctx.cuda:
        torch.cuda.synchronize()
    return first, 1e3 * (time.perf_counter() - t0) / steps


def _compiled(ctx: Ctx, name: str) -> str:
    import torch

    from spectrascope.engine.device import to_memory_format
    base, size = family_model(ctx, name, tiny_affnet=True)
    gen = torch.Generator().manual_seed(2)
    x = to_memory_format(torch.randn(2 if ctx.dry else 8, 3, size, size, generator=gen).to(ctx.device))
    y = torch.randint(0, 10, (x.shape[0],), generator=gen).to(ctx.device)
    eager = to_memory_format(copy.deepcopy(base).to(ctx.device).train())
    comp = to_memory_format(copy.deepcopy(base).to(ctx.device).train())
    steps = 2 if ctx.dry else 5
    loss_e, ms_e = _step_ms(ctx, eager, eager, x, y, steps)
    t0 = time.perf_counter()
    loss_c, ms_c = _step_ms(ctx, torch.compile(comp), comp, x, y, steps)
    total = time.perf_counter() - t0
    expect(abs(loss_c - loss_e) <= 2e-2 * max(1.0, abs(loss_e)),
           f"first loss {loss_c:.5f} compiled, {loss_e:.5f} eager")
    return f"{size}px: eager {ms_e:.1f} ms, compiled {ms_c:.1f} ms/step (x{ms_e / ms_c:.2f}), compile+run {total:.0f} s"


for _name in ("dfformer_s18", "cdfformer_s18", "gfformer_s18", "gfnet_ti", "gfnet_h_ti", "spanet_s", "affnet_et"):
    check(f"compile:{_name}", 45)(lambda ctx, _n=_name: _compiled(ctx, _n))


# ---------------------------------------------------------------------------- the run

def _alarm(_signum, _frame):
    raise _OverBudget


def run_check(ctx: Ctx, c: Check, deadline: float, log) -> dict:
    """One check with its time budget (a soft alarm, then a hard stop with every stack dumped)."""
    left = deadline - time.monotonic()
    if left <= 1:
        return {"check": c.name, "ok": False, "seconds": 0.0, "detail": "not run: the time budget was used up"}
    budget = min(c.budget_s * ctx.slack, left)
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    faulthandler.dump_traceback_later(budget + 60, exit=True)
    t0 = time.perf_counter()
    try:
        detail, ok = c.fn(ctx), True
    except CheckFailed as exc:
        detail, ok = str(exc), False
    except _OverBudget:
        detail, ok = f"over its budget of {budget:.0f} s", False
    except Exception as exc:           # a crash is a failure of the check, with its traceback in the log
        detail, ok = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", False
        log.write(f"--- {c.name}\n{traceback.format_exc()}\n")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
    return {"check": c.name, "ok": ok, "seconds": round(time.perf_counter() - t0, 1), "detail": detail}


def table(rows: list[dict]) -> str:
    width = max(len(r["check"]) for r in rows) + 2
    lines = [f"{'check':<{width}}{'result':<8}{'seconds':>8}  detail"]
    lines += [f"{r['check']:<{width}}{'ok' if r['ok'] else 'FAIL':<8}{r['seconds']:>8.1f}  {r['detail']}" for r in rows]
    failed = sum(not r["ok"] for r in rows)
    lines.append(f"{len(rows) - failed}/{len(rows)} checks ok" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)


def _environment(ctx: Ctx) -> str:
    import torch
    if ctx.cuda:
        return (f"{torch.cuda.get_device_name(ctx.device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
                f"{torch.cuda.device_count()} GPU(s)")
    return f"CPU dry run (no GPU numbers), torch {torch.__version__}"


def _dry_run_compile() -> None:
    """On the CPU, torch.compile through aot_eager (dynamo and AOT autograd, no code generation)."""
    import functools

    import torch
    torch.compile = functools.partial(torch.compile, backend="aot_eager")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="run every check on the CPU with tiny sizes")
    ap.add_argument("--only", action="append", default=[], help="checks whose name contains this (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the checks and exit")
    ap.add_argument("--output", default=str(ROOT / "runs" / "gpu-check"))
    ap.add_argument("--slack", type=float, default=None,
                    help="factor on every time budget [1 on a GPU, 10 in the CPU dry run]")
    args = ap.parse_args(argv)
    chosen = [c for c in CHECKS if not args.only or any(o in c.name for o in args.only)]
    if args.list:
        print("\n".join(f"{c.name} ({c.budget_s:.0f} s)" for c in chosen))
        return 0
    import torch
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(NEEDS_GPU)
        return 1
    if not chosen:
        print(f"gpu-check: no check matches {args.only}")
        return 2
    if args.cpu_dry_run:
        _dry_run_compile()
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not (out / "summary.json").exists():
        print(f"Error: --output: {out} is not empty and holds no earlier gpu-check run; choose another folder")
        return 2
    shutil.rmtree(out, ignore_errors=True)              # an earlier run of this script (its summary.json)
    out.mkdir(parents=True)
    slack = args.slack or (10.0 if args.cpu_dry_run else 1.0)
    ctx = Ctx(torch.device("cpu") if args.cpu_dry_run else torch.device("cuda", 0), args.cpu_dry_run, out,
              slack=slack)
    total = TOTAL_BUDGET_S * slack
    print(f"gpu-check on {_environment(ctx)}: {len(chosen)} checks, at most {total:.0f} s", flush=True)
    deadline = time.monotonic() + total
    rows = []
    summary = out / "summary.json"          # rewritten after every check: a hard stop keeps what was done
    summary.write_text(json.dumps({"environment": _environment(ctx), "checks": rows}))
    with open(out / "failures.log", "w") as log:
        for c in chosen:
            rows.append(run_check(ctx, c, deadline, log))
            r = rows[-1]
            print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['check']} ({r['seconds']} s)", flush=True)
            summary.write_text(json.dumps({"environment": _environment(ctx), "checks": rows}, indent=1))
    import torch.distributed as td
    if td.is_initialized():
        td.destroy_process_group()
    text = table(rows)
    print("\n" + text)
    (out / "table.txt").write_text(text + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
