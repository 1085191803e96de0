"""The spectrascope model zoo (imported as ``spectrascope.models``).

Importing this package registers every family with ``spectrascope.zoo.registry``.
"""
from . import layers, base  # noqa: F401
from . import metaformer, dfformer  # noqa: F401
from . import gfnet  # noqa: F401
from . import poolformer, spanet  # noqa: F401
from . import affnet  # noqa: F401
from .base import TapSpec, TapList, ZooModel  # noqa: F401
