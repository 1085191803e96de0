"""``fourier-heatmap``: the error of a model under a perturbation along each Fourier basis image
(Yin et al. 2019, "A Fourier perspective on model robustness", Fig. 1-3).

For every frequency ``(fy, fx)`` of the model's H x W input and every labelled image ``x`` in
[0, 1] (before the model's normalisation):

    x~ = clip(x + eps * r * U_fy,fx, 0, 1),   U = cos(2 pi (fy y / H + fx x / W)) / ||cos(...)||_2,

with ``r = +-1`` per image and channel (seeded: ``--seed``; ``--sign +1`` / ``-1`` for a
deterministic map). The map holds the top-1 error rate (with its Wilson interval) and the mean
cross-entropy per frequency, on the frequency plane centred on DC; a basis and its conjugate are
one image, so the half plane is computed and mirrored (``ops.fourier_basis``).

The loop (``engine.heatmap``) decodes every image once and sends many bases x images through one
forward; under ``torchrun`` the *bases* are shared out over the processes (every process decodes
every image) and the per-basis sums are all-reduced, so every process holds the one-process map.

Resume. A run with ``--output DIR`` keeps its partial map beside the folder, in
``.DIR.fourier-heatmap-progress/`` (one JSON file per model and process, written atomically after
every ``--save-every`` bases of a batch). The file name carries a digest of everything the numbers
depend on (model weights, input size, images and labels, eps, sign, seed, AMP): the same command
given again, on any number of processes, continues from it; other settings start afresh and leave
it alone. SIGTERM/SIGINT end the run with the last file intact; the files are removed once the
result folder is committed.

Example:
    ``spectrascope fourier-heatmap --model dfformer_s18 --checkpoint run/best.pth --data cifar10:data
    --eps 4 --output runs/heatmap``
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spectrascope.engine.heatmap import HeatmapProgress, HeatmapSpec, heatmap_maps, run_heatmap
from spectrascope.errors import DataError
from spectrascope.ops.fourier_basis import SIGNS, basis_ids, half_plane
from spectrascope.ops.spectra import band_concentration, basis_radii, in_bands
from spectrascope.report import frequency as report
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import choice, parse_non_negative, parse_positive

from spectrascope.analyses._robustness import (FORWARD_BATCH, LEVEL, LabelledSource, clean_counts, forward_batch,
                                               model_labels, ordered_batches, perturbation_seed, prepare_model, rate,
                                               run_block)

__all__ = ["FourierHeatmap", "HeatmapResult", "ProgressStore", "REFERENCE"]

REFERENCE = "Yin et al. 2019, A Fourier perspective on model robustness in computer vision (NeurIPS)"
MAP_KEYS = ("error", "error_low", "error_high", "loss", "n")


@dataclass(kw_only=True)
class HeatmapResult(Result):
    """The heat maps of ``fourier-heatmap``.

    Attributes:
        method: eps, sign, seed, max_freq, confidence level, reference.
        images: count, sha256, source, classes of the labelled images.
        data: the data spec and, for synthetic data, its class bands (cycles per pixel).
        run: world size, device, batch sizes, AMP.
        models: one record per model: name, label, checkpoint, input size, ``clean`` error, map
            summary (``error_min`` / ``error_max`` / ``error_mean``, ``bases``), ``class_bands`` and
            ``band_concentration`` for synthetic data, ``resumed_bases``.
        maps: per model ``m<k>_<key>`` centred maps (error, error_low, error_high, loss, n) and the
            axes ``m<k>_fy`` / ``m<k>_fx`` (``heatmap.npz``; not in results.json).
    """

    method: dict
    images: dict
    data: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    maps: dict = field(default_factory=dict, metadata={"json": False})
    #: the partial-map files of this run (removed once the result folder is committed)
    progress_files: list = field(default_factory=list, metadata={"json": False}, compare=False)

    def arrays(self) -> dict:
        return {"heatmap.npz": {k: np.asarray(v) for k, v in self.maps.items()}}

    def load_arrays(self, files: dict) -> None:
        self.maps = dict(files.get("heatmap.npz", {}))

    def model_map(self, k: int, key: str = "error") -> np.ndarray:
        """The centred map ``key`` of model ``k``."""
        return np.asarray(self.maps[f"m{k}_{key}"])

    def axes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(fy, fx) signed frequencies of the rows and columns of model ``k``'s maps."""
        return np.asarray(self.maps[f"m{k}_fy"]), np.asarray(self.maps[f"m{k}_fx"])


# ---------------------------------------------------------------------------- resume


