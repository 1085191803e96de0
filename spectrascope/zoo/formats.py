"""State-dict layouts of the zoo families timm also has, and the conversion between them.

Two layouts exist for the MetaFormer families (ConvFormer, CAFormer, PoolFormer v2: the
channels-last macro of ``models/metaformer.py``) and for PoolFormer v1 (``models/poolformer.py``):

* ``official`` -- the key names of the papers' code (sail-sg/metaformer, sail-sg/poolformer),
  which are also the zoo models' own names;
* ``timm`` -- the key names of ``timm.models.metaformer`` (``stem.conv``, ``stages.i.downsample``,
  ``stages.i.blocks.j``, ``head.norm``, ``head.fc``), where the channel MLPs and the SepConv
  point-wise layers of convolution stages are 1x1 convolutions (4-D weights).

``to_timm`` and ``to_official`` are exact inverses (same tensors, keys renamed, 1x1 weights
reshaped). ``detect`` names the layout of a state dict."""
from __future__ import annotations

import re

import torch

from spectrascope.errors import CheckpointError

__all__ = ["OFFICIAL", "TIMM", "FAMILIES", "detect", "to_timm", "to_official", "convert", "family_layout",
           "foreign_mixers"]

OFFICIAL, TIMM = "official", "timm"
#: zoo families whose checkpoints exist in both layouts -> which macro ("metaformer" or "poolformer_v1")
FAMILIES = {"convformer": "metaformer", "caformer": "metaformer", "poolformerv2": "metaformer",
            "poolformer": "poolformer_v1"}

#: token-mixer parameters of the families timm has: SepConv (ConvFormer, CAFormer), attention (CAFormer);
#: pooling (PoolFormer) has none
_TIMM_MIXER_PARAMS = frozenset(f"{m}.{p}" for m in ("dwconv", "pwconv1", "pwconv2", "qkv", "proj")
                               for p in ("weight", "bias")) | {"act1.scale", "act1.bias"}

_POINTWISE = re.compile(r"\.(mlp\.fc[12]|token_mixer\.pwconv[12])\.weight$")


def family_layout(family: str | None) -> str | None:
    """The macro of a zoo family that has a timm layout, or None."""
    return FAMILIES.get(family or "")


def detect(state: dict) -> tuple[str, str] | None:
    """``(layout, macro)`` of a state dict: layout ``official`` or ``timm``, macro ``metaformer`` or
    ``poolformer_v1``; None when it is neither (another family)."""
    keys = set(state)
    if "stem.conv.weight" in keys and any(k.startswith("stages.0.blocks.0.") for k in keys):
        return TIMM, ("metaformer" if "stem.norm.weight" in keys else "poolformer_v1")
    if "downsample_layers.0.conv.weight" in keys and any(k.startswith("stages.0.0.") for k in keys):
        return OFFICIAL, "metaformer"
    if "patch_embed.proj.weight" in keys and any(k.startswith("network.0.0.") for k in keys):
        return OFFICIAL, "poolformer_v1"
    return None


def foreign_mixers(state: dict) -> list[str]:
    """Token-mixer parameters of a MetaFormer-like state dict that no family of timm has, one per
    block (DFFormer's and GFFormer's frequency filters, RandFormer's random matrix, a point-wise
    pair without the SepConv's depth-wise convolution): empty for ConvFormer, CAFormer and
    PoolFormer checkpoints.

    Args:
        state: a state dict in the official or timm layout.

    Returns:
        The first foreign key of every block that has one.
    """
    blocks: dict[str, set[str]] = {}
    for key in state:
        head, sep, tail = key.partition(".token_mixer.")
        if sep:
            blocks.setdefault(head, set()).add(tail)
    out = []
    for head, tails in blocks.items():
        extra = sorted(tails - _TIMM_MIXER_PARAMS)
        if not extra and any(t.startswith("pwconv") for t in tails) and "dwconv.weight" not in tails:
            extra = sorted(tails)
        if extra:
            out.append(f"{head}.token_mixer.{extra[0]}")
    return out


# ---------------------------------------------------------------------------- MetaFormer (channels last)

def _attention_stages(state: dict, block_prefix: str) -> set[int]:
    """Stages whose blocks mix tokens by attention (their MLPs stay linear in timm)."""
    pat = re.compile(rf"^{block_prefix}(\d+)\.(?:blocks\.)?\d+\.token_mixer\.qkv\.weight$")
    return {int(m.group(1)) for m in map(pat.match, state) if m}


def _metaformer_to_timm(state: dict) -> dict:
    attn = _attention_stages(state, "stages.")
    out = {}
    for k, v in state.items():
        if m := re.match(r"^downsample_layers\.0\.(conv|post_norm)\.(.+)$", k):
            nk = f"stem.{'conv' if m.group(1) == 'conv' else 'norm'}.{m.group(2)}"
        elif m := re.match(r"^downsample_layers\.(\d+)\.(conv|pre_norm)\.(.+)$", k):
            nk = f"stages.{m.group(1)}.downsample.{'conv' if m.group(2) == 'conv' else 'norm'}.{m.group(3)}"
        elif m := re.match(r"^stages\.(\d+)\.(\d+)\.(.+)$", k):
            nk = f"stages.{m.group(1)}.blocks.{m.group(2)}.{m.group(3)}"
            if _POINTWISE.search(k) and v.ndim == 2 and int(m.group(1)) not in attn:
                v = v.reshape(*v.shape, 1, 1)
        elif k.startswith("norm."):
            nk = "head." + k
        elif k.startswith("head."):
            nk = "head.fc." + k[5:]
        else:
            raise CheckpointError(f"key {k!r} is not part of the official MetaFormer layout")
        out[nk] = v
    return out


