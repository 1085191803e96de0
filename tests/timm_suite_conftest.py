"""pytest plugin that points timm's own ``tests/test_models.py`` at the zoo's timm entry points.

``tests/timm_suite.py`` copies this file as ``conftest.py`` beside timm's test file, with a
``suite.json`` that names the entry points to test, the exclusions (test, name pattern, reason)
and the entry points timm would class as non-standard. timm's file is used unchanged: it picks its
model lists with ``timm.list_models(...)`` when it is imported, so this plugin (loaded first)
imports spectrascope (which registers the zoo into timm) and narrows ``list_models`` to those
entry points, with timm's own filters applied. Tests whose parameters are not a zoo entry point
(timm's hand-picked models) are deselected; an excluded (test, entry point) pair is reported as a
skip with its reason. With ``shrink`` the entry points build smaller configurations of themselves
(the same code paths, one block per stage) for a small input size.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
from pathlib import Path

import pytest

import spectrascope  # noqa: F401  (registers the zoo into timm on timm's first import)
import timm
import timm.models
from timm.models import _registry

SPEC = json.loads((Path(__file__).parent / "suite.json").read_text())
MODELS = set(SPEC["models"])
#: the first pattern of timm's NON_STD_FILTERS: a pattern list holding it is that list
_NON_STD_MARK = "vit_*"
_original = _registry.list_models


def _as_list(value) -> list:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                include_tags=None):
    """timm's ``list_models`` over the selected zoo entry points; ``pretrained=True`` (the hub
    downloads) lists none. The zoo's token models join timm's NON_STD_FILTERS, as timm's ViTs."""
    if pretrained:
        return []
    include, exclude = _as_list(filter), _as_list(exclude_filters)
    if _NON_STD_MARK in include:
        include += SPEC["non_std"]
    if _NON_STD_MARK in exclude:
        exclude += SPEC["non_std"]
    names = _original(filter=include, module=module, exclude_filters=exclude, name_matches_cfg=name_matches_cfg,
                      include_tags=include_tags)
    return [n for n in names if n in MODELS]


def list_pretrained(filter="", exclude_filters=""):
    """No zoo entry point is tested through a hub download."""
    return []


for _mod in (timm, timm.models, _registry):
    _mod.list_models = list_models
    _mod.list_pretrained = list_pretrained


def _shrunk(entry, overrides: dict, cfg: dict):
    def build(*args, **kwargs):
        kwargs["pretrained_cfg_overlay"] = {**cfg, **(kwargs.get("pretrained_cfg_overlay") or {})}
        return entry(*args, **{**overrides, **kwargs})
    return build


# the shrunken configurations (``make test``): the same entry points, one block per stage, built for
# and run at a small input size (their pretrained configs say so)
for _name, _shrink in SPEC["shrink"].items():
    _size = _shrink["img_size"]
    _cfg = {"input_size": (3, _size, _size), "pool_size": (_size // 32, _size // 32)}
    _registry._model_entrypoints[_name] = _shrunk(_registry._model_entrypoints[_name],
                                                  {**_shrink["overrides"], "img_size": _size}, _cfg)
    _registry._model_pretrained_cfgs[_name] = dataclasses.replace(_registry._model_pretrained_cfgs[_name], **_cfg)


def _exclusion(test: str, model: str) -> str | None:
    for rule in SPEC["exclude"]:
        if fnmatch.fnmatch(test, rule["test"]) and fnmatch.fnmatch(model, rule["model"]):
            return rule["reason"]
    return None


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        model = spec.params.get("model_name") if spec is not None else None
        if model not in MODELS:
            drop.append(item)
            continue
        reason = _exclusion(item.originalname, model)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"excluded: {reason}"))
        keep.append(item)
    items[:] = keep
    if drop:
        config.hook.pytest_deselected(items=drop)
