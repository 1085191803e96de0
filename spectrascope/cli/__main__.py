"""``python -m spectrascope.cli`` (and ``torchrun -m spectrascope.cli``)."""
import sys

from spectrascope.cli import main

sys.exit(main())
