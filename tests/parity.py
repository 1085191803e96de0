"""Helpers to check our models against the official-code fixtures in ../shared/fixtures/parity.

``SPECTRASCOPE_TEST_DEVICE=cuda`` runs the fixture comparisons on that device against the same
official CPU outputs (``make gpu-check``): in float32 with TF32 off, with the same tolerance, or
with ``SPECTRASCOPE_TEST_TF32=on`` (the TF32 setting ``spectrascope train`` uses by default) with
TF32 matmuls and convolutions and a bound for TF32's 10-bit mantissa. On CPUs TF32 does not exist
and the bound stays the float32 one."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

from conftest import fixtures_dir

import spectrascope


def load_fixture(name: str):
    folder = fixtures_dir("parity")
    meta = json.loads((folder / f"{name}.json").read_text())
    tensors = load_file(str(folder / f"{name}.safetensors"))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    return meta, tensors, state


def _tf32() -> bool:
    """Whether the comparisons run with TF32 (CUDA only, ``SPECTRASCOPE_TEST_TF32=on``)."""
    return (torch.device(os.environ.get("SPECTRASCOPE_TEST_DEVICE", "cpu")).type == "cuda"
            and os.environ.get("SPECTRASCOPE_TEST_TF32", "off").lower() == "on")


def tolerance(ref: torch.Tensor) -> float:
    """The fixtures' recommended bound: 1e-5 of the output scale (float32). With TF32 (inputs
    rounded to 10 mantissa bits, 2^-11 ~ 5e-4 relative per product, over the fixtures' few
    layers): 1e-2 of the output scale."""
    return (1e-2 if _tf32() else 1e-5) * max(1.0, ref.abs().max().item())


def test_device() -> torch.device:
    dev = torch.device(os.environ.get("SPECTRASCOPE_TEST_DEVICE", "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = _tf32()
        torch.backends.cudnn.allow_tf32 = _tf32()
    return dev


def run_with_feats(model, x, paths):
    """Output and module outputs at ``paths`` (two forwards: a warm-up, then the compared one),
    on the test device; returned on the CPU."""
    dev = test_device()
    model = model.to(dev)
    x = x.to(dev)
    feats, handles = {}, []
    for p in paths:
        mod = model.get_submodule(p)

        def hook(_m, _i, out, p=p):
            feats[p] = out.detach().cpu().clone()
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)                      # warm-up (see fixtures README, first-call pitfall)
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return y.cpu(), feats


def check_fixture(name: str, model_name: str, overrides: dict, *, num_classes: int = 10):
    meta, tensors, state = load_fixture(name)
    hw = tuple(meta["input_size"][1:])
    model = spectrascope.create_model(model_name, num_classes=num_classes, img_size=hw, **overrides)
    report = spectrascope.zoo.checkpoint.load_state_dict(model, state, strict=True)
    assert report.ok and not report.adapted
    model.eval()
    feat_paths = [k[len("feat."):] for k in meta["feats"]]
    y, feats = run_with_feats(model, tensors["input"], feat_paths)
    ref = tensors["output"]
    err = (y - ref).abs().max().item()
    assert err <= tolerance(ref), f"{name}: output differs by {err:.3g}"
    for p in feat_paths:
        r = tensors[f"feat.{p}"]
        got = feats[p]
        assert got.shape == r.shape, f"{name}: {p} shape {tuple(got.shape)} vs {tuple(r.shape)}"
        e = (got - r).abs().max().item()
        assert e <= tolerance(r), f"{name}: feature {p} differs by {e:.3g}"
    return model, meta, tensors


def meta_model(name: str, **kw):
    """A zoo model built on the meta device (no memory, no init cost): for keys and counts."""
    with torch.device("meta"):
        return spectrascope.create_model(name, **kw)


def check_official_keys(name: str, official: str | None = None):
    """The model ``name`` has exactly the official state_dict (keys, order, shapes, dtypes, buffers,
    frozen parameters) and parameter counts of ``fixtures/keys/<official or name>.json``; its card
    agrees. Returns (meta model, manifest) for family-specific checks."""
    ref = json.loads((fixtures_dir("keys") / f"{official or name}.json").read_text())
    model = meta_model(name)
    sd = model.state_dict()
    assert list(sd) == list(ref["state_dict"]), "state_dict keys or their order differ from the official model"
    assert {k: list(v.shape) for k, v in sd.items()} == ref["state_dict"]
    assert {k: str(v.dtype).replace("torch.", "") for k, v in sd.items() if v.dtype != torch.float32} \
        == ref["non_float32_entries"]
    assert sorted(k for k, _ in model.named_buffers()) == sorted(ref["buffers"])
    assert sorted(n for n, p in model.named_parameters() if not p.requires_grad) == sorted(ref["frozen_parameters"])
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == (ref["params_total"], ref["params_trainable"])
    card = spectrascope.get_card(name)
    assert (card.params, card.params_trainable) == (total, trainable)
    assert tuple(card.default_input_size) == tuple(ref["input_size"])
    return model, ref
