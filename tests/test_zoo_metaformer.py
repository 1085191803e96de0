"""MetaFormer family (DFFormer/CDFFormer/GFFormer + ablations, ConvFormer, CAFormer,
IdentityFormer, RandFormer, PoolFormerV2): official keys, parameter counts and parity."""
import json

import pytest
import torch

import spectrascope
from conftest import fixtures_dir
from parity import check_fixture, check_official_keys, load_fixture, meta_model, run_with_feats, tolerance

FAMILY = ["dfformer_s18", "dfformer_s36", "dfformer_m36", "dfformer_b36",
          "cdfformer_s18", "cdfformer_s36", "cdfformer_m36", "cdfformer_b36", "gfformer_s18",
          "dfformer_s18_k2", "dfformer_s18_d8", "dfformer_s18_gelu", "dfformer_s18_relu", "dfformer_s18_afno",
          "convformer_s18", "convformer_s36", "convformer_m36", "convformer_b36",
          "caformer_s18", "caformer_s36", "caformer_m36", "caformer_b36",
          "identityformer_s12", "randformer_s12", "poolformerv2_s12"]


@pytest.mark.parametrize("name", FAMILY)
def test_official_keys_shapes_and_params(name):
    check_official_keys(name)


# fixture -> (registered model whose defaults it shrinks)
PARITY = {
    "dfformer_tiny": "dfformer_s18",
    "cdfformer_tiny": "cdfformer_s18",
    "gfformer_tiny": "gfformer_s18",
    "dfformer_afno_tiny": "dfformer_s18_afno",
    "convformer_tiny": "convformer_s18",
    "caformer_tiny": "caformer_s18",
    "poolformerv2_tiny": "poolformerv2_s12",
}


def fixture_overrides(meta):
    args = meta["constructor_args"]
    # token mixers by the official class names, as the fixture JSON spells them
    return {"depths": args["depths"], "dims": args["dims"], "token_mixers": args["token_mixers"]}


@pytest.mark.parametrize("fixture", sorted(PARITY))
def test_parity_with_official_code(fixture):
    meta, _, _ = load_fixture(fixture)
    check_fixture(fixture, PARITY[fixture], fixture_overrides(meta))


@pytest.mark.parametrize("fixture,base", [("dfformer_tiny_96x128", "dfformer_tiny"),
                                          ("gfformer_tiny_96x128", "gfformer_tiny")])
def test_checkpoint_at_another_resolution_is_resized_like_official(fixture, base, caplog):
    meta, tensors, state = load_fixture(fixture)
    _, _, base_state = load_fixture(base)
    model_name = PARITY[base]
    model = spectrascope.create_model(model_name, num_classes=10, img_size=(96, 128), **fixture_overrides(meta))
    with caplog.at_level("INFO", logger="spectrascope"):
        report = spectrascope.zoo.checkpoint.load_state_dict(model, base_state, strict=True)
    assert sorted(k.split(":")[0] for k in report.adapted) == sorted(meta["resize"]["resized_keys"])
    assert "bicubic" in caplog.text
    own = model.state_dict()
    for k in meta["resize"]["resized_keys"]:
        assert torch.allclose(own[k], state[k], atol=1e-7, rtol=0), k
    model.eval()
    y, _ = run_with_feats(model, tensors["input"], [])
    assert (y - tensors["output"]).abs().max() <= tolerance(tensors["output"])


def test_weight_resize_route_matches_load_weights_route():
    meta, tensors, _ = load_fixture("dfformer_tiny_96x128")
    _, _, base_state = load_fixture("dfformer_tiny")
    model = spectrascope.create_model("dfformer_s18", num_classes=10, mixer_kwargs={"weight_resize": True},
                                      **fixture_overrides(meta))
    model.load_state_dict(base_state)  # 224 filters, resampled at every forward
    model.eval()
    y, _ = run_with_feats(model, tensors["input"], [])
    assert (y - tensors["output"]).abs().max() <= tolerance(tensors["output"])


def test_caformer_runs_natively_at_other_size():
    meta, _, _ = load_fixture("caformer_tiny_64x96")
    check_fixture("caformer_tiny_64x96", "caformer_s18", fixture_overrides(meta))


