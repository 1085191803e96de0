"""FLOP counting of a model's forward pass (``count_flops``, ``spectrascope flops``).

One inference forward of a batch of one is run under a PyTorch dispatch mode that applies the
rules of ``spectrascope.ops.flops`` to every ATen operator (fvcore's conventions: one per
multiply-accumulate, fvcore's norm / pool / upsample rules, FFTs apart). Zoo models given by
name are built on the ``meta`` device, so no weights are allocated and no arithmetic runs: a
full-size model is counted in about a second. The module attribution uses
``torch.utils.module_tracker`` (each op is charged to the innermost module running it), which
gives the breakdowns by module, by operator kind and by stage (the stage of the zoo model's
taps).
"""
from __future__ import annotations

import contextlib

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.module_tracker import ModuleTracker

from spectrascope.errors import OptionError
from spectrascope.ops.flops import FUNCTION_RULES, rule_for

__all__ = ["FlopCount", "count_flops", "official_graph", "FFT_MODES", "BREAKDOWNS", "as_input_size", "stage_of"]

FFT_MODES = ("none", "nlogn")
BREAKDOWNS = ("module", "op", "stage")


@dataclass
class FlopCount:
    """Counts of one forward pass of one image (plain integers)."""

    model: str
    input_size: tuple[int, int, int]
    params: int
    flops: int                      # FFT excluded
    flops_fft: int                  # the FFT term under ``nlogn``
    fft: str = "none"
    #: (module path, kind) -> count (FFT term included under kind "fft")
    events: dict = field(default_factory=dict, repr=False)
    stages: dict = field(default_factory=dict, repr=False)   # module path -> stage label

    @property
    def flops_total(self) -> int:
        return self.flops + (self.flops_fft if self.fft == "nlogn" else 0)

    def as_dict(self) -> dict:
        return {"model": self.model, "input_size": list(self.input_size), "params": int(self.params),
                "flops": int(self.flops), "flops_fft": int(self.flops_fft), "flops_total": int(self.flops_total),
                "fft": self.fft}

    def by_op(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (_, kind), n in self.events.items():
            out[kind] += n
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def by_module(self, depth: int = 2) -> dict[str, dict[str, int]]:
        """module path truncated to ``depth`` components -> {kind: count}, in execution order."""
        out: dict[str, dict[str, int]] = {}
        for (path, kind), n in self.events.items():
            key = ".".join(path.split(".")[:depth]) if path else "(model)"
            out.setdefault(key, defaultdict(int))[kind] += n
        return {k: dict(v) for k, v in out.items()}

    def by_stage(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (path, kind), n in self.events.items():
            out.setdefault(self.stages.get(path, _top(path)), defaultdict(int))[kind] += n
        return {k: dict(v) for k, v in out.items()}

    def breakdown(self, by: str, depth: int = 2) -> dict[str, dict[str, int]]:
        if by == "module":
            return self.by_module(depth)
        if by == "stage":
            return self.by_stage()
        if by == "op":
            return {k: {k: v} for k, v in self.by_op().items()}
        raise OptionError(f"--by {by!r}: choose one of {', '.join(BREAKDOWNS)}", option="--by")


def _top(path: str) -> str:
    return path.split(".")[0] if path else "(model)"


def as_input_size(input_size) -> tuple[int, int, int]:
    """(3, H, W) from S, (H, W) or (C, H, W)."""
    if isinstance(input_size, int):
        return (3, input_size, input_size)
    t = tuple(int(v) for v in input_size)
    if len(t) == 2:
        return (3, *t)
    if len(t) == 3:
        return t
    raise OptionError(f"input size {input_size!r}: give S, (H, W) or (C, H, W)", option="--img-size")


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else x


class _Counter(TorchDispatchMode):
    def __init__(self, tracker: ModuleTracker):
        super().__init__()
        self.tracker = tracker
        self.events: dict[tuple[str, str], int] = defaultdict(int)
        self.suppress = 0

    def where(self) -> str:
        inner = max(self.tracker.parents, key=lambda p: p.count(".") if p != "Global" else -1)
        return inner.split(".", 1)[1] if "." in inner else ""

    def add(self, kind: str, count: int) -> None:
        if count:
            self.events[(self.where(), kind)] += int(count)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.suppress:
            rule = rule_for(str(func))
            if rule is not None:
                outs = [_shape(o) for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
                kind, n = rule(tuple(tree_map(_shape, list(args))), outs)
                self.add(kind, n)
        return out


class _FunctionCounter(TorchFunctionMode):
    """Counts the few ops whose ATen form is ambiguous (``FUNCTION_RULES``) at the functional level."""

    def __init__(self, counter: _Counter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        rule = FUNCTION_RULES.get(getattr(func, "__name__", ""))
        if rule is None:
            return func(*args, **(kwargs or {}))
        self.counter.suppress += 1
        try:
            out = func(*args, **(kwargs or {}))
        finally:
            self.counter.suppress -= 1
        kind, n = rule(tuple(tree_map(_shape, list(args))), [_shape(out)])
        self.counter.add(kind, n)
        return out


def stage_of(model: nn.Module) -> callable:
    """module path -> "stage N" from the zoo model's taps (longest tap path that contains it)."""
    taps = [t for t in (model.taps() if hasattr(model, "taps") else []) if getattr(t, "stage", None) is not None]
    by_path = {}
    for t in taps:
        by_path.setdefault(t.path, t.stage)

    def label(path: str) -> str:
        parts = path.split(".") if path else []
        for k in range(len(parts), 0, -1):
            stage = by_path.get(".".join(parts[:k]))
            if stage is not None:
                return f"stage {stage}"
        return _top(path)
    return label


def _build(name: str, input_size, device):
    from spectrascope.zoo.registry import create_model, get_card
    if name.startswith("timm:"):
        size = as_input_size(input_size) if input_size is not None else None
        with torch.device(device):
            model = create_model(name, img_size=size[1:] if size else None)
        if size is None:
            size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
        return model, size
    size = as_input_size(input_size) if input_size is not None else tuple(get_card(name).default_input_size)
    with torch.device(device):
        model = create_model(name, img_size=size[1:])
    return model, size


@contextlib.contextmanager
def official_graph():
    """Run the zoo's models as the official code computes them while counting: the fused
    ``F.layer_norm`` fast path of ``LayerNormGeneral`` (the same maths, which fvcore's norm rule
    would count) gives way to the official element-wise operations (which it does not count),
    so the counts are those of the official code under the papers' convention."""
    from spectrascope.models.layers import LayerNormGeneral
    old = LayerNormGeneral.fused
    LayerNormGeneral.fused = False
    try:
        yield
    finally:
        LayerNormGeneral.fused = old


def count_flops(model, input_size=None, *, fft: str = "none", device: str = "meta", name: str | None = None) -> FlopCount:
    """Count one forward pass of one image of ``input_size`` (S, (H, W) or (C, H, W)).

    ``model`` is a zoo name (built on ``device``, ``meta`` by default: no weights allocated) or
    an ``nn.Module`` (run where its parameters are; a module on ``meta`` runs on ``meta``).
    ``fft="nlogn"`` adds the FFT term to ``flops_total`` (``flops_fft`` is always reported)."""
    if fft not in FFT_MODES:
        raise OptionError(f"--fft {fft!r}: choose one of {', '.join(FFT_MODES)}", option="--fft")
    if isinstance(model, str):
        label = name or model
        model, size = _build(model, input_size, device)
    else:
        label = name or getattr(model, "spectrascope_name", None) or type(model).__name__
        if input_size is None:
            card = getattr(model, "card", None)
            if card is None:
                raise OptionError("count_flops: give input_size for a model outside the zoo", option="--img-size")
            input_size = card.default_input_size
        size = as_input_size(input_size)
    param = next(iter(model.parameters()), None)
    dev = param.device if param is not None else torch.device(device)
    x = torch.zeros((1, *size), device=dev) if dev.type != "meta" else torch.empty((1, *size), device="meta")
    was_training = model.training
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    tracker = ModuleTracker()
    counter = _Counter(tracker)
    try:   # no parameter needs a gradient: a mixer handing out a parameter must not arm backward tracking
        for p, _ in grads:
            p.requires_grad_(False)
        with torch.no_grad(), official_graph(), tracker, counter, _FunctionCounter(counter):
            model(x)
    finally:
        model.train(was_training)
        for p, flag in grads:
            p.requires_grad_(flag)
    events = dict(counter.events)
    fft_total = sum(n for (_, kind), n in events.items() if kind == "fft")
    flops = sum(n for (_, kind), n in events.items() if kind != "fft")
    label_of = stage_of(model)
    stages = {path: label_of(path) for path, _ in events}
    return FlopCount(model=label, input_size=size, params=sum(p.numel() for p in model.parameters()), flops=flops,
                     flops_fft=fft_total, fft=fft, events=events, stages=stages)
