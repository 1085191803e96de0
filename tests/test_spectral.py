"""Relative log amplitude and spectrum maps: reference fixtures, closed forms, invariances."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import fixtures_dir

import spectrascope
from spectrascope.ops.fourier import (SpectrumStats, ZeroMeanWarning, as_nchw, curve_from_map, diagonal_stats,
                                   frequency_axis, high_frequency_delta, log_amplitude_map, normalised_depth,
                                   radial_log_amplitude, relative_log_amplitude, spectrum_map, spectrum_stats,
                                   zero_mean_fraction)

CASES = {  # case -> (layout, num_prefix_tokens)
    "nchw_even_14": ("NCHW", 0), "nchw_odd_7": ("NCHW", 0), "nchw_large_56": ("NCHW", 0),
    "lowpass_blur_14": ("NCHW", 0), "posmean_relu_14": ("NCHW", 0), "vit_tokens_cls_14x14": ("NLC", 1),
    "nhwc_14": ("NHWC", 0),
}


def load_case(case):
    folder = fixtures_dir("methods/amplitude")
    return json.loads((folder / f"{case}.json").read_text()), load_file(str(folder / f"{case}.safetensors"))


def numpy_reference(x: np.ndarray) -> np.ndarray:
    """Independent float64 NumPy transcription of the reference steps (full fft2, roll, mean, diagonal)."""
    H, W = x.shape[-2:]
    a = np.log(np.abs(np.fft.fft2(x, axes=(-2, -1))) + 1e-6)
    a = np.roll(a, (H // 2, W // 2), axis=(-2, -1)).mean(axis=(0, 1))
    d = np.diagonal(a)[H // 2:]
    return d - d[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_cases_float64_and_float32(case):
    meta, t = load_case(case)
    layout, prefix = CASES[case]
    x = t["input"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroMeanWarning)      # none of these cases is zero-mean
        d64 = relative_log_amplitude(x.double(), layout, prefix)
        d32 = relative_log_amplitude(x.float(), layout, prefix)
    assert d64.dtype == torch.float64 and d32.dtype == torch.float32
    H = 14 if layout == "NLC" else (x.shape[-2] if layout == "NCHW" else x.shape[1])
    assert len(d64) == len(d32) == meta["curve_lengths"][0] == math.ceil(H / 2)
    assert d64[0].item() == 0.0 and d32[0].item() == 0.0
    assert (d64 - t["delta_f64"]).abs().max().item() <= 1e-9
    assert (d32 - t["delta_f32"]).abs().max().item() <= 1e-4


def test_fixture_multi_latents_list_call():
    meta, t = load_case("multi_latents")
    xs = [t[f"input.{i}"] for i in range(4)]
    for dt, key, tol in ((torch.float64, "delta_f64", 1e-9), (torch.float32, "delta_f32", 1e-4)):
        curves = relative_log_amplitude([x.to(dt) for x in xs])
        assert [len(c) for c in curves] == meta["curve_lengths"] == [14, 7, 4, 2]
        for i, c in enumerate(curves):
            assert c[0].item() == 0.0
            assert (c - t[f"{key}.{i}"]).abs().max().item() <= tol


def test_nhwc_negative_control_and_layout_semantics():
    _, t = load_case("nhwc_14")
    x = t["input"]                                   # (2, 14, 14, 24) channels-last
    right = relative_log_amplitude(x, "NHWC")
    with pytest.raises(ValueError, match="square"):
        relative_log_amplitude(x, "NCHW")           # read as NCHW it is a 14x24 map: refused, not guessed
    # the reference silently takes the diagonal of the 14x24 map from row 7: reproduce its wrong answer
    m = log_amplitude_map(x, "NCHW")
    d = torch.diagonal(m)[14 // 2:]
    wrong = d - d[0]
    assert (wrong - t["wrong_if_not_permuted_f32"]).abs().max().item() <= 1e-4
    assert (right - wrong).abs().max().item() > 0.5
    assert torch.allclose(right, relative_log_amplitude(x.permute(0, 3, 1, 2).contiguous()), atol=1e-6)


def test_vit_tokens_prefix_and_grid_rules():
    _, t = load_case("vit_tokens_cls_14x14")
    tok = t["input"].double()                        # (2, 197, 32) with a CLS token
    grid = tok[:, 1:].transpose(1, 2).reshape(2, 32, 14, 14)
    assert torch.allclose(relative_log_amplitude(tok, "NLC", num_prefix_tokens=1),
                          relative_log_amplitude(grid), atol=1e-12)
    assert torch.allclose(relative_log_amplitude(tok, "NLC", 1, grid=(14, 14)), t["delta_f64"], atol=1e-9)
    with pytest.raises(ValueError, match="square"):
        relative_log_amplitude(tok, "NLC")           # 197 tokens: forgetting the prefix fails loudly
    with pytest.raises(ValueError, match="grid"):
        relative_log_amplitude(tok, "NLC", 1, grid=(7, 28 + 1))
    with pytest.raises(ValueError, match="layout"):
        relative_log_amplitude(tok, "NCL")


def test_zero_mean_warning_and_coarse_values():
    _, t = load_case("zeromean_14")
    with pytest.warns(ZeroMeanWarning):
        d = relative_log_amplitude(t["input"].double())
    assert d[0].item() == 0.0 and bool((d[1:] > 8).all())
    assert zero_mean_fraction(t["input"]) > 0.99
    _, pos = load_case("posmean_relu_14")
    assert zero_mean_fraction(pos["input"]) == 0.0
    # all-zero ("dead") channels are not zero-mean maps: they add log(eps) everywhere and shift nothing
    dead = pos["input"].clone()
    dead[:, :12] = 0
    assert zero_mean_fraction(dead) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroMeanWarning)
        relative_log_amplitude(dead)
    centred = dead - dead.mean(dim=(-2, -1), keepdim=True)
    assert zero_mean_fraction(centred) == pytest.approx(0.25)    # the 4 live channels of 16


def test_numpy_reference_agrees_on_mixed_channel_amplitudes():
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([0.01, 1.0, 100.0, 3.0]).view(1, 4, 1, 1)
    x = (torch.randn(3, 4, 10, 10, generator=g, dtype=torch.float64) + 0.2) * scales
    ours = relative_log_amplitude(x)
    ref = torch.from_numpy(numpy_reference(x.numpy()))
    assert (ours - ref).abs().max().item() < 1e-12


def test_convolution_theorem_oracle():
    """y = g (*) x (circular, per channel): Delta_y - Delta_x = log|G(k,k)| - log|G(0,0)|."""
    g = torch.Generator().manual_seed(5)
    H = 12
    x = 1e3 * (torch.randn(2, 3, H, H, generator=g, dtype=torch.float64) + 0.5)   # eps negligible
    ker = torch.zeros(H, H, dtype=torch.float64)
    ker[0, 0], ker[0, 1], ker[1, 0], ker[H - 1, 0], ker[0, H - 1] = 0.6, 0.1, 0.1, 0.1, 0.1
    G = torch.fft.fft2(ker)
    y = torch.fft.ifft2(torch.fft.fft2(x) * G).real
    diff = relative_log_amplitude(y) - relative_log_amplitude(x)
    k = torch.arange(H - H // 2)
    expect = torch.log(G.abs()[k, k]) - torch.log(G.abs()[0, 0])
    assert (diff - expect).abs().max().item() < 1e-6


def test_low_pass_is_strongly_negative_at_high_frequencies():
    _, t = load_case("lowpass_blur_14")
    d = relative_log_amplitude(t["input"])
    assert d[-1].item() < -4 and d[-2].item() < -3
    assert bool((d[1:] < 0.01).all())


def test_spectrum_map_diagonal_is_the_curve_and_symmetric():
    g = torch.Generator().manual_seed(7)
    for H in (7, 8):
        x = torch.randn(3, 5, H, H, generator=g, dtype=torch.float64) + 0.3
        m = spectrum_map(x)
        assert m.shape == (H, H) and m[H // 2, H // 2].item() == 0.0
        assert torch.allclose(torch.diagonal(m)[H // 2:], relative_log_amplitude(x), atol=1e-12)
        c = H // 2
        # point symmetry about the centre (real input); for even sizes the Nyquist row/column has no partner
        lo = 1 if H % 2 == 0 else 0
        sub = m[lo:, lo:]
        assert torch.allclose(sub, torch.flip(sub, (0, 1)), atol=1e-12)
        raw = spectrum_map(x, relative=False)
        assert torch.allclose(raw - raw[c, c], m, atol=1e-12)


def test_half_plane_rebuild_matches_full_fft_for_odd_even_and_non_square():
    g = torch.Generator().manual_seed(11)
    for H, W in ((6, 9), (9, 6), (5, 5), (8, 10)):
        x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
        full = torch.log(torch.fft.fft2(x).abs() + 1e-6).mean((0, 1))
        full = torch.roll(full, (H // 2, W // 2), (0, 1))
        assert torch.allclose(log_amplitude_map(x), full, atol=1e-12)


def test_streaming_sums_equal_one_batch():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(7, 4, 10, 10, generator=g, dtype=torch.float64) + 0.1
    acc = spectrum_stats(x[:3])
    acc += spectrum_stats(x[3:5])
    acc += spectrum_stats(x[5:])
    assert acc.count == 28
    assert torch.allclose(curve_from_map(acc.mean_map()), relative_log_amplitude(x), atol=1e-12)
    with pytest.raises(ValueError, match="size"):
        acc += spectrum_stats(torch.randn(1, 4, 8, 8, dtype=torch.float64))


def test_half_diagonal_fast_path_equals_the_2d_fft_path():
    g = torch.Generator().manual_seed(19)
    for N in (1, 2, 7, 8, 15):
        x = torch.randn(3, 4, N, N, generator=g, dtype=torch.float64) + 0.4
        fast = diagonal_stats(x)
        assert fast.count == 12 and fast.size == (N, N)
        full = curve_from_map(log_amplitude_map(x))
        assert len(fast.curve()) == N - N // 2 and fast.curve()[0].item() == 0.0
        assert torch.allclose(fast.curve(), full, atol=1e-12)
        # any layout and non-contiguous storage
        nhwc = x.permute(0, 2, 3, 1)
        assert torch.allclose(diagonal_stats(nhwc, "NHWC").curve(), full, atol=1e-12)
        tok = torch.cat([torch.zeros(3, 1, 4, dtype=torch.float64), nhwc.reshape(3, N * N, 4)], 1)
        assert torch.allclose(diagonal_stats(tok, "NLC", 1, grid=(N, N)).curve(), full, atol=1e-12)
        assert torch.allclose(diagonal_stats(x.transpose(-1, -2)).curve(),
                              curve_from_map(log_amplitude_map(x.transpose(-1, -2))), atol=1e-12)
    with pytest.raises(ValueError, match="radial"):
        diagonal_stats(torch.randn(1, 2, 4, 6))


def test_dtypes_half_inputs_are_upcast():
    x = torch.randn(2, 3, 8, 8) + 1
    d32 = relative_log_amplitude(x)
    for dt in (torch.float16, torch.bfloat16):
        d = relative_log_amplitude(x.to(dt))
        assert d.dtype == torch.float32
        assert torch.allclose(d, relative_log_amplitude(x.to(dt).float()), atol=1e-6)
    assert relative_log_amplitude(x, dtype=torch.float64).dtype == torch.float64
    assert torch.allclose(d32.double(), relative_log_amplitude(x, dtype=torch.float64), atol=1e-4)
    with pytest.raises(ValueError):
        relative_log_amplitude(x, dtype=torch.float16)


def _radial_numpy(m: np.ndarray) -> np.ndarray:
    H, W = m.shape
    n = min(H, W)
    K, step = n - n // 2, 2.0 / n
    vals = [m[H // 2, W // 2]]
    for k in range(1, K):
        sel = []
        for i in range(H):
            for j in range(W):
                rho = math.sqrt(((2 * (i - H // 2) / H) ** 2 + (2 * (j - W // 2) / W) ** 2) / 2)
                if math.floor(rho / step + 0.5) == k and (i, j) != (H // 2, W // 2):
                    sel.append(m[i, j])
        vals.append(np.mean(sel))
    return np.asarray(vals) - vals[0]


def test_radial_variant_non_square_and_transpose_symmetry():
    g = torch.Generator().manual_seed(17)
    x = torch.randn(2, 3, 8, 12, generator=g, dtype=torch.float64) + 0.2
    with pytest.raises(ValueError, match="radial"):
        relative_log_amplitude(x)                    # the diagonal is not defined for H != W
    r = radial_log_amplitude(x)
    assert len(r) == 4 and r[0].item() == 0.0
    assert np.allclose(r.numpy(), _radial_numpy(log_amplitude_map(x).numpy()), atol=1e-12)
    rt = radial_log_amplitude(x.transpose(-1, -2))
    assert torch.allclose(r, rt, atol=1e-12)
    # square maps: bin k holds the diagonal point (k, k) and its ring
    xs = torch.randn(2, 3, 10, 10, generator=g, dtype=torch.float64)
    assert np.allclose(radial_log_amplitude(xs).numpy(), _radial_numpy(log_amplitude_map(xs).numpy()), atol=1e-12)


def test_axes_depth_and_high_frequency_delta():
    assert torch.allclose(frequency_axis(7, kind="index"), torch.linspace(0, 1, 7, dtype=torch.float64))
    assert torch.allclose(frequency_axis(7, 14, kind="true"), torch.arange(7, dtype=torch.float64) / 7)
    assert frequency_axis(4, 7, kind="true")[-1].item() == pytest.approx(6 / 7)
    assert normalised_depth(5).tolist() == [0, 0.25, 0.5, 0.75, 1] and normalised_depth(1).tolist() == [0]
    curves = [torch.tensor([0.0, -1.0, -2.5]), torch.tensor([0.0, 0.3])]
    assert high_frequency_delta(curves).tolist() == pytest.approx([-2.5, 0.3])
    with pytest.raises(ValueError):
        frequency_axis(3, kind="true")


def test_as_nchw_views_and_public_exports():
    x = torch.randn(2, 5, 6, 3)
    assert torch.equal(as_nchw(x, "NHWC"), x.permute(0, 3, 1, 2))
    tok = torch.randn(2, 2 + 12, 3)
    assert as_nchw(tok, "NLC", 2, grid=(3, 4)).shape == (2, 3, 3, 4)
    assert spectrascope.relative_log_amplitude is relative_log_amplitude
    assert spectrascope.spectrum_map is spectrum_map
    assert isinstance(spectrum_stats(torch.randn(1, 1, 4, 4)), SpectrumStats)
