"""timm's own model test suite (``tests/test_models.py`` of the installed timm's source
distribution) over the zoo's timm entry points.

The source distribution of the installed timm version is fetched once with pip
(``pip download --no-deps --no-binary :all: timm==X``) into ``$SPECTRASCOPE_CACHE/timm-sdist``
(default ``~/.cache/spectrascope/timm-sdist``; ``SPECTRASCOPE_TIMM_SDIST`` may name the archive).
Its ``tests/test_models.py`` runs unchanged in a separate pytest process, beside
``timm_suite_conftest.py`` (installed as its ``conftest.py``), which narrows timm's model lists
to the entry points asked for and applies ``EXCLUDE`` (each with its reason, reported as skips).

``python tests/timm_suite.py`` runs every entry point (``make test-timm``);
``tests/test_timm_suite.py`` runs ``REPRESENTATIVE`` (every family, every ablation flag) on
``SHRINK``-ed configurations inside ``make test``. Docs: docs/timm.md.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (test function pattern, entry point pattern, reason): timm tests that cannot apply to a family
EXCLUDE: list[tuple[str, str, str]] = []

#: entry points whose ``forward_features`` is a token sequence (B, N, C), as timm's ViTs: listed with
#: timm's NON_STD_FILTERS, so timm runs ``test_model_default_cfgs_non_std`` on them instead of
#: ``test_model_default_cfgs`` and (as for its ViTs) leaves them out of ``test_model_forward_features``
NON_STD = ["spectrascope_gfnet_*", "gfnet_*"]

#: ``make test``: every family and every ablation flag (one entry point per token mixer class and
#: per flag), in the ``SHRINK``-ed configurations
REPRESENTATIVE = [
    "dfformer_s18", "dfformer_s18_gelu", "dfformer_s18_afno_relu", "cdfformer_s18", "gfformer_s18", "caformer_s18",
    "identityformer_s12", "randformer_s12", "poolformerv2_s12", "poolformer_s12",
    "spanet_s", "spanet_s_nospf", "spanet_s_hadamard", "spanet_s_layerscale", "gfnet_ti", "gfnet_h_ti",
    "affnet_et", "affnet_no_mixer", "affnet_conv3x3", "affnet_nofft", "affnet_afno", "affnet_gfn", "affnet_ffc",
    "affnet_dff", "affnet_fno", "affnet_sum", "affnet_mask1hw", "affnet_gc", "affnet_k3", "affnet_dct", "affnet_dwt",
    "affnet_token_first", "affnet_ffn",
]

_TINY_AFFNET = {
    "layer1": {"out_channels": 16, "expand_ratio": 2, "num_blocks": 1, "stride": 1, "block_type": "mv2"},
    "layer2": {"out_channels": 16, "expand_ratio": 2, "num_blocks": 1, "stride": 2, "block_type": "mv2"},
    **{f"layer{k}": {"out_channels": c, "transformer_channels": c, "ffn_dim": 2 * c, "transformer_blocks": 1,
                     "stride": 2, "mv_expand_ratio": 2, "block_type": "aff_block"}
       for k, c in ((3, 16), (4, 24), (5, 32))},
    "last_layer_exp_factor": 4,
}
#: family -> constructor overrides of the shrunken configurations (same code paths, one block per stage)
SHRINK = {
    "metaformer": dict(depths=[1, 1, 1, 1], dims=[16, 16, 32, 32]),
    "poolformer": dict(layers=[1, 1, 1, 1], embed_dims=[8, 8, 16, 16]),
    "spanet": dict(layers=[1, 1, 1, 1], embed_dims=[12, 12, 24, 24]),
    "gfnet": dict(embed_dim=32, depth=2),
    "gfnet_h": dict(embed_dim=[16, 16, 32, 32], depth=[1, 1, 1, 1]),
    "affnet": dict(config=_TINY_AFFNET),
}
#: the input size the shrunken configurations are built for and run at
SHRINK_SIZE = 64
_METAFORMER = ("dfformer", "cdfformer", "gfformer", "convformer", "caformer", "identityformer", "randformer",
               "poolformerv2")


def timm_version() -> str | None:
    """The installed timm's version, or None."""
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_dir() -> Path:
    base = os.environ.get("SPECTRASCOPE_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "spectrascope") / "timm-sdist"


def test_file(version: str) -> tuple[Path | None, str]:
    """timm's ``tests/test_models.py`` of ``version`` from its source distribution (fetched and
    cached on first use). Returns (path, "") or (None, why it is not available)."""
    folder = cache_dir()
    target = folder / f"timm-{version}-test_models.py"
    if target.is_file():
        return target, ""
    archive = Path(os.environ["SPECTRASCOPE_TIMM_SDIST"]) if os.environ.get("SPECTRASCOPE_TIMM_SDIST") else \
        folder / f"timm-{version}.tar.gz"
    if not archive.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, f"timm=={version}"]
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            got = sorted(Path(tmp).glob(f"timm-{version}.tar.gz"))
            if not got:
                tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no archive"]
                return None, (f"timm {version} source distribution is not cached ({archive}) and pip could not "
                              f"fetch it (offline?): {tail[0]}")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.move(str(got[0]), archive)
    member = f"timm-{version}/tests/test_models.py"
    with tarfile.open(archive) as tar:
        try:
            data = tar.extractfile(member).read()
        except KeyError:
            return None, f"{archive} has no {member}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix(".part")
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
    return target, ""


