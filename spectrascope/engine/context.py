"""SPANet context maps (Fig. 4 / S1): the outputs of each SPG (spectral pooling gate) of one
SPAM block and their aggregated context, captured through ``probe.Probe`` in one forward of
``engine.runner.Runner`` (stopped once the block ran), channel-mean, resized to the input and
min-max normalised per image."""
from __future__ import annotations

import torch
import torch.nn as nn

from spectrascope.engine.cam import cam_runner
from spectrascope.engine.runner import Runner
from spectrascope.errors import TapError
from spectrascope.ops.cam import normalize_maps, resize_maps
from spectrascope.probe import Probe
from spectrascope.probe.infer import model_taps

__all__ = ["block_prefix", "context_taps", "context_maps", "spg_lambdas", "map_labels"]


def block_prefix(taps, block: str | None) -> str:
    """The SPAM block ``block`` names: ``s<stage>.b<index>``, a stage number (its last block),
    or None / ``last`` (the model's last SPAM block)."""
    ctx = [t for t in taps if t.role == "context"]
    if not ctx:
        raise TapError("this model has no SPAM context taps (SPANet models only)", option="--model")
    prefixes = [t.name.rsplit(".", 1)[0] for t in ctx]
    if block in (None, "", "last"):
        return prefixes[-1]
    if block in prefixes:
        return block
    if str(block).isdigit():
        cands = [p for p, t in zip(prefixes, ctx) if t.stage == int(block)]
        if cands:
            return cands[-1]
    raise TapError(f"{block!r} is not a SPAM block; choose one of {', '.join(prefixes[-4:])} ... "
                   "(s<stage>.b<index>, a stage number or 'last')", option="--block")


def context_taps(model: nn.Module, block: str | None = None):
    """(block prefix, the SPG and context taps of that block)."""
    taps = model_taps(model)
    prefix = block_prefix(taps, block)
    return prefix, [t for t in taps if t.name.rsplit(".", 1)[0] == prefix and t.role in ("spg", "context")]


def context_maps(model: nn.Module, x: torch.Tensor, block: str | None = None, runner: Runner | None = None) -> dict:
    """Channel-mean SPG outputs and aggregated context of one SPAM block, resized to the input
    and min-max normalised per image: ``{"block", "maps": name -> (B, H, W), "notes"}``."""
    prefix, sel = context_taps(model, block)
    run = cam_runner(model, runner)
    was = model.training
    model.eval()
    try:
        with Probe(model, sel, nchw=True) as probe:
            run.forward(model, x.to(run.device), probe, need_output=False)
            got = probe.pop()
    finally:
        model.train(was)
    out = {"block": prefix, "maps": {}, "notes": {}}
    for t in sel:
        key = t.name.rsplit(".", 1)[1]
        m = got[t.name].float().mean(dim=1).cpu()
        out["maps"][key] = normalize_maps(resize_maps(m, x.shape[-2:]), 1e-7)
        out["notes"][key] = t.note
    return out


def spg_lambdas(model: nn.Module, prefix: str):
    """The balancing parameters (lambda) of the SPGs of block ``prefix``, or None."""
    for t in model_taps(model):
        if t.name == f"{prefix}.context":
            mixer = model.get_submodule(t.path.rsplit(".", 1)[0]) if "." in t.path else model
            return getattr(mixer, "lambdas", None)
    return None


def map_labels(keys, lambdas) -> list[str]:
    """Column labels: ``SPG lambda=0.7`` ... and ``context (sum)``."""
    labels = []
    for k in keys:
        if k.startswith("spg") and lambdas is not None and k[3:].isdigit() and int(k[3:]) < len(lambdas):
            labels.append(f"SPG lambda={lambdas[int(k[3:])]:.1f}")
        else:
            labels.append("context (sum)" if k == "context" else k)
    return labels
