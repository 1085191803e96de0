"""The ``spectrascope`` command line: the click group and one module per command group."""
from spectrascope.cli.main import main

__all__ = ["main"]
