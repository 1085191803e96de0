"""Export paths on one model of every family: ``torch.jit.script`` and ``torch.fx`` (torchvision's
``create_feature_extractor`` with its default tracer, no leaf modules or wrapped functions given)
compute what the eager model computes, bit for bit, at the build size and (for the families that
run at any size) at another one; the FX graph scripts too. The layers that check shapes, build
masks or resize filters are ``torch.fx.wrap``-ed functions, which every tracer keeps as leaves.

Also: the cards' ``fixed_input_size`` is what the built models are, and timm's entry points hold
frozen constants as buffers under the official state-dict keys (official weights load, same
outputs)."""
from __future__ import annotations

import pytest
import torch

import spectrascope
from parity import load_fixture, tolerance
from spectrascope.zoo import registry

T4 = dict(depths=[1, 1, 1, 1], dims=[16, 16, 32, 32])
#: one model per family (tiny configuration), its build size and another size it runs at (None: bound)
FAMILIES = {
    "dfformer_s18": (T4, 64, None),
    "cdfformer_s18": (T4, 64, None),
    "dfformer_s18_afno": (T4, 64, 48),
    "caformer_s18": (T4, 64, 96),
    "randformer_s12": (T4, 64, None),
    "poolformer_s12": (dict(layers=[1, 1, 1, 1], embed_dims=[8, 8, 16, 16]), 64, 80),
    "spanet_s": (dict(layers=[1, 1, 1, 1], embed_dims=[12, 12, 24, 24]), 64, 80),
    "gfnet_ti": (dict(embed_dim=32, depth=2), 64, None),
    "gfnet_h_ti": (dict(embed_dim=[16, 16, 32, 32], depth=[1, 1, 1, 1]), 64, None),
    "affnet_et": ({}, 64, 80),
    "affnet_dwt": ({}, 62, 70),
}


@pytest.fixture(scope="module")
def fx():
    from spectrascope.compat import import_torchvision
    try:
        import_torchvision()
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    except Exception as exc:  # pragma: no cover - torchvision comes with the dev extra
        pytest.skip(f"torchvision is not available: {exc}")
    return create_feature_extractor, get_graph_node_names


def _model(name):
    overrides, size, other = FAMILIES[name]
    torch.manual_seed(0)
    model = spectrascope.create_model(name, num_classes=5, img_size=size, **overrides).eval()
    sizes = [size] + ([other] if other else [])
    return model, [torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(s)) for s in sizes]


def _stage_outputs(model, x):
    """Eager outputs of the feature-level modules (forward hooks), and the logits."""
    seen = {}
    hooks = [model.get_submodule(info["module"]).register_forward_hook(
        lambda _m, _i, out, key=info["module"]: seen.__setitem__(key, out)) for info in model.feature_info]
    try:
        y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return y, seen


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_torchscript_is_the_eager_model(name):
    model, inputs = _model(name)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for x in inputs:
            assert torch.equal(scripted(x), model(x)), f"{name} at {tuple(x.shape[-2:])}"
            assert torch.equal(scripted.forward_features(x), model.forward_features(x))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fx_feature_extractor_is_the_eager_model(name, fx):
    create_feature_extractor, get_graph_node_names = fx
    model, inputs = _model(name)
    _, eval_nodes = get_graph_node_names(model)
    levels = [info["module"] for info in model.feature_info]
    extractor = create_feature_extractor(model, {**{m: m for m in levels}, eval_nodes[-1]: "logits"})
    scripted = torch.jit.script(extractor)
    with torch.no_grad():
        for x in inputs:
            y, stages = _stage_outputs(model, x)
            for out in (extractor(x), scripted(x)):
                assert torch.equal(out["logits"], y), f"{name} at {tuple(x.shape[-2:])}"
                for m in levels:
                    assert torch.equal(out[m], stages[m]), f"{name}: {m}"


def test_bound_models_refuse_other_sizes_in_every_form(fx):
    create_feature_extractor, _ = fx
    model, (x,) = _model("dfformer_s18")
    other = torch.randn(1, 3, 96, 96)
    for form in (model, torch.jit.script(model), create_feature_extractor(model, ["head"])):
        with pytest.raises(Exception, match="frequency grid"):
            form(other)


def test_fixed_input_size_of_every_card_is_the_models():
    for name in registry.list_models():
        card = registry.get_card(name)
        assert card._meta_model().fixed_input_size == card.fixed_input_size, name
        assert card.pretrained_cfg()["fixed_input_size"] == card.fixed_input_size


@pytest.fixture(scope="module")
def timm():
    from spectrascope.compat import timm_available
    if not timm_available():
        pytest.skip("timm is not installed (optional extra 'timm')")
    import timm as t
    return t


def test_timm_entry_points_hold_frozen_constants_as_buffers_under_the_official_keys(timm):
    from test_zoo_spanet_poolformer import SPANET_ARGS, overrides
    meta, tensors, state = load_fixture("spanet_tiny")
    kw = dict(overrides(meta, SPANET_ARGS), num_classes=10, img_size=tuple(meta["input_size"][1:]))
    native = spectrascope.create_model("spanet_s", **kw)
    model = timm.create_model("spanet_s", **kw).eval()
    masks = [n for n in native.state_dict() if n.endswith(".filter")]
    assert masks and list(model.state_dict()) == list(native.state_dict())
    assert set(masks) <= {n for n, _ in model.named_buffers()}
    assert all(p.requires_grad for p in model.parameters())
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        y = model(tensors["input"])
    assert (y - tensors["output"]).abs().max().item() <= tolerance(tensors["output"])
    with torch.device("meta"):
        rand = timm.create_model("randformer_s12")
    assert "stages.2.0.token_mixer.random_matrix" in dict(rand.named_buffers())
    assert list(rand.state_dict()) == list(registry.get_card("randformer_s12")._meta_model().state_dict())
