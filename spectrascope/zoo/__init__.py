"""The model zoo layer: the registry of model cards and ``create_model`` (``registry``), safe
checkpoint reading and loading (``checkpoint``), building a model ready for analysis from a
``ModelSpec`` (``build``)."""
