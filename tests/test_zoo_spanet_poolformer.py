"""SPANet (+ paper ablations) and PoolFormer v1: official keys, parameter counts, parity with the
official code, SPF masks at any resolution, checkpoint mask checks, taps, AMP and inference mode."""
import json

import pytest
import torch

import spectrascope
from spectrascope.zoo.checkpoint import CheckpointError, load_state_dict
from spectrascope.models.spanet import SPF, chunk_sizes, spf_mask
from spectrascope.probe import Probe, model_taps, select_taps
from conftest import fixtures_dir
from parity import check_fixture, check_official_keys, load_fixture, meta_model, run_with_feats, tolerance

# registry name -> official entry point (keys/<official>.json)
OFFICIAL = {"spanet_s": "spanet_small", "spanet_m": "spanet_medium", "spanet_mx": "spanet_mediumX",
            "spanet_b": "spanet_base", "spanet_bx": "spanet_baseX",
            "poolformer_s12": "poolformer_s12", "poolformer_s24": "poolformer_s24",
            "poolformer_s36": "poolformer_s36", "poolformer_m36": "poolformer_m36",
            "poolformer_m48": "poolformer_m48"}
ABLATIONS = ["spanet_s_k3", "spanet_s_k5", "spanet_s_nospf", "spanet_s_hadamard", "spanet_s_r1111",
             "spanet_s_r4411", "spanet_s_noscale", "spanet_s_layerscale", "spanet_s_highpass"]
SPANET_ARGS = ["layers", "embed_dims", "patch_dims", "radius", "mlp_ratios", "downsamples", "k_size",
               "res_scale_init_values"]
POOLFORMER_ARGS = ["layers", "embed_dims", "mlp_ratios", "downsamples", "layer_scale_init_value"]
TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 20, 32])


def overrides(meta, keys):
    args = meta["constructor_args"]
    return {k: args[k] for k in keys if k in args}


def spanet_tiny(img_size=None, **kw):
    """The spanet_tiny fixture model (official weights of that fixture loaded)."""
    meta, tensors, state = load_fixture("spanet_tiny")
    ov = overrides(meta, SPANET_ARGS)
    if img_size is not None:
        ov.pop("patch_dims")
    model = spectrascope.create_model("spanet_s", num_classes=10, img_size=img_size, **ov, **kw)
    return model, state, tensors


# ---------------------------------------------------------------------------- keys and counts


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_keys_shapes_and_params(name):
    check_official_keys(OFFICIAL[name], OFFICIAL[name])          # built through the official alias


def test_cards():
    crop = {"spanet_s": 0.9, "spanet_m": 0.9, "spanet_mx": 0.9, "spanet_b": 0.95, "spanet_bx": 0.95,
            "poolformer_s12": 0.9, "poolformer_s24": 0.9, "poolformer_s36": 0.9, "poolformer_m36": 0.95,
            "poolformer_m48": 0.95}
    for name, official in OFFICIAL.items():
        card = spectrascope.get_card(official)
        assert card.name == name and card.crop_pct == crop[name] and card.feature_layout == "NCHW"
        assert card.source.endswith(f":{official}()") and card.paper_params_m
        assert abs(card.params / 1e6 - card.paper_params_m) < 0.55
    assert spectrascope.get_card("spanet_mediumX").weight_file == "spanet-mediumX.pth"
    assert spectrascope.get_card("SPANet-baseX").name == "spanet_bx"
    assert spectrascope.get_card("spanet_s").weight_url.endswith("/ImageNet-pretrained/spanet-small.pth")
    assert spectrascope.get_card("poolformer_m48").weight_url.endswith("/v1.0/poolformer_m48.pth.tar")
    for name in ABLATIONS:
        card = spectrascope.get_card(name)
        assert card.variant_of == "spanet_s" and card.description and card.weight_file is None
    assert set(spectrascope.list_models("spanet")) == {*(n for n in OFFICIAL if n.startswith("spanet")), *ABLATIONS}


