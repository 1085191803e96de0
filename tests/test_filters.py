"""Filter maths: the oracles of the official GFNet visualisation recipe, the
convolution-theorem equivalence of frequency masks (AFFNet), DFFormer dynamic filters
and SPANet masks, on plain tensors and on tiny zoo models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import spectrascope
from spectrascope.ops import filters as fl
from spectrascope.probe import Probe, select_taps, model_taps


def _point_symmetric(a: torch.Tensor) -> torch.Tensor:
    """Partner map of a centred (fftshift) amplitude: index i <-> (2*(H//2) - i) mod H."""
    H, W = a.shape[-2:]
    rows = (2 * (H // 2) - torch.arange(H)) % H
    cols = (2 * (W // 2) - torch.arange(W)) % W
    return a[..., rows, :][..., :, cols]


@pytest.mark.parametrize("h", [14, 7, 8])
def test_amplitude_is_point_symmetric_square_and_real_kernel(h):
    w = torch.randn(5, h, h // 2 + 1, dtype=torch.complex64)
    amp = fl.filter_amplitude(w)
    assert amp.shape == (5, h, h)                                  # square maps, odd sizes included
    assert (amp - _point_symmetric(amp)).abs().max() <= 5e-6
    k = fl.spatial_kernel(w)
    assert not k.is_complex() and k.shape == (5, h, h)
    assert fl.hermitian_error(fl.effective_spectrum(w)) <= 5e-6
    assert fl.hermitian_error(torch.randn(h, h, dtype=torch.complex64)) > 0.1   # a non-Hermitian control


@pytest.mark.parametrize("h", [14, 7])
def test_all_ones_filter_is_flat(h):
    amp = fl.filter_amplitude(torch.ones(h, h // 2 + 1, dtype=torch.complex64))
    assert (amp - 1).abs().max() <= 5e-6


@pytest.mark.parametrize("shape", [(14, 14), (7, 7), (8, 12)])
def test_real_kernel_round_trip(shape):
    g = torch.randn(3, *shape)
    half = torch.fft.rfft2(g)
    amp = fl.filter_amplitude(half, width=shape[1])
    ref = torch.fft.fftshift(torch.fft.fft2(g).abs(), dim=(-2, -1))
    assert (amp - ref).abs().max() <= 5e-6 * max(1.0, ref.abs().max().item())
    assert (fl.spatial_kernel(half, width=shape[1]) - g).abs().max() <= 5e-6


def test_parameter_layout_and_width_inference():
    p = torch.randn(7, 4, 3, 2)                 # (H, W//2+1, K, real/imag) as the models store it
    f = fl.param_to_filters(p)
    assert f.shape == (3, 7, 4) and f.is_complex()
    assert torch.equal(f[1].real, p[:, :, 1, 0]) and torch.equal(f[1].imag, p[:, :, 1, 1])
    assert fl.infer_width(7, 4) == 7 and fl.infer_width(14, 8) == 14 and fl.infer_width(24, 17) == 32
    assert fl.grid_of((3, 24, 17)) == (24, 32)
    with pytest.raises(ValueError):
        fl.infer_width(8, 5, width=12)


def test_frequency_filter_equals_circular_convolution():
    torch.manual_seed(3)
    for H, W in [(8, 8), (7, 10), (5, 5)]:
        x = torch.randn(2, 3, H, W)
        m = torch.randn(2, 3, H, W // 2 + 1, dtype=torch.complex64)
        y = fl.frequency_filter(x, m)
        k = fl.equivalent_kernel(m, width=W)
        assert (y - fl.circular_conv2d(x, k)).abs().max() <= 1e-4
    # a delta kernel is the identity; a shifted delta is a circular shift
    x = torch.randn(1, 1, 6, 6)
    d = torch.zeros(6, 6)
    d[1, 2] = 1
    assert torch.allclose(fl.circular_conv2d(x, d), torch.roll(x, (1, 2), (-2, -1)))
    assert torch.allclose(fl.frequency_filter(x, torch.fft.rfft2(d)), torch.roll(x, (1, 2), (-2, -1)), atol=1e-5)


def test_single_basis_equals_one_hot_routing_and_dynamic_filters():
    basis_param = torch.randn(8, 5, 4, 2)                   # 4 bases on an 8x8 grid
    basis = fl.param_to_filters(basis_param)
    routing = torch.zeros(1, 4, 6)
    routing[0, 2] = 1.0                                      # every channel on basis 2
    eff = fl.dynamic_filters(routing, basis_param)
    assert eff.shape == (1, 6, 8, 5)
    assert (fl.filter_amplitude(eff[0, 3]) - fl.filter_amplitude(basis[2])).abs().max() <= 1e-6
    soft = torch.softmax(torch.randn(2, 4, 6), dim=1)
    ref = sum(soft[:, f, :, None, None] * basis[f] for f in range(4))
    assert (fl.dynamic_filters(soft, basis) - ref).abs().max() <= 1e-6
    use = fl.routing_usage(soft)
    assert use["mean"].shape == (4, 6) and use["argmax_share"].sum() == pytest.approx(1.0)
    assert (use["entropy"] <= torch.log(torch.tensor(4.0)) + 1e-6).all()


def test_dfformer_filter_tap_is_the_routed_basis():
    model = spectrascope.create_model("dfformer_s18", num_classes=3, img_size=32, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32]).eval()
    taps = select_taps(model_taps(model), roles=["df_routing", "df_filter"], stages=[2])
    with Probe(model, taps, nchw=False) as probe, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        got = probe.pop()
    basis = model.stages[1][0].token_mixer.complex_weights
    eff = fl.dynamic_filters(got["s2.b0.df_routing"], basis)          # (B, 2C, H, W//2+1)
    assert (eff.permute(0, 2, 3, 1) - got["s2.b0.df_filter"]).abs().max() <= 1e-6


def test_filter_kind_on_synthetic_profiles():
    H = 16
    yy, xx = torch.meshgrid(torch.arange(H) - H // 2, torch.arange(H) - H // 2, indexing="ij")
    r = torch.sqrt(yy.float() ** 2 + xx.float() ** 2)
    assert fl.filter_kind(torch.exp(-r ** 2 / 8)) == "low-pass"
    assert fl.filter_kind(1 - torch.exp(-r ** 2 / 8)) == "high-pass"
    assert fl.filter_kind(torch.exp(-(r - 4) ** 2 / 2)) == "band-pass"
    assert fl.filter_kind(torch.ones(H, H)) == "all-pass"


def test_spf_mask_from_the_model_code():
    if "spanet_s" not in spectrascope.list_models():
        pytest.skip("SPANet is not in the zoo yet")
    m = fl.spf_mask(14, 14, 1, fl.SPF_LAMBDAS[0])
    assert m.shape == (14, 14)
    assert m[7, 7] == pytest.approx(0.7, abs=1e-6)
    assert int(((m - 1 / 3).abs() < 1e-6).sum()) == 4                # the 4 axis neighbours on the circle
    assert m[0, 0] == pytest.approx(0.3, abs=1e-6)
    m2 = fl.spf_mask(56, 56, 2, fl.SPF_LAMBDAS[2])
    assert int(((m2 - fl.SPF_LAMBDAS[2]).abs() < 1e-6).sum()) == 9


def test_affnet_mixer_is_a_circular_convolution_with_the_mask_kernel():
    if "affnet" not in spectrascope.list_models():
        pytest.skip("AFFNet is not in the zoo yet")
    model = spectrascope.create_model("affnet", num_classes=3, img_size=64).eval()
    taps = [t for t in model_taps(model) if t.role == "aff_mask"][:1]
    tap = taps[0]
    mixer_path = tap.path.rsplit(".", 1)[0]
    mixer = model.get_submodule(mixer_path)
    store = {}
    h1 = mixer.register_forward_pre_hook(lambda _m, a: store.setdefault("x", a[0].detach().clone()))
    h2 = mixer.register_forward_hook(lambda _m, _a, o: store.setdefault("y", o.detach().clone()))
    try:
        with Probe(model, taps, nchw=False) as probe, torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
            mask = probe.pop()[tap.name]
    finally:
        h1.remove()
        h2.remove()
    x, y = store["x"], store["y"]
    H, W = x.shape[-2:]
    k = fl.equivalent_kernel(mask, width=W)
    conv = fl.circular_conv2d(x[:, :4], k[:, :4])                   # 4 channels keep the direct sum quick
    skip = y[:, :4] - x[:, :4] if getattr(mixer, "in_mixer_skip", True) else y[:, :4]
    assert (conv - skip).abs().max() <= 1e-4 * max(1.0, conv.abs().max().item())


def test_collect_filters_uses_the_built_grid():
    from spectrascope.analyses.filters import collect_filters
    model = spectrascope.create_model("dfformer_s18", num_classes=3, img_size=(28, 36), depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32])
    layers = collect_filters(model)
    assert [(x.name, x.kind, x.grid) for x in layers[:2]] == [("s1.b0", "dynamic-basis", (7, 9)),
                                                               ("s2.b0", "dynamic-basis", (4, 5))]   # 3x3/2 of 7x9
    amp = fl.filter_amplitude(layers[0].filters, width=layers[0].width)
    assert amp.shape == (4, 7, 9)
    ref = fl.param_to_filters(model.stages[0][0].token_mixer.complex_weights.detach())
    assert torch.equal(layers[0].filters, ref)


def test_spf_mask_is_pure_and_equals_the_model_code():
    import ast
    from pathlib import Path
    from spectrascope.models.spanet import spf_mask as model_mask
    src = Path(fl.__file__).read_text()
    imported = {n.module or "" for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if "models" in m or "probe" in m or "engine" in m]
    for h, w, r, lam in [(14, 14, 1, 0.7), (56, 56, 2, fl.SPF_LAMBDAS[2]), (6, 9, 1, 0.8), (7, 7, 2, 0.3)]:
        assert torch.equal(fl.spf_mask(h, w, r, lam), model_mask(h, w, r, lam))


def _tiny_df():
    torch.manual_seed(0)
    return spectrascope.create_model("dfformer_s18", num_classes=3, img_size=32, depths=[1, 1, 1, 1],
                                     dims=[8, 16, 24, 32]).eval()


def test_routing_reducer_equals_closed_form_and_merges_like_one_pass():
    from spectrascope.analyses.filters import RoutingReducer
    from spectrascope.engine.reducers import merge_states
    model = _tiny_df()
    taps = select_taps(model_taps(model), roles=["df_routing"])
    x = torch.randn(5, 3, 32, 32)
    with Probe(model, taps, nchw=False) as probe, torch.no_grad():
        model(x)
        got = probe.pop()
    whole, first, second = RoutingReducer(taps), RoutingReducer(taps), RoutingReducer(taps)
    for t in taps:
        whole(t, got[t.name])
        first(t, got[t.name][:2])
        second(t, got[t.name][2:])
    merged = RoutingReducer(taps)
    merged.load_state(merge_states([first.state(), second.state()]))
    res, res2 = whole.result(), merged.result()
    assert list(res) == ["s1.b0", "s2.b0", "s3.b0", "s4.b0"]
    for t in taps:
        name = t.name.rsplit(".", 1)[0]
        ref = fl.routing_usage(got[t.name])                  # the closed form on the whole batch
        for k in ("mean", "argmax_share", "entropy"):
            assert torch.allclose(res[name][k].float(), ref[k], atol=1e-6)
            assert torch.allclose(res2[name][k], res[name][k], rtol=1e-12, atol=1e-12)
        assert res[name]["images"] == res2[name]["images"] == 5


def test_layers_use_the_tap_grammar():
    from spectrascope.analyses.filters import collect_filters, resolve_layers, select_layers
    from spectrascope.errors import TapError
    model = _tiny_df()
    banks = collect_filters(model)

    def names(spec):
        return [b.name for b in select_layers(banks, resolve_layers(model, spec), spec)]
    assert names("3,s4.*") == ["s3.b0", "s4.b0"]
    assert names("s2.b0") == ["s2.b0"]
    assert names("stages.2.0.token_mixer.complex_weights") == ["s3.b0"]        # a parameter path
    assert names("path:stages.0.0.token_mixer") == ["s1.b0"]
    assert names("stages.3") == ["s4.b0"]                                       # a module above the layer
    assert names("s1.b0.mixer,4") == ["s1.b0", "s4.b0"]
    assert names("") == ["s1.b0", "s2.b0", "s3.b0", "s4.b0"]
    for bad in ("s9.*", "nosuch", "path:stages.9"):
        with pytest.raises(TapError, match="matches none"):
            resolve_layers(model, bad, known=[b.name for b in banks])
    with pytest.raises(TapError, match="matches none"):                        # taps, but no filter layer
        select_layers(banks, resolve_layers(model, "path:stem"), "path:stem")


def test_filter_figures_are_pdf_and_png_at_200_dpi_with_labelled_bars_and_a_clear_title(tmp_path):
    from PIL import Image
    from spectrascope.analyses.filters import collect_filters
    from spectrascope.report import filters as rf
    model = _tiny_df()
    banks = collect_filters(model)
    amps = [fl.filter_amplitude(b.filters, width=b.width) for b in banks]
    fig, files = rf.plot_filter_grid(banks, amps, 4, tmp_path, "grid", col_label="basis",
                                     title="tiny: bases\n(random weights: no checkpoint given)")
    assert files == ["grid.png", "grid.pdf"]
    dpi = Image.open(tmp_path / "grid.png").info["dpi"]
    assert min(dpi) >= 199.5
    assert (tmp_path / "grid.pdf").read_bytes()[:4] == b"%PDF"
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("stage")]
    assert len(bars) == 4 and all("|W|" in ax.get_ylabel() for ax in bars)
    maps = [ax for ax in fig.axes if ax.images and ax not in bars]
    assert [t.get_text() for ax in maps for t in ax.get_yticklabels()] == ["s1.b0", "s2.b0", "s3.b0", "s4.b0"]
    assert maps[0].images[0].get_cmap().name.startswith("viridis")           # yellow = high
    # the mosaic holds the amplitudes themselves (stage 2: one 4x4 grid per basis, repeated by whole
    # factors to stage 1's tile size so every stage is drawn at one size, NaN gaps)
    tile = np.asarray(maps[1].images[0].get_array())
    h, k = amps[0].shape[-2], amps[0].shape[-2] // amps[1].shape[-2]
    assert np.allclose(tile[0:h, h + 1:2 * h + 1], np.repeat(np.repeat(amps[1][1].numpy(), k, 0), k, 1), atol=1e-6)
    r = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(r)
    heads = [t.get_window_extent(r) for t in maps[0].get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in maps[0].get_xticklabels()] == ["basis 0", "basis 1", "basis 2", "basis 3"]
    assert heads and all(h.y1 <= title.y0 for h in heads)                      # no overlap with the headers


def test_a_nonfinite_stop_on_one_rank_stops_every_rank():
    from spectrascope.engine.dist import Dist
    from spectrascope.errors import NonFiniteError, PeerFailure

    class TwoRanks(Dist):
        def __init__(self, other):
            super().__init__(rank=0, world=2)
            self.other = other

        def all_gather_object(self, obj):
            return [obj, self.other]
    TwoRanks(None).agree(None)                                              # nobody failed: no error
    msg = "non-finite values (NaN/inf) first appeared at tap s1.b0.df_routing in batch 2"
    with pytest.raises(PeerFailure, match="tap s1.b0.df_routing in batch 2") as info:
        TwoRanks((msg, 2, "user")).agree(None)                             # the other rank failed
    assert info.value.exit_code == 2 and str(info.value) == msg
    with pytest.raises(NonFiniteError):                                     # this rank failed: its own error
        with TwoRanks(None).together():
            raise NonFiniteError(msg)
