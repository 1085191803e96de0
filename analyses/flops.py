"""``flops``: parameters and FLOPs of one forward pass of one image, with breakdowns.

One multiply-accumulate counts as one FLOP (fvcore's and the papers' convention); FFTs are
free by default (as fvcore and the papers count them) or ``N C ceil(log2 N)`` per transform
with ``--fft nlogn``. Zoo models are counted on the meta device (no weights allocated). See
``engine.flops`` for the rules and ``ops.flops`` for the per-operator counts.

Example:
    ``spectrascope flops --model dfformer_s18 --by stage``
"""
from __future__ import annotations

from dataclasses import dataclass, field

from spectrascope.engine.flops import BREAKDOWNS, FFT_MODES, count_flops
from spectrascope.report.tables import flops_json, flops_text
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import choice
from spectrascope.zoo.registry import resolve_name

__all__ = ["Flops", "FlopsResult"]


@dataclass(kw_only=True)
class FlopsResult(Result):
    """One count per model (``engine.flops.FlopCount``: params, FLOPs by module, operator, stage)."""

    counts: list = field(default_factory=list, metadata={"json": False})
    by: str | None = None
    depth: int = 2
    as_json: bool = False


@register
class Flops(Analysis):
    """Parameters and FLOPs (one per multiply-accumulate, fvcore's conventions) of one forward pass of
    one image; zoo models are counted on the meta device (no weights are allocated)."""

    name = "flops"
    summary = "Parameters and FLOPs of one forward pass, with breakdowns by module, operator or stage"
    needs = Needs(models="many", data=None, runner=False, output=False, seed=False)
    without = ("checkpoint", "pretrained", "weights_dir", "model_kwargs", "device")
    options = (
        Option("fft", "none", "FFTs free (fvcore, the papers) or N*C*ceil(log2 N) per transform in the total",
               type=choice(*FFT_MODES)),
        Option("by", None, "break the count down by module, operator kind or stage", type=choice(*BREAKDOWNS)),
        Option("depth", 2, "module path depth of --by module (1-8)", type=int,
               parse=lambda v: _depth(v)),
        Option("json", False, "print a JSON list (plain integer counts)", type=bool),
    )
    result = FlopsResult

    def run(self, ctx) -> FlopsResult:
        p = ctx.params
        names = [s.name if s.name.startswith("timm:") else resolve_name(s.name) for s in ctx.specs]
        counts = [count_flops(n, p.img_size, fft=p.fft) for n in names]
        return FlopsResult(counts=counts, by=p.by, depth=p.depth, as_json=p.json)

    def describe(self, result, output):
        fn = flops_json if result.as_json else flops_text
        return [fn(result.counts, by=result.by, depth=result.depth)]


def _depth(value):
    from spectrascope.errors import OptionError
    if value is not None and not 1 <= value <= 8:
        raise OptionError(f"{value} is not in the range 1<=x<=8", option="--depth")
    return value
