"""Oracles of the batched frequency-robustness loops (engine.heatmap, engine.variants,
engine.sensitivity): the batched heat map equals a direct per-basis loop built from the closed-form
cosines, whatever the batching; it resumes and merges exactly; the noise / filter / gradient loops
equal their direct computations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import spectrascope
from spectrascope.engine.heatmap import HeatmapProgress, HeatmapSpec, heatmap_counts, heatmap_maps, run_heatmap
from spectrascope.engine.runner import Runner, RunConfig
from spectrascope.engine.sensitivity import input_gradients, sensitivity_profiles
from spectrascope.engine.variants import NoiseSpec, band_noise_counts, base_noise, filter_counts
from spectrascope.errors import NonFiniteError
from spectrascope.ops.bands import band_limit, filter_images, ring_edges, ring_partition
from spectrascope.ops.fourier_basis import basis_ids, basis_signs, half_plane, half_plane_index, map_frequencies
from spectrascope.ops.spectra import fourier_sensitivity

NORM = ((0.45, 0.5, 0.55), (0.2, 0.25, 0.3))


def _cnn(classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, classes)).double().eval()


def _data(n, H, W, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, H, W, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _normalise(x):
    m, s = (torch.tensor(v, dtype=x.dtype).view(3, 1, 1) for v in NORM)
    return (x - m) / s


def _direct_map(model, x, y, H, W, eps, signs_of):
    """The per-basis loop of the definition: for every (fy, fx) of the centred map, the closed-form
    normalised cosine, clip(x + eps r U, 0, 1), normalise, forward, count."""
    fys, fxs = map_frequencies(H), map_frequencies(W)
    err = np.zeros((len(fys), len(fxs)))
    loss = np.zeros_like(err)
    yy, xx = np.mgrid[:H, :W]
    for i, fy in enumerate(fys.tolist()):
        for j, fx in enumerate(fxs.tolist()):
            c = np.cos(2 * np.pi * (fy * yy / H + fx * xx / W))
            U = torch.from_numpy(c / np.linalg.norm(c))
            r = signs_of(fy, fx)                                    # (N, C)
            xt = (x + eps * r[..., None, None] * U).clamp(0, 1)
            with torch.no_grad():
                logits = model(_normalise(xt))
            err[i, j] = float((logits.argmax(1) != y).double().mean())
            loss[i, j] = float(F.cross_entropy(logits, y, reduction="mean"))
    return err, loss


@pytest.mark.parametrize("H,W", [(8, 6), (7, 7)])
def test_batched_map_equals_a_direct_per_basis_loop(H, W):
    model, (x, y) = _cnn(), _data(9, H, W)
    spec = HeatmapSpec(eps=3.0, sign="+1")
    ids = basis_ids(H, W)
    progress = HeatmapProgress(len(half_plane(H, W)))
    batches = [(range(0, 4), x[:4], y[:4]), (range(4, 9), x[4:], y[4:])]
    run_heatmap(model, batches, ids, spec, normalization=NORM, progress=progress, forward_batch=7)
    maps = heatmap_maps(progress, H, W)
    err, loss = _direct_map(model, x, y, H, W, 3.0, lambda fy, fx: torch.ones(9, 3, dtype=torch.float64))
    np.testing.assert_array_equal(maps["error"].numpy(), err)
    np.testing.assert_allclose(maps["loss"].numpy(), loss, rtol=1e-12)
    assert torch.equal(maps["error"], maps["error"].flip(0, 1))
    assert len(np.unique(err)) > 2                                    # the map is not flat
    assert bool((maps["n"] == 9).all())
    assert bool((maps["error_low"] <= maps["error"]).all() and (maps["error"] <= maps["error_high"]).all())


def test_random_signs_equal_the_direct_loop_and_ignore_batching():
    H, W = 6, 6
    model, (x, y) = _cnn(seed=1), _data(7, H, W, seed=1)
    spec = HeatmapSpec(eps=2.0, sign="random", seed=11)
    ids = basis_ids(H, W)
    grid = half_plane_index(H, W)
    signs = basis_signs(range(7), ids, H, W, 3, seed=11).double()            # (K, N, C)
    err, loss = _direct_map(model, x, y, H, W, 2.0, lambda fy, fx: signs[int(grid[fy % H, fx % W])])
    runs = []
    for split, fb in ((7, 1000), (3, 5), (1, 2)):
        progress = HeatmapProgress(len(ids))
        batches = [(range(a, min(a + split, 7)), x[a:a + split], y[a:a + split]) for a in range(0, 7, split)]
        run_heatmap(model, batches, ids, spec, normalization=NORM, progress=progress, forward_batch=fb)
        runs.append(progress)
        maps = heatmap_maps(progress, H, W)
        np.testing.assert_array_equal(maps["error"].numpy(), err)
        np.testing.assert_allclose(maps["loss"].numpy(), loss, rtol=1e-12)
    assert all(torch.equal(r.errors, runs[0].errors) for r in runs)


def test_resume_and_shards_give_the_uninterrupted_map(tmp_path):
    H, W = 8, 8
    model, (x, y) = _cnn(seed=2), _data(10, H, W, seed=2)
    spec = HeatmapSpec(eps=2.5, sign="random", seed=5)
    ids = basis_ids(H, W)
    meta = {"size": [H, W], "eps": 2.5, "sign": "random", "seed": 5, "images": 10}
    batches = [(range(a, a + 2), x[a:a + 2], y[a:a + 2]) for a in range(0, 10, 2)]
    whole = run_heatmap(model, batches, ids, spec, normalization=NORM, progress=HeatmapProgress(len(ids), meta))

    # interrupted after two batches, saved, resumed with another batch size
    part = run_heatmap(model, batches[:2], ids, spec, normalization=NORM, progress=HeatmapProgress(len(ids), meta))
    path = tmp_path / "partial.json"
    part.save(path)
    resumed = HeatmapProgress.load(path, len(ids), meta)
    assert resumed.first_missing(ids) == 4 and not resumed.complete(ids, 10)
    rest = [(range(4, 7), x[4:7], y[4:7]), (range(7, 10), x[7:], y[7:])]
    run_heatmap(model, rest, ids, spec, normalization=NORM, progress=resumed, forward_batch=5)
    assert resumed.complete(ids, 10)
    assert torch.equal(resumed.errors, whole.errors) and torch.equal(resumed.n, whole.n)
    torch.testing.assert_close(resumed.loss_sum, whole.loss_sum, rtol=1e-12, atol=0)

    # bases shared out over two processes, then merged; one shard also stops half-way and resumes
    shards = [run_heatmap(model, batches, ids[r::2], spec, normalization=NORM,
                          progress=HeatmapProgress(len(ids), meta)) for r in range(2)]
    merged = shards[0].merge(shards[1])
    assert torch.equal(merged.errors, whole.errors)
    assert merged.as_dict() == whole.as_dict()
    json.dumps(whole.to_dict(), allow_nan=False)


def test_saved_state_is_checked(tmp_path):
    meta = {"size": [8, 8], "eps": 2.5}
    state = HeatmapProgress(36, meta)
    state.errors[3], state.loss_sum[3], state.n[3] = 2, 1.5, 4
    path = tmp_path / "s.json"
    state.save(path)
    assert HeatmapProgress.load(path, 36, meta).as_dict() == {3: (2, 1.5, 4)}
    with pytest.raises(ValueError, match="other settings"):
        HeatmapProgress.load(path, 36, {"size": [8, 8], "eps": 4.0})
    with pytest.raises(ValueError, match="bases"):
        HeatmapProgress.load(path, 40, meta)
    for bad in ([5, 1.0, 4], [1, -1.0, 4], [1, 1.0, 2.5], ["1", 1.0, 4]):
        data = state.to_dict()
        data["bases"]["3"] = bad
        with pytest.raises(ValueError, match="bad heat-map entry"):
            HeatmapProgress.from_dict(data)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a heat-map state"):
        HeatmapProgress.load(path)
    state.loss_sum[3] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        state.to_dict()
    with pytest.raises(ValueError, match="first missing image|batches must come"):
        state.pending([3], 5, 8)


def test_chunked_saves_and_the_latest_of_overlapping_shards_give_the_uninterrupted_map(tmp_path):
    H, W = 6, 6
    model, (x, y) = _cnn(seed=3), _data(8, H, W, seed=3)
    spec = HeatmapSpec(eps=2.0, sign="random", seed=2)
    ids = basis_ids(H, W)
    batches = [(range(a, a + 4), x[a:a + 4], y[a:a + 4]) for a in (0, 4)]
    whole = run_heatmap(model, batches, ids, spec, normalization=NORM, progress=HeatmapProgress(len(ids)))
    seen = []
    chunked = run_heatmap(model, batches, ids, spec, normalization=NORM, progress=HeatmapProgress(len(ids)),
                          chunk=5, on_chunk=lambda st: seen.append(st.n.clone()))
    assert torch.equal(chunked.errors, whole.errors)
    assert len(seen) == 2 * math.ceil(len(ids) / 5)
    # after every chunk the state is consistent: a prefix of the bases has seen one more batch
    assert all(sorted(set(n.tolist())) in ([0, 4], [4], [4, 8], [8]) for n in seen)
    # a shard of a 2-process run stopped early, and a 1-process run that went further on all bases
    early = run_heatmap(model, batches[:1], ids[0::2], spec, normalization=NORM, progress=HeatmapProgress(len(ids)))
    later = run_heatmap(model, batches[:1], ids, spec, normalization=NORM, progress=HeatmapProgress(len(ids)))
    run_heatmap(model, batches[1:], ids[:7], spec, normalization=NORM, progress=later)
    merged = HeatmapProgress.latest([later, early], len(ids))
    assert merged.n[:7].tolist() == [8] * 7 and set(merged.n[7:].tolist()) == {4}
    run_heatmap(model, batches[1:], ids, spec, normalization=NORM, progress=merged)
    assert torch.equal(merged.errors, whole.errors) and torch.equal(merged.n, whole.n)
    torch.testing.assert_close(merged.loss_sum, whole.loss_sum, rtol=1e-12, atol=0)
    mine = merged.restricted(ids[1::2])
    assert int(mine.n[ids[0::2]].sum()) == 0 and torch.equal(mine.n[ids[1::2]], merged.n[ids[1::2]])


def test_a_zoo_model_on_non_square_images_equals_the_direct_loop():
    """A real token-mixer model (reduced DFFormer, float32) at 32 x 48 on a handful of bases:
    batched counts equal per-basis forwards, with channels-last inputs too."""
    model = spectrascope.create_model("dfformer_s18", num_classes=5, img_size=(32, 48), depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32]).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 32, 48, generator=g), torch.randint(0, 5, (6,), generator=g)
    ids = torch.tensor([0, 1, 40, 200, 700])
    spec = HeatmapSpec(eps=4.0, sign="random", seed=1)
    signs = basis_signs(range(6), ids, 32, 48, 3, seed=1)
    freqs = half_plane(32, 48)[ids]
    yy, xx = np.mgrid[:32, :48]
    want_err, want_loss = [], []
    for k, (fy, fx) in enumerate(freqs.tolist()):
        c = np.cos(2 * np.pi * (fy * yy / 32 + fx * xx / 48))
        U = torch.from_numpy(c / np.linalg.norm(c)).float()
        with torch.inference_mode():
            logits = model(_normalise((x + 4.0 * signs[k][..., None, None] * U).clamp(0, 1)))
        want_err.append(int((logits.argmax(1) != y).sum()))
        want_loss.append(float(F.cross_entropy(logits, y, reduction="sum")))
    for cl in (False, True):
        runner = Runner(RunConfig(device="cpu", channels_last=cl))
        got = heatmap_counts(model, x, y, ids, spec, normalization=NORM, runner=runner, forward_batch=16)
        assert got.errors.tolist() == want_err
        np.testing.assert_allclose(got.loss_sum.numpy(), want_loss, rtol=1e-4)


def test_non_finite_logits_stop_the_loop():
    class Nan(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), math.nan, dtype=x.dtype)

    x, y = _data(2, 6, 6)
    with pytest.raises(NonFiniteError, match=r"Fourier basis \(fy=0, fx=0\)"):
        heatmap_counts(Nan(), x, y, [0, 1], HeatmapSpec(sign="+1"), normalization=NORM)


def test_band_noise_counts_equal_the_direct_computation():
    H, W = 8, 8
    model, (x, y) = _cnn(seed=3), _data(5, H, W, seed=3)
    masks = ring_partition(H, W, ring_edges(4, H, W, "square"), "square")
    spec = NoiseSpec(eps=0.6, base="sign", seed=2)
    got = band_noise_counts(model, x, y, masks, spec, normalization=NORM, indices=range(10, 15), forward_batch=3)
    z = base_noise(range(10, 15), (3, H, W), spec)
    assert torch.equal(z.abs(), torch.full_like(z, 0.6))
    for b in range(4):
        xt = (x + band_limit(z, masks[b])).clamp(0, 1)
        logits = model(_normalise(xt)).detach()
        assert int(got.errors[b]) == int((logits.argmax(1) != y).sum())
        assert float(got.loss_sum[b]) == pytest.approx(float(F.cross_entropy(logits, y, reduction="sum")), rel=1e-12)
    # a batch split differently draws the same noise
    again = band_noise_counts(model, x[2:], y[2:], masks, spec, normalization=NORM, indices=range(12, 15))
    first = band_noise_counts(model, x[:2], y[:2], masks, spec, normalization=NORM, indices=range(10, 12))
    assert torch.equal(again.errors + first.errors, got.errors)


def test_filter_counts_equal_the_direct_computation():
    model, (x, y) = _cnn(seed=4), _data(6, 10, 10, seed=4)
    settings = [(0.0, "low"), (2.0, "low"), (2.0, "high"), (math.inf, "low")]
    got = filter_counts(model, x, y, settings, normalization=NORM, outside=0.5, forward_batch=4)
    for v, (r, kind) in enumerate(settings):
        logits = model(_normalise(filter_images(x, r, kind, outside=0.5))).detach()
        assert int(got.errors[v]) == int((logits.argmax(1) != y).sum())
    clean = model(_normalise(x)).detach()
    assert int(got.errors[3]) == int((clean.argmax(1) != y).sum())


def test_input_gradients_of_a_linear_model_are_closed_form():
    H = W = 6
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 4)).double().eval()
    x, y = _data(5, H, W)
    grad = input_gradients(lin, x, y, normalization=NORM)
    A = lin[1].weight.detach()                                   # (4, C*H*W)
    p = torch.softmax(lin(_normalise(x)), dim=1).detach()
    want = ((p - F.one_hot(y, 4).double()) @ A).reshape(5, 3, H, W)
    want = want / torch.tensor(NORM[1], dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(grad, want, atol=1e-12, rtol=1e-10)
    prof, valid = sensitivity_profiles(lin, x, y, normalization=NORM)
    ref, _ = fourier_sensitivity(want)
    torch.testing.assert_close(prof, ref)
    assert bool(valid.all())


def test_bad_settings_name_their_option():
    from spectrascope.errors import OptionError
    with pytest.raises(OptionError, match="^--sign: "):
        HeatmapSpec(sign="positive")
    for eps in (math.nan, -1.0, math.inf, "4"):
        with pytest.raises(OptionError, match="^--eps: "):
            HeatmapSpec(eps=eps)
    with pytest.raises(OptionError, match="^--max-freq: "):
        basis_ids(8, 8, -1)