@pytest.mark.parametrize("name,value", [("poolformer_s12", 1e-5), ("poolformer_s24", 1e-5),
                                        ("poolformer_s36", 1e-6), ("poolformer_m36", 1e-6),
                                        ("poolformer_m48", 1e-6)])
def test_poolformer_layer_scale_init_depends_on_size(name, value):
    model = spectrascope.create_model(name, layers=[1, 1, 1, 1], embed_dims=[8, 8, 8, 8], num_classes=2)
    for block in (model.network[0][0], model.network[6][0]):
        assert torch.equal(block.layer_scale_1, torch.full((8,), value))
        assert torch.equal(block.layer_scale_2, torch.full((8,), value))


# ---------------------------------------------------------------------------- parity


@pytest.mark.parametrize("fixture,name,keys", [("spanet_tiny", "spanet_s", SPANET_ARGS),
                                               ("spanet_tiny_96", "spanet_s", SPANET_ARGS),
                                               ("poolformer_tiny", "poolformer_s12", POOLFORMER_ARGS)])
def test_parity_with_official_code(fixture, name, keys):
    meta, _, state = load_fixture(fixture)
    model, _, _ = check_fixture(fixture, name, overrides(meta, keys))
    own = model.state_dict()
    for k, v in state.items():                  # masks built here are bit-identical to the official ones
        if k.endswith(".filter"):
            assert torch.equal(own[k], v), k


def test_spf_mask_closed_form():
    m = spf_mask(56, 56, 2, 0.7)
    lam = torch.tensor(0.7, dtype=torch.float32)
    assert (m == lam).sum() == 9 and (m == torch.tensor(1 / 3)).sum() == 4
    assert (m == 1 - lam).sum() == 56 * 56 - 13 and m[28, 28] == lam
    m = spf_mask(14, 14, 1, 0.9)
    assert (m == torch.tensor(0.9)).sum() == 1 and (m == torch.tensor(1 / 3)).sum() == 4
    m = spf_mask(6, 9, 1, 0.8)                  # non-square: centre (H//2, W//2) = (3, 4)
    assert m[3, 4] == torch.tensor(0.8) and m[2, 4] == m[3, 3] == m[4, 4] == m[3, 5] == torch.tensor(1 / 3)
    assert chunk_sizes(8, 3) == [3, 3, 2] and chunk_sizes(32, 3) == [11, 11, 10] and chunk_sizes(96, 3) == [32] * 3
    with pytest.raises(ValueError, match="groups"):
        chunk_sizes(4, 3)                       # torch.chunk gives 2 chunks: the official code would crash


