"""The zoo inside timm: every zoo model registered into timm's registry, so that
``timm.create_model(name, pretrained=..., num_classes=..., features_only=..., **kwargs)`` builds it.

``import spectrascope`` installs an import hook (``install``): the first ``import timm`` afterwards
applies spectrascope's compat shim first (``spectrascope.compat.import_torchvision``: the torchvision
wheel beside a CPU-only torch) and registers the zoo when timm has finished importing; when timm
is already imported the zoo is registered at once. Nothing imports timm before it is asked for.

Names: every zoo model is ``spectrascope_<name>``; the plain ``<name>`` too where timm does not
already own it (``dfformer_s18``, ``gfnet_ti``, ``spanet_s``, ``affnet`` ...). Names timm owns
(``convformer_s18``, ``caformer_s18``, ``poolformer_s12``, ``poolformerv2_s12`` ...) keep timm's
meaning. ``pretrained=True`` resolves the card's official weights (``spectrascope.zoo.weights``);
the pretrained config is the card's (``resolve_data_config`` gives its preprocessing; models bound
to their build size declare ``fixed_input_size``); ``features_only=True`` wraps the model in timm's
``FeatureGetterNet`` (``forward_intermediates``); ``device``, ``dtype`` and ``global_pool`` ('avg' or
'') are timm's. Built this way, frozen constants (SPANet's spectral pooling masks, RandFormer's
mixing matrix) are buffers, as in timm's own models; the state-dict keys stay the official ones.
timm's own model test suite runs over every entry point: ``make test-timm`` (docs/timm.md)."""
from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import logging
import sys

log = logging.getLogger("spectrascope")

__all__ = ["PREFIX", "install", "register", "registered", "timm_name"]

PREFIX = "spectrascope_"
#: timm's pretrained configs of the registered entry points (read by ``timm.models.register_model``)
default_cfgs: dict = {}
_REGISTERED: dict[str, str] = {}      # timm name -> zoo name


def timm_name(zoo_name: str) -> str:
    """The timm name that builds ``zoo_name``: the plain name where timm did not own it, else the prefixed one."""
    return zoo_name if _REGISTERED.get(zoo_name) == zoo_name else PREFIX + zoo_name


def registered() -> dict[str, str]:
    """timm name -> zoo name of every registered entry point."""
    return dict(_REGISTERED)


def _pretrained_cfg(card, timm_name_: str) -> dict:
    from timm.models._pretrained import PretrainedCfg
    cfg = card.pretrained_cfg()
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    out = {k: v for k, v in cfg.items() if k in fields and k not in ("file", "source")}
    out.update(architecture=timm_name_, description=card.description, origin_url=card.source or None,
               notes=(f"official file {card.weight_file}",) if card.weight_file else None)
    return out


def _features_only(model, cfg: dict, out_indices, feature_cls):
    """timm's ``features_only=True``: the model in timm's ``FeatureGetterNet`` (its
    ``forward_intermediates``), with the model's pretrained config."""
    from timm.models._features import FeatureGetterNet
    if feature_cls not in (None, "getter", FeatureGetterNet):
        raise TypeError(f"feature_cls={feature_cls!r}: spectrascope models give features through "
                        "forward_intermediates (feature_cls='getter')")
    net = FeatureGetterNet(model, out_indices=out_indices if out_indices is not None else len(model.feature_info))
    net.pretrained_cfg = net.default_cfg = cfg
    return net


def _entrypoint(zoo_name: str, name: str):
    def entry(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
              features_only: bool = False, out_indices=None, feature_cls=None, device=None, dtype=None,
              global_pool=None, **kwargs):
        import contextlib

        import torch

        from spectrascope.models.base import frozen_parameters_to_buffers
        from spectrascope.zoo import registry
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        num_classes = kwargs.pop("num_classes", 1000)
        img_size = kwargs.pop("img_size", None)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = registry.create_model(zoo_name, num_classes=num_classes, img_size=img_size, pretrained=pretrained,
                                          **kwargs)
        frozen_parameters_to_buffers(model)       # timm's models hold constants as buffers
        if dtype is not None:
            model.to(dtype=dtype)
        if global_pool is not None:
            model._set_global_pool(global_pool)
        cfg = dict(model.pretrained_cfg, architecture=name)
        if isinstance(pretrained_cfg_overlay, dict):
            cfg.update(pretrained_cfg_overlay)
        model.pretrained_cfg = cfg
        if features_only:
            return _features_only(model, cfg, out_indices, feature_cls)
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"spectrascope zoo model {zoo_name} (see `spectrascope models {zoo_name}`)"
    return entry


def register(timm=None) -> dict[str, str]:
    """Register every zoo model into timm (idempotent); returns timm name -> zoo name."""
    if _REGISTERED:
        return registered()
    if timm is None:
        from spectrascope.compat import import_timm
        timm = import_timm()              # its first import registers the zoo (the import hook)
        if _REGISTERED:
            return registered()
    from timm.models import register_model
    from spectrascope.zoo import registry
    owned = set(timm.list_models())
    for zoo_name in registry.list_models():
        card = registry.get_card(zoo_name)
        for name in [PREFIX + zoo_name] + ([zoo_name] if zoo_name not in owned else []):
            default_cfgs[name] = _pretrained_cfg(card, name)
            fn = _entrypoint(zoo_name, name)
            register_model(fn)
            _REGISTERED[name] = zoo_name
    return registered()


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """On the first ``import timm``: the compat shim first, the zoo's registration after timm's own."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        _uninstall()
        try:
            from spectrascope.compat import import_torchvision
            import_torchvision()
        except Exception:   # no torchvision: timm's own import reports it
            pass
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, original = spec.loader, spec.loader.exec_module

        def exec_module(module):
            original(module)
            try:
                register(module)
            except Exception as exc:   # never break timm's import
                log.warning("note: spectrascope models were not registered into timm: %s", exc)
        loader.exec_module = exec_module
        return spec


_HOOK = _TimmImportHook()


def _uninstall() -> None:
    while _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install() -> None:
    """Register now when timm is imported, else on its first import (see the module docstring)."""
    timm = sys.modules.get("timm")
    if timm is not None and hasattr(timm, "create_model"):
        try:
            register(timm)
        except Exception as exc:
            log.warning("note: spectrascope models were not registered into timm: %s", exc)
        return
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
