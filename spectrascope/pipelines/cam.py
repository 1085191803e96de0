"""The ``cam`` and ``context`` commands end to end: models built and target layers resolved
before any output, images resolved once for every model, the images sharded over the
``torchrun`` processes (``engine.runner.Runner`` batches, batch i on rank i mod world), the
per-image maps gathered to rank 0, which alone writes the overlays, the grid, ``maps.npz``
and ``results.json`` (with ``world_size``) into a staged output folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from spectrascope.analysis.cam import make_cam, resolve_target_layers
from spectrascope.analysis.context import context_maps, context_taps, map_labels, spg_lambdas
from spectrascope.engine.runner import RunConfig, Runner
from spectrascope.errors import CamError, SpectrascopeError
from spectrascope.io.results import Stopwatch, provenance, write_json
from spectrascope.io.sources import ImageSource
from spectrascope.ops.cam import check_flavour, flavour_score, localisation_scores
from spectrascope.pipelines.common import Outcome, random_weights_note, session, stage_output
from spectrascope.report.cam import cam_title, denormalize, overlay, plot_grid, safe_name, save_png, to_uint8

__all__ = ["run_cam", "run_context", "CHANNELS_LAST", "SCORECAM_IMAGES_PER_BATCH"]

#: channels-last activations by default (see benchmarks/bench_scorecam.py for the measurement)
CHANNELS_LAST = False
#: images per Score-CAM call: its cost is the masked forwards, so one image per batch shards best
SCORECAM_IMAGES_PER_BATCH = 1


@dataclass
class _Model:
    name: str
    checkpoint: str | None
    model: torch.nn.Module
    pre: object
    layers: list


def _same_random_weights(d, model: torch.nn.Module) -> None:
    """Under torchrun, a model without checkpoint gets rank 0's random weights on every rank."""
    if not d.enabled:
        return
    state = d.broadcast_object({k: v.detach().cpu() for k, v in model.state_dict().items()} if d.main else None)
    model.load_state_dict(state)


def _build(name, ck, img_size, device, overrides, target_layer, d=None) -> _Model:
    from spectrascope.zoo.build import build_for_inference
    model, pre = build_for_inference(name, checkpoint=ck, img_size=img_size, device=device, **(overrides or {}))
    if ck is None and d is not None:
        _same_random_weights(d, model)
    layers = resolve_target_layers(model, target_layer, input_size=tuple(pre["size"]))
    return _Model(name, ck, model, pre, layers)


def _inputs(source: ImageSource, models) -> list:
    return list(source.roots) + [m[1] for m in models if m[1]]


def _gathered(d, local):
    """Every rank's ``local`` results merged (on every rank); a user error on any rank is raised
    on every rank, so no process waits for a collective that never comes."""
    if not d.enabled:
        if isinstance(local, Exception):
            raise local
        return local
    got = d.all_gather_object(local if not isinstance(local, Exception) else ("error", type(local), str(local)))
    for g in got:
        if isinstance(g, tuple) and g and g[0] == "error":
            if isinstance(local, Exception):
                raise local
            raise g[1](g[2])
    merged = {}
    for g in got:
        merged.update(g)
    return merged


def _maps_of(entry: _Model, source: ImageSource, runner: Runner, method: str, classes, cam_kw: dict) -> dict:
    """{image index: (map, class, probability, top-1)} for this rank's share of the images."""
    runner.prepare(entry.model)
    ds = source.dataset(entry.pre)
    cam = make_cam(entry.model, method, entry.layers, runner=runner, **cam_kw)
    out = {}
    for _k, idx in runner.chunks(len(ds)):
        x = torch.stack([ds[i] for i in idx])
        cls = classes if (classes is None or isinstance(classes, int)) else [classes[i] for i in idx]
        maps = cam(x, cls)
        probs = cam.logits_.softmax(-1)
        for j, i in enumerate(idx):
            c = int(cam.classes_[j])
            out[i] = (maps[j].numpy().astype(np.float32), c, float(probs[j, c]), int(cam.logits_[j].argmax()))
    return out


def _compute(entry, source, runner, method, classes, cam_kw):
    try:
        return _maps_of(entry, source, runner, method, classes, cam_kw)
    except SpectrascopeError as exc:
        return exc


def _entry(m: _Model, method, flavour, res, n, seconds, boxes) -> dict:
    used = [res[i][1] for i in range(n)]
    cam = torch.from_numpy(np.stack([res[i][0] for i in range(n)]))
    from spectrascope.zoo.checkpoint import file_sha256
    e = {"model": m.name, "checkpoint": m.checkpoint, "checkpoint_sha256": file_sha256(m.checkpoint) if m.checkpoint
         else None, "random_weights": m.checkpoint is None, "input_size": list(m.pre["size"]),
         "target_layer": ",".join(tl.path for tl in m.layers), "target_tap": ",".join(tl.name for tl in m.layers),
         "target_layout": ",".join(tl.layout for tl in m.layers), "method": method,
         "flavour": flavour if method == "scorecam" else None, "classes": used,
         "class_probability": [res[i][2] for i in range(n)], "top1": [res[i][3] for i in range(n)],
         "seconds": seconds}
    if boxes is not None:
        e["localisation"] = localisation_scores(cam, boxes)
    return e, cam


