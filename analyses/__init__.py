"""One small recipe per paper figure (imported as ``spectrascope.analyses``).

Each recipe module composes library calls and writes its outputs under ``figures/``."""
