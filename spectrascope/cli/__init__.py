"""The ``spectrascope`` command line: the click group (``app``), the options and one-line errors
(``options``), one generated command per analysis (``analyses``) and the commands that are not
analyses (the zoo, training, figure recipes)."""
from spectrascope.cli.app import main
from spectrascope.cli import zoo, train, figure  # noqa: F401,E402
from spectrascope.cli import analyses  # noqa: F401,E402  (last: the generated commands)

__all__ = ["main"]