def _write_cam(out: Path, built, source, results, method, flavour) -> list[str]:
    """Overlays, grid and maps.npz of every model (rank 0)."""
    names = source.names
    grid_cols: dict[str, dict] = {"input": {}}
    npz = {}
    for m, res in zip(built, results):
        mdir = out / "overlays" / safe_name(m.name)
        mdir.mkdir(parents=True, exist_ok=True)
        label = m.name + ("" if m.checkpoint else " (random)")
        ds = source.dataset(m.pre)
        for i, img_name in enumerate(names):
            rgb = denormalize(ds[i], m.pre["mean"], m.pre["std"])
            ov = overlay(rgb, res[i][0])
            save_png(mdir / f"{safe_name(img_name)}.png", ov)
            grid_cols.setdefault(label, {})[img_name] = ov
            grid_cols["input"].setdefault(img_name, to_uint8(rgb))
            npz[f"{safe_name(m.name)}/{safe_name(img_name)}"] = res[i][0]
    cols = list(grid_cols)
    rows = [[grid_cols[c][n] for c in cols if n in grid_cols[c]] for n in names]
    plot_grid(rows, names, cols, out, cam_title(method, flavour, any(m.checkpoint is None for m in built)))
    np.savez_compressed(out / "maps.npz", **npz)
    return ["grid.png"] + [f"overlays/{safe_name(m.name)}/" for m in built]


def _cam_config(device, d, *, method, batch_size, channels_last, amp, workers=0) -> Runner:
    per = SCORECAM_IMAGES_PER_BATCH if method == "scorecam" else batch_size
    cl = CHANNELS_LAST if channels_last is None else bool(channels_last)
    return Runner(RunConfig(device=device, batch_size=per, channels_last=cl, amp=amp or "off", workers=workers), d)


def run_cam(models: Sequence[tuple[str, str | None]], *, method="scorecam", flavour="gradcam-lib",
            target_layer=None, target_class=None, images=None, data=None, num_images=None, img_size=None,
            device="cpu", overrides=None, batch_size=16, score=None, output=None, overwrite=False,
            progress=False, mask_batch_size: int | None = None, channels_last: bool | None = None,
            amp: str = "off") -> Outcome:
    """CAM maps of every model on the same images. ``models``: (name, checkpoint or None).
    ``batch_size``: images per Grad-CAM pass; ``mask_batch_size``: masked inputs per Score-CAM
    forward (None: automatic). Returns an ``Outcome`` whose payload is results.json."""
    clock = Stopwatch()
    if not models:
        raise CamError("give at least one model", option="--model")
    check_flavour(flavour)
    flavour_score(flavour, score)
    with session(device) as (d, dev):
        source = ImageSource.resolve(images, data, num_images, render=True, default_count=8)
        tag = "-".join(n for n, _ in models)
        stage = stage_output(output, command="cam", tag=tag, overwrite=overwrite, inputs=_inputs(source, models),
                             dist=d)
        built = [_build(n, ck, img_size, dev, overrides, target_layer, d) for n, ck in models]
        runner = _cam_config(dev, d, method=method, batch_size=batch_size, channels_last=channels_last, amp=amp)
        cam_kw = {"output_size": "input"}
        if method == "scorecam":
            cam_kw.update(flavour=flavour, batch_size=mask_batch_size, score=score, progress=progress and d.main)
        results, per_model = [], []
        for m in built:
            t0 = Stopwatch()
            classes = target_class if target_class is not None else source.labels
            res = _gathered(d, _compute(m, source, runner, method, classes, cam_kw))
            boxes = source.boxes_for(m.pre)
            entry, _ = _entry(m, method, flavour, res, len(source), t0.elapsed, boxes)
            results.append(res)
            per_model.append(entry)
        payload = None
        with stage as out:
            if out is not None:
                figures = _write_cam(out, built, source, results, method, flavour)
                prov = provenance(command="cam", model=",".join(n for n, _ in models),
                                  random_weights=any(ck is None for _, ck in models), images_sha256=source.digest,
                                  device=dev, wall_time_s=clock.elapsed, world_size=d.world)
                payload = {"provenance": prov, "method": method, "images": source.names, "models": per_model,
                           "boxes": source.boxes_for(built[0].pre), "notes": list(source.notes),
                           "figures": figures}
                write_json(out / "results.json", payload)
        final = stage.final
        if not d.main:
            return Outcome()                                 # rank 0 reports for every process
    return _cam_outcome(final, method, source, per_model, models, payload)


