"""The ``spectrascope`` click group (the commands live in one module per command group)."""
from __future__ import annotations

import logging

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spectrascope")
@click.option("-v", "--verbose", count=True, help="log more (-v info, -vv debug)")
def main(verbose):
    """Spectral analysis and interpretability of vision models with frequency-domain token mixers."""
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
