"""The probe layer: which points of a model an analysis reads and how it reads them.

* ``spec`` -- ``TapSpec`` / ``TapList``: a hookable point, its role and tensor layout;
* ``layouts`` -- the one conversion of NCHW / NHWC / NLC tensors to (B, C, H, W), layout inference;
* ``probe`` -- ``Probe``, the only hook installer (outputs, inputs, gradients);
* ``infer`` -- the taps of a model: declared (zoo) or inferred (timm), and dry-run layout reading;
* ``grammar`` -- the one tap grammar every command uses (roles, names, blocks, presets, ``path:``).
"""
from spectrascope.probe.spec import LAYOUTS, ROLES, SPATIAL_LAYOUTS, TapList, TapSpec
from spectrascope.probe.layouts import channels_last, from_nchw, infer_layout, to_nchw
from spectrascope.probe.probe import Probe, StopForward
from spectrascope.probe.infer import infer_taps, model_taps, resolve_layouts
from spectrascope.probe.grammar import PRESETS, TapRequest, check_spatial, resolve_taps, select_taps
from spectrascope.errors import TapError

__all__ = ["LAYOUTS", "ROLES", "SPATIAL_LAYOUTS", "TapSpec", "TapList", "channels_last", "to_nchw", "from_nchw",
           "infer_layout", "Probe", "StopForward", "infer_taps", "model_taps", "resolve_layouts", "PRESETS",
           "TapRequest", "check_spatial", "resolve_taps", "select_taps", "TapError"]
