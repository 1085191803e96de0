"""The papers' measurement tables and bubble charts as recipes (``FIGURES``: one
(FigureSpec, runner) pair per table of ``spectrascope.report.paper_tables`` and per chart of
``spectrascope.report.paper_charts``, made by ``spectrascope.report.paper_recipes``)."""
from spectrascope.report.paper_recipes import recipes as _recipes
from spectrascope.report.recipes import FigureSpec

FIGURES = _recipes(FigureSpec)