def test_mismatched_grid_gives_a_clear_error():
    model = spectrascope.create_model("dfformer_s18", depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], num_classes=3)
    with pytest.raises(RuntimeError, match="img_size"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("size", [(256, 256), (96, 160)])
def test_df_model_built_for_other_sizes_runs(size):
    model = spectrascope.create_model("dfformer_s18", img_size=size, depths=[1, 1, 1, 1], dims=[8, 16, 24, 32],
                                      num_classes=5).eval()
    with torch.inference_mode():
        y = model(torch.randn(2, 3, *size))
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    assert model.stages[0][0].token_mixer.complex_weights.shape[:2] == (size[0] // 4, size[1] // 8 + 1)


def test_dynamic_filter_taps_expose_routing_and_effective_filter():
    meta, tensors, state = load_fixture("dfformer_tiny")
    model = spectrascope.create_model("dfformer_s18", num_classes=10, **fixture_overrides(meta))
    model.load_state_dict(state)
    model.eval()
    mixer = "stages.0.0.token_mixer"
    _, feats = run_with_feats(model, tensors["input"], [f"{mixer}.routing_tap", f"{mixer}.filter_tap"])
    routing, filt = feats[f"{mixer}.routing_tap"], feats[f"{mixer}.filter_tap"]
    dm = 2 * 8
    assert routing.shape == (2, 4, dm) and filt.shape == (2, 56, 29, dm) and filt.dtype == torch.complex64
    # routing = softmax over the N filters of the official routing logits (index f*2C + c)
    logits = tensors[f"feat.{mixer}.reweight"].view(2, 4, dm)
    assert torch.allclose(routing, logits.softmax(dim=1), atol=1e-6)
    assert torch.allclose(routing.sum(1), torch.ones(2, dm), atol=1e-6)
    basis = torch.view_as_complex(state[f"{mixer}.complex_weights"])
    expect = torch.einsum("bfc,hwf->bhwc", routing.to(torch.complex64), basis)
    assert torch.allclose(filt, expect, atol=1e-6)


def test_bf16_autocast_keeps_ffts_in_float32():
    meta, tensors, state = load_fixture("cdfformer_tiny")
    model = spectrascope.create_model("cdfformer_s18", num_classes=10, **fixture_overrides(meta))
    model.load_state_dict(state)
    model.eval()
    path = "stages.2.0.token_mixer.filter_tap"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, feats = run_with_feats(model, tensors["input"], [path])
    assert feats[path].dtype == torch.complex64
    ref = tensors["output"]
    assert torch.isfinite(y).all()
    # bf16 has ~3 significant digits: the logits agree to a few percent of their scale
    assert (y.float() - ref).abs().max() <= 0.1 * ref.abs().max()


@pytest.mark.parametrize("name", ["dfformer_s18", "cdfformer_s18", "gfformer_s18", "dfformer_s18_afno",
                                  "caformer_s18", "randformer_s12", "poolformerv2_s12", "identityformer_s12"])
def test_every_declared_tap_resolves(name):
    model = meta_model(name)
    taps = model.taps()
    assert len({t.name for t in taps}) == len(taps)
    for t in taps:
        model.get_submodule(t.path)
    blocks = taps.by_role("block")
    assert len(blocks) == sum(model.depths)
    assert [t.depth for t in blocks] == sorted(t.depth for t in blocks)
    assert blocks[0].depth == 0.0 and blocks[-1].depth == 1.0
    assert taps[0].role == "stem" and taps[-1].role == "pool"


def test_starrelu_inference_path_is_bit_identical_and_leaves_hooked_outputs_alone():
    """StarReLU works in place on its fresh ReLU output when no graph is recorded: the same values
    bit for bit as with autograd, the same dtype promotion under autocast, and a hook on its ReLU
    still sees the ReLU output."""
    from spectrascope.models.layers import StarReLU
    act = StarReLU(scale_value=0.8944, bias_value=-0.4472)
    x = torch.randn(4, 8, 8, 32, generator=torch.Generator().manual_seed(0))
    ref = act(x)
    assert ref.requires_grad
    with torch.no_grad():
        assert torch.equal(act(x), ref)
    with torch.inference_mode():
        assert torch.equal(act(x), ref)
        assert act(x.bfloat16()).dtype == torch.float32             # promoted by the float32 scale, as before
    seen = []
    h = act.relu.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.inference_mode():
            out = act(x)
    finally:
        h.remove()
    assert torch.equal(out, ref) and torch.equal(seen[0], torch.relu(x))
    assert torch.equal(x, torch.randn(4, 8, 8, 32, generator=torch.Generator().manual_seed(0)))  # input untouched
