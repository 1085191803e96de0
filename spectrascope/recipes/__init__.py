"""The papers' figures and tables as recipes (``spectrascope figure NAME``).

One small module per figure composes the analyses and writes its outputs (see ``recipes.base``
for the framework: ``FigureSpec``, ``FigureContext``, ``run_figure``)."""
from spectrascope.recipes.base import (FOCALNET_VARIANTS, RECIPE_CHOICES, RECIPE_OPTIONS, FigureContext, FigureError,
                                       FigureSpec, get_figure, list_figures, model_available, recipe_models,
                                       run_figure)

__all__ = ["FigureSpec", "FigureContext", "FigureError", "list_figures", "get_figure", "run_figure",
           "model_available", "RECIPE_OPTIONS", "RECIPE_CHOICES", "FOCALNET_VARIANTS", "recipe_models"]
