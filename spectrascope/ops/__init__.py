"""Pure tensor maths of the analyses -- Fourier statistics of feature maps (``fourier``), linear
and mini-batch CKA (``cka``), CAM weights, masks and localisation scores (``cam``), frequency
filters (``filters``). No hooks, no I/O, no model imports."""
