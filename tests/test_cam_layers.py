"""CAM target layers through the tap grammar, layouts read from the tensor (timm FocalNet's NCHW
norm outputs), Grad-CAM against captum's LayerGradCam, Grad-CAM / Score-CAM against
independent autograd references, and the non-finite stop."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import spectrascope
from spectrascope.engine.cam import default_target_layer, grad_cam, resolve_target_layer, resolve_target_layers, score_cam
from spectrascope.errors import CamError, NonFiniteError
from spectrascope.ops.cam import normalize_maps, resize_maps, weighted_cam

SIZE = 64


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _images(n=2, size=SIZE, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _focalnet(**kw):
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm')")
    from timm.models.focalnet import FocalNet
    torch.manual_seed(0)
    return FocalNet(depths=(1, 1, 1, 1), embed_dim=16, num_classes=5, drop_path_rate=0.0, **kw).eval()


def _gradcam_reference(feats, head, x, cls):
    """Grad-CAM by hand: ``feats(x)`` is the (NCHW) target tensor, ``head`` maps it to logits."""
    a = feats(x)
    logits = head(a)
    g = torch.autograd.grad(logits[torch.arange(len(cls)), torch.as_tensor(cls)].sum(), a)[0]
    cam = weighted_cam(g.mean(dim=(2, 3)), a.detach())
    return normalize_maps(resize_maps(cam, x.shape[-2:]), 1e-7)


def test_focalnet_norm_output_is_read_as_nchw_and_matches_autograd():
    """FocalNet's final LayerNorm2d gives (B, C, 2, 2): its layout comes from the tensor, and the
    map equals a hand-made Grad-CAM on the same tensor (reading it as NHWC would not)."""
    model = _focalnet()
    x = _images()
    tl = resolve_target_layer(model, "path:norm", input_size=(SIZE, SIZE))
    assert tl.layout == "NCHW" and tl.tap.grid == (2, 2)
    assert resolve_target_layer(model, "layers.3.blocks.0.norm1", input_size=(SIZE, SIZE)).layout == "NCHW"
    cls = [1, 3]
    got = grad_cam(model, "path:norm", x, cls)
    ref = _gradcam_reference(lambda z: model.norm(model.layers(model.stem(z))), model.forward_head, x, cls)
    assert (got - ref).abs().max() <= 1e-5
    wrong = grad_cam(model, "path:norm:NHWC", x, cls)
    assert (wrong - ref).abs().max() > 0.1                        # the silently wrong map of a guessed layout
    assert _no_hooks(model)


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_focalnet_norm_output_gives_the_stage_output_map(method):
    """With the head's own norm (``head_hidden_size``) FocalNet's ``norm`` is an identity on the
    NCHW stage-4 output: the CAM at ``norm`` (layout from the tensor) equals the CAM at the
    ``stage4`` tap, at its role ``stage`` and at its module path."""
    model = _focalnet(head_hidden_size=12)
    assert isinstance(model.norm, nn.Identity)
    x = _images()
    fn = (lambda t: grad_cam(model, t, x, [0, 2])) if method == "gradcam" else \
        (lambda t: score_cam(model, t, x, [0, 2], batch_size=64))
    at_norm = fn("path:norm")
    for target in ("stage4", "stage", "layers.3", "4"):
        assert torch.equal(fn(target), at_norm), target
    assert at_norm.shape == (2, SIZE, SIZE) and at_norm.max() == pytest.approx(1, abs=1e-3)   # x / (max + 1e-7)


def test_gradcam_equals_captum_layergradcam():
    """Grad-CAM is captum's LayerGradCam (ReLU'd, bilinear LayerAttribution.interpolate, min-max)
    on the same layer: a timm FocalNet stage and an NCHW conv of a plain CNN."""
    captum = pytest.importorskip("captum.attr")
    model = _focalnet()
    x = _images(3)
    cls = [4, 0, 2]
    for target, module in (("stage4", model.layers[3]), ("s3.b0.block", model.layers[2].blocks[0])):
        attr = captum.LayerGradCam(model, module).attribute(x, target=cls, relu_attributions=True)
        ref = normalize_maps(captum.LayerAttribution.interpolate(attr, (SIZE, SIZE), interpolate_mode="bilinear")
                             [:, 0].detach(), 1e-7)
        got = grad_cam(model, target, x, cls)
        assert (got - ref).abs().max() <= 1e-5, target
    assert _no_hooks(model)


def test_gradcam_pp_and_scorecam_on_nhwc_zoo_stage_match_references():
    """Grad-CAM++ and Score-CAM at an NHWC zoo stage equal hand-made references on the same tensor."""
    from spectrascope.ops.cam import gradcam_pp_weights
    model = spectrascope.create_model("dfformer_s18", num_classes=5, img_size=SIZE, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32]).eval()
    x = _images()
    cls = [1, 4]

    def feats(z):
        for i in range(4):
            z = model.stages[i](model.downsample_layers[i](z))
        return z.permute(0, 3, 1, 2)                 # NHWC stage output -> NCHW

    def head(a):
        return model.head(model.norm(a.permute(0, 2, 3, 1).mean([1, 2])))
    a = feats(x)
    g = torch.autograd.grad(head(a)[[0, 1], cls].sum(), a)[0]
    ref = normalize_maps(resize_maps(weighted_cam(gradcam_pp_weights(g, a.detach()), a.detach()), (SIZE, SIZE)))
    assert (grad_cam(model, "stage4", x, cls, plus_plus=True) - ref).abs().max() <= 1e-5
    # Score-CAM (gradcam-lib): softmax over channels of the masked inputs' logits
    with torch.no_grad():
        a = feats(x)
        up = resize_maps(a, (SIZE, SIZE), align_corners=True)
        lo, hi = up.flatten(2).min(-1).values[..., None, None], up.flatten(2).max(-1).values[..., None, None]
        masks = (up - lo) / (hi - lo + 1e-8)
        scores = torch.stack([head(feats(x[b] * masks[b][:, None]))[:, cls[b]] for b in range(2)])
        cam = normalize_maps(weighted_cam(torch.softmax(scores, -1), a), 1e-7)
        ref = normalize_maps(resize_maps(cam, (SIZE, SIZE)).clamp_min(0), 1e-7)
    assert (score_cam(model, "stage4", x, cls, batch_size=7) - ref).abs().max() <= 1e-5


def test_several_target_layers_and_refusals():
    model = spectrascope.create_model("dfformer_s18", num_classes=5, img_size=SIZE, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32]).eval()
    layers = resolve_target_layers(model, "stage3,stage4")
    assert [tl.path for tl in layers] == ["stages.2", "stages.3"]
    x = _images(1)
    both = grad_cam(model, "stage3,stage4", x, [2])
    a, b = grad_cam(model, "stage3", x, [2]), grad_cam(model, "stage4", x, [2])
    assert (both - normalize_maps((a + b) / 2)).abs().max() <= 1e-6
    with pytest.raises(CamError, match="given twice"):
        resolve_target_layers(model, "stage4,stages.3")
    with pytest.raises(CamError, match="unknown tap"):
        resolve_target_layers(model, "stage9")
    with pytest.raises(CamError, match="--class"):
        grad_cam(model, "stage4", x, [5])


def test_nonfinite_weights_stop_in_one_line():
    """NaN weights never give an all-NaN map with 'top-1 class 0': the forward's check names the
    first non-finite tap and the cause."""
    model = spectrascope.create_model("dfformer_s18", num_classes=5, img_size=SIZE, depths=[1, 1, 1, 1],
                                      dims=[8, 16, 24, 32]).eval()
    with torch.no_grad():
        model.stages[1][0].mlp.fc1.weight[0, 0] = float("nan")
    x = _images(1)
    for fn in (lambda: score_cam(model, None, x, batch_size=8), lambda: grad_cam(model, None, x)):
        with pytest.raises(NonFiniteError, match="model weights hold 1 non-finite") as exc:
            fn()
        assert "\n" not in str(exc.value)
    assert _no_hooks(model)


# ---------------------------------------------------------------------------- defaults that fit the input

def _tiny_df(size):
    return spectrascope.create_model("dfformer_s18", num_classes=4, img_size=size, depths=[1, 1, 1, 1],
                                     dims=[8, 16, 24, 32]).eval()


@pytest.mark.parametrize("size, name, path, note", [
    (224, "stage4", "stages.3", "target layer stage4 (7x7 at 224 px): the last map of at least 7x7"),
    (128, "stage3", "stages.2", "target layer stage3 (8x8 at 128 px): the last map of at least 7x7"),
    (64, "stage2", "stages.1", "target layer stage2 (8x8 at 64 px): the last map of at least 7x7"),
    ((96, 64), "stage2", "stages.1", "target layer stage2 (12x8 at 96x64 px): the last map of at least 7x7"),
    (16, "stage1", "stages.0", "target layer stage1 (4x4 at 16 px): no map reaches 7x7, this is the largest"),
])
def test_default_target_is_the_last_stage_map_of_at_least_7x7(size, name, path, note):
    """DFFormer maps are the input over 4, 8, 16, 32: the default is the last stage whose map is
    at least 7x7 on both sides, named in its note."""
    hw = (size, size) if isinstance(size, int) else size
    model = _tiny_df(hw)
    tl = default_target_layer(model, input_size=hw)
    assert (tl.name, tl.path, tl.note) == (name, path, note)
    assert tl.module is model.get_submodule(path)


def test_default_target_of_an_isotropic_model_is_its_last_block():
    """GFNet (16-px patches) has one map size: 7x7 at 112 px, 4x4 at 64 px (below 7x7: the largest,
    the last of the equally large maps)."""
    model = spectrascope.create_model("gfnet_ti", num_classes=4, img_size=112, depth=3, embed_dim=32).eval()
    tl = default_target_layer(model, input_size=(112, 112))
    assert (tl.name, tl.path) == ("s1.b2.block", "blocks.2")
    assert tl.note == "target layer s1.b2.block (7x7 at 112 px): the last map of at least 7x7"
    model = spectrascope.create_model("gfnet_ti", num_classes=4, img_size=64, depth=3, embed_dim=32).eval()
    tl = default_target_layer(model, input_size=(64, 64))
    assert tl.name == "s1.b2.block"
    assert tl.note == "target layer s1.b2.block (4x4 at 64 px): no map reaches 7x7, this is the largest"


#: one model of every zoo family with hierarchical stages, and the modules of its stage outputs
META = [f"stages.{i}" for i in range(4)]
FAMILY_STAGES = [
    ("dfformer_s18", META), ("cdfformer_s18", META), ("convformer_s18", META), ("caformer_s18", META),
    ("poolformerv2_s12", META), ("identityformer_s12", META), ("randformer_s12", META), ("gfformer_s18", META),
    ("poolformer_s12", ["network.0", "network.2", "network.4", "network.6"]),
    ("spanet_s", ["network.0", "network.2", "network.4", "network.6"]),
    ("gfnet_h_ti", ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]),
    ("affnet_et", ["layer_1", "layer_2", "layer_3", "layer_4", "layer_5"]),
]


@pytest.mark.parametrize("name, paths", FAMILY_STAGES)
def test_stage_numbers_resolve_to_the_stage_output_for_every_family(name, paths):
    """``--target-layer N`` is the 1-based stage N's output (its ``stageN`` tap), never the first
    tap of that stage (DFFormer's ``s4.b0.df_routing`` routing weights)."""
    model = spectrascope.create_model(name, num_classes=4, img_size=64).eval()
    got = [resolve_target_layer(model, str(s), input_size=(64, 64)) for s in range(1, len(paths) + 1)]
    assert [(tl.name, tl.path) for tl in got] == [(f"stage{s}", p) for s, p in enumerate(paths, 1)]
    assert all(tl.module is model.get_submodule(tl.path) for tl in got)
    with pytest.raises(CamError, match=rf"stage {len(paths) + 1} is not a stage of {name} \(stages 1, 2, 3, 4"):
        resolve_target_layer(model, str(len(paths) + 1), input_size=(64, 64))


def test_stage_number_of_an_isotropic_model_is_its_last_block():
    model = spectrascope.create_model("gfnet_ti", num_classes=4, img_size=64, depth=3, embed_dim=32).eval()
    tl = resolve_target_layer(model, "1", input_size=(64, 64))
    assert (tl.name, tl.path, tl.layout) == ("s1.b2.block", "blocks.2", "NLC")
