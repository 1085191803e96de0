"""The one tap grammar: how every command names the points of a model it analyses.

A request is a comma-separated list of tokens, resolved against the model's taps
(declared by zoo models, inferred for timm models); the union is returned in execution
order, module-path taps after the declared ones, in the order given:

=============================  =================================================================
``fig7``, ``blocks``, ...      a preset (``PRESETS``): a set of roles
``residual``, ``mixer``, ...   a role: every tap of that role
``s3.b1.mixer``, ``stage4``    a tap name
``s3.b1``                      a block: every tap of that block (``s3.b1.*``)
``s3.*``, ``*.mixer``          a shell pattern over tap names
``3``                          a 1-based stage (like ``--stage 3``; alone: the default roles there)
``path:MODULE[:LAYOUT][:HxW]`` a module output (``hook`` ``pre``: ``path:MODULE:pre``); a declared
                               tap at that module when one exists, else an ad-hoc tap whose layout
                               is given or read from its tensor in a dry forward
``stages.2.0.token_mixer``     a bare module path (as ``path:`` without a layout)
=============================  =================================================================

LAYOUT is ``NCHW``, ``NHWC``, ``NLC`` (add ``+P`` for P prefix tokens: ``NLC+1``) or
``raw``. ``--stage`` keeps the declared taps of those stages and ``--blocks`` keeps, per
stage and role, all blocks or the first / last / N-th one.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch.nn as nn

from spectrascope.errors import OptionError, TapError
from spectrascope.probe.infer import model_taps, resolve_layouts
from spectrascope.probe.layouts import SPATIAL_LAYOUTS
from spectrascope.probe.spec import LAYOUTS, TapList, TapSpec

__all__ = ["PRESETS", "TapRequest", "resolve_taps", "select_taps", "check_spatial", "parse_stages", "parse_blocks",
           "parse_tap_request", "choose_taps", "SPECTRAL_ROLES"]

#: the default taps of the amplitude analysis (Park & Kim's latents): stem, downsampling, residual stream
SPECTRAL_ROLES = ("stem", "downsample", "residual", "block")

#: presets: name -> (roles, roles that may be missing, fallback preset when a needed role is missing)
PRESETS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    # DFFormer Fig. 7: the downsampling outputs, the residual stream after every token mixer and
    # after every channel MLP (= block output); 40 points for the S18 models
    "fig7": (("stem", "downsample", "residual", "block"), ("downsample",), "blocks"),
    "dfformer40": (("stem", "downsample", "residual", "block"), ("downsample",), "blocks"),
    "blocks": (("stem", "downsample", "block"), ("stem", "downsample"), None),
}

_PATH_RE = re.compile(r"^path:(?P<module>[^:]*)(?P<rest>(?::[^:]*)*)$")
_GRID_RE = re.compile(r"^(\d+)x(\d+)$")
_BLOCK_RE = re.compile(r"^s\d+\.b\d+$")


@dataclass(frozen=True)
class _PathToken:
    module: str
    layout: str | None = None
    prefix: int = 0
    grid: tuple[int, int] | None = None
    hook: str = "forward"


def _parse_path(token: str, option: str) -> _PathToken:
    m = _PATH_RE.match(token)
    if not m or not m.group("module"):
        raise OptionError(f"{token!r}: expected path:MODULE[:LAYOUT][:HxW] (e.g. path:stages.2.0.token_mixer:NHWC)",
                          option=option)
    layout, prefix, grid, hook = None, 0, None, "forward"
    for part in [p for p in m.group("rest").split(":") if p]:
        up = part.upper()
        g = _GRID_RE.match(part.lower())
        if g:
            grid = (int(g.group(1)), int(g.group(2)))
        elif up in ("PRE", "FORWARD"):
            hook = up.lower()
        elif up.split("+")[0] in {lay.upper() for lay in LAYOUTS}:
            base, _, p = up.partition("+")
            layout = base if base != "RAW" else "raw"
            if p:
                if not p.isdigit():
                    raise OptionError(f"{token!r}: prefix tokens {p!r} is not a number (e.g. NLC+1)", option=option)
                prefix = int(p)
        else:
            raise OptionError(f"{token!r}: {part!r} is neither a layout ({', '.join(LAYOUTS)}), a grid HxW nor 'pre'",
                              option=option)
    return _PathToken(m.group("module"), layout, prefix, grid, hook)


def parse_stages(text, option: str = "--stage") -> tuple[int, ...]:
    """``"3"`` / ``"2,3"`` / ``[3]`` -> (3,) / (2, 3); 1-based stage numbers."""
    if text is None or text == "" or text == ():
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for s in items:
        s = str(s).strip()
        if not s:
            continue
        if not s.lstrip("-").isdigit() or int(s) < 1:
            raise OptionError(f"{s!r} is not a stage number (1, 2, ... or a comma list)", option=option)
        out.append(int(s))
    return tuple(out)


def parse_blocks(text, option: str = "--blocks"):
    """``all`` / ``first`` / ``last`` / a block index (negative counts from the end)."""
    if text is None:
        return "all"
    if isinstance(text, int):
        return text
    low = str(text).strip().lower()
    if low in ("all", "first", "last"):
        return low
    try:
        return int(low)
    except ValueError:
        raise OptionError(f"{text!r} is not all, first, last or a block index", option=option) from None


@dataclass(frozen=True)
class TapRequest:
    """A parsed tap request (``--taps``, ``--target-layer``, ``--layers``): see the module doc.

    ``resolve(model)`` turns it into the ``TapList`` of that model."""

    tokens: tuple[str, ...] = ()
    stages: tuple[int, ...] = ()
    blocks: object = "all"
    option: str = "--taps"
    _paths: tuple[_PathToken, ...] = field(default=(), repr=False)

    @classmethod
    def parse(cls, text: str | Iterable[str] | None = None, *, stages=None, blocks="all",
              option: str = "--taps") -> "TapRequest":
        """Parse ``text`` (comma-separated tokens, or a list of them); syntax errors are raised here."""
        items = [] if text is None else ([text] if isinstance(text, str) else list(text))
        tokens, paths = [], []
        st = list(parse_stages(stages, "--stage"))
        for item in items:
            for part in str(item).split(","):
                part = part.strip()
                if not part:
                    continue
                if part.startswith("path:"):
                    paths.append(_parse_path(part, option))
                elif part.isdigit():
                    st.append(int(part))
                else:
                    tokens.append(part)
        if items and not (tokens or paths or st):
            raise OptionError("empty tap selection", option=option)
        return cls(tuple(tokens), tuple(dict.fromkeys(st)), parse_blocks(blocks), option, tuple(paths))

    @property
    def empty(self) -> bool:
        return not (self.tokens or self._paths)

    def resolve(self, model: nn.Module, *, input_size=None, default: Sequence[str] = (), spatial: bool = False,
                what: str = "this analysis", notes: list | None = None) -> TapList:
        """The taps of ``model`` this request names (execution order, then module paths).

        ``default`` (tokens) applies when the request names no tap; ``spatial`` refuses taps
        that carry no feature map; ``notes`` collects remarks (e.g. a preset's fallback)."""
        declared = TapList()
        need_declared = bool(self.tokens or self.stages or (self.empty and default))
        if need_declared or self._paths:
            try:
                declared = model_taps(model, input_size=input_size)
            except TapError:
                if need_declared:
                    raise
        tokens = self.tokens if not self.empty else tuple(default)
        out, bare = _select_declared(declared, tokens, model, notes, self.option, explicit=not self.empty)
        if self.stages:
            have = sorted({t.stage for t in declared if t.stage is not None})
            bad = [s for s in self.stages if s not in have]
            if bad:
                raise TapError(f"stage(s) {', '.join(map(str, bad))} not in this model (stages "
                               f"{', '.join(map(str, have)) or 'none'})", option="--stage")
            base = out if tokens else declared
            out = TapList(t for t in base if t.stage in self.stages)
        out = _filter_blocks(out, self.blocks)
        extra = _path_taps(model, declared, list(self._paths) + [_PathToken(b) for b in bare], self.option)
        out = TapList(list(out) + [t for t in extra if t not in out])
        if not out:
            raise TapError(f"the tap selection {self.describe()!r} is empty for this model")
        out = resolve_layouts(model, out, input_size)
        if spatial:
            check_spatial(out, what)
        out.notes = list(notes) if notes is not None else []
        return out

    def describe(self) -> str:
        parts = list(self.tokens) + [f"path:{p.module}" for p in self._paths]
        if self.stages:
            parts.append("stage " + ",".join(map(str, self.stages)))
        return ",".join(parts)


def _select_declared(declared: TapList, tokens, model, notes, option, explicit: bool) -> tuple[TapList, list]:
    """The declared taps the tokens name, and the tokens that are bare module paths."""
    roles = declared.roles()
    names = set(declared.names())
    chosen: set[str] = set()
    bare: list[str] = []
    for tok in tokens:
        low = tok.lower()
        if low in PRESETS:
            chosen |= _preset(declared, low, model, notes)
        elif tok in roles:
            chosen |= {t.name for t in declared if t.role == tok}
        elif tok in names:
            chosen.add(tok)
        elif _BLOCK_RE.match(tok) and any(n.startswith(tok + ".") for n in names):
            chosen |= {n for n in names if n.startswith(tok + ".")}
        elif any(c in tok for c in "*?["):
            hit = {n for n in names if fnmatch.fnmatch(n, tok)}
            if not hit:
                raise TapError(f"pattern {tok!r} matches no tap of this model (see `spectrascope taps`)")
            chosen |= hit
        elif _is_module(model, tok):
            bare.append(tok)                 # a bare module path: resolved with the path taps
        elif not explicit:
            continue                         # a default role this model lacks
        else:
            raise TapError(f"unknown tap {tok!r}: not a preset ({', '.join(PRESETS)}), a role of this model "
                           f"({', '.join(roles) or 'none declared'}), a tap name, a block (s3.b1), a pattern, "
                           "a stage number or path:MODULE")
    if not explicit and tokens and not chosen:
        raise TapError(f"this model has none of the default taps ({', '.join(tokens)}); it has: "
                       f"{', '.join(roles) or 'no declared taps'}")
    return TapList(t for t in declared if t.name in chosen), bare


def _preset(declared: TapList, name: str, model, notes) -> set[str]:
    roles, optional, fallback = PRESETS[name]
    have = declared.roles()
    missing = [r for r in roles if r not in have and r not in optional]
    if missing:
        if fallback is None:
            raise TapError(f"preset {name!r} needs tap role(s) {', '.join(missing)}, which {type(model).__name__} "
                           f"does not declare (it has: {', '.join(have)})")
        if notes is not None:
            notes.append(f"{type(model).__name__} has no {', '.join(missing)} taps: preset {name!r} falls back to "
                         f"{fallback!r}")
        return _preset(declared, fallback, model, notes)
    return {t.name for t in declared if t.role in roles}


def _is_module(model, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _path_taps(model, declared: TapList, paths: Sequence[_PathToken], option: str) -> TapList:
    by_path: dict[tuple[str, str], TapSpec] = {}
    for t in declared:
        by_path.setdefault((t.path, t.hook), t)
    out = TapList()
    for p in paths:
        if not _is_module(model, p.module):
            raise TapError(f"no module {p.module!r} in this model (see `spectrascope taps --model ...`)")
        tap = by_path.get((p.module, p.hook))
        if tap is not None and p.layout in (None, tap.layout) and p.grid in (None, tap.grid):
            out.append(tap)
            continue
        name = p.module if p.hook == "forward" else f"{p.module}:pre"
        out.append(TapSpec(name=name, role="path", path=p.module, layout=p.layout or "auto", hook=p.hook,
                           num_prefix_tokens=p.prefix, grid=p.grid))
    return out


def _filter_blocks(taps: TapList, blocks) -> TapList:
    if blocks in (None, "all"):
        return taps
    groups: dict[tuple, list[TapSpec]] = {}
    for t in taps:
        if t.index is not None:
            groups.setdefault((t.stage, t.role), []).append(t)
    keep = set()
    for group in groups.values():
        idx = sorted({t.index for t in group})
        if blocks == "first":
            want = idx[0]
        elif blocks == "last":
            want = idx[-1]
        else:
            want = int(blocks)
            if want < 0:
                want = idx[want] if -want <= len(idx) else None
            if want not in idx:
                continue
        keep.update(t.name for t in group if t.index == want)
    out = TapList(t for t in taps if t.index is None or t.name in keep)
    if not out:
        raise TapError(f"no tap left after --blocks {blocks}")
    return out


def check_spatial(taps: Sequence[TapSpec], what: str = "this analysis") -> TapList:
    """Raise a clear TapError when a tap does not carry a spatial feature map."""
    taps = TapList(taps)
    if not taps:
        raise TapError("no taps selected")
    for t in taps:
        if t.layout not in SPATIAL_LAYOUTS:
            note = f" ({t.note})" if t.note else ""
            raise TapError(f"tap {t.name} has layout {t.layout}{note}: {what} needs spatial feature maps "
                           f"({', '.join(SPATIAL_LAYOUTS)}); choose roles such as stem, downsample, mixer, residual, "
                           "mlp or block")
    return taps


def resolve_taps(model: nn.Module, request=None, *, input_size=None, default: Sequence[str] = (),
                 spatial: bool = False, stages=None, blocks="all", option: str = "--taps",
                 what: str = "this analysis", notes: list | None = None) -> TapList:
    """``TapRequest.parse(request, stages=..., blocks=...).resolve(model, ...)`` in one call."""
    if isinstance(request, TapRequest):
        req = request
    else:
        req = TapRequest.parse(request, stages=stages, blocks=blocks, option=option)
    return req.resolve(model, input_size=input_size, default=default, spatial=spatial, what=what, notes=notes)


def select_taps(taps: Sequence[TapSpec], roles: Iterable[str] | None = None, stages: Iterable[int] | None = None,
                names: Iterable[str] | None = None) -> TapList:
    """Filter a tap list by role, 1-based stage and tap name (library helper over the same rules)."""
    taps = TapList(taps)
    out = TapList(taps)
    if roles:
        roles = list(roles)
        bad = [r for r in roles if r not in taps.roles()]
        if bad:
            raise TapError(f"unknown tap role(s) {', '.join(bad)}; this model has: {', '.join(taps.roles())}")
        out = TapList(t for t in out if t.role in roles)
    if stages:
        stages = [int(s) for s in stages]
        have = sorted({t.stage for t in taps if t.stage is not None})
        bad = [s for s in stages if s not in have]
        if bad:
            raise TapError(f"stage(s) {bad} not in this model (stages {have})")
        out = TapList(t for t in out if t.stage in stages)
    if names:
        names = list(names)
        known = set(taps.names())
        bad = [n for n in names if n not in known]
        if bad:
            raise TapError(f"unknown tap name(s) {', '.join(bad)}")
        out = TapList(t for t in out if t.name in names)
    if not out:
        raise TapError("the tap selection is empty")
    return out


# ---------------------------------------------------------------------------- library helpers

def parse_tap_request(text: str | Iterable[str] | None) -> tuple[list[str] | None, list[tuple[str, str | None]]]:
    """``"mixer,block,path:blocks.3.attn:NLC"`` -> (roles, [(module path, layout or None)]) (library helper;
    the commands parse ``--taps`` with ``probe.grammar.TapRequest``)."""
    if text is None:
        return None, []
    roles, paths = [], []
    for item in ([text] if isinstance(text, str) else list(text)):
        for part in (p.strip() for p in str(item).split(",")):
            if part.startswith("path:"):
                path, _, layout = part[5:].partition(":")
                if not path:
                    raise TapError(f"empty module path in {part!r}")
                paths.append((path, layout.upper() or None))
            elif part:
                roles.append(part)
    return (roles or None), paths


def _request_tokens(roles, paths) -> list[str]:
    """Grammar tokens of a (roles, module paths) selection."""
    out = list(roles or [])
    for path, layout in paths or ():
        out.append(f"path:{path}:{layout}" if layout else f"path:{path}")
    return out


def choose_taps(model: nn.Module, *, roles: Sequence[str] | None = None, stages: Sequence[int] | None = None,
                paths: Sequence[tuple[str, str | None]] = (), blocks="all",
                default_roles: Sequence[str] = SPECTRAL_ROLES, input_size=None,
                what: str = "the amplitude") -> TapList:
    """Spatial taps of ``model`` by role / 1-based stage / module path, through the one grammar.

    Library form of ``--taps``/``--stage``/``--blocks``: roles must be roles of the model and a
    module path that is not a declared tap needs its layout (``(path, "NHWC")``)."""
    declared = model_taps(model, input_size=input_size)
    if roles:
        select_taps(declared, roles=roles)                  # names unknown roles as such
    if stages:
        select_taps(declared, stages=stages)                # validates the stage numbers
    by_path = {t.path for t in declared if t.hook == "forward"}
    for path, layout in paths or ():
        try:
            model.get_submodule(path)
        except AttributeError:
            raise TapError(f"no module {path!r} in this model (see `spectrascope taps --model ...`)") from None
        if layout is None and path not in by_path:
            raise TapError(f"module {path!r} is not a declared tap; give its layout as path:{path}:NCHW|NHWC|NLC")
    req = TapRequest.parse(_request_tokens(roles, paths) or None, stages=stages, blocks=blocks)
    return req.resolve(model, input_size=input_size, default=default_roles, spatial=True, what=what)
