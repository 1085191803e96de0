"""Class activation maps of a model: target layers through the tap grammar and one CAM template.

Every method follows the same four steps (in the spirit of pytorch-grad-cam's ``BaseCAM``):

1. **capture** -- one forward through ``engine.runner.Runner`` with a ``probe.Probe`` on the
   target layers (``grads=True`` and a backward of the class scores for gradient methods):
   activations (and gradients) as NCHW, the logits, the target classes;
2. **weights** -- per-channel weights (Score-CAM: the class scores of the masked inputs,
   scored in chunks of ``batch_size`` through the same runner; Grad-CAM: mean gradients;
   Grad-CAM++: the closed-form alphas);
3. **combine** -- the weighted sum of the activation maps;
4. **normalise** -- resizing to the input and min-max (Score-CAM: its flavour's own order).

The maths lives in ``spectrascope.ops.cam``; this module installs no hook itself. A
non-finite value in the model output, a target layer or a map stops with one
``NonFiniteError`` line.

``--target-layer`` is a request of ``probe.grammar``: a tap name (``stage4``, ``s3.b1.block``),
a role (its last tap: ``stage``, ``block``), a block (``s3.b1``, its last tap), a 1-based stage
number (the stage's output), or ``path:MODULE[:LAYOUT][:HxW]`` / a bare module path whose layout is
read from its tensor (timm FocalNet's NCHW ``norm1`` stays NCHW, Swin's NHWC one NHWC).
Comma-separated targets give one map per layer, averaged as pytorch-grad-cam does. The default
(``default_target_layer``) is the last stage output whose map is at least 7x7 at the input size.
"""
from __future__ import annotations

import contextlib
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from spectrascope.engine.runner import RunConfig, Runner, progress_bar
from spectrascope.errors import CamError, NonFiniteError, TapError
from spectrascope.ops.cam import (AUTO_BATCH_CAP, METHODS, auto_batch_size, check_flavour, class_scores,
                                  cpu_workers, finish_map, flavour_score, gradcam_pp_weights, gradcam_weights,
                                  mean_of_layers, scorecam_combine, scorecam_masks, scorecam_pairs, target_classes,
                                  weighted_cam)
from spectrascope.probe import Probe
from spectrascope.probe.grammar import TapRequest
from spectrascope.probe.infer import model_taps
from spectrascope.probe.layouts import SPATIAL_LAYOUTS, to_nchw
from spectrascope.probe.spec import TapSpec

__all__ = ["MIN_TARGET_GRID", "TargetLayer", "resolve_target_layer", "resolve_target_layers", "default_target_layer",
           "CamMethod", "ScoreCam", "GradCam", "GradCamPlusPlus", "Capture", "make_cam",
           "score_cam", "grad_cam", "compute_cam", "cam_runner", "largest_activation", "AUTO_BATCH_CAP"]


# ---------------------------------------------------------------------------- target layers

#: the smallest map side (both sides) of a default target layer: the 7x7 of a 224-px ImageNet model
MIN_TARGET_GRID = 7


