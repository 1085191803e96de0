"""spectrascope: spectral analysis and interpretability of vision models built on
frequency-domain token mixers (DFFormer, SPANet, AFFNet, GFNet and their baselines)."""
from __future__ import annotations

__version__ = "0.1.0"

from .registry import (ModelCard, UnknownModelError, create_model, get_card, list_models,  # noqa: F401
                       register_model)
from .checkpoint import CheckpointError, LoadReport, load_checkpoint, read_checkpoint  # noqa: F401

__all__ = ["__version__", "create_model", "list_models", "get_card", "register_model", "ModelCard",
           "UnknownModelError", "load_checkpoint", "read_checkpoint", "CheckpointError", "LoadReport"]

from .cka import MinibatchCKA, linear_cka  # noqa: E402,F401

__all__ += ["linear_cka", "MinibatchCKA"]

from .spectral import (ZeroMeanWarning, high_frequency_delta, radial_log_amplitude,  # noqa: E402,F401
                       relative_log_amplitude, spectrum_map)
from .taps import Probe, TapError, model_taps, select_taps  # noqa: E402,F401
from .reducers import AmplitudeReducer  # noqa: E402,F401
from .amplitude import amplitude_analysis, redraw, spectrum_analysis, write_results  # noqa: E402,F401

__all__ += ["relative_log_amplitude", "spectrum_map", "radial_log_amplitude", "high_frequency_delta",
            "ZeroMeanWarning", "Probe", "TapError", "model_taps", "select_taps", "AmplitudeReducer",
            "amplitude_analysis", "spectrum_analysis", "write_results", "redraw"]

from .cam import (CamError, box_mask, compute_cam, default_target_layer, energy_in_box, grad_cam,  # noqa: E402,F401
                  localisation_scores, pointing_game, score_cam)
from .filters import (dynamic_filters, equivalent_kernel, filter_amplitude, frequency_filter,  # noqa: E402,F401
                      spatial_kernel)

__all__ += ["score_cam", "grad_cam", "compute_cam", "default_target_layer", "CamError", "pointing_game",
            "energy_in_box", "localisation_scores", "box_mask", "filter_amplitude", "spatial_kernel",
            "equivalent_kernel", "frequency_filter", "dynamic_filters"]
