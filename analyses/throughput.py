"""``throughput``: inference throughput and peak memory vs input resolution (DFFormer Figs. 5-6).

The protocol of timm's benchmark script, which the official DFFormer figures follow: random
input ``(batch, 3, S, S)``, ``eval()`` and inference mode, warm-up iterations, then timed
iterations with device synchronisation; throughput = images / wall time; peak memory =
``torch.cuda.max_memory_allocated`` after a reset (CUDA only). Every model is built for each
resolution (the size-bound DF/GF filters follow the input). See ``engine.throughput``.

Example:
    ``spectrascope throughput --model dfformer_s18 --model convformer_s18 --resolutions 224,384``
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from spectrascope.engine.throughput import MEMORY_NOTE, sweep
from spectrascope.errors import OptionError
from spectrascope.io.results import write_csv
from spectrascope.report import throughput as report
from spectrascope.report.style import save_figure
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import parse_img_size, parse_non_negative, parse_positive

__all__ = ["Throughput", "ThroughputResult", "parse_resolutions"]


def parse_resolutions(value) -> list:
    """``"224,384"`` / ``[224, (96, 128)]`` -> a list of sizes (S or (H, W))."""
    items = value.split(",") if isinstance(value, str) else list(value)
    res = [parse_img_size(r, option="--resolutions") for r in items if str(r).strip()]
    if not res:
        raise OptionError("needs at least one size (S or HxW, comma-separated)", option="--resolutions")
    return res


@dataclass(kw_only=True)
class ThroughputResult(Result):
    """One row per (model, resolution): images/s, ms per batch, peak memory (CUDA), parameters,
    ``status`` (``ok`` or ``oom``); ``protocol``: batch size, warm-up, iterations, AMP, memory format."""

    rows: list[dict] = field(default_factory=list)
    protocol: dict = field(default_factory=dict)


def _echo_row(r) -> None:
    print(f"{r['model']} {r['resolution'][0]}x{r['resolution'][1]}: "
          + (f"{r['throughput_img_s']:.1f} img/s" if r["status"] == "ok" else "out of memory"), file=sys.stderr)


@register
class Throughput(Analysis):
    """Inference throughput and peak memory vs resolution (DFFormer Figs. 5-6); every model is
    built for each resolution. Peak memory is measured on CUDA only."""

    name = "throughput"
    summary = "Inference throughput and peak memory vs resolution (DFFormer Figs. 5-6)"
    needs = Needs(models="many", data=None, batches=True, seed=False)
    shared = {"batch_size": {"default": 4}}
    without = ("checkpoint", "pretrained", "weights_dir", "img_size", "compile", "workers")
    options = (
        Option("resolutions", "224,384,512", "comma list of S or HxW", parse=parse_resolutions),
        Option("warmup", 10, "untimed forwards first", type=int, parse=parse_non_negative("--warmup")),
        Option("iters", 40, "timed forwards", type=int, parse=parse_positive("--iters")),
    )
    result = ThroughputResult

    def check(self, p) -> None:
        """Every zoo model at every resolution against its minimum size and this machine's memory
        (``zoo.limits.check_input_size``), before any model is built."""
        from spectrascope.zoo import registry
        from spectrascope.zoo.limits import check_input_size
        for name in p.model:
            if str(name).startswith("timm:"):
                continue
            card = registry.get_card(registry.resolve_name(name))
            for r in p.resolutions:
                check_input_size(card, (r, r) if isinstance(r, int) else r, p.model_kwargs, option="--resolutions")

    def run(self, ctx) -> ThroughputResult:
        p, r = ctx.params, ctx.runner
        names = [s.name for s in ctx.specs]
        amp = None if r.config.amp == "off" else r.config.amp
        rows = sweep(names, p.resolutions, batch_size=r.config.batch_size, device=r.device, warmup=p.warmup,
                     iters=p.iters, amp=amp, channels_last=r.config.channels_last, model_kwargs=p.model_kwargs,
                     progress=_echo_row if ctx.progress else None)
        if r.device.type != "cuda":
            ctx.note(MEMORY_NOTE.format(device=r.device.type))
        protocol = {"batch_size": r.config.batch_size, "warmup": p.warmup, "iters": p.iters, "amp": r.config.amp,
                    "channels_last": r.config.channels_last, "input": "randn",
                    "cudnn_benchmark": r.device.type == "cuda",
                    "memory": "torch.cuda.max_memory_allocated (CUDA only)", "device": str(r.device)}
        return ThroughputResult(rows=rows, protocol=protocol)

    def report(self, result, folder, style):
        write_csv(folder / "throughput.csv", [{k: (v if k != "resolution" else "x".join(map(str, v)))
                                               for k, v in row.items()} for row in result.rows])
        return ["throughput.csv"] + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        dev = result.protocol.get("device", "cpu").split(":")[0]
        out = []
        for stem, fig in report.figures(result.rows, title_suffix=f" ({dev}, batch {result.protocol['batch_size']})"
                                        ).items():
            out += [p.name for p in save_figure(fig, folder, stem, style.formats)]
        return out

    def describe(self, result, output):
        models = {r["model"] for r in result.rows}
        res = {tuple(r["resolution"]) for r in result.rows}
        return [f"throughput of {len(models)} model(s) at {len(res)} resolution(s) -> {output}"]
