"""The ``train`` pipeline: a training run (``spectrascope.train``) and its one-line summary."""
from __future__ import annotations

from pathlib import Path

from spectrascope.pipelines.common import Outcome
from spectrascope.train.config import TrainConfig
from spectrascope.train.loop import train

__all__ = ["run_train"]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def run_train(cfg: TrainConfig, *, resume: str | None = None, log=None) -> Outcome:
    """Train (or resume) ``cfg``; the outcome's payload is the results.json of the run."""
    res = train(cfg, resume=resume, log=log)
    out = Path(res["run"]["output"]) if res else None
    summary = ""
    if res and res.get("final"):
        f, best = res["final"], res["best"]
        summary = (f"done: top-1 {_fmt(f['top1'])}  top-5 {_fmt(f['top5'])}  best top-1 {_fmt(best.get('top1'))} "
                   f"(epoch {best.get('epoch')})  -> {out}")
    return Outcome(output=out, summary=summary, payload=res or {})