@pytest.mark.parametrize("size", [(7, 10), (9, 8), (6, 6), (5, 5), (12, 7)])
def test_spf_matches_official_full_spectrum_formula(size):
    """Our half-spectrum filter equals real(ifft2(ifftshift(M * fftshift(fft2(x))))) of the paper/official code."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    spf = SPF(56, 56, 2, 0.7)                   # built for another grid: builds the mask for this size
    mask = spf_mask(*size, 2, 0.7)
    ref = torch.fft.ifft2(torch.fft.ifftshift(mask * torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"),
                                                                        dim=(-2, -1)), dim=(-2, -1)), norm="ortho")
    y = spf(x)
    assert torch.allclose(y, ref.real, atol=1e-6)
    # closed forms: a constant map is pure DC -> scaled by lambda; a checkerboard is pure Nyquist -> by 1 - lambda
    c = torch.full((1, 1, *size), 2.0)
    assert torch.allclose(spf(c), 0.7 * c, atol=1e-6)
    if size[0] % 2 == 0 and size[1] % 2 == 0:
        ii, jj = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
        board = ((-1.0) ** (ii + jj)).view(1, 1, *size)
        assert torch.allclose(spf(board), (1 - 0.7) * board, atol=1e-6)


# ---------------------------------------------------------------------------- other resolutions


def test_model_built_at_224_runs_at_96_like_the_official_96_model():
    """The official SPANet needs a model built for 96 (its fixture); ours, built for 224, builds the
    masks for the actual input and computes the same function."""
    model, state, _ = spanet_tiny()
    model.load_state_dict(state)
    model.eval()
    meta, t96, _ = load_fixture("spanet_tiny_96")
    paths = [k[len("feat."):] for k in meta["feats"]]
    y, feats = run_with_feats(model, t96["input"], paths)
    assert (y - t96["output"]).abs().max() <= tolerance(t96["output"])
    for p in paths:
        assert (feats[p] - t96[f"feat.{p}"]).abs().max() <= tolerance(t96[f"feat.{p}"]), p
    spf = model.network[0][0].token_mixer.sps[0]
    assert (24, 24, "cpu") in spf._cache and spf.filter.shape == (1, 56, 56)


def test_official_224_checkpoint_loads_into_model_built_for_96():
    meta, t96, state96 = load_fixture("spanet_tiny_96")
    model, state224, _ = spanet_tiny(img_size=(96, 96))
    report = load_state_dict(model, state224, strict=True)
    assert sorted(a.split(":")[0] for a in report.adapted) == sorted(meta["resize"]["resized_keys"])
    assert all("verified for 56x56" in a or "verified for 28x28" in a or "verified for 14x14" in a
               or "verified for 7x7" in a for a in report.adapted)
    own = model.state_dict()
    for k in meta["resize"]["resized_keys"]:
        assert torch.equal(own[k], state96[k]), k
    model.eval()
    y, _ = run_with_feats(model, t96["input"], [])
    assert (y - t96["output"]).abs().max() <= tolerance(t96["output"])


def test_checkpoint_with_other_masks_is_reported():
    model, state, _ = spanet_tiny()
    bad = dict(state)
    key = "network.0.0.token_mixer.sps.1.filter"
    bad[key] = spf_mask(56, 56, 3, 0.8).unsqueeze(0)          # trained with radius 3
    with pytest.raises(CheckpointError, match=r"sps\.1\.filter.*radius 3.*this model builds radius 2"):
        load_state_dict(model, bad, strict=True)
    with pytest.raises(CheckpointError, match="lambda 0.6"):
        load_state_dict(model, dict(state, **{key: spf_mask(56, 56, 2, 0.6).unsqueeze(0)}), strict=False)


def test_checkpoint_without_masks_derives_them():
    model, state, tensors = spanet_tiny()
    stripped = {k: v for k, v in state.items() if not k.endswith(".filter")}
    report = load_state_dict(model, stripped, strict=True)
    assert len(report.adapted) == 15 and all("derived" in a for a in report.adapted)
    model.eval()
    y, _ = run_with_feats(model, tensors["input"], [])
    assert (y - tensors["output"]).abs().max() <= tolerance(tensors["output"])


@pytest.mark.parametrize("size", [(256, 256), (192, 256), (100, 84)])
def test_spanet_built_at_224_runs_at_other_sizes(size):
    model, state, _ = spanet_tiny()
    model.load_state_dict(state)
    model.eval()
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    # same function as a model built for that size
    other, _, _ = spanet_tiny(img_size=size)
    load_state_dict(other, state, strict=True)
    other.eval()
    grid = (size[0] // 4, size[1] // 4)
    assert other.network[0][0].token_mixer.sps[0].filter.shape == (1, *grid)
    with torch.no_grad():
        assert torch.allclose(other(x), y, atol=1e-6)


# ---------------------------------------------------------------------------- taps


@pytest.mark.parametrize("name", ["spanet_s", "spanet_s_nospf", "poolformer_s12"])
def test_probe_fires_in_declared_order(name):
    model = spectrascope.create_model(name, num_classes=3, **TINY).eval()
    taps = model_taps(model)
    assert len({t.name for t in taps}) == len(taps)
    with Probe(model, taps) as probe, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert probe.order == taps.names()
    roles = set(taps.roles())
    assert {"stem", "downsample", "block", "mixer", "residual", "mlp", "stage", "pool"} <= roles
    blocks = taps.by_role("block")
    assert len(blocks) == 5 and blocks[0].depth == 0.0 and blocks[-1].depth == 1.0
    if name == "spanet_s":
        assert {"spf", "spg", "context"} <= roles and len(taps.by_role("spg")) == 15
    if name == "spanet_s_nospf":
        assert "spf" not in roles and len(taps.by_role("spg")) == 15
    for t in taps:
        model.get_submodule(t.path)


def test_spanet_taps_match_official_features_and_context_is_the_spg_sum():
    model, state, tensors = spanet_tiny()
    model.load_state_dict(state)
    model.eval()
    taps = select_taps(model_taps(model), stages=[3])
    with torch.no_grad():
        model(tensors["input"])                     # warm-up
        with Probe(model, taps) as probe:
            model(tensors["input"])
    got = probe.pop()
    ref = tensors["feat.network.4.0.token_mixer.sps.2"]
    assert (got["s3.b0.spf2"] - ref).abs().max() <= tolerance(ref)
    ref = tensors["feat.network.4.1"]
    assert (got["s3.b1.block"] - ref).abs().max() <= tolerance(ref)
    for b in ("s3.b0", "s3.b1"):
        ctx = got[f"{b}.spg0"] + got[f"{b}.spg1"] + got[f"{b}.spg2"]
        assert torch.allclose(got[f"{b}.context"], ctx, atol=1e-6)
        assert got[f"{b}.spg0"].shape == (2, 20, 14, 14) and got[f"{b}.spf0"].shape == (2, 7, 14, 14)
    tap = {t.name: t for t in taps}["s3.b0.context"]
    assert tap.role == "context" and tap.layout == "NCHW" and tap.stage == 3 and tap.grid == (14, 14)


# ---------------------------------------------------------------------------- ablations


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_variants_build_and_run(name):
    full = meta_model(name)
    base = meta_model("spanet_s")
    n_full = sum(p.numel() for p in full.parameters())
    n_base = sum(p.numel() for p in base.parameters())
    assert abs(n_full - n_base) / n_base < 0.01     # "the same 29 M parameters" (paper Table 5)
    assert full.network[0][0].token_mixer.conv[0].kernel_size == ((1, 5) if name == "spanet_s_k5" else (1, 3))
    model = spectrascope.create_model(name, num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.inference_mode():
        y = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = model(x)
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    assert torch.isfinite(yb).all() and (yb.float() - y).abs().max() <= 0.1 * y.abs().max()


def test_ablation_semantics():
    x = torch.randn(1, 3, 64, 64)
    # without SPF: no masks, each SPG sees its raw channel group
    m = spectrascope.create_model("spanet_s_nospf", num_classes=3, **TINY).eval()
    assert not any(k.endswith(".filter") for k in m.state_dict())
    mixer = m.network[0][0].token_mixer
    seen = {}
    h = mixer.pws[1].register_forward_pre_hook(lambda _m, a: seen.setdefault("in", a[0]))
    q = []
    h2 = mixer.conv.register_forward_hook(lambda _m, _i, o: q.append(o))
    with torch.no_grad():
        m(x)
    h.remove(), h2.remove()
    assert torch.equal(seen["in"], q[0][:, 3:6])
    # Hadamard aggregation: context = product of the SPG outputs
    m = spectrascope.create_model("spanet_s_hadamard", num_classes=3, **TINY).eval()
    taps = select_taps(model_taps(m), names=["s1.b0.spg0", "s1.b0.spg1", "s1.b0.spg2", "s1.b0.context"])
    with Probe(m, taps) as probe, torch.no_grad():
        m(x)
    g = probe.pop()
    assert torch.allclose(g["s1.b0.context"], g["s1.b0.spg0"] * g["s1.b0.spg1"] * g["s1.b0.spg2"], atol=1e-6)
    # radius per stage and lambda sets are in the masks
    m = meta_model("spanet_s_r4411")
    assert [m.network[i][0].token_mixer.sps[0].radius for i in (0, 2, 4, 6)] == [4, 4, 1, 1]
    m = spectrascope.create_model("spanet_s_highpass", num_classes=3, **TINY)
    assert torch.equal(m.network[0][0].token_mixer.sps[0].filter[0], spf_mask(56, 56, 2, 0.3))
    m = spectrascope.create_model("spanet_s", num_classes=3, lambdas=[0.6], **TINY)
    assert len(m.network[0][0].token_mixer.pws) == 1 and m.network[0][0].token_mixer.pws[0].in_channels == 8
    # branch output scaling
    m = meta_model("spanet_s_layerscale")
    assert hasattr(m.network[4][0], "layer_scale_1") and isinstance(m.network[4][0].res_scale1, torch.nn.Identity)
    assert not hasattr(m.network[0][0], "layer_scale_1")
    m = meta_model("spanet_s_noscale")
    assert not any("res_scale" in k or "layer_scale" in k for k in m.state_dict())


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="radius needs 4"):
        spectrascope.create_model("spanet_s", radius=[2, 2, 1], **TINY)
    with pytest.raises(ValueError, match="odd"):
        spectrascope.create_model("spanet_s", k_size=4, **TINY)
    with pytest.raises(ValueError, match="patch_dims"):
        spectrascope.create_model("spanet_s", img_size=(96, 96), patch_dims=[56, 28, 14, 7], **TINY)
    with pytest.raises(ValueError, match="aggregation"):
        spectrascope.create_model("spanet_s", aggregation="max", **TINY)


# ---------------------------------------------------------------------------- AMP / inference mode


@pytest.mark.parametrize("name,sizes", [("spanet_s", [(224, 224), (256, 256), (96, 128)]),
                                        ("poolformer_s12", [(224, 224), (160, 192)])])
def test_bf16_autocast_and_inference_mode(name, sizes):
    fixture = "spanet_tiny" if name == "spanet_s" else "poolformer_tiny"
    meta, _, state = load_fixture(fixture)
    ov = overrides(meta, SPANET_ARGS if name == "spanet_s" else POOLFORMER_ARGS)
    model = spectrascope.create_model(name, num_classes=10, **ov)
    model.load_state_dict(state)
    model.eval()
    torch.manual_seed(3)
    for size in sizes:
        x = torch.randn(2, 3, *size)
        with torch.inference_mode():
            ref = model(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = model(x)
        assert torch.isfinite(y).all() and y.shape == (2, 10)
        # bf16 has ~3 significant digits: logits agree to a few percent of their scale
        assert (y.float() - ref).abs().max() <= 0.1 * ref.abs().max(), size
    # the spectral filter itself runs in float32 under autocast
    spf = model.network[0][0].token_mixer.sps[0] if name == "spanet_s" else None
    if spf is not None:
        xb = torch.randn(1, 3, 20, 20).to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = spf(xb)
        assert yb.dtype == torch.bfloat16
        assert torch.allclose(yb.float(), spf(xb.float()), atol=1e-2)


@pytest.mark.parametrize("name", ["spanet_s", "poolformer_s12"])
def test_dense_feature_mode(name):
    """fork_feat=True (official dense backbones): four normed NCHW maps from norm0/2/4/6, no head."""
    model = spectrascope.create_model(name, fork_feat=True, **TINY).eval()
    assert [k for k in model.state_dict() if k.startswith("norm")] == \
        [f"norm{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 20, 4, 6), (1, 32, 2, 3)]
    assert "pool" not in model_taps(model).roles()


def test_mask_cache_built_in_inference_mode_serves_training():
    """Masks cached during an inference_mode forward are normal tensors: training at that size works."""
    model = spectrascope.create_model("spanet_s", num_classes=3, **TINY)
    x = torch.randn(2, 3, 72, 40)
    with torch.inference_mode():
        model.eval()(x)
    model.train()
    loss = model(x).square().sum()
    loss.backward()
    grad = model.network[0][0].token_mixer.proj_in.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert model.network[0][0].token_mixer.sps[0].filter.grad is None   # masks are not learned
