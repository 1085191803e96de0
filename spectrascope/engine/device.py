"""Devices and the process-wide numerics of a run.

- ``resolve_device``: ``--device auto|cpu|cuda|cuda:N|mps``, validated where it enters.
- ``to_memory_format``: the one channels-last policy. Channels-last is a layout of 4-D
  ``(N, C, H, W)`` data, so it applies to the weights of 2-D convolutions and to 4-D
  activations, and to nothing else: the real views ``(H, W//2+1, N, 2)`` of the FFT
  filters (DFFormer, GFNet), FNO's 5-D spectral weights and every other parameter keep
  their contiguous layout (a permuted filter is copied back by ``.contiguous()`` at every
  forward, and its gradient no longer matches DDP's bucket views).
- ``set_tf32`` / ``tf32``: the TF32 policy. ``off`` (float32 matmuls and convolutions, the
  numerics the parity tests check) is the default of the analyses (``RunConfig.tf32``);
  ``spectrascope train`` defaults to ``on`` (timm's training protocol: TF32 matmuls and
  convolutions on Ampere and newer GPUs). TF32 is a process-wide PyTorch switch with no
  effect on CPUs; the FFT filters run in float32 (cuFFT has no TF32 path) either way.
- ``cudnn_benchmark``: cuDNN's algorithm search for fixed input shapes (timm's
  benchmark protocol, used by ``throughput``).
- ``available_cpus``: the CPUs this process may use (affinity, SLURM, cgroup quota), which
  sizes torch's threads and the DataLoader workers.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch
import torch.nn as nn

from spectrascope.errors import OptionError

__all__ = ["resolve_device", "model_device", "DEVICE_HELP", "to_memory_format", "TF32_MODES", "set_tf32", "tf32",
           "tf32_state", "cudnn_benchmark", "available_cpus"]

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """``auto`` -> cuda when available, then mps, else cpu. An unknown device, or one this
    machine does not have, is an ``OptionError`` naming what is accepted."""
    if isinstance(name, torch.device):
        dev = name
    else:
        text = str(name or "auto").strip().lower()
        if text == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            mps = getattr(torch.backends, "mps", None)
            return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise OptionError(f"{name!r} is not a device; use {DEVICE_HELP}", option=option) from None
        if dev.type not in ("cpu", "cuda", "mps"):
            raise OptionError(f"{name!r} is not a supported device; use {DEVICE_HELP}", option=option)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"{dev} was requested but no CUDA device is available (use cpu or auto)", option=option)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"{dev} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)",
                              option=option)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise OptionError("mps was requested but is not available here (use cpu or auto)", option=option)
    return dev


def model_device(model: torch.nn.Module, fallback="cpu") -> torch.device:
    """The device of a model's first parameter (or buffer); ``fallback`` for a model without tensors."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(fallback)


# ---------------------------------------------------------------------------- memory format

def _is_conv2d_weight(module: nn.Module, name: str, p) -> bool:
    return (name == "weight" and p is not None and p.ndim == 4
            and isinstance(module, nn.modules.conv._ConvNd) and len(module.kernel_size) == 2)


def to_memory_format(obj, channels_last: bool = True):
    """The channels-last policy (see the module doc), applied to a module or a tensor.

    Args:
        obj: an ``nn.Module`` (the weights of its 2-D convolutions are made channels-last in
            place, keeping the same ``Parameter`` objects) or a tensor (a 4-D tensor is returned
            channels-last; any other rank unchanged).
        channels_last: False leaves ``obj`` as it is.

    Returns:
        ``obj`` (the module itself, or the tensor in its new layout).
    """
    if not channels_last:
        return obj
    fmt = torch.channels_last
    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=fmt) if obj.ndim == 4 else obj
    with torch.no_grad():
        for module in obj.modules():
            for name, p in module.named_parameters(recurse=False):
                if _is_conv2d_weight(module, name, p) and not p.is_contiguous(memory_format=fmt):
                    p.data = p.data.contiguous(memory_format=fmt)
                    if p.grad is not None:
                        p.grad = p.grad.contiguous(memory_format=fmt)
    return obj


# ---------------------------------------------------------------------------- TF32

#: ``--tf32`` values
TF32_MODES = ("on", "off")


def tf32_state() -> dict:
    """PyTorch's current TF32 switches: ``{"matmul": bool, "cudnn": bool}``."""
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def set_tf32(mode: str | bool, option: str = "--tf32") -> dict:
    """Allow (``on``) or forbid (``off``) TF32 in CUDA matmuls and cuDNN convolutions, process-wide.

    Args:
        mode: ``on``/``off`` (or a bool).
        option: the option named in the error for any other value.

    Returns:
        The switches before the call (``tf32_state``), to restore them.
    """
    if isinstance(mode, bool):
        on = mode
    elif str(mode).lower() in TF32_MODES:
        on = str(mode).lower() == "on"
    else:
        raise OptionError(f"{mode!r} is not accepted; use on or off", option=option)
    before = tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return before


def _restore_tf32(state: dict) -> None:
    torch.backends.cuda.matmul.allow_tf32 = state["matmul"]
    torch.backends.cudnn.allow_tf32 = state["cudnn"]


@contextlib.contextmanager
def tf32(mode: str | bool):
    """``with tf32("off"):`` -- ``set_tf32`` for the block, the previous switches restored after."""
    before = set_tf32(mode)
    try:
        yield
    finally:
        _restore_tf32(before)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool = True):
    """cuDNN's algorithm search (``torch.backends.cudnn.benchmark``) for the block, restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


# ---------------------------------------------------------------------------- CPUs

def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_quota(root: Path, proc_cgroup: Path) -> int | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) of this process
    and its parents: the smallest one, or None without a quota."""
    text = _read(proc_cgroup) or ""
    limits = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = Path(rel.lstrip("/"))
        chain = [rel, *rel.parents]
        if controllers == "":                                      # cgroup v2
            for sub in chain:
                v = _read(root / sub / "cpu.max")
                if v and not v.startswith("max"):
                    quota, _, period = v.partition(" ")
                    limits.append(int(quota) / int(period or 100000))
        elif "cpu" in controllers.split(","):                      # cgroup v1
            for sub in chain:
                base = root / controllers / sub
                q, p = _read(base / "cpu.cfs_quota_us"), _read(base / "cpu.cfs_period_us")
                if q and p and int(q) > 0 and int(p) > 0:
                    limits.append(int(q) / int(p))
    return max(1, math.ceil(min(limits))) if limits else None


def available_cpus(environ=None, cgroup_root: str | Path = "/sys/fs/cgroup",
                   proc_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """The number of CPUs this process may use: the smallest of its CPU affinity
    (``os.sched_getaffinity``), ``SLURM_CPUS_PER_TASK`` and the cgroup CPU quota (containers,
    SLURM's cgroup plugin); ``os.cpu_count()`` where none of them is known.

    Args:
        environ: the environment to read (default ``os.environ``).
        cgroup_root: where the cgroup file system is mounted.
        proc_cgroup: the file naming this process's cgroups.

    Returns:
        At least 1.
    """
    environ = os.environ if environ is None else environ
    counts = []
    try:
        counts.append(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        counts.append(os.cpu_count() or 1)
    slurm = str(environ.get("SLURM_CPUS_PER_TASK", "")).strip()
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    with contextlib.suppress(OSError, ValueError):
        quota = _cgroup_quota(Path(cgroup_root), Path(proc_cgroup))
        if quota is not None:
            counts.append(quota)
    return max(1, min(counts))