def _metaformer_to_official(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if m := re.match(r"^stem\.(conv|norm)\.(.+)$", k):
            nk = f"downsample_layers.0.{'conv' if m.group(1) == 'conv' else 'post_norm'}.{m.group(2)}"
        elif m := re.match(r"^stages\.(\d+)\.downsample\.(conv|norm)\.(.+)$", k):
            nk = f"downsample_layers.{m.group(1)}.{'conv' if m.group(2) == 'conv' else 'pre_norm'}.{m.group(3)}"
        elif m := re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$", k):
            nk = f"stages.{m.group(1)}.{m.group(2)}.{m.group(3)}"
            if _POINTWISE.search(k) and v.ndim == 4 and tuple(v.shape[2:]) == (1, 1):
                v = v.reshape(v.shape[0], v.shape[1])
        elif k.startswith("head.norm."):
            nk = k[5:]
        elif k.startswith("head.fc."):
            nk = "head." + k[8:]
        else:
            raise CheckpointError(f"key {k!r} is not part of timm's MetaFormer layout")
        out[nk] = v
    return out


# ---------------------------------------------------------------------------- PoolFormer v1 (channels first)

def _v1_network_roles(state: dict) -> dict[int, tuple[str, int]]:
    """Official ``network.<idx>`` -> ("stage", s) for block lists, ("down", s) for the patch
    embedding that opens stage s."""
    idx = sorted({int(m.group(1)) for m in (re.match(r"^network\.(\d+)\.", k) for k in state) if m})
    roles, stage = {}, -1
    for i in idx:
        if any(re.match(rf"^network\.{i}\.\d+\.", k) for k in state):
            stage += 1
            roles[i] = ("stage", stage)
        else:
            roles[i] = ("down", stage + 1)
    return roles


def _v1_to_timm(state: dict) -> dict:
    roles = _v1_network_roles(state)
    out = {}
    for k, v in state.items():
        if k.startswith("patch_embed.proj."):
            nk = "stem.conv." + k[len("patch_embed.proj."):]
        elif m := re.match(r"^network\.(\d+)\.(\d+)\.(.+)$", k):
            rest = re.sub(r"^layer_scale_([12])$", r"layer_scale\1.scale", m.group(3))
            nk = f"stages.{roles[int(m.group(1))][1]}.blocks.{m.group(2)}.{rest}"
        elif m := re.match(r"^network\.(\d+)\.proj\.(.+)$", k):
            nk = f"stages.{roles[int(m.group(1))][1]}.downsample.conv.{m.group(2)}"
        elif k.startswith("norm."):
            nk = "head." + k
        elif k.startswith("head."):
            nk = "head.fc." + k[5:]
        else:
            raise CheckpointError(f"key {k!r} is not part of the official PoolFormer layout")
        out[nk] = v
    return out


def _v1_to_official(state: dict) -> dict:
    stages = sorted({int(m.group(1)) for m in (re.match(r"^stages\.(\d+)\.", k) for k in state) if m})
    downs = {int(m.group(1)) for m in (re.match(r"^stages\.(\d+)\.downsample\.", k) for k in state) if m}
    index, i = {}, 0
    for s in stages:
        if s in downs:
            index[("down", s)] = i
            i += 1
        index[("stage", s)] = i
        i += 1
    out = {}
    for k, v in state.items():
        if k.startswith("stem.conv."):
            nk = "patch_embed.proj." + k[len("stem.conv."):]
        elif m := re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$", k):
            rest = re.sub(r"^layer_scale([12])\.scale$", r"layer_scale_\1", m.group(3))
            nk = f"network.{index[('stage', int(m.group(1)))]}.{m.group(2)}.{rest}"
        elif m := re.match(r"^stages\.(\d+)\.downsample\.conv\.(.+)$", k):
            nk = f"network.{index[('down', int(m.group(1)))]}.proj.{m.group(2)}"
        elif k.startswith("head.norm."):
            nk = k[5:]
        elif k.startswith("head.fc."):
            nk = "head." + k[8:]
        else:
            raise CheckpointError(f"key {k!r} is not part of timm's PoolFormer layout")
        out[nk] = v
    return out


_TO_TIMM = {"metaformer": _metaformer_to_timm, "poolformer_v1": _v1_to_timm}
_TO_OFFICIAL = {"metaformer": _metaformer_to_official, "poolformer_v1": _v1_to_official}


def to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official-layout state dict in timm's layout (a timm layout is returned unchanged)."""
    found = detect(state)
    if found is None:
        raise CheckpointError("not a MetaFormer / PoolFormer state dict in the official or timm layout")
    layout, macro = found
    return dict(state) if layout == TIMM else _TO_TIMM[macro](state)


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm-layout state dict in the official layout (an official layout is returned unchanged)."""
    found = detect(state)
    if found is None:
        raise CheckpointError("not a MetaFormer / PoolFormer state dict in the official or timm layout")
    layout, macro = found
    return dict(state) if layout == OFFICIAL else _TO_OFFICIAL[macro](state)


def convert(state: dict[str, torch.Tensor], to: str) -> dict[str, torch.Tensor]:
    """``to_timm`` or ``to_official`` by name."""
    if to == TIMM:
        return to_timm(state)
    if to == OFFICIAL:
        return to_official(state)
    raise CheckpointError(f"unknown layout {to!r}; choose timm or official")
