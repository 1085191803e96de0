"""timm's model API on every registered zoo model (as timm's own test suite checks its models):
forward shape without NaN, ``forward_features`` -> ``forward_head`` = ``forward``, ``pre_logits`` =
pooled features = the output of a ``num_classes=0`` model, ``feature_info`` consistent with
``forward_intermediates`` (channels, reductions, the last level = ``forward_features`` where that
is the unnormed last map), ``features_only=True`` without timm, ``num_classes=0`` and the card's
pretrained config.

Small inputs (64 px); the smallest variant of each family runs by default, the others are marked
slow (full-width models take several seconds each on a small CPU)."""
from __future__ import annotations

import pytest
import torch

import spectrascope
from spectrascope.models.base import FeaturesOnly
from spectrascope.zoo import registry

SIZE = 64
FAST = {"caformer_s18", "poolformerv2_s12", "dfformer_s18", "poolformer_s12", "spanet_s", "gfnet_ti", "gfnet_h_ti",
        "affnet_et"}


def _params():
    out = []
    for name in registry.list_models():
        marks = () if name in FAST else (pytest.mark.slow,)
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_timm_api(name):
    torch.manual_seed(0)
    model = spectrascope.create_model(name, img_size=SIZE, num_classes=5).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        final, inter = model.forward_intermediates(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    torch.testing.assert_close(model.forward_head(feats), y, rtol=0, atol=0)
    assert pooled.shape == (2, model.num_features) and torch.isfinite(pooled).all()
    torch.testing.assert_close(final, feats, rtol=0, atol=0)

    info = model.feature_info
    assert len(inter) == len(info) > 0
    reductions = [d["reduction"] for d in info]
    assert reductions == sorted(reductions)
    for t, d in zip(inter, info):
        assert t.ndim == 4 and t.shape[:2] == (2, d["num_chs"]), (t.shape, d)
        assert t.shape[-2:] == (-(-SIZE // d["reduction"]),) * 2, (t.shape, d)
        assert model.get_submodule(d["module"]) is not None
    if feats.ndim == 4:       # a map: the last level is the unpooled forward_features (AFFNet: + conv_1x1_exp)
        assert feats.shape[-2:] == inter[-1].shape[-2:]
        if name.split("_")[0] != "affnet":
            torch.testing.assert_close(feats, inter[-1], rtol=0, atol=0)

    cfg = model.pretrained_cfg
    card = registry.get_card(name)
    assert cfg["input_size"] == tuple(card.default_input_size) and cfg["crop_pct"] == card.crop_pct
    assert cfg["mean"] == tuple(card.mean) and model.default_cfg is cfg
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]).out_features == 5

    model.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled, rtol=0, atol=0)

    only = FeaturesOnly(model, out_indices=(-2, -1))
    with torch.no_grad():
        maps = only(x)
    assert [m.shape[1] for m in maps] == only.feature_info.channels() == [d["num_chs"] for d in info[-2:]]
    for m, ref in zip(maps, inter[-2:]):
        torch.testing.assert_close(m, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["dfformer_s18", "poolformer_s12", "gfnet_ti", "gfnet_h_ti", "affnet_et"])
def test_num_classes_zero_and_features_only_through_create_model(name):
    torch.manual_seed(0)
    headless = spectrascope.create_model(name, img_size=SIZE, num_classes=0).eval()
    only = spectrascope.create_model(name, img_size=SIZE, features_only=True, out_indices=(1, -1)).eval()
    only.model.load_state_dict(headless.state_dict())      # the head is pruned: same keys, same weights
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = headless(x)
        maps = only(x)
        ref = headless.forward_intermediates(x, indices=(1, -1), intermediates_only=True)
    assert feats.shape == (1, headless.num_features) and torch.isfinite(feats).all()
    assert only.spectrascope_name == name and only.pretrained_cfg["architecture"] == name
    for m, r in zip(maps, ref):
        torch.testing.assert_close(m, r, rtol=0, atol=0)
