"""AFFNet family: official keys/params, parity with the official code, the AFF mixer and its
taps, every paper ablation (closed-form oracles on plain tensors), DCT/Haar transforms."""
import json

import pytest
import torch
import torch.nn.functional as F

import spectrascope
from conftest import fixtures_dir
from parity import check_fixture, check_official_keys, load_fixture, meta_model, run_with_feats, tolerance
from spectrascope.models import affnet as A
from spectrascope.models.affnet_ablations import (GridError, dct2, dct_matrix, haar_dwt2, haar_idwt2, idct2)
from spectrascope.probe import Probe, model_taps

#: a small layer table in the official format (channels 16/16/16/24/32, AFF blocks 1/2/1)
TINY = {
    "layer1": {"out_channels": 16, "expand_ratio": 2, "num_blocks": 1, "stride": 1, "block_type": "mv2"},
    "layer2": {"out_channels": 16, "expand_ratio": 2, "num_blocks": 2, "stride": 2, "block_type": "mv2"},
    **{f"layer{k}": {"out_channels": c, "transformer_channels": c, "ffn_dim": 2 * c, "transformer_blocks": n,
                     "patch_h": 2, "patch_w": 2, "stride": 2, "mv_expand_ratio": 2, "head_dim": None,
                     "num_heads": None, "block_type": "aff_block"}
       for k, c, n in [(3, 16, 1), (4, 24, 2), (5, 32, 1)]},
    "last_layer_exp_factor": 4,
}
OFFICIAL = ["affnet", "affnet_t", "affnet_et"]


def tiny(name="affnet", size=(64, 64), **kw):
    return spectrascope.create_model(name, config=TINY, num_classes=5, img_size=size, **kw).eval()


# ---------------------------------------------------------------------------- official models


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_keys_shapes_and_params(name):
    model, ref = check_official_keys(name)
    card = spectrascope.get_card(name)
    assert card.family == "affnet" and "Huang et al., ICCV 2023" in card.paper and card.feature_layout == "NCHW"
    mode = ref["affnet_opts_applied"]["model.classification.affnet.mode"]
    assert model.config == A.get_configuration(mode)


def test_cards_and_aliases():
    assert spectrascope.get_card("AFFNet-ET").name == "affnet_et"
    assert spectrascope.get_card("affnet_xx_small").name == "affnet_et"
    assert spectrascope.get_card("affnet_x_small").name == "affnet_t"
    card = spectrascope.get_card("affnet")
    assert card.paper_params_m == 5.5 and card.crop_pct == pytest.approx(0.888) and card.std == (1.0, 1.0, 1.0)
    assert {"stem", "downsample", "block", "mlp", "aff_mask", "mixer", "stage", "pool"} == set(card.tap_roles)
    names = spectrascope.list_models("affnet*")
    assert set(OFFICIAL) | set(A.ABLATIONS) == set(names)
    assert all(spectrascope.get_card(n).variant_of == "affnet" for n in A.ABLATIONS)


def fixture_overrides(meta):
    return {"config": meta["constructor_args"]["config"], "opts": meta["affnet_opts_applied"]}


@pytest.mark.parametrize("fixture", ["affnet_tiny", "affnet_tiny_96x128"])
def test_parity_with_official_code(fixture):
    meta, _, _ = load_fixture(fixture)
    model, _, _ = check_fixture(fixture, "affnet_et", fixture_overrides(meta))
    assert model.classifier.fc.out_features == 10 and model.config == meta["affnet_config_override"]


def test_official_state_dict_file_loads_by_name(tmp_path):
    meta, tensors, state = load_fixture("affnet_tiny")
    path = tmp_path / "checkpoint_ema_score_0.pt"
    torch.save(state, path)  # cvnets EMA checkpoints are plain state_dicts
    from spectrascope.zoo.build import build_for_inference
    model, prep = build_for_inference("affnet_et", checkpoint=path, config=meta["constructor_args"]["config"])
    assert model.classifier.fc.out_features == 10  # head size read from the checkpoint
    assert prep["size"] == (256, 256) and prep["mean"] == (0.0, 0.0, 0.0) and prep["std"] == (1.0, 1.0, 1.0)
    y, _ = run_with_feats(model, tensors["input"], [])
    assert (y - tensors["output"]).abs().max() <= tolerance(tensors["output"])


