"""``spectrum``: 2-D Fourier spectrum maps of token-mixer outputs (SPANet Fig. 1).

For every tapped latent ``x`` (B, C, H, W): the batch and channel mean of
``log(|FFT2(x)| + 1e-6)``, zero frequency at the centre, minus its DC value (``--absolute``
keeps the raw mean log amplitude). All panels share one colour scale. The statistic is the one
of ``amplitude`` (``analyses.amplitude``), kept as a whole map.

Example:
    ``spectrascope spectrum --model spanet_s --model poolformer_s12 --stage 3``
"""
from __future__ import annotations

from dataclasses import dataclass

from spectrascope.analyses.amplitude import (EPS_OPTION, LABELS, METHOD, PRECISION, SELECT, STAGE, SpectraResult,
                                             _taps_help, spectra, summary_line)
from spectrascope.probe.grammar import parse_blocks
from spectrascope.report import amplitude as report
from spectrascope.report.style import check_cmap
from spectrascope.seam import Analysis, Context, Needs, Option, register

__all__ = ["Spectrum", "SpectrumResult", "DEFAULT_ROLES"]

#: SPANet Fig. 1: the token-mixer outputs
DEFAULT_ROLES = ("mixer",)


@dataclass(kw_only=True)
class SpectrumResult(SpectraResult):
    """The result of ``spectrum``: every tap record holds its centred ``map`` (see ``SpectraResult``)."""


@register
class Spectrum(Analysis):
    """2-D Fourier spectrum maps of token-mixer outputs (SPANet Fig. 1 style): batch/channel mean of
    log|F|, zero frequency at the centre, relative to DC, one shared colour scale.

    Default taps: the token mixer of the last block of every stage. Writes results.json,
    spectrum.csv, maps.npz and spectrum PNG+PDF. Runs under torchrun."""

    name = "spectrum"
    summary = "2-D Fourier spectrum maps of token-mixer outputs (SPANet Fig. 1)"
    needs = Needs(models="many", data="images")
    options = (
        Option("taps", None, _taps_help(DEFAULT_ROLES), metavar="TAPS"), STAGE,
        Option("blocks", "last", "per stage and role: all, first, last or a block index", parse=parse_blocks),
        METHOD, PRECISION,
        Option("absolute", False, "raw mean log amplitude (not relative to DC)", type=bool),
        Option("cmap", "viridis", "matplotlib colour map of the maps", parse=check_cmap),
        LABELS, SELECT, EPS_OPTION,
    )
    result = SpectrumResult
    random_weights = "the curves describe an untrained network"
    draw_options = ("cmap",)

    def run(self, ctx: Context) -> SpectrumResult:
        res = spectra(ctx, SpectrumResult, kind="spectrum", default=DEFAULT_ROLES, maps=True,
                      relative=not ctx.params.absolute)
        res.method["cmap"] = ctx.params.cmap
        return res

    def report(self, result, folder, style):
        return report.write_tables(result, folder) + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        return report.draw(result, folder, style)

    def describe(self, result, output):
        return summary_line(result, output)
