"""DFFormer routing statistics as a streaming reducer: which of the N basis filters each channel
of a dynamic-filter layer uses, over images, fed from the ``df_routing`` taps ``(B, N, C)``."""
from __future__ import annotations

from typing import Sequence

import torch

from spectrascope.engine.reducers import Reducer
from spectrascope.probe.spec import TapList, TapSpec

__all__ = ["RoutingReducer"]


def _block(tap: TapSpec) -> str:
    return tap.name.rsplit(".", 1)[0]


class RoutingReducer(Reducer):
    """Streamed DF routing statistics per layer from the ``df_routing`` taps ``(B, N, C)``:
    float64 sums of the weights (N, C), of the (image, channel) pairs whose top basis is
    each basis (N,), of the routing entropy per channel (C,) in nats, and the image count.
    ``result()`` gives the means; ``all_reduce(dist)`` (the protocol's) merges the ranks."""

    def __init__(self, taps: Sequence[TapSpec]):
        self.taps = TapList(t for t in taps if t.role == "df_routing")
        self.sums: dict[str, dict[str, torch.Tensor]] = {}

    def missing(self) -> list[str]:
        return [t.name for t in self.taps if _block(t) not in self.sums]

    def __call__(self, tap: TapSpec, x: torch.Tensor) -> None:
        r = x.detach().to(torch.float64)
        n = r.shape[1]
        top = torch.nn.functional.one_hot(r.argmax(dim=1), n).sum(dim=(0, 1)).to(torch.float64)
        ent = -(r.clamp_min(1e-12).log() * r).sum(dim=1).sum(dim=0)
        new = {"sum": r.sum(dim=0), "top": top, "ent": ent,
               "n": torch.tensor(float(r.shape[0]), dtype=torch.float64, device=r.device)}
        acc = self.sums.setdefault(_block(tap), {})
        for k, v in new.items():
            acc[k] = v if k not in acc else acc[k] + v

    def state(self) -> dict:
        return {f"{name}|{k}": v for name, acc in self.sums.items() for k, v in acc.items()}

    def load_state(self, state: dict) -> None:
        self.sums = {}
        for key, v in state.items():
            name, k = key.rsplit("|", 1)
            self.sums.setdefault(name, {})[k] = v

    def result(self) -> dict[str, dict]:
        """Per layer (execution order): ``mean`` (N, C), ``argmax_share`` (N,), ``entropy`` (C,), ``images``."""
        out = {}
        for name in dict.fromkeys([_block(t) for t in self.taps] + list(self.sums)):
            if name not in self.sums:
                continue
            s = {k: v.cpu() for k, v in self.sums[name].items()}
            n = max(float(s["n"]), 1.0)
            c = s["sum"].shape[1]
            out[name] = {"mean": s["sum"] / n, "argmax_share": s["top"] / (n * c), "entropy": s["ent"] / n,
                         "images": int(s["n"])}
        return out