def _filter_io(model, x, path):
    """Input and output of one AFF mixer (official module path)."""
    got = {}
    mod = model.get_submodule(path)
    h1 = mod.register_forward_pre_hook(lambda _m, a: got.__setitem__("in", a[0].detach().clone()))
    h2 = mod.register_forward_hook(lambda _m, _a, o: got.__setitem__("out", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
            model(x)
    finally:
        h1.remove()
        h2.remove()
    return got["in"], got["out"]


def reference_mask(x, state, prefix, lam=0.01, act=F.silu):
    """The official AFF mask, written independently: two complex block-diagonal linear
    layers (8 groups), act on real and imaginary parts, softshrink on both parts."""
    X = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
    B, C, H, Wf = X.shape
    w1, b1, w2, b2 = (state[f"{prefix}.{n}"] for n in ("w1", "b1", "w2", "b2"))
    G = w1.shape[1]
    W1 = torch.complex(w1[0], w1[1])  # (G, b, b)
    W2 = torch.complex(w2[0], w2[1])
    Xg = X.reshape(B, G, C // G, H, Wf)
    h = torch.einsum("bgihw,gio->bgohw", Xg, W1) + torch.complex(b1[0], b1[1])[None, :, :, None, None]
    h = torch.complex(act(h.real), act(h.imag))
    m = torch.einsum("bgihw,gio->bgohw", h, W2) + torch.complex(b2[0], b2[1])[None, :, :, None, None]
    m = torch.complex(F.softshrink(m.real, lam), F.softshrink(m.imag, lam))
    return m.reshape(B, C, H, Wf), X


def test_mask_and_pure_mixer_taps_match_official_mixer():
    meta, tensors, state = load_fixture("affnet_tiny")
    model = spectrascope.create_model("affnet_et", num_classes=10, **fixture_overrides(meta))
    model.load_state_dict(state)
    model.eval()
    path = "layer_4.1.global_rep.1.filter"
    _, feats = run_with_feats(model, tensors["input"], [f"{path}.mask_tap", f"{path}.spectral_tap", path])
    x_in, out = _filter_io(model, tensors["input"], path)
    mask, mixer = feats[f"{path}.mask_tap"], feats[f"{path}.spectral_tap"]
    ref_out = tensors[f"feat.{path}"]  # official: F^-1(M * F(x)) + x
    assert (out - ref_out).abs().max() <= tolerance(ref_out)
    assert mask.dtype == torch.complex64 and mask.shape == (2, 24, 16, 9)
    assert mixer.shape == x_in.shape == (2, 24, 16, 16)
    # "mixer" is the token-mixer output WITHOUT the in-mixer skip
    assert (mixer + x_in - ref_out).abs().max() <= tolerance(ref_out)
    m_ref, X = reference_mask(x_in, state, path)
    assert (mask - m_ref).abs().max() <= 1e-5 * max(1.0, m_ref.abs().max().item())
    assert (mask == 0).any(), "softshrink should zero some mask entries"
    pure = torch.fft.irfft2(m_ref * X, s=(16, 16), dim=(2, 3), norm="ortho")
    assert (mixer - pure).abs().max() <= tolerance(pure)


# ---------------------------------------------------------------------------- running


@pytest.mark.parametrize("name,size", [("affnet_et", (256, 256)), ("affnet_t", (192, 160)), ("affnet", (256, 256))])
def test_full_size_models_run_in_inference_mode_and_bf16(name, size):
    model = spectrascope.create_model(name, img_size=size).eval()
    x = torch.rand(1, 3, *size)
    with torch.inference_mode():
        y = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = model(x)
    assert y.shape == (1, 1000) and torch.isfinite(y).all() and torch.isfinite(yb.float()).all()
    assert (yb.float() - y).abs().max() <= 0.1 * y.abs().max() + 1e-3


@pytest.mark.parametrize("name", sorted(A.ABLATIONS))
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_every_variant_runs_at_two_sizes_bf16_and_inference_mode(name, size):
    model = tiny(name, size)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        y = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all() and torch.isfinite(yb.float()).all()
    assert (yb.float() - y).abs().max() <= 0.15 * y.abs().max() + 1e-3


def test_bf16_autocast_keeps_the_mask_complex64():
    model = tiny("affnet")
    path = "layer_4.1.global_rep.0.filter.mask_tap"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, feats = run_with_feats(model, torch.randn(1, 3, 64, 64), [path])
    assert feats[path].dtype == torch.complex64


# ---------------------------------------------------------------------------- taps


@pytest.mark.parametrize("name", ["affnet", "affnet_token_first", "affnet_no_mixer", "affnet_dff", "affnet_gfn"])
def test_taps_unique_resolvable_and_in_firing_order(name):
    model = tiny(name, (64, 96))
    taps = model_taps(model)
    assert len({t.name for t in taps}) == len(taps)
    for t in taps:
        model.get_submodule(t.path)
    blocks = taps.by_role("block")
    assert len(blocks) == 4 and [t.depth for t in blocks] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert [t.name for t in taps.by_role("downsample")] == ["downsample2", "downsample3", "downsample4",
                                                            "downsample5"]
    assert taps[0].name == "stem" and taps[-1].name == "pool"
    with Probe(model, taps) as probe, torch.no_grad():
        model(torch.randn(2, 3, 64, 96))
    assert probe.order == [t.name for t in taps], "declared order differs from the firing order"
    caps = probe.pop()
    for t in taps:
        if t.layout == "NCHW":
            assert caps[t.name].shape[-2:] == t.grid, t.name
    assert caps["stage3"].shape == (2, 16, 8, 12) and caps["pool"].shape == (2, 128)


def test_tap_roles_per_block_and_stages():
    taps = model_taps(tiny("affnet"))
    s4 = [t.name for t in taps if t.stage == 4]
    assert s4 == ["downsample4", "s4.b0.mlp", "s4.b0.aff_mask", "s4.b0.mixer", "s4.b0.block",
                  "s4.b1.mlp", "s4.b1.aff_mask", "s4.b1.mixer", "s4.b1.block", "stage4"]
    tf = [t.name for t in model_taps(tiny("affnet_token_first")) if t.stage == 3]
    assert tf == ["downsample3", "s3.b0.aff_mask", "s3.b0.mixer", "s3.b0.mlp", "s3.b0.block", "stage3"]
    nm = model_taps(tiny("affnet_no_mixer"))
    assert not nm.by_role("aff_mask") and len(nm.by_role("mixer")) == 4


# ---------------------------------------------------------------------------- ablations (oracles)


def aff(dim=16, **kw):
    torch.manual_seed(0)
    m = A.AFFMixer(dim, **kw).eval()
    with torch.no_grad():  # larger weights than the 0.02 init so the masks are far from zero
        for p in (m.w1, m.w2):
            p.normal_(0, 0.5)
        for p in (m.b1, m.b2):
            p.normal_(0, 0.3)
    return m


def taps_of(mixer, x):
    got = {}
    h1 = mixer.mask_tap.register_forward_hook(lambda _m, _i, o: got.__setitem__("mask", o))
    h2 = mixer.spectral_tap.register_forward_hook(lambda _m, _i, o: got.__setitem__("mixer", o))
    with torch.no_grad():
        out = mixer(x)
    h1.remove()
    h2.remove()
    return out, got["mask"], got["mixer"]


def test_aff_product_equals_reference_and_skip():
    m = aff()
    x = torch.randn(2, 16, 8, 10)
    out, mask, mixer = taps_of(m, x)
    ref, X = reference_mask(x, {f"f.{k}": v for k, v in m.state_dict().items()}, "f")
    assert torch.allclose(mask, ref, atol=1e-5)
    assert torch.allclose(mixer, torch.fft.irfft2(ref * X, s=(8, 10), dim=(2, 3), norm="ortho"), atol=1e-5)
    assert torch.allclose(out, mixer + x)
    noskip = aff(in_mixer_skip=False)
    noskip.load_state_dict(m.state_dict())
    assert torch.allclose(noskip(x), mixer, atol=1e-6)


def test_aff_sum_adds_mask_to_spectrum():
    m = aff(combine="sum")
    x = torch.randn(2, 16, 8, 8)
    _, mask, mixer = taps_of(m, x)
    X = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
    assert torch.allclose(mixer, torch.fft.irfft2(mask + X, s=(8, 8), dim=(2, 3), norm="ortho"), atol=1e-5)


def test_aff_without_fft_filters_in_the_original_space():
    m = aff(transform="identity")
    x = torch.randn(2, 16, 6, 7)
    out, mask, mixer = taps_of(m, x)
    assert mask.dtype == torch.float32 and mask.shape == x.shape
    assert torch.allclose(mixer, mask * x, atol=1e-6)
    # the mask is the real part of the complex mask net applied to x (imaginary part 0)
    full = aff()
    full.load_state_dict(m.state_dict())
    assert torch.allclose(mask, full._mask(x, torch.zeros_like(x)).real, atol=1e-6)


def test_aff_dct_and_dwt_transforms():
    x = torch.randn(2, 16, 8, 6)
    m = aff(transform="dct")
    _, mask, mixer = taps_of(m, x)
    assert torch.allclose(mixer, idct2(mask * dct2(x)), atol=1e-5)
    w = aff(transform="dwt")
    x_odd = torch.randn(2, 16, 5, 7)
    out, mask, mixer = taps_of(w, x_odd)
    assert out.shape == x_odd.shape and mask.shape == (2, 16, 6, 8)  # zero-padded to even
    xp = F.pad(x_odd, (0, 1, 0, 1))
    assert torch.allclose(mixer, haar_idwt2(mask * haar_dwt2(xp))[..., :5, :7], atol=1e-5)


def test_mask_1hw_is_the_channel_mean_of_the_chw_mask():
    m = aff(mask_shape="1HW")
    full = aff()
    full.load_state_dict(m.state_dict())
    x = torch.randn(2, 16, 8, 8)
    _, mask, mixer = taps_of(m, x)
    _, full_mask, _ = taps_of(full, x)
    assert mask.shape == (2, 1, 8, 5)
    assert torch.allclose(mask, full_mask.mean(dim=1, keepdim=True), atol=1e-6)
    X = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
    assert torch.allclose(mixer, torch.fft.irfft2(mask * X, s=(8, 8), dim=(2, 3), norm="ortho"), atol=1e-5)


@pytest.mark.parametrize("groups,coupled", [(8, 2), ("C", 1), (1, 16)])
def test_group_count_sets_the_block_diagonal_structure(groups, coupled):
    m = aff(num_blocks=groups)
    bs = coupled  # channels per group
    assert m.w1.shape == (2, 16 // bs, bs, bs) and m.b1.shape == (2, 16 // bs, bs)
    x = torch.randn(1, 16, 6, 6)
    y = x.clone()
    y[:, 0] += 1.0  # perturb channel 0 only: only the mask channels of its group change
    _, m1, _ = taps_of(m, x)
    _, m2, _ = taps_of(m, y)
    changed = (m1 - m2).abs().amax(dim=(0, 2, 3)) > 1e-6
    assert changed[:coupled].all() and not changed[coupled:].any()


def test_3x3_mask_kernel_reduces_to_1x1_with_centre_only_weights():
    m1 = aff()
    m3 = aff(mask_kernel_size=3)
    assert m3.w1.shape == (2, 8, 2, 2, 3, 3)
    with torch.no_grad():
        for n in ("w1", "w2"):
            w = torch.zeros_like(getattr(m3, n))
            w[..., 1, 1] = getattr(m1, n)
            getattr(m3, n).copy_(w)
        m3.b1.copy_(m1.b1)
        m3.b2.copy_(m1.b2)
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(taps_of(m3, x)[1], taps_of(m1, x)[1], atol=1e-5)


def test_afno_outputs_the_mask_net_without_the_product():
    m = A.AFNOMixer(16).eval()
    ref = aff(combine="none", act="relu")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 8, 8)
    out = m(x)
    M, _ = reference_mask(x, {f"f.{k}": v for k, v in ref.state_dict().items()}, "f", act=F.relu)
    assert torch.allclose(out, torch.fft.irfft2(M, s=(8, 8), dim=(2, 3), norm="ortho") + x, atol=1e-5)


def test_base_conv_and_token_first_blocks():
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        base = tiny("affnet_no_mixer")
        blk = base.layer_3[1].global_rep[0]
        assert torch.allclose(blk(x), x + blk.norm2(blk.mlp(blk.norm1(x))), atol=1e-6)
        conv = tiny("affnet_conv3x3").layer_3[1].global_rep[0].filter
        assert torch.allclose(conv(x), conv.conv(x) + x, atol=1e-6)
        tf = tiny("affnet_token_first").layer_3[1].global_rep[0]
        assert torch.allclose(tf(x), x + tf.mlp(tf.norm2(tf.filter(tf.norm1(x)))), atol=1e-6)
        ffn = tiny("affnet_ffn").layer_3[1].global_rep[0].mlp
        assert "conv_3x3" not in dict(ffn.block.named_children()) and ffn.use_res_connect


def test_gfn_filters_with_a_static_complex_weight_bound_to_the_grid(caplog):
    model = tiny("affnet_gfn", (64, 64))
    mix = model.layer_3[1].global_rep[0].filter
    assert tuple(mix.complex_weight.shape) == (8, 5, 16, 2)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = mix(x)
    K = torch.view_as_complex(mix.complex_weight).permute(2, 0, 1)
    ref = torch.fft.irfft2(torch.fft.rfft2(x, dim=(2, 3), norm="ortho") * K, s=(8, 8), dim=(2, 3), norm="ortho")
    assert torch.allclose(out, ref + x, atol=1e-5)
    with pytest.raises(GridError, match="img_size"):
        model(torch.randn(1, 3, 96, 96))
    other = tiny("affnet_gfn", (96, 128))
    with caplog.at_level("INFO", logger="spectrascope"):
        report = spectrascope.zoo.checkpoint.load_state_dict(other, model.state_dict())
    assert report.ok and len(report.adapted) == 4 and "bicubic" in caplog.text
    with torch.no_grad():
        assert other(torch.randn(1, 3, 96, 128)).shape == (1, 5)


def test_fno_is_a_dense_complex_matrix_per_mode():
    model = tiny("affnet_fno", (64, 64))
    mix = model.layer_3[1].global_rep[0].filter
    assert tuple(mix.weights1.shape) == (16, 16, 4, 5, 2)  # all modes of the 8x8 grid
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = mix(x)
    X = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
    R = torch.cat([torch.view_as_complex(mix.weights1), torch.view_as_complex(mix.weights2)], dim=2)  # (i, o, 8, 5)
    Y = torch.zeros_like(X)
    for u in range(8):
        for v in range(5):
            Y[:, :, u, v] = X[:, :, u, v] @ R[:, :, u, v]
    ref = torch.fft.irfft2(Y, s=(8, 8), dim=(2, 3), norm="ortho")
    assert torch.allclose(out, ref + x, atol=1e-5)
    with pytest.raises(GridError, match="img_size"):
        mix(torch.randn(1, 16, 4, 4))


def test_ffc_and_dff_fourier_units():
    x = torch.randn(2, 16, 8, 8)
    ffc = tiny("affnet_ffc").layer_3[1].global_rep[0].filter
    with torch.no_grad():
        ffc.bn.running_mean.normal_(0, 0.1)
        out = ffc(x)
        X = torch.fft.rfft2(x, dim=(2, 3), norm="ortho")
        Z = torch.stack([X.real, X.imag], dim=2).reshape(2, 32, 8, 5)  # [c0.re, c0.im, c1.re, ...]
        Z = F.relu(ffc.bn(ffc.conv_layer(Z))).reshape(2, 16, 2, 8, 5)
        ref = torch.fft.irfft2(torch.complex(Z[:, :, 0], Z[:, :, 1]), s=(8, 8), dim=(2, 3), norm="ortho")
    assert torch.allclose(out, ref + x, atol=1e-5)
    dff = tiny("affnet_dff").layer_3[1].global_rep[0].filter
    mask = {}
    h = dff.mask_tap.register_forward_hook(lambda _m, _i, o: mask.__setitem__("m", o))
    with torch.no_grad():
        dff(x)
    h.remove()
    assert mask["m"].shape == (2, 1, 8, 5) and (mask["m"] > 0).all() and (mask["m"] < 1).all()


def test_bad_flags_give_clear_errors():
    with pytest.raises(ValueError, match="num_blocks"):
        A.AFFMixer(12, num_blocks=8)
    with pytest.raises(ValueError, match="transform"):
        A.AFFMixer(16, transform="laplace")
    with pytest.raises(ValueError, match="token_mixer"):
        tiny("affnet", token_mixer="attention")
    with pytest.raises(TypeError, match="accepts"):
        spectrascope.create_model("affnet", no_such_flag=1)
    with pytest.raises(ValueError, match="conflicts"):
        spectrascope.create_model("affnet", num_classes=7, opts={"model.classification.n_classes": 10})


def test_official_argument_names_as_overrides():
    with torch.device("meta"):
        m = spectrascope.create_model("affnet_et", mode="small")
        assert sum(p.numel() for p in m.parameters()) == spectrascope.get_card("affnet").params
        j = spectrascope.create_model("affnet", config=json.dumps(TINY), n_classes=3, num_groups=4)
    assert j.classifier.fc.out_features == 3 and j.layer_3[1].global_rep[0].filter.num_blocks == 4
    with pytest.raises(ValueError, match="mode"):
        spectrascope.create_model("affnet", mode="huge")


# ---------------------------------------------------------------------------- parameter counts


def _aff_stats(cfg):
    """(sum C^2, sum C, sum C*H*(W/2+1), sum C^2*H*(W/2+1)) over the AFF blocks at 256x256."""
    s2 = s1 = sg = sf = 0
    for k, grid in [(3, 32), (4, 16), (5, 8)]:
        c, n = cfg[f"layer{k}"]["transformer_channels"], cfg[f"layer{k}"]["transformer_blocks"]
        s2, s1 = s2 + n * c * c, s1 + n * c
        sg, sf = sg + n * c * grid * (grid // 2 + 1), sf + n * c * c * grid * (grid // 2 + 1)
    return s2, s1, sg, sf


def test_ablation_parameter_counts_closed_form_and_paper():
    base = spectrascope.get_card("affnet").params
    s2, s1, sg, sf = _aff_stats(A.get_configuration("small"))
    aff = s2 // 2 + 4 * s1  # w1, w2: 2*G*(C/G)^2 each; b1, b2: 2*C each (G = 8)
    assert aff == 310_016
    no_mixer = base - aff
    expect = {
        "affnet_no_mixer": no_mixer,
        "affnet_conv3x3": no_mixer + 9 * s2 + s1,
        "affnet_gfn": no_mixer + 2 * sg,
        "affnet_fno": no_mixer + 2 * sf,
        "affnet_ffc": no_mixer + 4 * s2 + 4 * s1,
        "affnet_dff": no_mixer + 4 * s2 + 4 * s1 + 98 * 9,
        "affnet_gc": no_mixer + 8 * s1,
        "affnet_g1": no_mixer + 4 * s2 + 4 * s1,
        "affnet_k3": no_mixer + 9 * s2 // 2 + 4 * s1,
        # no depthwise 3x3 on the 2C hidden channels (18C weights + 4C BatchNorm) in the block MBConvs
        "affnet_ffn": base - 22 * s1,
    }
    for name in ("affnet_nofft", "affnet_afno", "affnet_sum", "affnet_mask1hw", "affnet_dct", "affnet_dwt",
                 "affnet_token_first"):
        expect[name] = base
    for name, n in expect.items():
        assert spectrascope.get_card(name).params == n, name
    # against the paper (Tables 4-7, 12-14; one decimal, rounded or truncated); GFN differs (see README)
    for name in A.ABLATIONS:
        ours, paper = spectrascope.get_card(name).params / 1e6, spectrascope.get_card(name).paper_params_m
        if name != "affnet_gfn":
            assert abs(ours - paper) < 0.1, (name, ours, paper)
    assert spectrascope.get_card("affnet_gfn").params / 1e6 == pytest.approx(5.909, abs=1e-3)


# ---------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 5, 7)])
def test_dct_is_orthonormal_and_inverts(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    X = dct2(x)
    assert torch.allclose(idct2(X), x, atol=1e-12)
    assert torch.allclose((X ** 2).sum(), (x ** 2).sum())  # Parseval
    d = dct_matrix(7, dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(7, dtype=torch.float64), atol=1e-12)
    c = torch.full((1, 1, 4, 6), 3.0, dtype=torch.float64)
    Xc = dct2(c)  # a constant has only a DC term: 3 * sqrt(4 * 6)
    assert Xc[0, 0, 0, 0].item() == pytest.approx(3.0 * 24 ** 0.5) and Xc.flatten()[1:].abs().max() < 1e-12
    scipy_fft = pytest.importorskip("scipy.fft")
    ref = scipy_fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    assert torch.allclose(X, torch.from_numpy(ref), atol=1e-12)


def test_haar_dwt_is_orthonormal_and_inverts():
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64)
    y = haar_dwt2(x)
    assert torch.allclose(haar_idwt2(y), x, atol=1e-12)
    assert torch.allclose((y ** 2).sum(), (x ** 2).sum())
    c = torch.full((1, 1, 4, 4), 2.0)
    yc = haar_dwt2(c)  # constant: LL = 2 * value, details 0
    assert torch.allclose(yc[..., :2, :2], torch.full((1, 1, 2, 2), 4.0)) and yc[..., 2:, :].abs().max() == 0
    ramp_w = torch.arange(4.0).repeat(4, 1)[None, None]  # varies along W only: LH and HH vanish
    yr = haar_dwt2(ramp_w)
    assert yr[..., 2:, :].abs().max() == 0 and (yr[..., :2, 2:] == -1.0).all()
    with pytest.raises(ValueError, match="even"):
        haar_dwt2(torch.randn(1, 1, 5, 4))
