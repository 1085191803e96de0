"""The papers' measurement tables and bubble charts as recipes (``FIGURES``: one
(FigureSpec, runner) pair per table recipe of ``spectrascope.report.paper_tables`` and per
chart of ``spectrascope.report.paper_charts``)."""
from spectrascope.report.paper_tables import recipes as _recipes

FIGURES = _recipes()
