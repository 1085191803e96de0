"""Tap inference on timm families that need more than the ViT / stages heuristics: CNNs whose
``blocks`` are stages (EfficientNet, MobileNet), MobileViT's folded global representation, and
layouts that only a second input size can settle (channels == height == width)."""
from __future__ import annotations

import pytest
import torch

import spectrascope
from spectrascope.probe import Probe, TapSpec, model_taps, resolve_taps


def _timm():
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm'); timm tap inference is not tested")
    return pytest.importorskip("timm")


def images(n=2, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_efficientnet_blocks_are_stages_and_match_forward_intermediates():
    _timm()
    model = spectrascope.create_model("timm:efficientnet_b0", num_classes=3).eval()
    taps = model_taps(model, input_size=(64, 64))
    stages = [t for t in taps if t.role == "stage"]
    assert [t.stage for t in stages] == list(range(1, 8))
    assert [t.path for t in taps if t.role == "block"][:3] == ["blocks.0.0", "blocks.1.0", "blocks.1.1"]
    assert all(t.path.endswith("conv_dw") and t.layout == "NCHW" for t in taps.by_role("mixer"))
    assert taps.by_role("pool")[0].path == "classifier"
    x = images()
    with torch.inference_mode(), Probe(model, stages) as probe:
        model(x)
        ref = model.forward_intermediates(x, intermediates_only=True)
    cap = probe.pop()
    # timm's intermediates are the outputs of the feature_info stages
    by_module = {t.path: cap[t.name] for t in stages}
    for info, r in zip(model.feature_info, ref):
        if info["module"] in by_module:
            assert torch.equal(by_module[info["module"]], r)


def test_mobilevit_mixer_is_the_folded_transformer_output():
    _timm()
    model = spectrascope.create_model("timm:mobilevit_xxs", num_classes=3).eval()
    taps = model_taps(model, input_size=(64, 64))
    mixers = taps.by_role("mixer")
    vit_blocks = [n for n, m in model.named_modules() if type(m).__name__ == "MobileVitBlock"]
    assert [t.path for t in mixers] == [f"{b}.conv_proj" for b in vit_blocks] and len(mixers) == 3
    assert all(t.hook == "pre" and t.layout == "NCHW" for t in mixers)
    # oracle: the map entering conv_proj is the transformer's normalised output folded back by hand
    blk = model.get_submodule(vit_blocks[0])
    norm = TapSpec("norm", "path", f"{vit_blocks[0]}.norm", "raw")
    x = images()
    with torch.inference_mode(), Probe(model, [mixers[0], norm]) as probe:
        model(x)
    cap = probe.pop()
    got, seq = cap[mixers[0].name], cap["norm"]                  # (B, C, H, W) and (B * P, N, C)
    B, C, H, W = got.shape
    ph, pw = blk.patch_size
    nh, nw = H // ph, W // pw
    folded = seq.reshape(B, ph, pw, nh, nw, C).permute(0, 5, 3, 1, 4, 2).reshape(B, C, H, W)
    assert C == blk.conv_proj.conv.in_channels and torch.equal(got, folded)


def test_channels_equal_to_height_are_settled_by_a_second_size():
    _timm()
    model = spectrascope.create_model("timm:mobilenetv3_small_050", num_classes=3).eval()
    # at 128 px stage 2 gives (B, 16, 16, 16): NCHW and NHWC fit alike until another size is tried
    taps = model_taps(model, input_size=(128, 128))
    s2 = [t for t in taps if t.stage == 2 and t.role == "block"]
    assert s2 and all(t.layout == "NCHW" and t.grid == (16, 16) for t in s2)
    adhoc = resolve_taps(model, f"path:{s2[0].path}", input_size=(128, 128))
    assert (adhoc[0].layout, adhoc[0].grid) == ("NCHW", (16, 16))
