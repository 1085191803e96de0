"""Training and evaluation: configuration, recipes, the loop, EMA, checkpoints and evaluation."""
from spectrascope.train.loop import *  # noqa: F401,F403
from spectrascope.train.loop import __all__ as _loop_all
from spectrascope.train.loop import _all_reduce, _amp_dtype, param_groups, ShardSampler  # noqa: F401

__all__ = list(_loop_all)