class ProgressStore:
    """The partial heat maps of one output folder (see the module doc): ``load(meta)`` merges every
    process's file of those settings, ``save(progress)`` writes this process's file atomically."""

    def __init__(self, output, rank: int = 0):
        final = Path(os.path.abspath(Path(output).expanduser()))
        self.folder = final.parent / f".{final.name}.fourier-heatmap-progress"
        self.rank = rank

    @staticmethod
    def key(meta: dict) -> str:
        """The digest of the settings (the start of every file name of one map)."""
        return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]

    def files(self, meta: dict) -> list[Path]:
        """Every process's file of these settings."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"{self.key(meta)}.rank*.json"))

    def path(self, meta: dict) -> Path:
        return self.folder / f"{self.key(meta)}.rank{self.rank}.json"

    def load(self, meta: dict, num_bases: int) -> HeatmapProgress:
        """The merged partial map of ``meta`` (empty when there is none).

        Raises:
            DataError: a file of these settings cannot be read (it is left as it is).
        """
        states = []
        for f in self.files(meta):
            try:
                states.append(HeatmapProgress.load(f, num_bases, meta))
            except (OSError, ValueError) as exc:
                raise DataError(f"the partial heat map {f} cannot be read ({str(exc).splitlines()[0]}); remove it "
                                "to start this map again", option="--output") from None
        return HeatmapProgress.latest(states, num_bases, meta)

    def save(self, progress: HeatmapProgress) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(progress.meta)
        progress.save(path)
        return path

    def remove(self, keys) -> None:
        """Remove the files of the settings ``keys`` (every process's) and the folder once empty."""
        for key in keys:
            for f in self.folder.glob(f"{key}.rank*.json"):
                f.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


# ---------------------------------------------------------------------------- the loop of one model


def _meta(m, source: LabelledSource, spec: HeatmapSpec, amp: str) -> dict:
    return {"analysis": "fourier-heatmap", "model": m.record["model"], "weights_sha256": m.record["weights_sha256"],
            "input_size": list(m.size), "normalization": [list(v) for v in m.normalization],
            "images_sha256": source.digest, "num_images": len(source), "eps": float(spec.eps), "sign": spec.sign,
            "seed": int(spec.seed), "amp": amp}


def _summary(maps: dict, errors: torch.Tensor, n: torch.Tensor, ids, H: int, W: int, clean: dict, bands) -> dict:
    rate_ = errors[ids].double() / n[ids].double()
    out = {"bases": int(len(ids)), "error_min": float(rate_.min()), "error_max": float(rate_.max()),
           "error_mean": float(rate_.mean()), "loss_max": float(np.nanmax(maps["loss"].numpy()))}
    if bands:
        freqs = half_plane(H, W)[ids]
        inside = in_bands(basis_radii(freqs, H, W), bands)
        top = torch.argsort(rate_, descending=True)[:20]
        conc = band_concentration(rate_, freqs, H, W, bands, baseline=clean["error"])
        out.update(class_bands=bands, band_concentration=None if conc != conc else float(conc),
                   share_of_bases_in_bands=float(inside.double().mean()),
                   mean_error_in_bands=float(rate_[inside].mean()) if bool(inside.any()) else None,
                   mean_error_elsewhere=float(rate_[~inside].mean()) if bool((~inside).any()) else None,
                   top20_in_bands=int(inside[top].sum()))
    return out


def _heatmap_of(ctx, k: int, spec_, source: LabelledSource, spec: HeatmapSpec, store: ProgressStore | None,
                result: HeatmapResult) -> dict:
    p, d = ctx.params, ctx.dist
    m = prepare_model(ctx, spec_, source)
    H, W = m.size
    dataset = source.dataset(m.pre)
    clean = clean_counts(ctx, m, dataset)
    clean_rec = rate(clean.errors[0], clean.n, clean.loss_sum[0])
    ids = basis_ids(H, W, p.max_freq)
    mine = ids[d.rank::d.world]
    num_bases = len(half_plane(H, W))
    meta = _meta(m, source, spec, ctx.runner.config.amp)
    with d.together():
        progress = store.load(meta, num_bases) if store is not None else HeatmapProgress(num_bases, meta)
    resumed = int(d.all_reduce(torch.tensor([int((progress.n[mine] > 0).sum())])).item())
    if resumed:
        ctx.note(f"{m.label}: resumed a partial heat map ({resumed} of {len(ids)} bases begun)")
    save = (lambda st: store.save(st)) if store is not None else None
    with d.together():
        if len(mine) and not progress.complete(mine, len(source)):
            run_heatmap(m.model, ordered_batches(ctx.runner, dataset, progress.first_missing(mine)), mine, spec,
                        normalization=m.normalization, progress=progress, runner=ctx.runner,
                        forward_batch=forward_batch(ctx), chunk=p.save_every, on_chunk=save)
    own = progress.restricted(mine)
    errors, loss, n = (d.all_reduce(t) for t in (own.errors, own.loss_sum, own.n))
    total = HeatmapProgress(num_bases, meta)
    total.errors, total.loss_sum, total.n = errors, loss, n
    if bool((n[ids] != len(source)).any()):  # pragma: no cover - an invariant of the loop
        raise RuntimeError("the heat map is incomplete after the loop")
    maps = heatmap_maps(total, H, W, p.max_freq, LEVEL)
    for key in MAP_KEYS + ("fy", "fx"):
        arr = maps[key].numpy()
        result.maps[f"m{k}_{key}"] = arr.astype(np.int64 if key in ("n", "fy", "fx") else np.float64)
    if store is not None:
        result.progress_files.append(store.key(meta))
    bands = source.class_bands(m.size)
    return dict(m.record, clean=clean_rec, resumed_bases=resumed,
                **_summary(maps, errors, n, ids, H, W, clean_rec, bands))


# ---------------------------------------------------------------------------- the declaration


@register
class FourierHeatmap(Analysis):
    """Fourier heat map (Yin et al. 2019): top-1 error and loss under x + eps * r * U_ij for every
    Fourier basis image U_ij, added in [0, 1] pixel space before the model's normalisation; maps
    centred on DC, several models side by side on one colour scale.

    Writes results.json, heatmap.npz, heatmap.csv (one row per model and frequency: fy, fx, error
    and its Wilson interval, loss, n) and heatmap / heatmap_loss PNG+PDF. Under torchrun the bases
    are shared out over the processes. With --output, an interrupted run continues from its partial
    map when the same command is given again."""

    name = "fourier-heatmap"
    summary = "Fourier heat map: error under a perturbation along each Fourier basis (Yin et al. 2019)"
    needs = Needs(models="many", data="labelled")
    repeat_models = True
    options = (
        Option("eps", 4.0, "L2 norm of the perturbation per channel, in [0, 1] pixels (Yin et al.: 4 at 32 px, "
                           "15.7 at 224 px)", type=float),
        Option("sign", "random", "r per image and channel: random (seeded by --seed, default 0), +1 or -1",
               type=choice(*SIGNS)),
        Option("max_freq", None, "keep |fy|, |fx| <= K (default: the whole plane)", type=int, metavar="K",
               parse=parse_non_negative("--max-freq", "a frequency bound (an integer >= 0)")),
        Option("save_every", 64, "bases per saved step of the partial map (resume)", type=int, metavar="N",
               parse=parse_positive("--save-every", "a number of bases (an integer >= 1)")),
        FORWARD_BATCH,
        Option("cmap", "viridis", "colour map of the figures", metavar="NAME", parse=report.checked_cmap),
    )
    result = HeatmapResult
    random_weights = "the maps describe an untrained network"
    draw_options = ("cmap",)

    def check(self, params) -> None:
        HeatmapSpec(eps=params.eps, sign=params.sign, seed=0)

    def source(self, params):
        return LabelledSource.resolve(params.get("data"), params.get("num_images"))

    def run(self, ctx) -> HeatmapResult:
        p = ctx.params
        spec = HeatmapSpec(eps=float(p.eps), sign=p.sign, seed=perturbation_seed(ctx))
        store = ProgressStore(p.output, ctx.dist.rank) if p.get("output") else None
        res = HeatmapResult(method={"name": "Fourier heat map", "reference": REFERENCE, "eps": spec.eps,
                                    "sign": spec.sign, "seed": spec.seed, "max_freq": p.max_freq,
                                    "level": LEVEL, "space": "[0, 1] pixels before normalisation"},
                            images=ctx.source.describe(), data={"spec": ctx.source.spec}, run=run_block(ctx))
        records = [_heatmap_of(ctx, k, s, ctx.source, spec, store, res) for k, s in enumerate(ctx.specs)]
        for rec, label in zip(records, model_labels(records)):
            rec["label"] = label
        res.models = records
        res.data["class_bands"] = ctx.source.class_bands(ctx.source.native_size) if ctx.source.native_size else None
        return res

    def committed(self, result, output) -> None:
        if result.progress_files:
            ProgressStore(output).remove(result.progress_files)

    def report(self, result, folder, style):
        return report.write_heatmap_csv(result, folder) + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        return report.draw_heatmaps(result, folder, style)

    def describe(self, result, output):
        lines = []
        for m in result.models:
            c = m["clean"]
            line = (f"{m['label']}: clean error {c['error']:.3f}; heat map error {m['error_min']:.3f}-"
                    f"{m['error_max']:.3f} (mean {m['error_mean']:.3f}) over {m['bases']} bases x {c['n']} images")
            if m.get("band_concentration") is not None:
                line += f"; class-band concentration {m['band_concentration']:.2f}"
            lines.append(line)
        return lines + [f"fourier-heatmap -> {output}"]
