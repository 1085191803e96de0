"""GFNet / GFNet-H: official keys and parameter counts, parity with the official code (also
at another resolution through the official fine-tune resize), the global filter as a
circular convolution, one residual per block, non-square inputs, bf16 autocast and taps."""
import json

import pytest
import torch

import spectrascope
from conftest import fixtures_dir
from parity import check_fixture, check_official_keys, load_fixture, meta_model, run_with_feats, tolerance
from spectrascope.models.gfnet import GlobalFilter, InputSizeError
from spectrascope.probe import Probe, to_nchw

VARIANTS = ["gfnet_ti", "gfnet_xs", "gfnet_s", "gfnet_b", "gfnet_h_ti", "gfnet_h_s", "gfnet_h_b"]
README_PARAMS_M = {"gfnet_ti": 7, "gfnet_xs": 16, "gfnet_s": 25, "gfnet_b": 43,
                   "gfnet_h_ti": 15, "gfnet_h_s": 32, "gfnet_h_b": 54}
# fixture -> registered model whose defaults it shrinks
PARITY = {"gfnet_tiny": "gfnet_ti", "gfnet_tiny_96": "gfnet_ti",
          "gfnet_h_tiny": "gfnet_h_ti", "gfnet_h_tiny_96": "gfnet_h_ti"}
TINY = dict(patch_size=16, embed_dim=32, depth=2, mlp_ratio=4)
TINY_H = dict(patch_size=4, embed_dim=[8, 16, 24, 32], depth=[1, 1, 2, 1], mlp_ratio=[4, 4, 4, 4])


def overrides(meta):
    """The official constructor arguments of a fixture (img_size goes through create_model)."""
    args = meta["constructor_args"]
    keys = ("patch_size", "embed_dim", "depth", "mlp_ratio", "init_values", "no_layerscale", "drop_path_rate")
    return {k: args[k] for k in keys if k in args}


def fixture_model(fixture):
    meta, tensors, state = load_fixture(fixture)
    model = spectrascope.create_model(PARITY[fixture], num_classes=10, img_size=tuple(meta["input_size"][1:]),
                                      **overrides(meta))
    model.load_state_dict(state)
    return model.eval(), meta, tensors, state


# ---------------------------------------------------------------------------- official layout


@pytest.mark.parametrize("name", VARIANTS)
def test_official_keys_shapes_and_params(name):
    check_official_keys(name)
    card = spectrascope.get_card(name)
    # the README rounds to whole millions
    assert abs(card.params / 1e6 - card.paper_params_m) < 0.6


@pytest.mark.parametrize("name", VARIANTS)
def test_cards_and_official_hyphenated_aliases(name):
    arch = name.replace("_", "-")          # gfnet-h-ti, as main_gfnet.py --arch spells it
    card = spectrascope.get_card(arch)
    assert card.name == name and arch in card.aliases
    assert spectrascope.get_card(arch.upper()).name == name
    assert card.paper_params_m == README_PARAMS_M[name]
    assert card.crop_pct == 0.9 and card.interpolation == "bicubic" and card.feature_layout == "NLC"
    assert card.weight_file == f"{arch}.pth" and card.weight_url.startswith("https://")
    assert card.family == ("gfnet_h" if "_h_" in name else "gfnet")
    assert ("NeurIPS 2021" in card.paper) != ("TPAMI" in card.paper)
    assert "raoyongming/GFNet" in card.source
    assert set(spectrascope.list_models("gfnet*")) == set(VARIANTS)


def test_official_training_hyperparameters_are_the_defaults():
    dp = {"gfnet_ti": 0.0, "gfnet_xs": 0.0, "gfnet_s": 0.15, "gfnet_b": 0.25}
    for name, rate in dp.items():
        m = meta_model(name)
        last = m.blocks[-1].drop_path
        assert getattr(last, "drop_prob", 0.0) == pytest.approx(rate)
    for name, (rate, gamma) in {"gfnet_h_ti": (0.1, 1e-3), "gfnet_h_s": (0.2, 1e-5), "gfnet_h_b": (0.4, 1e-6)}.items():
        m = spectrascope.create_model(name, embed_dim=[8, 8, 8, 8], num_classes=2)
        assert m.blocks[-1][-1].drop_path.drop_prob == pytest.approx(rate)
        assert torch.allclose(m.blocks[0][0].gamma, torch.full((8,), gamma))


