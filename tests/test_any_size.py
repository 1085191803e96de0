"""Any input size, for every family that claims it: built for an awkward size, every model runs at
that size and every declared tap grid equals the map it captures (the DF / GF filter grids follow
the real feature-map sizes of the strided convolutions); a model bound to one size says so in one
line when fed another."""
from __future__ import annotations

import pytest
import torch

import spectrascope
from spectrascope.errors import UserError
from spectrascope.probe import Probe, model_taps

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
FAMILIES = {
    "dfformer_s18": TINY, "cdfformer_s18": TINY, "gfformer_s18": TINY, "dfformer_s18_afno": TINY,
    "convformer_s18": TINY, "caformer_s18": dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64]),
    "poolformerv2_s12": TINY, "poolformer_s12": dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32]),
    "spanet_s": dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 20, 32]),
    "gfnet_ti": dict(depth=1, embed_dim=32), "gfnet_h_ti": dict(depth=[1, 1, 1, 1], embed_dim=[8, 16, 24, 32]),
    "affnet_et": {},
}
SIZES = [33, 97, 112, 200, 240, (250, 330)]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_runs_at_awkward_sizes_with_true_tap_grids(name):
    for size in SIZES:
        hw = (size, size) if isinstance(size, int) else size
        torch.manual_seed(0)
        model = spectrascope.create_model(name, num_classes=3, img_size=size, **FAMILIES[name]).eval()
        taps = [t for t in model_taps(model) if t.layout in ("NCHW", "NHWC", "NLC") and t.grid is not None]
        x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode(), Probe(model, taps) as probe:
            y = model(x)
        assert y.shape == (1, 3) and torch.isfinite(y).all(), (name, size)
        got = probe.pop()
        for t in taps:
            assert tuple(got[t.name].shape[-2:]) == tuple(t.grid), (name, size, t.name)


def test_stage_grids_are_the_strided_convolutions_sizes():
    m = spectrascope.create_model("dfformer_s18", img_size=112, **TINY)
    assert m.stage_sizes == [(28, 28), (14, 14), (7, 7), (4, 4)]          # 7 -> 4 (3x3, stride 2, pad 1)
    assert spectrascope.create_model("dfformer_s18", **TINY).stage_sizes == [(56, 56), (28, 28), (14, 14), (7, 7)]


def test_a_checkpoint_resizes_onto_an_awkward_grid(tmp_path):
    src = spectrascope.create_model("dfformer_s18", num_classes=3, **TINY)
    ck = tmp_path / "w.pth"
    torch.save(src.state_dict(), ck)
    model = spectrascope.create_model("dfformer_s18", num_classes=3, img_size=200, checkpoint=ck, **TINY).eval()
    assert any("resized" in a for a in model.checkpoint_report.adapted)
    with torch.inference_mode():
        assert torch.isfinite(model(torch.randn(1, 3, 200, 200))).all()


@pytest.mark.parametrize("name,kw,built,fed", [
    ("dfformer_s18", TINY, 64, 96),
    ("gfnet_ti", dict(depth=1, embed_dim=32), 64, 96),
    ("randformer_s12", dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]), 64, 96),
])
def test_a_model_bound_to_its_size_says_so_in_one_line(name, kw, built, fed):
    model = spectrascope.create_model(name, num_classes=3, img_size=built, **kw).eval()
    with torch.inference_mode(), pytest.raises(Exception) as info:
        model(torch.randn(1, 3, fed, fed))
    msg = str(info.value)
    assert isinstance(info.value, UserError), (type(info.value), msg)
    assert len(msg.splitlines()) == 1 and ("img_size" in msg or "build" in msg), msg
