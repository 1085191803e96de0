"""spectrascope: spectral analysis and interpretability of vision models built on
frequency-domain token mixers (DFFormer, SPANet, AFFNet, GFNet and their baselines).

The public API: the zoo (``create_model``, ``list_models``, ``get_card``, checkpoints), probes
(``Probe``, ``model_taps``, ``select_taps``), one verb for every analysis (``run("amplitude", ...)``,
``load_result``, ``save``, ``plot``), and the pure maths of each analysis (spectra, CKA, CAM
weighting, filter visualisation)."""
from __future__ import annotations

__version__ = "0.1.0"

from spectrascope.errors import quiet_startup_interrupts

quiet_startup_interrupts()     # the command line: Ctrl-C while torch imports ends quietly (130)

from spectrascope.zoo.registry import ModelCard, UnknownModelError, create_model, get_card, list_models, register_model
from spectrascope.zoo.checkpoint import CheckpointError, LoadReport, load_checkpoint, read_checkpoint
from spectrascope.probe import Probe, TapError, model_taps, select_taps
from spectrascope.ops.fourier import (ZeroMeanWarning, high_frequency_delta, radial_log_amplitude, relative_log_amplitude,
                                      spectrum_map)
from spectrascope.engine.reducers.amplitude import AmplitudeReducer
from spectrascope.ops.cka import MinibatchCKA, linear_cka
from spectrascope.ops.cam import CamError, box_mask, energy_in_box, localisation_scores, pointing_game
from spectrascope.engine.cam import compute_cam, default_target_layer, grad_cam, score_cam
from spectrascope.ops.filters import dynamic_filters, equivalent_kernel, filter_amplitude, frequency_filter, spatial_kernel
from spectrascope.engine.flops import FlopCount, count_flops
from spectrascope.seam import Analysis, Needs, Option, Result, load_result, register, run, save
from spectrascope.seam import names as list_analyses
from spectrascope.seam.plot import redraw as plot
from spectrascope.zoo import timm as _timm_plugin

_timm_plugin.install()   # the zoo inside timm.create_model (on timm's first import; compat shim first)

__all__ = [
    "__version__",
    # zoo
    "create_model", "list_models", "get_card", "register_model", "ModelCard", "UnknownModelError",
    "load_checkpoint", "read_checkpoint", "CheckpointError", "LoadReport",
    # probes
    "Probe", "TapError", "model_taps", "select_taps",
    # analyses: one verb
    "run", "load_result", "save", "plot", "list_analyses", "Analysis", "Needs", "Option", "Result", "register",
    # Fourier analysis
    "relative_log_amplitude", "spectrum_map", "radial_log_amplitude", "high_frequency_delta", "ZeroMeanWarning",
    "AmplitudeReducer",
    # CKA
    "linear_cka", "MinibatchCKA",
    # CAM
    "score_cam", "grad_cam", "compute_cam", "default_target_layer", "CamError", "pointing_game", "energy_in_box",
    "localisation_scores", "box_mask",
    # filters
    "filter_amplitude", "spatial_kernel", "equivalent_kernel", "frequency_filter", "dynamic_filters",
    # FLOPs
    "count_flops", "FlopCount",
]