def _cam_outcome(final, method, source, per_model, models, payload) -> Outcome:
    lines = []
    for e in per_model:
        loc = e.get("localisation")
        extra = ""
        if loc:
            energy = loc["mean_energy_in_box"]
            extra = (f", pointing game {loc['pointing_accuracy']:.2f}, energy in box "
                     f"{'undefined' if energy is None else f'{energy:.3f}'}")
        lines.append(f"{e['model']}: {method} at {e['target_layer']} on {len(source)} images{extra}")
    notes = list(source.notes)
    rnd = random_weights_note([n for n, ck in models if ck is None], "the maps are not meaningful")
    if rnd:
        notes.insert(0, rnd)
    return Outcome(output=final, summary="\n".join(lines), notes=notes, payload=payload or {})


def _context_of(m: _Model, source: ImageSource, runner: Runner, prefix: str):
    """{image index: {map name: (H, W) map}} for this rank's share of the images."""
    try:
        runner.prepare(m.model)
        ds = source.dataset(m.pre)
        out = {}
        for _k, idx in runner.chunks(len(ds)):
            res = context_maps(m.model, torch.stack([ds[i] for i in idx]), prefix, runner=runner)
            for j, i in enumerate(idx):
                out[i] = {k: v[j].numpy().astype(np.float32) for k, v in res["maps"].items()}
        return out
    except SpectrascopeError as exc:
        return exc


def _write_context(out: Path, m: _Model, source, res, keys, labels, title) -> None:
    rows, npz = [], {}
    odir = out / "overlays"
    odir.mkdir()
    ds = source.dataset(m.pre)
    for i, img_name in enumerate(source.names):
        rgb = denormalize(ds[i], m.pre["mean"], m.pre["std"])
        row = [to_uint8(rgb)]
        for k in keys:
            ov = overlay(rgb, res[i][k])
            save_png(odir / f"{safe_name(img_name)}_{k}.png", ov)
            row.append(ov)
            npz[f"{safe_name(img_name)}/{k}"] = res[i][k]
        rows.append(row)
    plot_grid(rows, source.names, ["input"] + labels, out, title)
    np.savez_compressed(out / "maps.npz", **npz)


def run_context(model_name: str, *, checkpoint=None, block=None, images=None, data=None, num_images=None,
                img_size=None, device="cpu", overrides=None, batch_size=16, output=None, overwrite=False,
                channels_last: bool | None = None, amp: str = "off") -> Outcome:
    """SPANet context maps of one SPAM block (see ``analysis.context``); the payload is results.json."""
    from spectrascope.zoo.build import build_for_inference
    from spectrascope.zoo.checkpoint import file_sha256
    clock = Stopwatch()
    with session(device) as (d, dev):
        source = ImageSource.resolve(images, data, num_images, render=True, default_count=8)
        stage = stage_output(output, command="context", tag=model_name, overwrite=overwrite,
                             inputs=_inputs(source, [(model_name, checkpoint)]), dist=d)
        model, pre = build_for_inference(model_name, checkpoint=checkpoint, img_size=img_size, device=dev,
                                         **(overrides or {}))
        if checkpoint is None:
            _same_random_weights(d, model)
        prefix, taps = context_taps(model, block)
        m = _Model(model_name, checkpoint, model, pre, [])
        runner = _cam_config(dev, d, method="context", batch_size=batch_size, channels_last=channels_last, amp=amp)
        res = _gathered(d, _context_of(m, source, runner, prefix))
        keys = [t.name.rsplit(".", 1)[1] for t in taps]
        labels = map_labels(keys, spg_lambdas(model, prefix))
        payload = None
        with stage as out:
            if out is not None:
                title = f"{model_name}: SPG maps and aggregated context at {prefix}"
                if checkpoint is None:
                    title += "\n(random weights: no checkpoint given)"
                _write_context(out, m, source, res, keys, labels, title)
                prov = provenance(command="context", model=model_name, random_weights=checkpoint is None,
                                  checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None,
                                  images_sha256=source.digest, device=dev, wall_time_s=clock.elapsed,
                                  world_size=d.world)
                payload = {"provenance": prov, "block": prefix, "maps": dict(zip(keys, labels)),
                           "images": source.names, "notes": {t.name.rsplit(".", 1)[1]: t.note for t in taps},
                           "aggregation": "channel mean, bilinear resize to the input, min-max",
                           "figures": ["grid.png", "overlays/"]}
                write_json(out / "results.json", payload)
        final = stage.final
        if not d.main:
            return Outcome()
    notes = list(source.notes)
    if checkpoint is None:
        notes.insert(0, random_weights_note([model_name], "the maps are not meaningful"))
    summary = (f"context maps of {model_name} at {prefix} ({', '.join(labels)}) on {len(source)} images")
    return Outcome(output=final, summary=summary, notes=notes, payload=payload or {})
