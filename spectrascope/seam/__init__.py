"""The analysis seam: one declaration per analysis, and everything every analysis shares.

An analysis declares its name, what it needs (models, images or labelled data, gradients), its
own options, a ``run`` on the engine returning a typed ``Result`` and a report drawn from the
result alone (``seam.analysis``). The seam gives it the shared options (``seam.options``,
declared once), its command-line command and the Python verb ``run(name, **options)``, the
``torchrun`` process group, the staged output folder, the agreement of every rank on failure,
the non-finite stop, results.json with provenance (``seam.result``) and ``load_result``.
Installed packages add analyses through the entry-point group ``spectrascope.analyses``
(``seam.registry``).
"""
from __future__ import annotations

from spectrascope.seam.analysis import Analysis, Needs, Params, Style
from spectrascope.seam.context import Context
from spectrascope.seam.execute import Outcome, RecordedWarning, execute, random_weights_note, run, save, write_result
from spectrascope.seam.options import Option
from spectrascope.seam.registry import ENTRY_POINT_GROUP, get, names, register
from spectrascope.seam.result import Result, load_result

__all__ = ["Analysis", "Needs", "Params", "Style", "Context", "Option", "Result", "Outcome", "RecordedWarning",
           "register", "get", "names", "run", "execute", "save", "write_result", "load_result",
           "random_weights_note", "ENTRY_POINT_GROUP"]
