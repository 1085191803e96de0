"""Reports drawn from results alone: the shared plot style (``style``), one module per analysis
(figures, tables, HTML), and the ``spectrascope figure`` recipe framework (``recipes``)."""
