"""The engine: devices (``device``), the one torch.distributed layer (``dist``), the one forward
loop of every analysis (``runner``) and the streaming statistics it feeds (``reducers``)."""