# ---------------------------------------------------------------------------- parity


@pytest.mark.parametrize("fixture", sorted(PARITY))
def test_parity_with_official_code(fixture):
    meta, _, _ = load_fixture(fixture)
    check_fixture(fixture, PARITY[fixture], overrides(meta))


@pytest.mark.parametrize("fixture,base", [("gfnet_tiny_96", "gfnet_tiny"), ("gfnet_h_tiny_96", "gfnet_h_tiny")])
def test_224_checkpoint_is_resized_like_the_official_finetune(fixture, base, caplog):
    meta, tensors, state = load_fixture(fixture)
    _, _, base_state = load_fixture(base)
    model = spectrascope.create_model(PARITY[fixture], num_classes=10, img_size=96, **overrides(meta))
    with caplog.at_level("INFO", logger="spectrascope"):
        report = spectrascope.zoo.checkpoint.load_state_dict(model, base_state, strict=True)
    assert sorted(k.split(":")[0] for k in report.adapted) == sorted(meta["resize"]["resized_keys"])
    assert "align_corners=False" in caplog.text and "align_corners=True" in caplog.text
    own = model.state_dict()
    for k in meta["resize"]["resized_keys"]:
        assert own[k].shape == state[k].shape
        assert torch.allclose(own[k], state[k], atol=1e-7, rtol=0), k
    model.eval()
    y, _ = run_with_feats(model, tensors["input"], [])
    assert (y - tensors["output"]).abs().max() <= tolerance(tensors["output"])


# ---------------------------------------------------------------------------- the maths