@dataclass(frozen=True)
class TargetLayer:
    """A CAM target: the tap (module path, hook, layout, prefix tokens, grid) and its module."""

    tap: TapSpec
    module: nn.Module
    note: str = ""

    @property
    def path(self) -> str:
        return self.tap.path

    @property
    def layout(self) -> str:
        return self.tap.layout

    @property
    def name(self) -> str:
        return self.tap.name

    @property
    def num_prefix_tokens(self) -> int:
        return self.tap.num_prefix_tokens

    def to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C, H, W) view of this layer's output (the probe's one layout conversion)."""
        return to_nchw(x, self.tap)


def _target(model: nn.Module, tap: TapSpec, note: str = "") -> TargetLayer:
    return TargetLayer(tap, model.get_submodule(tap.path), note)


def _request(model, text: str, input_size) -> TargetLayer:
    """One grammar token -> one target layer (the last tap, in execution order, it names; a stage
    number: that stage's output)."""
    if text.isdigit():
        return _stage_output(model, int(text), input_size)
    if not text.startswith("path:") and _is_module(model, text):
        text = "path:" + text                       # a module path: its declared tap, or its tensor's layout
    req = TapRequest.parse(text, option="--target-layer")
    if not text.startswith("path:") and not _declared(model, input_size):
        raise CamError(f"{text!r} is neither a tap, a tap role nor a module path of {type(model).__name__} "
                       "(which declares no taps: give a module path or path:MODULE[:LAYOUT])", option="--target-layer")
    taps = req.resolve(model, input_size=input_size, spatial=True, what="a CAM target layer")
    return _target(model, taps[-1])


def _is_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _split(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _module_path(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise CamError(f"the target layer {type(module).__name__} is not a sub-module of the model",
                   option="--target-layer")


def _declared(model, input_size):
    try:
        return [t for t in model_taps(model, input_size=input_size) if t.layout in SPATIAL_LAYOUTS]
    except TapError:
        return []


def _vit_like(model: nn.Module) -> str | None:
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(blocks[-1], "norm1") and (
            getattr(model, "num_prefix_tokens", 0) or hasattr(model, "cls_token") or hasattr(model, "pos_embed")):
        return f"path:blocks.{len(blocks) - 1}.norm1"
    return None


def _stage_output(model: nn.Module, stage: int, input_size) -> TargetLayer:
    """The output of 1-based stage ``stage``: its ``stage`` tap, else its last ``block`` tap
    (isotropic models such as GFNet), else its last spatial tap."""
    taps = _declared(model, input_size)
    have = sorted({t.stage for t in taps if t.stage is not None})
    if stage not in have:
        name = getattr(model, "spectrascope_name", type(model).__name__)
        raise CamError(f"stage {stage} is not a stage of {name} (stages {', '.join(map(str, have)) or 'none declared'}; "
                       "or give a tap name or path:MODULE)", option="--target-layer")
    mine = [t for t in taps if t.stage == stage]
    for role in ("stage", "block"):
        cands = [t for t in mine if t.role == role]
        if cands:
            return _target(model, cands[-1])
    return _target(model, mine[-1])


def _size_text(input_size) -> str:
    if input_size is None:
        return "the model's input size"
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)[-2:]
    return f"{h} px" if h == w else f"{h}x{w} px"


def _fitting(model: nn.Module, cands: list[TapSpec], input_size) -> TargetLayer:
    """The last of ``cands`` (execution order) whose map is at least ``MIN_TARGET_GRID`` on both
    sides; the largest map when none is (the last one when no grid is known). Its note names it."""
    known = [t for t in cands if t.grid is not None]
    if not known:
        return _target(model, cands[-1])
    side = MIN_TARGET_GRID
    big = [t for t in known if min(t.grid) >= side]
    if big:
        tap, why = big[-1], f"the last map of at least {side}x{side}"
    else:
        tap = max(reversed(known), key=lambda t: t.grid[0] * t.grid[1])      # the last of the largest
        why = f"no map reaches {side}x{side}, this is the largest"
    h, w = tap.grid
    return _target(model, tap, f"target layer {tap.name} ({h}x{w} at {_size_text(input_size)}): {why}")


def default_target_layer(model: nn.Module, input_size=None) -> TargetLayer:
    """The default Score-CAM / Grad-CAM layer of a model at ``input_size``.

    ViT-like models: the tokens of the last block's ``norm1`` (prefix tokens dropped; the
    last block's own patch tokens reach the head only through attention). Otherwise the
    last ``stage`` tap (zoo MetaFormers, SPANet, AFFNet; timm hierarchical models such as
    Swin, ConvNeXt, FocalNet), then the last ``block`` tap (GFNet), whose map is at least
    ``MIN_TARGET_GRID`` x ``MIN_TARGET_GRID`` at that input (stage 4 of a 224-px model, stage 3
    at 128 px, stage 2 at 64 px; a coarser map scores the pointing game no better than random
    weights), then the last child of ``stages`` / ``layer4`` / ``features`` / ``network``.
    Layouts are declared or read from the tensor.

    Args:
        model: the model.
        input_size: (H, W) or a side; None: the model's own input size.

    Returns:
        The ``TargetLayer``; its ``note`` names the layer chosen, its map size and why.
    """
    vit = _vit_like(model)
    if vit is not None:
        tl = _request(model, vit, input_size)
        return replace(tl, note="ViT-like: tokens of the last block's norm1, prefix tokens dropped")
    taps = _declared(model, input_size)
    for role in ("stage", "block"):
        cands = [t for t in taps if t.role == role]
        if cands:
            return _fitting(model, cands, input_size)
    for attr in ("stages", "layer4", "features", "network"):
        seq = getattr(model, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq):
            return _request(model, f"path:{attr}.{len(seq) - 1}", input_size)
    raise CamError(f"no default target layer for {type(model).__name__}; give one (a tap name, a role or "
                   "path:MODULE)", option="--target-layer")


def resolve_target_layers(model: nn.Module, target=None, layout: str | None = None,
                          input_size=None) -> list[TargetLayer]:
    """Target layers from None (the default), a module, a ``TargetLayer``, a ``TapSpec``, a
    grammar request (comma-separated: one layer per token) or a list of these.

    ``layout`` (``NCHW``/``NHWC``/``NLC``) overrides the layout of every target."""
    if isinstance(target, (list, tuple)):
        out = [tl for t in target for tl in resolve_target_layers(model, t, None, input_size)]
    elif target is None:
        out = [default_target_layer(model, input_size)]
    elif isinstance(target, TargetLayer):
        out = [target]
    elif isinstance(target, TapSpec):
        out = [_target(model, target)]
    elif isinstance(target, nn.Module):
        path = _module_path(model, target)
        out = [_request(model, f"path:{path}" if path else "path:", input_size)]
    elif isinstance(target, str):
        try:
            out = [_request(model, tok, input_size) for tok in _split(target)]
        except TapError as exc:
            raise CamError(str(exc), option="--target-layer") from None
        if not out:
            raise CamError("empty target layer", option="--target-layer")
    else:
        raise CamError(f"a target layer is a tap name, role, module path or module, not {type(target).__name__}",
                       option="--target-layer")
    if layout is not None:
        out = [replace(tl, tap=replace(tl.tap, layout=str(layout).upper())) for tl in out]
    names = [tl.name for tl in out]
    if len(set(names)) != len(names):
        raise CamError(f"target layer(s) given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}",
                       option="--target-layer")
    return out


def resolve_target_layer(model: nn.Module, target=None, layout: str | None = None, input_size=None) -> TargetLayer:
    """The one target layer ``target`` names (see ``resolve_target_layers``)."""
    layers = resolve_target_layers(model, target, layout, input_size)
    if len(layers) != 1:
        raise CamError(f"{len(layers)} target layers where one is expected", option="--target-layer")
    return layers[0]


# ---------------------------------------------------------------------------- the template


def _device_of(model: nn.Module, fallback) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device(fallback)


def cam_runner(model: nn.Module, runner: Runner | None = None, fallback="cpu") -> Runner:
    """The given runner, or a plain one on the model's device (float32, finite checks on)."""
    return runner if runner is not None else Runner(RunConfig(device=_device_of(model, fallback)))


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class Capture:
    """What the capture step found: NCHW activations (and gradients) per target layer, the
    float32 logits and the target class of every image."""

    acts: list[torch.Tensor]
    grads: list[torch.Tensor] | None
    logits: torch.Tensor
    classes: torch.Tensor


class CamMethod:
    """The CAM template: ``capture`` -> ``weights`` -> ``combine`` -> ``normalise`` per target
    layer, then the layers' mean (see the module doc). Subclasses give ``weights`` and may
    replace ``combine`` / ``normalise``; ``needs_grads`` asks the capture for gradients."""

    needs_grads = False
    name = "cam"

    def __init__(self, model: nn.Module, target_layers=None, *, runner: Runner | None = None,
                 output_size: str = "input", layout: str | None = None, input_size=None):
        if output_size not in ("input", "layer"):
            raise CamError(f"output_size must be 'input' or 'layer', not {output_size!r}")
        self.model = model
        self.runner = cam_runner(model, runner)
        self.layers = resolve_target_layers(model, target_layers, layout, input_size)
        self.output_size = output_size
        self.weights_: list[torch.Tensor] = []

    # ------------------------------------------------------------------ steps
    def capture_runner(self) -> Runner:
        """The runner of the capture forward (the method's runner)."""
        return self.runner

    def capture(self, x: torch.Tensor, classes) -> Capture:
        """One forward with a probe on the target layers (and a backward for gradient methods)."""
        taps = [tl.tap for tl in self.layers]
        runner = self.capture_runner()
        with Probe(self.model, taps, nchw=True, grads=self.needs_grads, once=True) as probe:
            if self.needs_grads:
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    logits = _first(runner.forward(self.model, xg, probe, need_output=True, grad=True))
                    cls = target_classes(classes, logits.detach().float())
                    torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), xg, allow_unused=True)
                grads = probe.pop_grads()
            else:
                logits = _first(runner.forward(self.model, x, probe, need_output=True))
                cls = target_classes(classes, logits.float())
                grads = None
            acts = probe.pop()
        missing = [tl.path for tl in self.layers if tl.name not in acts or (grads is not None and tl.name not in grads)]
        if missing:
            raise CamError(f"target layer {missing[0]} did not run in the forward pass (or no gradient reached it)",
                           option="--target-layer")
        return Capture([acts[tl.name].detach().float() for tl in self.layers],
                       None if grads is None else [grads[tl.name].float() for tl in self.layers],
                       logits.detach().float(), cls)

    def weights(self, cap: Capture, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def combine(self, w: torch.Tensor, cap: Capture, i: int, x: torch.Tensor) -> torch.Tensor:
        return weighted_cam(w, cap.acts[i])

    def normalise(self, cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return finish_map(cam, tuple(x.shape[-2:]) if self.output_size == "input" else None)

    # ------------------------------------------------------------------ driver
    def __call__(self, images: torch.Tensor, classes=None) -> torch.Tensor:
        """Maps (B, H, W) in [0, 1] of ``images`` (B, 3, H, W), already normalised; the channel
        weights of every layer are kept in ``self.weights_``."""
        if images.ndim != 4:
            raise CamError(f"images must be a (B, C, H, W) batch, got {tuple(images.shape)}")
        x = images.to(self.runner.device)
        if self.runner.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _eval_mode(self.model):
            cap = self.capture(x, classes)
            maps, self.weights_ = [], []
            for i in range(len(self.layers)):
                w = self.weights(cap, i, x)
                self.weights_.append(w)
                maps.append(self.normalise(self.combine(w, cap, i, x), x).cpu())
        out = mean_of_layers(maps)
        self.classes_ = cap.classes.cpu()
        self.logits_ = cap.logits.cpu()
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError(f"{self.name} maps hold non-finite values (NaN/inf) at "
                                 f"{', '.join(tl.path for tl in self.layers)}: the gradients or scores overflowed; "
                                 "nothing was written")
        return out


class GradCam(CamMethod):
    """Grad-CAM: weights = spatial mean of the class score's gradient (captum's ``LayerGradCam``,
    ReLU'd, bilinear upsampling)."""

    needs_grads = True
    name = "Grad-CAM"

    def weights(self, cap, i, x):
        return gradcam_weights(cap.grads[i])


class GradCamPlusPlus(GradCam):
    """Grad-CAM++ with the exponential-score closed form (pytorch-grad-cam's)."""

    name = "Grad-CAM++"

    def weights(self, cap, i, x):
        return gradcam_pp_weights(cap.grads[i], cap.acts[i])


class ScoreCam(CamMethod):
    """Score-CAM in one of three published flavours (``ops.cam`` module doc): the weights are
    the class scores of the input masked by each upsampled activation map, built and scored
    ``batch_size`` (image, channel) pairs at a time, so at most that many masked inputs exist
    per forward in flight. ``batch_size`` None: the largest batch whose estimated peak fits
    ``memory_budget`` bytes over all forwards in flight, at most ``AUTO_BATCH_CAP`` (16 on CPUs,
    64 on accelerators).

    On a CPU the masked forwards are independent and run side by side, ``workers`` at a time
    with the torch threads shared among them (``ops.cam.cpu_workers``; None: automatic, 1: one
    at a time with every thread; the thread count is restored afterwards). Accelerators run one
    forward at a time. With ``--amp`` (the runner's ``amp``) the masked forwards run under
    autocast while the capture forward, hence the masks and the combined activations, stays
    float32; with the runner's ``compile`` the masked forward is compiled once (the last chunk
    is padded to the batch size) and runs one at a time."""

    name = "Score-CAM"

    def __init__(self, model, target_layers=None, *, flavour: str = "gradcam-lib", batch_size: int | None = None,
                 score: str | None = None, memory_budget: int = 256 * 2 ** 20, progress: bool = False,
                 workers: int | None = None, **kw):
        self.flavour = check_flavour(flavour)
        self.score = flavour_score(flavour, score)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise CamError(f"{batch_size!r} is not a batch size (an integer >= 1)", option="--batch-size")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise CamError(f"{workers!r} is not a number of workers (an integer >= 1)")
        super().__init__(model, target_layers, **kw)
        if self.flavour != "torchcam" and self.output_size != "input":
            raise CamError("output_size='layer' exists only for the torchcam flavour")
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        self.progress = progress
        self.workers = workers
        #: how the last call scored: masked inputs per forward, concurrent forwards, threads each
        self.plan_: dict = {}
        self._compiled = None

    def capture_runner(self) -> Runner:
        """The capture forward runs in float32 whatever ``--amp`` says (masks and combination exact)."""
        if self.runner.config.amp == "off" and not self.runner.config.compile:
            return self.runner
        return Runner(replace(self.runner.config, amp="off", compile=False), self.runner.dist)

    def _batch(self, x: torch.Tensor, workers: int) -> int:
        """Masked inputs per forward: ``batch_size``, or the automatic choice for ``workers`` in flight."""
        if self.batch_size is not None:
            return self.batch_size
        act = largest_activation(self.model, x[:1], self.runner)
        return auto_batch_size(tuple(x.shape[1:]), self.memory_budget, act, self.runner.device.type, workers)

    def _workers(self, chunks: int) -> tuple[int, int]:
        """(concurrent masked forwards, torch threads each) for ``chunks`` chunks."""
        if self.runner.device.type != "cpu" or self.runner.config.compile:
            return 1, torch.get_num_threads()
        return cpu_workers(torch.get_num_threads(), chunks, self.workers)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _first(self.runner.forward(self.model, x)).float()

    def _masked_forward(self, xm: torch.Tensor, bs: int) -> torch.Tensor:
        """Logits of one chunk of masked inputs (compiled once with the runner's ``compile``)."""
        if not self.runner.config.compile:
            return self._forward(xm)
        if self._compiled is None:
            self._compiled = torch.compile(self.model)
        n = int(xm.shape[0])
        if n < bs:                                       # one static shape: pad the last chunk
            xm = torch.cat([xm, xm.new_zeros((bs - n, *xm.shape[1:]))])
        return _first(self.runner.forward(self._compiled, xm)).float()[:n]

    def _blank_pairs(self, acts, pairs, size, bs) -> torch.Tensor:
        """Which pairs' masks are all zero (a constant channel blanks the input whatever the image),
        from the same masks the chunks build, ``bs`` at a time."""
        out = [scorecam_masks(acts[c[:, 0].to(acts.device), c[:, 1].to(acts.device)], size, self.flavour)
               .flatten(1).amax(1).eq(0).cpu() for c in pairs.split(bs)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def _score_blank(self, x, cls, pairs, scores) -> None:
        """The class scores of blanked inputs: one forward of an all-zero image for all of them."""
        zb = self._forward(torch.zeros_like(x[:1])).expand(len(pairs), -1)
        bi, ki = pairs[:, 0], pairs[:, 1]
        scores[bi, ki] = class_scores(zb, cls[bi.to(cls.device)], self.score).cpu()

    def _score_chunk(self, x, acts, cls, pairs, scores, size, bs) -> None:
        bi, ki = pairs[:, 0].to(x.device), pairs[:, 1].to(x.device)
        xm = x[bi]                                       # a copy, masked in place; the masks are freed first
        xm.mul_(scorecam_masks(acts[bi, ki], size, self.flavour)[:, None].to(x.dtype))
        if self.runner.config.channels_last:
            xm = xm.contiguous(memory_format=torch.channels_last)
        out = self._masked_forward(xm, bs)
        scores[pairs[:, 0], pairs[:, 1]] = class_scores(out, cls[bi], self.score).cpu()

    def weights(self, cap, i, x):
        acts = cap.acts[i].to(x.device)
        size = tuple(x.shape[-2:])
        pairs, keep = scorecam_pairs(acts, size, skip_constant=(self.flavour == "authors"))
        scores = torch.zeros(acts.shape[:2])
        bs = self._batch(x, self._workers(len(pairs))[0])
        bar = _bar(self.progress, len(pairs))
        with torch.inference_mode():
            blank = self._blank_pairs(acts, pairs, size, bs)
            if bool(blank.any()):
                self._score_blank(x, cap.classes, pairs[blank], scores)
                if bar is not None:
                    bar.update(int(blank.sum()))
        chunks = list(pairs[~blank].split(bs))         # full chunks of the pairs left

        def score(chunk):
            with torch.inference_mode():
                self._score_chunk(x, acts, cap.classes, chunk, scores, size, bs)
            if bar is not None:
                bar.update(len(chunk))
        workers, threads = self._workers(len(chunks))
        self.plan_ = {"batch_size": bs, "workers": workers, "threads": threads}
        try:
            _run_chunks(score, chunks, workers, threads)
        finally:
            if bar is not None:
                bar.close()
        self._keep, self._scores = keep, scores
        base = class_scores(cap.logits, cap.classes, self.score)
        self._combined = scorecam_combine(self.flavour, scores, keep, cap.acts[i], base, size, self.output_size)
        return self._combined[1]

    def combine(self, w, cap, i, x):
        return self._combined[0]

    def normalise(self, cam, x):
        return cam                                       # each flavour normalises in its own order


def _run_chunks(fn, chunks: list, workers: int, threads: int) -> None:
    """``fn(chunk)`` for every chunk: in order on this thread, or ``workers`` at a time on as many
    threads with ``threads`` torch threads each (restored afterwards); the first failure stops
    the chunks not yet started and is raised here."""
    if workers <= 1 or len(chunks) < 2:
        for c in chunks:
            fn(c)
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="score-cam") as pool:
            futures = [pool.submit(fn, c) for c in chunks]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        torch.set_num_threads(old)


def _bar(progress: bool, total: int):
    return progress_bar(total, "score-cam", unit="mask", enabled=progress)


#: ``largest_activation``'s answers per model: {(input shape, dtype, device, memory format, autocast,
#: the model's printed structure): bytes}
_LARGEST: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def largest_activation(model: nn.Module, x: torch.Tensor, runner: Runner | None = None) -> int:
    """Bytes of the largest leaf-module output for one sample (a per-sample memory estimate),
    read by a probe on every leaf module during one forward of ``x``. The answer depends on the
    architecture and the input, so it is kept per model and asked again for another input shape,
    dtype, device, memory format or autocast, or when the model's printed structure (its modules
    and their settings: strides, kernel sizes, widths) has changed."""
    run = cam_runner(model, runner)
    key = (tuple(x.shape[1:]), x.dtype, str(run.device), bool(run.config.channels_last), run.config.amp,
           repr(model))
    known = _LARGEST.setdefault(model, {})
    if key not in known:
        known[key] = _largest_activation(model, x, run)
    return known[key]


def _largest_activation(model: nn.Module, x: torch.Tensor, runner: Runner) -> int:
    largest = [0]

    def seen(_tap, t):
        if t.ndim:
            largest[0] = max(largest[0], t.numel() * t.element_size() // max(int(t.shape[0]), 1))
    taps = [TapSpec(name=name, role="path", path=name, layout="raw") for name, m in model.named_modules()
            if name and not list(m.children())]
    if not taps:
        return int(x[:1].numel() * x.element_size())
    with Probe(model, taps, callback=seen, nchw=False, clone=False, skip_non_tensor=True) as probe:
        runner.forward(model, x[:1], probe, need_output=True)
    return largest[0]


# ---------------------------------------------------------------------------- functions


def make_cam(model: nn.Module, method: str = "scorecam", target_layer=None, **kw) -> CamMethod:
    """The ``CamMethod`` of ``method`` (``scorecam``, ``gradcam``, ``gradcam++``)."""
    if method == "scorecam":
        return ScoreCam(model, target_layer, **kw)
    if method in ("gradcam", "gradcam++"):
        kw = {k: v for k, v in kw.items() if k in ("runner", "output_size", "layout", "input_size")}
        cls = GradCam if method == "gradcam" else GradCamPlusPlus
        return cls(model, target_layer, **kw)
    raise CamError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}", option="--method")


def score_cam(model: nn.Module, target_layer, images: torch.Tensor, classes=None, flavour: str = "gradcam-lib",
              batch_size: int | None = None, *, return_weights: bool = False, **options):
    """Score-CAM maps ``(B, H, W)`` in [0, 1] for ``images`` (B, 3, H, W), already normalised.

    ``target_layer``: a module, a tap request, a ``TargetLayer``, None (the model's default)
    or a list of them (maps averaged as pytorch-grad-cam does). ``classes``: None (top-1
    per image), an int, or one class per image. ``flavour``: ``gradcam-lib`` (default),
    ``authors`` or ``torchcam``. ``batch_size``: masked inputs per forward (None: automatic).
    With ``return_weights`` also returns the channel weights (B, C) of the first target layer
    (authors: the class probabilities, 0 for skipped constant channels).

    ``options`` are ``ScoreCam``'s: ``score`` (``logit`` or ``softmax``; default: the flavour's
    own), ``output_size`` (``input`` or ``layer``, torchcam only), ``memory_budget`` (bytes of
    masked inputs per forward when ``batch_size`` is None), ``layout``, ``progress``, ``runner``
    and ``workers`` (masked forwards side by side on a CPU; None: automatic, 1: one at a time)."""
    cam = ScoreCam(model, target_layer, flavour=flavour, batch_size=batch_size,
                   input_size=tuple(images.shape[-2:]), **options)
    out = cam(images, classes)
    return (out, cam.weights_[0]) if return_weights else out


def grad_cam(model: nn.Module, target_layer, images: torch.Tensor, classes=None, *, plus_plus: bool = False,
             output_size: str = "input", layout: str | None = None, return_weights: bool = False,
             runner: Runner | None = None):
    """Grad-CAM (captum ``LayerGradCam``, ReLU'd, bilinear upsampling) or Grad-CAM++
    (``plus_plus``) maps ``(B, H, W)`` in [0, 1]."""
    cls = GradCamPlusPlus if plus_plus else GradCam
    cam = cls(model, target_layer, runner=runner, output_size=output_size, layout=layout,
              input_size=tuple(images.shape[-2:]))
    out = cam(images, classes)
    return (out, cam.weights_[0]) if return_weights else out


def compute_cam(model, images, method: str = "scorecam", target_layer=None, classes=None, **kw) -> torch.Tensor:
    """One entry point for the three methods (``scorecam``, ``gradcam``, ``gradcam++``)."""
    if method == "scorecam":
        return score_cam(model, target_layer, images, classes, **kw)
    if method in ("gradcam", "gradcam++"):
        kw = {k: v for k, v in kw.items() if k in ("output_size", "layout", "return_weights", "runner")}
        return grad_cam(model, target_layer, images, classes, plus_plus=(method == "gradcam++"), **kw)
    raise CamError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}", option="--method")
