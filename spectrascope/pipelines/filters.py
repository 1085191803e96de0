"""The ``spectrascope filters`` pipeline: build the model, read its filter banks, run the
image-dependent views (DF routing statistics, effective filters, AFF masks) on the engine's
runner -- sharded and all-reduced under ``torchrun`` -- and write the figures,
``filters.npz`` and ``results.json`` into a staged output folder (rank 0 writes).

A checkpoint holding NaN/inf stops the run with one ``NonFiniteError`` line before anything
is written; so does a non-finite tap or output during a forward (the runner's check).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spectrascope.analysis import filters as af
from spectrascope.engine.runner import RunConfig, Runner
from spectrascope.errors import TapError
from spectrascope.io.results import Stopwatch, provenance, write_json
from spectrascope.io.sources import ImageSource
from spectrascope.ops import filters as fl
from spectrascope.pipelines.common import Outcome, random_weights_note, session, stage_output
from spectrascope.report import filters as rf
from spectrascope.report.style import check_cmap
from spectrascope.zoo.build import ModelSpec, build

__all__ = ["run_filters", "aff_lines", "DEFAULT_EFFECTIVE_CHANNELS", "GLOBAL_COLUMNS"]

#: channels of the effective filters shown without --channels
DEFAULT_EFFECTIVE_CHANNELS = (0, 1, 2, 3)
#: channels of the global filters shown without --channels
GLOBAL_COLUMNS = 24


@dataclass
class _Job:
    """The state of one run: what the model has, where the results go, what was written."""

    name: str
    model: torch.nn.Module
    pre: object
    runner: Runner
    note: str
    cmap: str | None
    channels: list | None
    selection: object = None
    source: ImageSource | None = None
    out: Path | None = None
    arrays: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def figures(self, files) -> None:
        self.summary["figures"].extend(files)

    def images(self, n: int) -> torch.Tensor:
        return self.source.load(self.pre, list(range(min(n, len(self.source))))).to(self.runner.device)

    def stem(self, i: int) -> str:
        return Path(self.source.names[i]).stem


def _has_aff(model) -> bool:
    return any(t.role == "aff_mask" for t in af._declared(model))


def _has_spf(model) -> bool:
    return hasattr(model, "spf_modules") and bool(model.spf_modules())


def _banks(job: _Job, banks: list) -> tuple[list, list]:
    """Amplitudes, arrays, summary rows and the basis / global filter figures."""
    amps = [fl.filter_amplitude(b.filters, width=b.width) for b in banks]
    for b, a in zip(banks, amps):
        job.arrays[f"amplitude/{b.name}"] = a.numpy().astype(np.float32)
        job.summary["layers"].append({"name": b.name, "parameter": b.path, "kind": b.kind, "stage": b.stage,
                                      "filters": int(a.shape[0]), "grid": list(b.grid), **af.filter_summary(a)})
    dynamic = [i for i, b in enumerate(banks) if b.kind == "dynamic-basis"]
    static = [i for i, b in enumerate(banks) if b.kind != "dynamic-basis"]
    if job.out is None:
        return banks, dynamic
    if dynamic:
        n = max(amps[i].shape[0] for i in dynamic)
        job.figures(rf.plot_filter_grid(
            [banks[i] for i in dynamic], [amps[i] for i in dynamic], n, job.out, "basis_filters",
            title=f"{job.name}: dynamic filter bases |W| (DC centred, one scale per stage){job.note}",
            cmap=job.cmap or rf.DEFAULT_CMAP, col_label="basis")[1])
    if static:
        ch = job.channels
        sel = [amps[i][list(ch)] if ch else amps[i] for i in static]
        job.figures(rf.plot_filter_grid(
            [banks[i] for i in static], sel, len(ch) if ch else GLOBAL_COLUMNS, job.out, "global_filters",
            title=f"{job.name}: global filters |W| (DC centred, one scale per stage){job.note}",
            cmap=job.cmap or rf.DEFAULT_CMAP, col_label="ch")[1])
    return banks, dynamic


def _routing(job: _Job, n_images: int) -> None:
    """Routing statistics over every image (sharded over the ranks, merged)."""
    ds = job.source.dataset(job.pre)
    stats = af.routing_statistics(job.model, ds, job.runner, selection=job.selection)
    job.summary["routing"] = {k: {"argmax_share": v["argmax_share"].tolist(),
                                  "mean_entropy_nats": float(v["entropy"].mean()), "images": v["images"]}
                              for k, v in stats.items()}
    for k, v in stats.items():
        job.arrays[f"routing_mean/{k}"] = v["mean"].numpy().astype(np.float32)
    if job.out is not None:
        job.figures(rf.plot_routing(stats, job.out, "routing", cmap=job.cmap or rf.DEFAULT_CMAP,
                                    title=f"{job.name}: which basis the channels use over {n_images} "
                                          f"images{job.note}")[1])


def _effective(job: _Job, effective: int) -> None:
    """The effective filters of the first ``effective`` images (rank 0: per-image outputs)."""
    if job.out is None:
        return
    chs = list(job.channels or DEFAULT_EFFECTIVE_CHANNELS)
    eff = af.effective_filters(job.model, job.images(effective), job.runner, channels=chs, selection=job.selection)
    for k, v in eff.items():
        job.arrays[f"effective_amplitude/{k}"] = v.numpy()
    names = list(eff)
    for i in range(min(effective, len(job.source))):
        rows = [[eff[k][i, c].numpy() for c in range(eff[k].shape[1])] for k in names]
        stem = f"effective_{i:02d}_{job.stem(i)}"
        job.figures(rf.plot_rows(rows, names, [f"ch {c}" for c in chs], job.out, stem,
                                 title=f"{job.name}: effective filters of {job.source.names[i]}{job.note}",
                                 cmaps=[job.cmap or rf.DEFAULT_CMAP], cbar_labels=[rf.AMPLITUDE_LABEL])[1])


def _aff(job: _Job) -> None:
    """AFFNet masks and equivalent kernels of the first (up to 4) images."""
    x = job.images(max(1, min(len(job.source), 4)))
    res = af.aff_masks(job.model, x, job.runner, selection=job.selection)
    job.summary["aff"] = [{"name": r["name"], "stage": r["stage"], "grid": list(r["grid"]),
                           "mask_shape": list(r["mask"].shape),
                           "equivalence_max_abs_error": r["equivalence_max_abs_error"]} for r in res]
    for r in res:
        job.arrays[f"aff_mask/{r['name']}"] = r["mask"].numpy()
        job.arrays[f"aff_kernel/{r['name']}"] = r["kernel"].numpy()
    if job.out is None:
        return
    cols = ["|M| mean (DC centred)", "kernel mean", "kernel ch0", "kernel ch1", "kernel ch2"]
    for i in range(x.shape[0]):
        rows = []
        for r in res:
            amp = fl.filter_amplitude(r["mask"][i], width=r["grid"][1])
            ker = fl.centered_kernel(r["kernel"][i])
            rows.append([amp.mean(0).numpy(), ker.mean(0).numpy()] + [ker[c].numpy() for c in range(3)])
        job.figures(rf.plot_rows(
            rows, [r["name"] for r in res], cols, job.out, f"aff_masks_{i:02d}_{job.stem(i)}",
            title=f"{job.name}: adaptive masks and equivalent kernels, {job.source.names[i]}{job.note}",
            cmaps=[job.cmap or rf.DEFAULT_CMAP, "gray", "gray", "gray", "gray"],
            cbar_labels=["amplitude |M|", "kernel weight"])[1])


def _spf(job: _Job) -> None:
    """SPANet SPF masks per stage and lambda, and their spatial kernels."""
    res = af.spf_masks(job.model)
    lams = sorted({round(r["lambda"], 6) for r in res})
    stages = sorted({r["stage"] for r in res})
    by = {(r["stage"], round(r["lambda"], 6)): r for r in res}
    job.summary["spf"] = [{"stage": r["stage"], "lambda": r["lambda"], "radius": r["radius"],
                           "grid": list(r["mask"].shape),
                           "values": sorted({round(float(v), 6) for v in r["mask"].unique()})} for r in res]
    for r in res:
        job.arrays[f"spf_mask/stage{r['stage']}_lambda{r['lambda']:.1f}"] = r["mask"].numpy()
    if job.out is None:
        return
    heads = [f"lambda {lam:.1f}" for lam in lams]
    rows = [[by[(s, lam)]["mask"].numpy() for lam in lams if (s, lam) in by] for s in stages]
    job.figures(rf.plot_rows(rows, [f"stage {s} (r={by[(s, lams[0])]['radius']})" for s in stages], heads, job.out,
                             "spf_masks", title=f"{job.name}: SPF masks (DC centred)",
                             cmaps=[job.cmap or rf.DEFAULT_CMAP], cbar_labels=["mask value"],
                             shared=[(0, 1)] * len(lams))[1])
    rows = [[by[(s, lam)]["kernel"].numpy() for lam in lams if (s, lam) in by] for s in stages]
    job.figures(rf.plot_rows(rows, [f"stage {s}" for s in stages], heads, job.out, "spf_kernels",
                             title=f"{job.name}: SPF equivalent spatial kernels (centred)", cmaps=["gray"],
                             cbar_labels=["kernel weight"])[1])


def _what(model, name: str, layers) -> tuple[list, bool, bool, object]:
    """(filter banks, has AFF masks, has SPF masks, --layers selection), checked."""
    banks = af.collect_filters(model)
    has_aff, has_spf = _has_aff(model), _has_spf(model)
    if not banks and not has_aff and not has_spf:
        raise TapError(f"{name} has no frequency filters to show (no complex filter parameters, AFF masks or "
                       "SPF masks)", option="--model")
    selection = af.resolve_layers(model, layers, known=[b.name for b in banks])
    if banks:
        banks = af.select_layers(banks, selection, layers)
    return banks, has_aff, has_spf, selection


def _record(job: _Job, built, clock: Stopwatch) -> None:
    np.savez_compressed(job.out / "filters.npz", **job.arrays)
    prov = provenance(command="filters", model=job.name, random_weights=built.random_weights,
                      images_sha256=job.source.digest if job.source is not None else None,
                      device=job.runner.device, wall_time_s=clock.elapsed,
                      checkpoint_sha256=built.checkpoint_sha256)
    write_json(job.out / "results.json", {"provenance": prov, **job.summary})


def run_filters(model_name: str, *, checkpoint=None, img_size=None, device="auto", overrides=None, layers=None,
                images=None, data=None, num_images=None, batch_size=16, routing=False, effective=0,
                channels=None, output=None, overwrite=False, cmap=None, progress=False) -> Outcome:
    """Build the model, extract its filters and write figures + ``filters.npz`` +
    ``results.json`` into ``output`` (staged: nothing is left behind on error).
    ``Outcome.payload`` is the results summary (``figures``, ``layers``, ``routing``, ``aff``, ``spf``)."""
    clock = Stopwatch()
    check_cmap(cmap)
    with session(device) as (d, dev):
        built = build(ModelSpec(model_name, checkpoint, img_size, dict(overrides or {})), dev)
        model = built.model
        af.check_finite_weights(model, f"the weights of {model_name}")
        banks, has_aff, has_spf, selection = _what(model, model_name, layers)
        dynamic = any(b.kind == "dynamic-basis" for b in banks)
        rf.check_channels(channels, _channel_counts(model, banks, bool(effective)))
        needs_images = has_aff or ((routing or effective) and dynamic)
        source = ImageSource.resolve(images, data, num_images) if needs_images else None
        inputs = ([checkpoint] if checkpoint else []) + (list(source.roots) if source is not None else [])
        stage = stage_output(output, command="filters", tag=model_name, overwrite=overwrite, inputs=inputs, dist=d)
        runner = Runner(RunConfig(dev, batch_size, progress=progress), dist=d)
        note = "" if checkpoint else "\n(random weights: no checkpoint given)"
        with stage as out:
            job = _Job(model_name, model, built.pre, runner, note, cmap, channels, selection, source, out,
                       summary={"model": model_name, "family": _family(model), "input_size": list(built.pre.size),
                                "colour_map": cmap or rf.DEFAULT_CMAP, "figures": [], "layers": []})
            if banks:
                _banks(job, banks)
            if routing and dynamic:
                _routing(job, len(source))
            if effective and dynamic:
                _effective(job, effective)
            if has_aff:
                _aff(job)
            if has_spf:
                _spf(job)
            if out is not None:
                _record(job, built, clock)
    return _outcome(job, stage.final, checkpoint, source) if d.main else Outcome(output=stage.final,
                                                                                 payload=job.summary)


def _channel_counts(model, banks, effective: bool) -> dict[str, int]:
    """Channels of every layer ``--channels`` applies to: the global filters, and the dynamic
    filters' layers when effective filters are drawn."""
    counts = {}
    for b in banks:
        if b.kind != "dynamic-basis":
            counts[b.name] = int(b.filters.shape[0])
        elif effective:
            n = getattr(model.get_submodule(b.path.rsplit(".", 1)[0]), "med_channels", None)
            if isinstance(n, int):
                counts[b.name] = n
    return counts


def _family(model) -> str:
    card = getattr(model, "card", None)
    return card.family if card is not None else type(model).__name__.lower()


def aff_lines(payload: dict) -> list[str]:
    """The equivalence check of every AFF layer, one line each."""
    return [f"{a['name']}: mask filtering == circular convolution with its kernel, "
            f"max abs error {a['equivalence_max_abs_error']:.2e}"
            for a in payload.get("aff", []) if a["equivalence_max_abs_error"] is not None]


def _outcome(job: _Job, final: Path, checkpoint, source) -> Outcome:
    notes = list(source.notes) if source is not None else []
    rw = random_weights_note([job.name] if checkpoint is None else [], "the filters are its initialisation")
    if rw:
        notes.append(rw)
    summary = f"filters of {job.name} -> {final} ({', '.join(job.summary['figures'])})"
    return Outcome(output=final, summary=summary, notes=notes, payload=job.summary)
