"""The ``spectrascope`` command line: the click group (``app``), shared options (``options``) and one
module per command group; every command is a thin wrapper over the pipelines."""
from spectrascope.cli.app import main
from spectrascope.cli import zoo, fourier, cka, cam, filters, throughput, train, figure  # noqa: F401,E402
from spectrascope.cli import flops  # noqa: F401,E402

__all__ = ["main"]
