"""Optional timm interop (``timm:<name>`` models).

timm imports torchvision unconditionally. The torchvision wheel paired with a CPU-only
torch fails to import because it registers fake kernels for C++ ops that were never
loaded; ``import_torchvision`` declares those op schemas first (only when the normal
import fails) so that the pure-Python parts timm needs work."""
from __future__ import annotations

import importlib
import sys

import torch

_LIBS: list = []


def import_torchvision():
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        try:
            lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass
    _LIBS.append(lib)
    return importlib.import_module("torchvision")


def import_timm():
    """Import timm (with the torchvision work-around) or raise a clear error."""
    try:
        import_torchvision()
        return importlib.import_module("timm")
    except ImportError as exc:
        raise ImportError("timm models need the optional extra: pip install 'spectrascope[timm]' "
                          f"(with torch pinned); import failed: {exc}") from None


def timm_available() -> bool:
    try:
        import_timm()
        return True
    except Exception:
        return False


def create_timm_model(name: str, *, num_classes: int = 1000, img_size=None, **kwargs):
    timm = import_timm()
    if img_size is not None:
        kwargs.setdefault("img_size", img_size)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError:
        kwargs.pop("img_size", None)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            from spectrascope.errors import UnknownModelError
            raise UnknownModelError(f"unknown timm model {name!r} (timm.list_models() lists timm's names)",
                                    option="--model") from None
        raise
    model.spectrascope_name = f"timm:{name}"
    return model
