"""Oracles of the frequency-robustness maths (ops.fourier_basis, ops.bands, ops.spectra,
ops.binomial): closed forms, numpy re-implementations of the published recipes, Parseval,
and the imagecorruptions package applied by hand."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from spectrascope.ops.bands import (band_limit, band_limited_noise, band_mask, centred, filter_images, filter_mask,
                                    radius_grid, ring_edges, ring_partition)
from spectrascope.ops.binomial import normal_quantile, wilson_interval
from spectrascope.ops.fourier_basis import (basis_ids, basis_signs, fourier_basis, full_plane, half_plane,
                                            half_plane_index, map_frequencies, perturb, signed_frequencies)
from spectrascope.ops.spectra import (band_concentration, concentration, difference_spectrum, fourier_sensitivity,
                                      gradient_power, radial_mass, radial_sum)

SIZES = [(32, 32), (31, 31), (8, 5), (7, 10), (6, 6)]


def _cosine(fy, fx, H, W):
    y, x = np.mgrid[:H, :W]
    c = np.cos(2 * np.pi * (fy * y / H + fx * x / W))
    return c / np.linalg.norm(c)


# ---------------------------------------------------------------------------- Fourier bases


@pytest.mark.parametrize("H,W", SIZES)
def test_every_basis_is_the_normalised_cosine(H, W):
    freqs = half_plane(H, W)
    U = fourier_basis(freqs, H, W, dtype=torch.float64).numpy()
    for k, (fy, fx) in enumerate(freqs.tolist()):
        np.testing.assert_allclose(U[k], _cosine(fy, fx, H, W), atol=1e-13)
    # float32 is the same image to float32 rounding
    U32 = fourier_basis(freqs, H, W).numpy()
    assert np.abs(U32 - U).max() < 1e-6


def test_basis_equals_the_inverse_rfft_of_a_one_hot_spectrum():
    """The construction of the common implementation: irfft2 of a one-hot (H, W//2+1) spectrum,
    divided by its norm (the rfft grid holds every distinct basis)."""
    H = W = 16
    freqs = half_plane(H, W)
    U = fourier_basis(freqs, H, W, dtype=torch.float64).numpy()
    for k, (fy, fx) in enumerate(freqs.tolist()):
        spec = np.zeros((H, W // 2 + 1))
        spec[fy % H, fx] = 1.0
        b = np.fft.irfft2(spec, s=(H, W))
        np.testing.assert_allclose(U[k], b / np.linalg.norm(b), atol=1e-13)


@pytest.mark.parametrize("H,W", SIZES)
def test_half_plane_holds_each_distinct_basis_once(H, W):
    freqs = half_plane(H, W)
    selfconj = sum(1 for a in range(H) for b in range(W) if (2 * a) % H == 0 and (2 * b) % W == 0)
    assert len(freqs) == (H * W + selfconj) // 2
    U = fourier_basis(freqs, H, W, dtype=torch.float64).reshape(len(freqs), -1)
    # orthonormal: distinct images, and as many as the real dimension they span together
    torch.testing.assert_close(U @ U.T, torch.eye(len(freqs), dtype=torch.float64), atol=1e-12, rtol=0)
    grid = half_plane_index(H, W)
    assert sorted(torch.unique(grid).tolist()) == list(range(len(freqs)))
    fy, fx = signed_frequencies(H), signed_frequencies(W)
    for a in range(H):
        for b in range(W):
            k = int(grid[a, b])
            np.testing.assert_allclose(U[k].reshape(H, W).numpy(), _cosine(int(fy[a]), int(fx[b]), H, W), atol=1e-12)
            assert int(grid[(-a) % H, (-b) % W]) == k


def test_the_32px_grid_counts():
    assert len(half_plane(32, 32)) == 514            # 544 rfft points, 30 of them duplicates
    assert len(half_plane(31, 31)) == 481
    assert len(basis_ids(32, 32, max_freq=2)) == (25 + 1) // 2


@pytest.mark.parametrize("H,W,K", [(32, 32, None), (31, 31, None), (8, 5, None), (7, 10, 2), (32, 32, 3)])
def test_full_plane_is_point_symmetric_and_places_each_frequency(H, W, K):
    ids = basis_ids(H, W, K)
    freqs = half_plane(H, W)[ids]
    values = torch.rand(len(ids), dtype=torch.float64)
    m = full_plane(values, H, W, K, ids=ids)
    fy, fx = map_frequencies(H, K), map_frequencies(W, K)
    assert m.shape == (len(fy), len(fx)) and len(fy) % 2 == 1
    assert torch.equal(m, m.flip(0, 1))
    # the value drawn at (fy, fx) is the one of the basis whose image is that frequency's cosine
    U = fourier_basis(freqs, H, W, dtype=torch.float64).reshape(len(ids), -1)
    for i, a in enumerate(fy.tolist()):
        for j, b in enumerate(fx.tolist()):
            target = torch.from_numpy(_cosine(a, b, H, W)).reshape(-1)
            k = int(torch.argmax(U @ target))
            assert m[i, j] == values[k]
            assert float(U[k] @ target) == pytest.approx(1.0, abs=1e-12)


def test_perturbation_is_clipped_sum_before_normalisation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
    ids = torch.tensor([0, 5, 17])
    freqs = half_plane(8, 8)[ids]
    U = fourier_basis(freqs, 8, 8, dtype=torch.float64)
    r = basis_signs(range(4), ids, 8, 8, 3, seed=1)
    out = perturb(x, U, r, 3.0)
    for k in range(3):
        for n in range(4):
            for c in range(3):
                want = np.clip(x[n, c].numpy() + 3.0 * float(r[k, n, c]) * U[k].numpy(), 0, 1)
                np.testing.assert_allclose(out[k, n, c].numpy(), want, atol=1e-15)
    # before clipping, each channel's perturbation has L2 norm eps
    mid = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    d = perturb(mid, U[1:2], torch.ones(1, 1, 3), 0.5) - mid
    torch.testing.assert_close(d.flatten(-2).norm(dim=-1), torch.full((1, 1, 3), 0.5, dtype=torch.float64))


def test_signs_are_seeded_per_image_and_independent_of_batching():
    ids = torch.arange(len(half_plane(16, 16)))
    a = basis_signs(range(10), ids, 16, 16, 3, seed=7)
    b = torch.cat([basis_signs(range(0, 3), ids, 16, 16, 3, seed=7), basis_signs(range(3, 10), ids, 16, 16, 3, seed=7)],
                  dim=1)
    assert torch.equal(a, b)
    sub = torch.tensor([4, 40, 99])
    assert torch.equal(basis_signs([5, 6], sub, 16, 16, 3, seed=7), a[sub][:, 5:7])
    assert set(torch.unique(a).tolist()) == {-1.0, 1.0}
    assert abs(float(a.mean())) < 0.05                      # balanced
    assert not torch.equal(a, basis_signs(range(10), ids, 16, 16, 3, seed=8))
    assert torch.equal(basis_signs(range(2), sub, 16, 16, 3, sign="+1"), torch.ones(3, 2, 3))
    assert torch.equal(basis_signs(range(2), sub, 16, 16, 3, sign="-1"), -torch.ones(3, 2, 3))
    with pytest.raises(ValueError, match="sign"):
        basis_signs(range(2), sub, 16, 16, 3, sign="1")


# ---------------------------------------------------------------------------- bands and noise


@pytest.mark.parametrize("kind", ["square", "circle"])
@pytest.mark.parametrize("H,W", [(32, 32), (31, 24)])
def test_rings_partition_the_spectrum_parseval(kind, H, W):
    edges = ring_edges(6, H, W, kind)
    masks = ring_partition(H, W, edges, kind)
    assert torch.equal(masks.sum(0), torch.ones(H, W, dtype=torch.long))
    # Hermitian: a frequency and its conjugate are in the same band, so the band noise is real
    assert torch.equal(masks, masks.flip(-2, -1).roll((1, 1), (-2, -1)))
    g = torch.Generator().manual_seed(0)
    for base in ("gaussian", "sign"):
        x = 0.3 * torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
        if base == "sign":
            x = 0.3 * x.sign()
        bands = band_limit(x, masks)
        torch.testing.assert_close(bands.sum(0), x, atol=1e-12, rtol=0)
        energy = (bands ** 2).sum(dim=(-2, -1)).sum(0)
        torch.testing.assert_close(energy, (x ** 2).sum(dim=(-2, -1)), atol=1e-10, rtol=1e-12)
        # nothing outside its band
        for b in range(len(masks)):
            leak = torch.fft.fft2(bands[b]).abs() * (~masks[b])
            assert float(leak.max()) < 1e-10


def test_band_limited_noise_draws_and_scales():
    masks = ring_partition(16, 16, ring_edges(4, 16, 16, "square"), "square")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    noise = band_limited_noise((2, 3, 16, 16), masks, 0.7, base="sign", generator=g1, dtype=torch.float64)
    z = 0.7 * torch.randn((2, 3, 16, 16), generator=g2, dtype=torch.float64).sign()
    torch.testing.assert_close(noise.sum(0), z, atol=1e-12, rtol=0)
    unit = band_limited_noise((2, 3, 16, 16), masks, 0.7, l2=2.0, generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64)
    torch.testing.assert_close(unit.flatten(-2).norm(dim=-1), torch.full((4, 2, 3), 2.0, dtype=torch.float64))


def test_square_and_circle_distances():
    d_sq = radius_grid(8, 8, "square", "index")
    d_ci = radius_grid(8, 8, "circle", "index")
    f = signed_frequencies(8)
    for a in range(8):
        for b in range(8):
            assert d_sq[a, b] == max(abs(f[a]), abs(f[b]))
            assert d_ci[a, b] == pytest.approx(math.hypot(f[a], f[b]))
    assert float(radius_grid(10, 20, "circle", "cycles").max()) == pytest.approx(math.sqrt(0.5))
    m = band_mask(16, 16, 0.1, 0.2, "square")
    assert bool(m[2, 0]) and not bool(m[1, 0]) and bool(m[0, -3]) and not bool(m[4, 4])


# ---------------------------------------------------------------------------- filters


def _hfc_mask(n, r):
    """HFC's ``mask_radial`` as its description says: 1 where the distance from the centre of the
    centred spectrum is below r, 0.5 elsewhere (a per-pixel loop)."""
    mask = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            mask[i, j] = 1.0 if math.sqrt((i - n / 2) ** 2 + (j - n / 2) ** 2) < r else 0.5
    return mask


@pytest.mark.parametrize("r", [1, 4, 6])
def test_filters_match_hfc_low_and_high(r):
    n = 16
    x = np.random.default_rng(0).random((2, 3, n, n))
    mask = _hfc_mask(n, r)
    F = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    low = np.real(np.fft.ifft2(np.fft.ifftshift(F * mask, axes=(-2, -1))))
    high = np.real(np.fft.ifft2(np.fft.ifftshift(F * (1 - mask), axes=(-2, -1))))
    xt = torch.from_numpy(x)
    radius = math.sqrt(r * r - 1)       # HFC's strict "< r" on integer distances
    np.testing.assert_allclose(filter_images(xt, radius, "low", outside=0.5).numpy(), low, atol=1e-12)
    np.testing.assert_allclose(filter_images(xt, radius, "high", outside=0.5).numpy(), high, atol=1e-12)
    np.testing.assert_allclose(centred(filter_mask(n, n, radius, outside=0.5)).numpy(), mask)


@pytest.mark.parametrize("H,W", [(16, 16), (15, 12)])
@pytest.mark.parametrize("outside", [0.0, 0.5])
def test_filter_at_radius_zero_and_infinity(H, W, outside):
    x = torch.rand(2, 3, H, W, dtype=torch.float64)
    dc = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    torch.testing.assert_close(filter_images(x, 0.0, "low"), dc, atol=1e-12, rtol=0)
    torch.testing.assert_close(filter_images(x, math.inf, "low", outside=outside), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(filter_images(x, math.inf, "high", outside=outside), torch.zeros_like(x), atol=1e-12,
                               rtol=0)
    torch.testing.assert_close(filter_images(x, 0.0, "high"), x - dc, atol=1e-12, rtol=0)
    for r in (1.0, 2.5, 5.0):
        both = filter_images(x, r, "low", outside=outside) + filter_images(x, r, "high", outside=outside)
        torch.testing.assert_close(both, x, atol=1e-12, rtol=0)
    assert abs(float(torch.fft.fft2(filter_images(x, 2.0, "low")).imag.sum())) < 1e-9


# ---------------------------------------------------------------------------- spectra


def _sfs_reference(grad: np.ndarray) -> np.ndarray:
    """kiranchari's ``sfs`` as its description says (even square input): channel-mean gradient,
    unitary FFT, fftshift, power, sums over rings round(sqrt(x^2 + y^2)) with L = -N/2 .. N/2 - 1,
    DC dropped, each image normalised, mean over images."""
    J = grad.mean(axis=1)
    P = np.abs(np.fft.fftshift(np.fft.fftn(J, norm="ortho", axes=(1, 2)), axes=(1, 2))) ** 2
    N = grad.shape[-1]
    L = np.arange(-N / 2, N / 2)
    X, Y = np.meshgrid(L, L, indexing="ij")
    R = np.round(np.sqrt(X ** 2 + Y ** 2))
    rs = np.unique(R)[1:]
    sums = np.stack([P[:, R == r].sum(axis=1) for r in rs], axis=1)
    return (sums / sums.sum(axis=1, keepdims=True)).mean(axis=0)


def test_fourier_sensitivity_matches_the_reference_recipe():
    g = np.random.default_rng(1).standard_normal((5, 3, 16, 16))
    prof, valid = fourier_sensitivity(torch.from_numpy(g))
    assert bool(valid.all())
    np.testing.assert_allclose(prof.mean(0).numpy(), _sfs_reference(g), atol=1e-12)
    torch.testing.assert_close(prof.sum(1), torch.ones(5, dtype=torch.float64))


def test_fourier_sensitivity_of_one_basis_and_of_a_zero_gradient():
    H, W = 12, 9
    U = fourier_basis([(3, 2)], H, W, dtype=torch.float64)[0]
    grad = torch.stack([U.expand(3, H, W), torch.zeros(3, H, W, dtype=torch.float64)])
    power = gradient_power(grad)
    assert float(power[0].sum()) == pytest.approx(1.0)          # unitary: Parseval
    prof, valid = fourier_sensitivity(grad)
    assert valid.tolist() == [True, False]
    ring = round(math.hypot(3 * 9 / 12, 2))
    assert float(prof[0, ring - 1]) == pytest.approx(1.0) and float(prof[1].abs().sum()) == 0.0
    assert radial_sum(power, exclude_dc=False).shape[-1] == radial_sum(power).shape[-1] + 1


def test_difference_spectrum_of_a_basis_and_of_nothing():
    H = W = 16
    clean = torch.rand(4, 3, H, W, dtype=torch.float64)
    U = fourier_basis([(2, 5)], H, W, dtype=torch.float64)[0]
    spec = difference_spectrum(clean + 0.1 * U, clean)
    # |fft2(0.1 U)| (unitary) is 0.1 / sqrt(2) at (2, 5) and (-2, -5), zero elsewhere
    assert float(spec[H // 2 + 2, W // 2 + 5]) == pytest.approx(0.1 / math.sqrt(2))
    assert float(spec[H // 2 - 2, W // 2 - 5]) == pytest.approx(0.1 / math.sqrt(2))
    assert float(spec.sum()) == pytest.approx(0.2 / math.sqrt(2))
    assert float(difference_spectrum(clean, clean).abs().max()) == 0.0


def _imagecorruptions():
    from spectrascope.compat import import_imagecorruptions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return import_imagecorruptions()        # 1.1.2 beside setuptools >= 81, numpy 2 (compat)
        except ImportError as exc:
            pytest.skip(f"imagecorruptions is not installed here: {exc}")


def test_corruption_spectrum_equals_imagecorruptions_applied_by_hand():
    ic = _imagecorruptions()
    from PIL import Image

    from spectrascope.io.images import sample_images
    clean = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BICUBIC))
                      for p in sample_images()])
    shares = {}
    for name in ("gaussian_noise", "contrast", "defocus_blur"):
        np.random.seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bad = np.stack([np.uint8(ic.corrupt(im, corruption_name=name, severity=3)) for im in clean])
        c, x = bad.astype(np.float64) / 255, clean.astype(np.float64) / 255
        want = np.abs(np.fft.fft2(c - x, axes=(1, 2), norm="ortho")).mean(axis=(0, 3))
        got = difference_spectrum(torch.from_numpy(c).permute(0, 3, 1, 2), torch.from_numpy(x).permute(0, 3, 1, 2))
        np.testing.assert_allclose(got.numpy(), np.fft.fftshift(want), atol=1e-12)
        d = centred(radius_grid(32, 32, "circle", "cycles")).numpy()
        shares[name] = float((got.numpy() ** 2)[d > 0.25].sum() / (got.numpy() ** 2).sum())
    # Yin et al.'s reading on photos: noise is high-frequency, contrast low-frequency, blur removes
    # high frequencies
    assert shares["gaussian_noise"] > 0.5 > shares["defocus_blur"] > shares["contrast"]


# ---------------------------------------------------------------------------- error mass, intervals


def test_radial_mass_finds_a_ring_of_errors():
    H = W = 32
    freqs = half_plane(H, W)
    r = torch.sqrt((freqs[:, 0] / H) ** 2 + (freqs[:, 1] / W) ** 2)
    ring = (r >= 0.1) & (r < 0.2)
    values = 0.1 + 0.5 * ring.double()
    out = radial_mass(values, freqs, H, W, [0.0, 0.1, 0.2, 1.0])
    torch.testing.assert_close(out["mass"], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert float(out["area"].sum()) == pytest.approx(1.0)
    assert float(out["area"][1]) == pytest.approx(float(ring.double().mean()))
    share = float(ring.double().mean())
    assert band_concentration(values, freqs, H, W, (0.1, 0.2)) == pytest.approx(1 / share)
    assert band_concentration(values, freqs, H, W, [(0.1, 0.15), (0.15, 0.2)]) == pytest.approx(1 / share)
    assert band_concentration(values, freqs, H, W, [(0.0, 0.1), (0.3, 0.4)]) == 0.0
    assert math.isnan(band_concentration(values, freqs, H, W, (0.1, 0.2), baseline=0.6))   # no excess
    flat = torch.full((len(freqs),), 0.3)
    assert math.isnan(band_concentration(flat, freqs, H, W, (0.1, 0.2)))
    noisy = 0.3 + 0.01 * torch.rand(len(freqs), generator=torch.Generator().manual_seed(0))
    assert band_concentration(noisy, freqs, H, W, (0.1, 0.2)) == pytest.approx(1.0, abs=0.3)
    # a curve over noise rings: the same measure
    centres = torch.tensor([0.05, 0.15, 0.25, 0.35])
    assert concentration(torch.tensor([0.1, 0.5, 0.1, 0.1]), centres, (0.1, 0.2), baseline=0.1) == pytest.approx(4.0)


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    ks, ns = [0, 1, 7, 50, 99, 100, 3], [100, 100, 20, 100, 100, 100, 3]
    low, high = wilson_interval(torch.tensor(ks), torch.tensor(ns), 0.95)
    for i, (k, n) in enumerate(zip(ks, ns)):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert float(low[i]) == pytest.approx(ci.low, abs=1e-12)
        assert float(high[i]) == pytest.approx(ci.high, abs=1e-12)
    assert normal_quantile(0.95) == pytest.approx(1.959963984540054)
    lo, hi = wilson_interval(0, 0)
    assert math.isnan(float(lo)) and math.isnan(float(hi))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
