"""What every benchmark script shares: the machine record, interleaved timing, paired ratios and
the one results table (printed, and written as JSON for ``run_all.py``).

A benchmark row compares "ours" with a reference over interleaved repeats: repeat i runs both
sides back to back, in alternating order (ours first, then the reference first, ...), so that a
change of load on a shared machine hits both sides alike. Two ratios summarise the repeats:

* ``best``: the ratio of the two best (fastest) times;
* ``median``: the median over repeats of the paired ratio of repeat i (the two sides of one
  repeat ran under the same load).

Each run is timed in wall seconds (the ratios above) and in CPU seconds of this process (all its
threads): on a machine shared with other work the CPU time moves much less than the wall time,
so its median paired ratio (``cpu median`` in the notes) is a cross-check of the wall ratio.

``better="higher"`` rows are speed-ups (reference time / ours: a target ``>= t``);
``better="lower"`` rows are costs (ours / reference: a target ``<= t``). A row meets its target
when its median does; a row without target is informational (a part of another row's cost).

Scripts import this module as ``benchkit`` (``python benchmarks/<script>.py`` puts this folder
on ``sys.path``); it is not part of the package.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

__all__ = ["Row", "machine", "interleave", "timed", "print_table", "table_lines", "markdown_table", "write_rows",
           "add_rows_option"]

COLUMNS = ("benchmark", "setting", "threads", "device", "ours", "reference", "ratio best", "ratio median", "target",
           "met")


@dataclass
class Row:
    """One comparison: seconds per repeat of ours and of the reference, paired by repeat."""

    benchmark: str
    setting: str
    threads: int
    device: str
    ours: list[float]
    reference: list[float]
    target: float | None
    better: str = "higher"
    ours_label: str = "spectrascope"
    reference_label: str = "reference"
    notes: str = ""
    extra: dict = field(default_factory=dict)
    ours_cpu: list[float] | None = None
    reference_cpu: list[float] | None = None

    def __post_init__(self):
        if self.better not in ("higher", "lower"):
            raise ValueError(f"better must be 'higher' or 'lower', not {self.better!r}")
        if not self.ours or len(self.ours) != len(self.reference):
            raise ValueError("ours and reference need the same number (>= 1) of repeats")

    def _ratio(self, ours: float, ref: float) -> float:
        return ref / ours if self.better == "higher" else ours / ref

    @property
    def ratios(self) -> list[float]:
        """The paired ratio of every repeat."""
        return [self._ratio(o, r) for o, r in zip(self.ours, self.reference)]

    @property
    def ratio_best(self) -> float:
        return self._ratio(min(self.ours), min(self.reference))

    @property
    def ratio_median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ratio_median_cpu(self) -> float | None:
        """The median paired ratio of the CPU times (None when they were not recorded)."""
        if not self.ours_cpu or not self.reference_cpu:
            return None
        return statistics.median(self._ratio(o, r) for o, r in zip(self.ours_cpu, self.reference_cpu))

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'>=' if self.better == 'higher' else '<='} {self.target:g}"

    @property
    def met(self) -> bool | None:
        """Whether the median meets the target (None: an informational row without target)."""
        if self.target is None:
            return None
        m = self.ratio_median
        return m >= self.target if self.better == "higher" else m <= self.target

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(ratios=self.ratios, ratio_best=self.ratio_best, ratio_median=self.ratio_median,
                 ratio_median_cpu=self.ratio_median_cpu, target_text=self.target_text, met=self.met)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Row":
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in keys})

    def cells(self) -> list[str]:
        unit = "x" if self.better == "higher" else "x the time"
        return [self.benchmark, self.setting, str(self.threads), self.device,
                f"{statistics.median(self.ours):.3g} s", f"{statistics.median(self.reference):.3g} s",
                f"{self.ratio_best:.3f}", f"{self.ratio_median:.3f} {unit}", self.target_text,
                {True: "met", False: "MISSED", None: "-"}[self.met]]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})
    except OSError:
        pass
    return []


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine(device: str = "cpu") -> dict:
    """The machine a measurement ran on: CPU model, cores, flags, load average, torch and the accelerator."""
    import torch
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "cpu_flags": _cpu_flags(), "load_average": load_average(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def timed(fn: Callable[[], object], device: str = "cpu") -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()`` (CUDA work synchronised on both ends)."""
    import torch
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c


def interleave(fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
               on_repeat: Callable[[int, dict], None] | None = None) -> tuple[dict, dict]:
    """Time every ``fns[name]()`` once per repeat, in alternating order (the given order, then
    reversed, ...). Returns (name -> wall seconds per repeat, name -> CPU seconds per repeat);
    ``on_repeat(r, {name: wall seconds})`` after each repeat."""
    names = list(fns)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            w, c = timed(fns[n], device)
            wall[n].append(w)
            cpu[n].append(c)
        if on_repeat is not None:
            on_repeat(r, {n: v[-1] for n, v in wall.items()})
    return wall, cpu


def table_lines(rows: list[Row]) -> list[str]:
    """The rows as a fixed-width text table."""
    body = [list(COLUMNS)] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    fmt = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in body]
    return [fmt[0], "  ".join("-" * w for w in widths)] + fmt[1:]


def print_table(rows: list[Row], title: str | None = None) -> None:
    if title:
        print(title)
    for line in table_lines(rows):
        print(line)
    print("ratio best: best time vs best time; ratio median: median over the interleaved repeats of each "
          "repeat's paired ratio (x = reference / ours; 'x the time' = ours / reference); wall-clock times")
    for r in rows:
        cpu = r.ratio_median_cpu
        if r.notes or cpu is not None:
            extra = [f"cpu-time median {cpu:.3f}"] if cpu is not None else []
            print(f"  {r.benchmark} ({r.setting}): " + "; ".join(extra + ([r.notes] if r.notes else [])))


def markdown_table(rows: list[Row]) -> str:
    """The rows as a markdown table (the README's benchmark table)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def add_rows_option(parser) -> None:
    """``--rows PATH``: also write the script's table rows as JSON (what ``run_all.py`` collects)."""
    parser.add_argument("--rows", default=None, help="also write the table rows as JSON to this file")


def write_rows(rows: list[Row], path: str | None, machine_info: dict | None = None) -> None:
    """Write ``rows`` (and the machine they ran on) as JSON to ``path`` (no-op for None)."""
    if not path:
        return
    with open(path, "w") as f:
        json.dump({"machine": machine_info or {}, "rows": [r.to_json() for r in rows]}, f, indent=1)