@pytest.mark.parametrize("grid", [(4, 6), (5, 7), (6, 6)])
def test_global_filter_is_a_circular_convolution(grid):
    """W = DFT of a real kernel k  =>  irfft2(rfft2(x, ortho) * W, ortho) = x circularly convolved with k."""
    a, b = grid
    C = 3
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(a, b, C, generator=gen, dtype=torch.float64)
    x = torch.randn(2, a, b, C, generator=gen, dtype=torch.float64)
    gf = GlobalFilter(C, h=a, w=b // 2 + 1, size=(a, b))
    with torch.no_grad():
        gf.complex_weight.copy_(torch.view_as_real(torch.fft.rfft2(k, dim=(0, 1))).float())
    expect = sum(k[m, n] * torch.roll(x, shifts=(m, n), dims=(1, 2)) for m in range(a) for n in range(b))
    with torch.no_grad():
        y = gf(x.float().reshape(2, a * b, C))
    assert y.dtype == torch.float32
    assert torch.allclose(y.double().reshape(2, a, b, C), expect, atol=1e-4)


def test_non_square_filter_commutes_with_grid_shifts():
    """Tokens are row-major over (H/p, W/p): a circular shift of the grid shifts the output."""
    a, b, C = 3, 5, 4
    gf = GlobalFilter(C, h=a, w=b // 2 + 1, size=(a, b))
    x = torch.randn(1, a, b, C)
    with torch.no_grad():
        y = gf(x.reshape(1, -1, C)).reshape(1, a, b, C)
        ys = gf(torch.roll(x, (1, 2), dims=(1, 2)).reshape(1, -1, C)).reshape(1, a, b, C)
    assert torch.allclose(ys, torch.roll(y, (1, 2), dims=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("name,kw", [("gfnet_ti", TINY), ("gfnet_h_ti", TINY_H)])
def test_one_residual_per_block_shared_by_filter_and_mlp(name, kw):
    model = spectrascope.create_model(name, img_size=64, num_classes=3, **kw).eval()
    block = model.blocks[0] if name == "gfnet_ti" else model.blocks[0][0]
    x = torch.randn(2, block.filter.size[0] * block.filter.size[1], block.norm1.weight.numel())
    with torch.no_grad():
        block.norm1.weight.uniform_(0.5, 1.5)
        block.filter.complex_weight.normal_(0, 0.5)
        if hasattr(block, "gamma"):
            block.gamma.uniform_(0.5, 1.5)
        branch = block.mlp(block.norm2(block.filter(block.norm1(x))))
        if hasattr(block, "gamma"):
            branch = block.gamma * branch
        assert torch.allclose(block(x), x + branch, atol=1e-5)
        # a zero MLP output removes the whole branch: no separate skip around the filter
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
        assert torch.equal(block(x), x)


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("size", [(64, 96), (80, 48)])
def test_non_square_isotropic_model(size):
    model = spectrascope.create_model("gfnet_ti", img_size=size, num_classes=5, **TINY).eval()
    gh, gw = size[0] // 16, size[1] // 16
    assert model.pos_embed.shape == (1, gh * gw, 32)
    assert model.blocks[0].filter.complex_weight.shape == (gh, gw // 2 + 1, 32, 2)
    with torch.inference_mode():
        y = model(torch.randn(2, 3, *size))
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    assert {t.grid for t in model.taps() if t.layout == "NLC"} == {(gh, gw)}


def test_non_square_pyramid_model():
    model = spectrascope.create_model("gfnet_h_ti", img_size=(64, 96), num_classes=5, **TINY_H).eval()
    grids = [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert model.stage_sizes == grids
    for i, (h, w) in enumerate(grids):
        assert model.blocks[i][0].filter.complex_weight.shape[:2] == (h, w // 2 + 1)
    with torch.inference_mode():
        y = model(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, 5) and torch.isfinite(y).all()


def test_odd_token_grids_follow_the_convolution_arithmetic():
    # 100 px, patch 4: 25 tokens, then floor halving by the 2x2 stride-2 DownLayers
    model = spectrascope.create_model("gfnet_h_ti", img_size=100, num_classes=2, **TINY_H).eval()
    assert model.stage_sizes == [(25, 25), (12, 12), (6, 6), (3, 3)]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 100, 100)).shape == (1, 2)


def test_square_checkpoint_into_non_square_model():
    _, _, base_state = load_fixture("gfnet_tiny")
    model = spectrascope.create_model("gfnet_ti", img_size=(64, 128), num_classes=10, **TINY)
    report = spectrascope.zoo.checkpoint.load_state_dict(model, base_state, strict=True)
    assert len(report.adapted) == 3
    pos, w0 = model.pos_embed.detach(), model.blocks[0].filter.complex_weight.detach()
    assert pos.shape == (1, 4 * 8, 32) and w0.shape == (4, 5, 32, 2)
    # align_corners=True keeps the corner coefficients of every filter
    src = base_state["blocks.0.filter.complex_weight"]
    for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert torch.allclose(w0[i, j], src[i, j], atol=1e-6)
    # bicubic resampling keeps a constant position embedding constant
    const = dict(base_state, pos_embed=torch.ones(1, 196, 32) * torch.arange(32.0))
    spectrascope.zoo.checkpoint.load_state_dict(model, const, strict=True)
    assert torch.allclose(model.pos_embed.detach(), torch.ones(1, 32, 32) * torch.arange(32.0), atol=1e-5)


@pytest.mark.parametrize("name,kw", [("gfnet_ti", TINY), ("gfnet_h_ti", TINY_H)])
def test_input_of_another_size_gives_a_clear_error(name, kw):
    model = spectrascope.create_model(name, img_size=64, num_classes=3, **kw).eval()
    with pytest.raises(ValueError, match=r"built for 64x64.*img_size=\(96, 96\)") as info:
        model(torch.randn(1, 3, 96, 96))
    assert isinstance(info.value, InputSizeError)


# ---------------------------------------------------------------------------- precision


def test_bf16_autocast_keeps_ffts_in_float32_and_inference_mode_matches():
    model, _, tensors, _ = fixture_model("gfnet_h_tiny")
    taps = model.taps().by_role("mixer")
    ref = tensors["output"]
    with torch.autocast("cpu", dtype=torch.bfloat16), Probe(model, taps, nchw=False) as probe:
        with torch.no_grad():
            y = model(tensors["input"])
    got = probe.pop()
    assert len(got) == len(taps) and all(v.dtype == torch.float32 for v in got.values())
    assert torch.isfinite(y).all()
    # bf16 keeps ~3 significant digits: the logits agree to a few percent of their scale
    assert (y.float() - ref).abs().max() <= 0.1 * ref.abs().max()
    with torch.no_grad():
        model(tensors["input"])                       # warm-up (fixtures README, first-call pitfall)
        y_ng = model(tensors["input"])
    with torch.inference_mode():
        y_im = model(tensors["input"])
    assert torch.equal(y_ng, y_im) and (y_im - ref).abs().max() <= tolerance(ref)


def test_half_precision_model_runs_without_autocast():
    model = spectrascope.create_model("gfnet_ti", img_size=64, num_classes=3, **TINY).eval().to(torch.bfloat16)
    with torch.inference_mode():
        y = model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


# ---------------------------------------------------------------------------- taps


def capture(model, x):
    taps = model.taps()
    with torch.no_grad():
        model(x)                                      # warm-up
        with Probe(model, taps, nchw=False) as probe:
            y = model(x)
    return taps, probe, y


@pytest.mark.parametrize("fixture", ["gfnet_tiny", "gfnet_h_tiny"])
def test_taps_fire_in_declared_order_and_match_official_tensors(fixture):
    model, meta, tensors, state = fixture_model(fixture)
    taps, probe, y = capture(model, tensors["input"])
    assert probe.order == taps.names()
    assert len(set(taps.names())) == len(taps)
    assert "residual" not in taps.roles()
    got = probe.pop()
    pyramid = fixture == "gfnet_h_tiny"
    expected_roles = ["stem", "mixer", "mlp", "block", "stage", "downsample", "pool"] if pyramid else \
        ["stem", "mixer", "mlp", "block", "pool"]
    assert taps.roles() == expected_roles
    for t in taps:
        if t.layout == "NLC":
            assert t.grid is not None and got[t.name].shape[1] == t.grid[0] * t.grid[1]
            assert to_nchw(got[t.name], t).shape[-2:] == t.grid
    by_name = {t.name: t for t in taps}
    # (tap name, official fixture tensor)
    if pyramid:
        pairs = [("downsample3", "feat.patch_embed.2"), ("s2.b0.mixer", "feat.blocks.1.0.filter"),
                 ("s3.b1.block", "feat.blocks.2.1"), ("stage4", "feat.blocks.3")]
        assert [t.stage for t in taps.by_role("stage")] == [1, 2, 3, 4]
    else:
        pairs = [("s1.b0.mixer", "feat.blocks.0.filter"), ("s1.b1.block", "feat.blocks.1")]
        # the stem tap is what flows into block 0: patch embedding + position embedding
        stem = tensors["feat.patch_embed"] + state["pos_embed"]
        assert (got["stem"] - stem).abs().max() <= tolerance(stem)
        assert {t.stage for t in taps if t.stage is not None} == {1}
    for name, key in pairs:
        ref = tensors[key]
        assert got[name].shape == ref.shape and (got[name] - ref).abs().max() <= tolerance(ref), name
    # pool: the head is linear on the pooled features
    pool = got["pool"]
    assert by_name["pool"].layout == "NC" and pool.shape == (2, model.num_features)
    logits = pool @ state["head.weight"].T + state["head.bias"]
    assert (logits - tensors["output"]).abs().max() <= tolerance(tensors["output"])


@pytest.mark.parametrize("name", VARIANTS)
def test_every_declared_tap_resolves_on_full_size_models(name):
    model = meta_model(name)
    taps = model.taps()
    assert len({t.name for t in taps}) == len(taps)
    for t in taps:
        model.get_submodule(t.path)
    blocks = taps.by_role("block")
    assert len(blocks) == sum(model.depths) == len(taps.by_role("mixer")) == len(taps.by_role("mlp"))
    assert [t.depth for t in blocks] == sorted(t.depth for t in blocks)
    assert blocks[0].depth == 0.0 and blocks[-1].depth == 1.0
    assert taps[0].role == "stem" and taps[-1].role == "pool"
    assert all(t.path.endswith(".filter") for t in taps.by_role("mixer"))
    grid0 = (14, 14) if "_h_" not in name else (56, 56)
    assert taps[0].grid == grid0
