"""Training and evaluation: options and recipes (config), seeds and data order (sampler),
optimiser and schedule (schedule), EMA (ema), checkpoints and the run folder (state),
metrics (metrics), evaluation through the engine's runner (evaluate), set-up (prepare),
one epoch (epoch), stopping on signals (stop) and the run (loop)."""
from spectrascope.train.loop import *  # noqa: F401,F403
from spectrascope.train.loop import __all__ as _loop_all
from spectrascope.train.schedule import param_groups  # noqa: F401
from spectrascope.train.sampler import ShardSampler  # noqa: F401

__all__ = list(_loop_all)