def shrink_overrides(zoo_name: str) -> dict:
    """The ``SHRINK`` overrides of a zoo model's family."""
    from spectrascope.zoo import registry
    family = registry.get_card(zoo_name).family
    return dict(SHRINK["metaformer" if family in _METAFORMER else family])


def run(models: list[str], workdir: Path, *, shrink: bool = False, pytest_args=(), stream=None) -> dict:
    """Run timm's test_models.py over the timm entry points ``models`` in a pytest subprocess.

    Args:
        models: timm names (``spectrascope_dfformer_s18``, ``gfnet_ti``, ...).
        workdir: an empty folder for the run (test file, conftest, report).
        shrink: build the ``SHRINK``-ed configurations, for ``SHRINK_SIZE`` inputs, instead of the entry
            points' own.
        pytest_args: extra pytest arguments (``-x``, ``-k ...``).
        stream: where pytest's output goes (None: captured into the result).

    Returns:
        ``{"passed", "excluded", "skipped" (timm's own size-limit skips), "failed", "total",
        "failures": [(test id, message)], "skips": [(test id, message)], "cases": [test id], "seconds",
        "output"}``; or ``{"unavailable": reason}`` when timm or its test file is not available.
    """
    version = timm_version()
    if version is None:
        return {"unavailable": "timm is not installed"}
    source, why = test_file(version)
    if source is None:
        return {"unavailable": why}
    shutil.copy(source, workdir / "test_models.py")
    shutil.copy(HERE / "timm_suite_conftest.py", workdir / "conftest.py")
    from spectrascope.zoo import timm as zoo_timm
    shrunk = {}
    if shrink:
        zoo_timm.register()
        shrunk = {m: {"overrides": shrink_overrides(zoo_timm.registered()[m]), "img_size": SHRINK_SIZE}
                  for m in models}
    spec = {"models": list(models), "non_std": NON_STD, "shrink": shrunk,
            "exclude": [{"test": t, "model": m, "reason": r} for t, m, r in EXCLUDE]}
    (workdir / "suite.json").write_text(json.dumps(spec))
    (workdir / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    ignore::pytest.PytestUnknownMarkWarning\n")
    report = workdir / "report.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={report}",
           "--rootdir", str(workdir), str(workdir / "test_models.py"), *pytest_args]
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    # one thread unless asked otherwise: most of the time goes to tracing and scripting, the small
    # kernels gain nothing from a thread pool, and a spinning one costs much on a busy machine
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("GITHUB_ACTIONS", None)        # timm's CI switch changes its lists
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=stream, stderr=subprocess.STDOUT if stream else None,
                          capture_output=stream is None, text=True)
    seconds = time.perf_counter() - t0
    out = {"passed": 0, "excluded": 0, "skipped": 0, "failed": 0, "total": 0, "failures": [], "skips": [],
           "cases": [], "seconds": seconds,
           "returncode": proc.returncode, "output": (proc.stdout or "")[-20000:] if stream is None else ""}
    if not report.is_file():
        out["failures"].append(("pytest", f"no report (exit {proc.returncode})"))
        return out
    for case in ET.parse(report).getroot().iter("testcase"):
        out["total"] += 1
        out["cases"].append(case.get("name"))
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"] += 1
            out["failures"].append((f"{case.get('name')}", (bad.get("message") or "")[:500]))
        elif skip is not None and (skip.get("message") or "").startswith("excluded:"):
            out["excluded"] += 1
        elif skip is not None:           # timm's own skips (a fixed input size above its limit)
            out["skipped"] += 1
            out["skips"].append((case.get("name"), skip.get("message") or ""))
        else:
            out["passed"] += 1
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="timm entry points (default: every one the zoo registers)")
    parser.add_argument("--representative", action="store_true", help="the make-test set, shrunken")
    parser.add_argument("--pytest", default="", help="extra pytest arguments, e.g. '-x -k backward'")
    args = parser.parse_args(argv)
    import spectrascope  # noqa: F401
    from spectrascope.zoo import timm as zoo_timm
    zoo_timm.register()
    if args.representative:
        models = ["spectrascope_" + m for m in REPRESENTATIVE]
    else:
        models = args.models or sorted(zoo_timm.registered())
    with tempfile.TemporaryDirectory(prefix="timm-suite-") as tmp:
        res = run(models, Path(tmp), shrink=args.representative, pytest_args=args.pytest.split(), stream=sys.stdout)
    if "unavailable" in res:
        print(f"timm suite skipped: {res['unavailable']}")
        return 0
    print(f"timm {timm_version()} tests/test_models.py over {len(models)} entry points: {res['passed']} passed, "
          f"{res['excluded']} excluded, {res['skipped']} skipped by timm, {res['failed']} failed, "
          f"{res['total']} total in {res['seconds']:.0f} s")
    return 0 if res["failed"] == 0 and res["total"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
