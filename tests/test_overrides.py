"""Constructor overrides and input sizes checked before a zoo model is built
(spectrascope.zoo.overrides, spectrascope.zoo.limits), and the data-spec checks of io.specs / io.synthetic."""
from __future__ import annotations

import inspect
import json

import pytest
import torch

import spectrascope
from spectrascope.errors import CheckpointError, DataError, OptionError
from spectrascope.zoo import registry
from spectrascope.zoo.limits import InputSizeTooLarge, InputSizeTooSmall, check_input_size, footprint
from spectrascope.zoo.overrides import OverrideError, _model_class, accepted, check_overrides

TINY = dict(depths=[1, 1, 2, 1], dims=[8, 16, 24, 32])


@pytest.mark.parametrize("name", registry.list_models())
def test_accepted_names_are_the_constructors_and_the_variant_defaults_pass(name):
    card = registry.get_card(name)
    cls, defaults, aliases = _model_class(card.builder)
    table = accepted(card)
    assert cls is not None and table
    params = set(inspect.signature(cls.__init__).parameters) | set(inspect.signature(card.builder).parameters)
    assert set(table) - set(aliases) <= params
    assert not {"num_classes", "img_size", "input_size"} & set(table)
    check_overrides(card, {k: v for k, v in defaults.items() if k in table})     # the variant's own values


def test_unknown_override_lists_what_is_accepted():
    with pytest.raises(OverrideError) as err:
        spectrascope.create_model("dfformer_s18", no_such_argument=3)
    msg = str(err.value)
    assert msg.startswith("--model-kwargs:") and "no_such_argument" in msg
    for name in ("depths", "dims", "token_mixers", "drop_path_rate", "mixer_kwargs"):
        assert name in msg
    assert isinstance(err.value, TypeError) and isinstance(err.value, OptionError)


@pytest.mark.parametrize("name, kw, needle", [
    ("dfformer_s18", {"dims": "abc"}, "dims=abc"),
    ("dfformer_s18", {"dims": [8, "x", 24, 32]}, "integer"),
    ("dfformer_s18", {"depths": 2.5}, "depths"),
    ("dfformer_s18", {"drop_path_rate": "high"}, "number"),
    ("dfformer_s18", {"fork_feat": 1}, "true or false"),
    ("dfformer_s18", {"token_mixers": 3}, "name"),
    ("gfnet_h_ti", {"embed_dim": "wide"}, "embed_dim"),
    ("poolformer_s12", {"layers": [1, 1, "a", 1]}, "layers"),
    ("spanet_s", {"k_size": "seven"}, "k_size"),
    ("affnet", {"num_blocks": "many"}, "num_blocks"),
])
def test_wrong_types_name_the_override_and_the_expected_type(name, kw, needle):
    with pytest.raises(OverrideError, match="--model-kwargs") as err:
        spectrascope.create_model(name, **kw)
    assert needle in str(err.value) and "disagree" not in str(err.value)


def test_values_that_fit_are_accepted():
    card = registry.get_card("dfformer_s18")
    check_overrides(card, dict(TINY, mlp_ratios=2.5, drop_path_rate=0, token_mixers=["sepconv", "df", "df", "df"],
                               mixer_kwargs={"num_filters": 2}, res_scale_init_values=[None, None, 1.0, 1.0]))
    model = spectrascope.create_model("dfformer_s18", num_classes=3, mlp_ratios=2.5, **TINY)
    assert model.head.fc2.out_features == 3


def test_own_options_are_not_overrides():
    for key in ("num_classes", "img_size", "input_size"):
        with pytest.raises(OverrideError, match=key):
            check_overrides(registry.get_card("dfformer_s18"), {key: 8})


def test_constructor_refusals_become_one_line_option_errors():
    with pytest.raises(OptionError, match="--model-kwargs: dfformer_s18 with depths=1,1,1") as err:
        spectrascope.create_model("dfformer_s18", depths=[1, 1, 1], dims=[8, 16, 24, 32])
    assert "disagree" in str(err.value)


