"""Probes, tap selection, streaming reducers and timm tap inference."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import spectrascope
from spectrascope.analyses.amplitude import reduce_spectra
from spectrascope.probe.grammar import choose_taps, parse_tap_request
from spectrascope.models.base import TapSpec
from spectrascope.engine.reducers.amplitude import AmplitudeReducer
from spectrascope.ops.fourier import relative_log_amplitude
from spectrascope.probe import Probe, TapError, model_taps

TINY = dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32])
SPATIAL = ("NCHW", "NHWC", "NLC")


def tiny(name="dfformer_s18", size=64, **kw):
    return spectrascope.create_model(name, num_classes=3, img_size=size, **{**TINY, **kw}).eval()


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def batch(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- Probe

def test_execution_order_and_residual_stream_oracle():
    model = tiny()
    taps = [t for t in model_taps(model) if t.role in ("stem", "downsample", "mixer", "residual", "mlp", "block")]
    with torch.inference_mode(), Probe(model, taps, nchw=False) as probe:
        model(batch())
    assert probe.order == [t.name for t in taps]              # declared order == firing order
    cap = probe.pop()
    prev = None
    for t in taps:
        if t.role in ("stem", "downsample"):
            prev = cap[t.name]
        elif t.role == "block":
            p = t.name.rsplit(".", 1)[0]
            mixer, resid, mlp = cap[f"{p}.mixer"], cap[f"{p}.residual"], cap[f"{p}.mlp"]
            # MetaFormer block (layer scale off, res scale 1): x + mixer -> residual, residual + mlp -> block
            assert torch.allclose(resid, prev + mixer, atol=1e-6)
            assert torch.allclose(cap[t.name], resid + mlp, atol=1e-6)
            prev = cap[t.name]


def test_hooks_removed_on_exit_and_on_error():
    model = tiny()
    before = n_hooks(model)
    taps = choose_taps(model)
    with Probe(model, taps):
        assert n_hooks(model) == before + len(taps)
    assert n_hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with Probe(model, taps):
            raise RuntimeError("boom")
    assert n_hooks(model) == before

    def bad_callback(tap, x):
        raise ValueError("reducer failed")
    with pytest.raises(ValueError, match="reducer failed"):
        with torch.inference_mode(), Probe(model, taps, callback=bad_callback):
            model(batch())
    assert n_hooks(model) == before
    with pytest.raises(TapError, match="no module"):
        with Probe(model, [TapSpec("x", "path", "stages.9", "NCHW")]):
            pass
    assert n_hooks(model) == before


def test_in_place_op_after_tap_does_not_corrupt_capture():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(inplace=True)).eval()
    x = batch(2, 8)
    tap = TapSpec("conv", "path", "0", "NCHW")
    with torch.inference_mode(), Probe(model, [tap]) as probe:
        model(x)
    got = probe.pop()["conv"]
    with torch.no_grad():
        ref = conv(x)
    assert got.min().item() < 0 and torch.equal(got, ref)
    # the streaming reducer consumes the map inside the hook, before the in-place ReLU runs
    stats, n, _ = reduce_spectra(model, [x], [tap], dtype=torch.float64)
    from spectrascope.ops.fourier import curve_from_map
    assert n == 2
    assert torch.allclose(curve_from_map(stats["conv"].mean_map()), relative_log_amplitude(ref.double()), atol=1e-12)


def test_streaming_reducer_equals_one_big_batch():
    model = tiny()
    taps = choose_taps(model, input_size=(64, 64))
    x = batch(6, seed=3)
    with torch.inference_mode(), Probe(model, taps, dtype=torch.float64) as probe:
        model(x)
    full = probe.pop()
    stats, n, order = reduce_spectra(model, [x[:2], x[2:4], (x[4:], "labels")], taps, dtype=torch.float64)
    assert n == 6 and order == [t.name for t in taps]
    from spectrascope.ops.fourier import curve_from_map
    for t in taps:
        ours = curve_from_map(stats[t.name].mean_map())
        ref = relative_log_amplitude(full[t.name])
        assert ours[0].item() == 0.0
        assert (ours - ref).abs().max().item() < 1e-5, t.name


def test_reducer_state_is_flat_in_the_number_of_images():
    model = tiny()
    taps = choose_taps(model)
    red = AmplitudeReducer(taps)

    def state():
        return sum(s.half_sum.numel() for s in red.stats.values())
    with torch.inference_mode(), Probe(model, taps, callback=red, **red.probe_kwargs):
        model(batch(2))
        first = state()
        for k in range(3):
            model(batch(4, seed=k + 1))
    assert state() == first == sum(t_h * (t_w // 2 + 1) for t_h, t_w in (s.size for s in red.stats.values()))
    assert all(s.count == 14 * s.channels for s in red.stats.values())
    assert all(c == 4 for c in red.calls.values())


def test_half_diagonal_reducer_keeps_only_the_curve():
    model = tiny()
    taps = choose_taps(model)
    x = batch(3, seed=4)
    fast, _, _ = reduce_spectra(model, [x[:1], x[1:]], taps, maps=False)
    full, _, _ = reduce_spectra(model, [x], taps, maps=True)
    from spectrascope.ops.fourier import curve_from_map
    for t in taps:
        H = full[t.name].size[0]
        assert fast[t.name].diag_sum.shape == (H - H // 2,)
        assert torch.allclose(fast[t.name].curve(), curve_from_map(full[t.name].mean_map()).double(), atol=1e-5)
    rect = tiny(size=(64, 96))
    with pytest.raises(TapError, match="radial"):
        reduce_spectra(rect, [torch.randn(1, 3, 64, 96)], choose_taps(rect), maps=False)


def test_reducer_rejects_non_spatial_taps():
    model = tiny()
    taps = model_taps(model)
    for role in ("df_routing", "df_filter", "pool"):
        t = taps.by_role(role)[0]
        with pytest.raises(TapError, match=f"layout {t.layout}"):
            AmplitudeReducer([t])
    with pytest.raises(TapError, match="spatial"):
        choose_taps(model, roles=["df_routing"])


# ---------------------------------------------------------------------------- selection

def test_choose_taps_roles_stages_blocks_and_paths():
    model = tiny()
    default = choose_taps(model)
    assert default.roles() == ["stem", "residual", "block", "downsample"] or \
        set(default.roles()) == {"stem", "downsample", "residual", "block"}
    assert len(default) == 4 + 2 * 5
    s3 = choose_taps(model, stages=[3])
    assert {t.stage for t in s3} == {3} and [t.role for t in s3][0] == "downsample" and len(s3) == 1 + 2 * 2
    last = choose_taps(model, roles=["mixer"], blocks="last")
    assert [t.name for t in last] == ["s1.b0.mixer", "s2.b0.mixer", "s3.b1.mixer", "s4.b0.mixer"]
    first = choose_taps(model, roles=["mixer"], stages=[3], blocks=0)
    assert [t.name for t in first] == ["s3.b0.mixer"]
    with pytest.raises(TapError, match="unknown tap role"):
        choose_taps(model, roles=["bogus"])
    with pytest.raises(TapError, match="stage"):
        choose_taps(model, stages=[7])
    roles, paths = parse_tap_request("mixer,path:stages.2.1.token_mixer:NHWC,path:stages.0")
    assert roles == ["mixer"] and paths == [("stages.2.1.token_mixer", "NHWC"), ("stages.0", None)]
    got = choose_taps(model, roles=None, paths=[("stages.2.1.mlp.fc1", "NHWC")])
    assert got[0].path == "stages.2.1.mlp.fc1" and got[0].layout == "NHWC"
    declared = choose_taps(model, paths=[("stages.2.1.token_mixer", None)])   # a declared tap keeps its spec
    assert declared[0].name == "s3.b1.mixer"
    with pytest.raises(TapError, match="layout"):
        choose_taps(model, paths=[("stages.2.1.mlp.fc1", None)])
    with pytest.raises(TapError, match="no module"):
        choose_taps(model, paths=[("stages.9", "NCHW")])


SPANET = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 20, 32])
GFNET = dict(patch_size=16, embed_dim=32, depth=2, mlp_ratio=4, depths=None, dims=None)


@pytest.mark.parametrize("name,kw", [("dfformer_s18", {}), ("caformer_s18", {}), ("convformer_s18", {}),
                                     ("gfnet_ti", dict(patch_size=16, embed_dim=32, depth=2, mlp_ratio=4)),
                                     ("spanet_s", SPANET)])
def test_zoo_spatial_taps_fire_in_order_and_normalise_to_their_grid(name, kw):
    if name not in spectrascope.list_models():
        pytest.skip(f"{name} is not in this version's model zoo")
    overrides = kw if kw else TINY
    model = spectrascope.create_model(name, num_classes=3, img_size=64, **overrides).eval()
    taps = [t for t in model_taps(model) if t.layout in SPATIAL]
    with torch.inference_mode(), Probe(model, taps) as probe:
        model(batch())
    assert probe.order == [t.name for t in taps]
    cap = probe.pop()
    for t in taps:
        x = cap[t.name]
        assert x.ndim == 4, t.name
        if t.grid is not None:
            assert tuple(x.shape[-2:]) == tuple(t.grid), t.name


def test_infer_taps_refuses_unknown_models_clearly():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(TapError, match="cannot infer taps for Sequential.*--taps path:"):
        model_taps(model)


# ---------------------------------------------------------------------------- timm

def _timm():
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm'); timm tap inference is not tested")
    return pytest.importorskip("timm")


def test_timm_vit_tokens_with_prefix_match_forward_intermediates():
    _timm()
    model = spectrascope.create_model("timm:vit_tiny_patch16_224", img_size=64, num_classes=3).eval()
    taps = model_taps(model, input_size=(64, 64))
    by = {t.name: t for t in taps}
    assert by["stem"].layout == "NLC" and by["stem"].num_prefix_tokens == 1 and by["stem"].hook == "pre"
    assert by["s1.b0.mixer"].path == "blocks.0.attn" and by["s1.b0.residual"].path == "blocks.0.norm2"
    assert by["s1.b0.block"].grid == (4, 4) and by["pool"].layout == "NC"
    x = batch()
    blocks = [t for t in taps if t.role == "block"]
    with torch.inference_mode(), Probe(model, blocks) as probe:
        model(x)
        ref = model.forward_intermediates(x, output_fmt="NCHW", intermediates_only=True)
    cap = probe.pop()
    assert len(ref) == len(blocks) == 12
    for t, r in zip(blocks, ref):
        assert torch.allclose(cap[t.name], r, atol=1e-6)
        assert torch.allclose(relative_log_amplitude(cap[t.name]), relative_log_amplitude(r), atol=1e-6)


def test_timm_distilled_deit_has_two_prefix_tokens():
    _timm()
    model = spectrascope.create_model("timm:deit_tiny_distilled_patch16_224", img_size=32, num_classes=3).eval()
    taps = choose_taps(model, input_size=(32, 32))
    assert {t.num_prefix_tokens for t in taps} == {2}
    stats, n, _ = reduce_spectra(model, [batch(2, 32)], taps)
    assert n == 2 and all(s.size == (2, 2) for s in stats.values())


@pytest.mark.parametrize("name,kw,mixer_child,block_layout", [
    ("swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2)),
     "drop_path1", "NHWC"),
    ("convnext_tiny", dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32)), "conv_dw", "NCHW"),
    ("focalnet_tiny_srf", dict(embed_dim=16, depths=(1, 1, 2, 1)), "modulation", "NCHW"),
    ("caformer_s18", dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64)), "token_mixer", "NLC"),
])
def test_timm_hierarchical_families(name, kw, mixer_child, block_layout):
    timm = _timm()
    if name.startswith("focalnet"):   # its registered entry points fix embed_dim/depths: build the class
        model = timm.models.focalnet.FocalNet(num_classes=3, **kw).eval()
    elif name.startswith("caformer"):   # conv stages NCHW, attention stages as tokens (NLC)
        from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv
        model = MetaFormer(num_classes=3, token_mixers=(SepConv, SepConv, Attention, Attention),
                           norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2, **kw).eval()
    else:
        model = spectrascope.create_model(f"timm:{name}", num_classes=3, **kw).eval()
    taps = model_taps(model, input_size=(224, 224))
    mixers = taps.by_role("mixer")
    assert mixers and all(t.path.endswith(mixer_child) for t in mixers)
    assert taps.by_role("block")[-1].layout == block_layout
    assert [t.stage for t in taps.by_role("downsample")] == [2, 3, 4]
    spatial = [t for t in taps if t.layout in SPATIAL]
    x = batch(2, 224)
    with torch.inference_mode(), Probe(model, spatial) as probe:
        model(x)
        ref = model.forward_intermediates(x, intermediates_only=True)
    assert probe.order == [t.name for t in spatial]
    cap = probe.pop()
    for t in spatial:
        assert tuple(cap[t.name].shape[-2:]) == tuple(t.grid), t.name
    for s, r in enumerate(ref):       # stage outputs equal timm's own NCHW intermediates
        assert torch.allclose(cap[f"stage{s + 1}"], r, atol=1e-5)
