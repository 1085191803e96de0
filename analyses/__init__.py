"""The built-in analyses (imported as ``spectrascope.analyses``): one module per analysis, each a
declaration on the analysis seam (``spectrascope.seam``) with the analysis's run on the engine.

A module's ``@register``-ed ``Analysis`` subclass becomes the command ``spectrascope <name>`` and
``spectrascope.run("<name>", ...)``; installed packages add theirs through the entry-point group
``spectrascope.analyses``."""