def test_img_size_below_the_minimum():
    with pytest.raises(InputSizeTooSmall, match="16x16") as err:
        spectrascope.create_model("gfnet_ti", img_size=8)
    assert str(err.value).startswith("--img-size:")
    spectrascope.create_model("gfnet_ti", img_size=16, embed_dim=16, depth=1)        # the minimum itself builds


def test_footprint_counts_the_real_parameters():
    model = spectrascope.create_model("dfformer_s18", num_classes=5, img_size=48, **TINY)
    real = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    params, peak = footprint(registry.get_card("dfformer_s18").builder, (48, 48), TINY, num_classes=5)
    assert params == real
    # the stem output (8 x 12 x 12 floats) is the smallest lower bound of the largest activation
    assert peak >= 8 * 12 * 12 * 4


def test_img_size_beyond_memory(monkeypatch):
    import spectrascope.zoo.limits as limits
    monkeypatch.setattr(limits, "available_memory", lambda: 64 * 2 ** 20)      # a 64 MiB machine
    with pytest.raises(InputSizeTooLarge, match="--img-size: 2048x2048: dfformer_s18 needs at least") as err:
        check_input_size(registry.get_card("dfformer_s18"), (2048, 2048), TINY)
    assert "largest side that fits" in str(err.value)
    check_input_size(registry.get_card("dfformer_s18"), (256, 256), TINY)           # not checked: fits


def test_bad_img_size_values():
    for bad in (0, (0, 32), (32,), "abc", (3, 32, -1)):
        with pytest.raises(OptionError, match="--img-size"):
            spectrascope.create_model("dfformer_s18", img_size=bad, **TINY)


def test_damaged_recorded_architecture_is_a_checkpoint_error():
    from spectrascope.zoo.build import model_spec_from_info
    with pytest.raises(CheckpointError, match="damaged"):
        model_spec_from_info({"path": "x.pth", "args": {"model": "m", "spectrascope": {"model": "m"}}})


# ---------------------------------------------------------------------------- data specs


@pytest.mark.parametrize("spec, needle", [
    ("synthetic:num_classes=abc", "num_classes='abc' is not an integer"),
    ("synthetic:patch=wide", "patch='wide' is not a finite number"),
    ("synthetic:size=32.5", "size=32.5 is not an integer"),
    ("synthetic:colour=red", "accepted: num_classes"),
    ("synthetic:8", "KEY=VALUE"),
    ("synthetic:seed=", "key and a value"),
    ("synthetic:seed=1,seed=2", "twice"),
    ("synthetic:bands=-2", "bands x orientations"),
    ("synthetic:size=100000", "8192"),
    ("synthetic:fmin=nan", "finite"),
    ("nosuch:path", "unknown data spec"),
    ("imagefolder:", "PATH"),
    ("samples:x", "no argument"),
    ("", "empty"),
])
def test_data_spec_errors_name_data_and_the_key(spec, needle):
    from spectrascope.io.bundles import load_data
    with pytest.raises(DataError, match="--data") as err:
        load_data(spec)
    assert needle in str(err.value)
    assert "not all arguments converted" not in str(err.value)


def test_damaged_labels_json_names_the_file(tmp_path, monkeypatch):
    from spectrascope.io.sources import ImageSource
    monkeypatch.setenv("SPECTRASCOPE_CACHE", str(tmp_path))
    spec = "synthetic:num_classes=4,train_size=4,val_size=4,size=16"
    src = ImageSource.resolve(data=spec, num_images=3)
    assert len(src.labels) == 3
    meta = src.paths[0].parent / "labels.json"
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({"labels": doc["labels"][:1]}))                 # too few labels for 3 images
    src2 = ImageSource.resolve(data=spec, num_images=3)                          # rewritten, not trusted
    assert src2.labels == src.labels
    meta.write_text("{not json")
    from spectrascope.io.sources import _read_labels
    with pytest.raises(DataError, match="labels.json"):
        _read_labels(meta, src.paths)


def test_torch_is_untouched_by_the_meta_checks():
    assert torch.empty(1).device.type == "cpu"
