"""Optional interop: timm (``timm:<name>`` models) and imagecorruptions (``corruptions``).

timm imports torchvision unconditionally. The torchvision wheel paired with a CPU-only
torch fails to import because it registers fake kernels for C++ ops that were never
loaded; ``import_torchvision`` declares those op schemas first (only when the normal
import fails) so that the pure-Python parts timm needs work.

imagecorruptions 1.1.2 (the ImageNet-C corruptions applied on the fly) was written for
setuptools < 81, numpy 1 and scikit-image < 0.19. ``import_imagecorruptions`` makes it work
beside newer ones, touching nothing outside that package:

* it imports ``resource_filename`` from ``pkg_resources`` (removed from setuptools 81): when
  the real module is absent, a stand-in providing that one function is placed in
  ``sys.modules`` for the duration of the import and removed afterwards;
* ``fog`` uses ``np.float_`` (removed in numpy 2): the package's module sees numpy through a
  view that adds the alias (``np.float64``);
* ``gaussian_blur`` and ``glass_blur`` call ``skimage.filters.gaussian(..., multichannel=True)``
  (removed in scikit-image 0.19): the package's ``gaussian`` takes ``multichannel`` as
  ``channel_axis=-1``;
* ``impulse_noise`` draws from scikit-image's ``random_noise``, which (scikit-image >= 0.19)
  seeds itself from the operating system: its ``rng`` is drawn from numpy's global state, so
  that ``np.random.seed`` makes every corruption reproducible as it did with older versions.

Each change applies only where the installed version needs it."""
from __future__ import annotations

import importlib
import sys
import warnings

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


# ---------------------------------------------------------------------------- imagecorruptions

#: what ``corruptions`` needs installed (one line for the error message)
IMAGECORRUPTIONS_HINT = "pip install imagecorruptions (it brings opencv-python and scikit-image)"


def _resource_filename(package: str, resource: str) -> str:
    """``pkg_resources.resource_filename`` for packages installed as plain folders: the path of
    ``resource`` beside the module ``package`` (its folder when it is a package)."""
    import os
    mod = importlib.import_module(package)
    base = os.path.dirname(mod.__file__)
    return os.path.normpath(os.path.join(base, *resource.split("/")))


class _NumpyAliases:
    """numpy as a module sees it, with the aliases numpy 2 removed (``float_``)."""

    def __init__(self, np):
        self._np = np

    def __getattr__(self, name):
        if name == "float_" and not hasattr(self._np, "float_"):
            return self._np.float64
        return getattr(self._np, name)


def _gaussian_with_multichannel(gaussian):
    """``skimage.filters.gaussian`` that takes the removed ``multichannel=True`` as ``channel_axis=-1``."""
    import functools

    @functools.wraps(gaussian)
    def call(image, *args, multichannel=None, **kwargs):
        if multichannel:
            kwargs.setdefault("channel_axis", -1)
        return gaussian(image, *args, **kwargs)
    return call


class _SeededSkimage:
    """``skimage`` as imagecorruptions sees it: ``util.random_noise`` gets an ``rng`` drawn from
    numpy's global state when the caller gives none."""

    def __init__(self, sk):
        import types
        self._sk = sk
        noise = sk.util.random_noise

        def random_noise(image, *args, **kwargs):
            if "rng" not in kwargs and "seed" not in kwargs:
                import numpy as np
                kwargs["rng"] = int(np.random.randint(0, 2 ** 31 - 1))
            return noise(image, *args, **kwargs)
        self.util = types.SimpleNamespace(**{k: getattr(sk.util, k) for k in dir(sk.util) if not k.startswith("__")})
        self.util.random_noise = random_noise

    def __getattr__(self, name):
        return getattr(self._sk, name)


def _patch_imagecorruptions(module) -> None:
    import inspect
    mod = module.corruptions
    if not isinstance(mod.np, _NumpyAliases) and not hasattr(mod.np, "float_"):
        mod.np = _NumpyAliases(mod.np)
    if "multichannel" not in inspect.signature(mod.gaussian).parameters:
        mod.gaussian = _gaussian_with_multichannel(mod.gaussian)
    sk = mod.sk
    if not isinstance(sk, _SeededSkimage) and "rng" in inspect.signature(sk.util.random_noise).parameters:
        mod.sk = _SeededSkimage(sk)


def import_imagecorruptions():
    """Import imagecorruptions, working around what newer setuptools, numpy and scikit-image
    removed (see the module doc).

    Returns:
        The ``imagecorruptions`` module.

    Raises:
        ImportError: it (or one of its own dependencies) is not installed; the message is one line
            naming what to install.
    """
    if "imagecorruptions" in sys.modules and getattr(sys.modules["imagecorruptions"], "_spectrascope_ready", False):
        return sys.modules["imagecorruptions"]
    stand_in = None
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        import types
        stand_in = types.ModuleType("pkg_resources")
        stand_in.__doc__ = "spectrascope's stand-in: resource_filename only (imagecorruptions' import)"
        stand_in.resource_filename = _resource_filename
        sys.modules["pkg_resources"] = stand_in
    try:
        with warnings.catch_warnings():      # its deprecated scipy.ndimage.interpolation import
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module("imagecorruptions")
    except ImportError as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImportError(f"the corruptions need the optional package imagecorruptions: {IMAGECORRUPTIONS_HINT} "
                          f"(import failed: {why})") from None
    finally:
        if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]
    _patch_imagecorruptions(module)
    module._spectrascope_ready = True
    return module
