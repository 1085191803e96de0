"""The output layer under pressure: manifests that are data, claims that keep two commands out of
one folder (a property test over concurrent commands, in the library and on the command line),
a folder changed during a run, full disks, read-only caches and output folders that are mount
points.

The full-disk and mount-point tests run the command inside a user and mount namespace on a small
tmpfs (``unshare --user --map-root-user --mount``); where namespaces are not available they run
with a file-size limit (``RLIMIT_FSIZE``), which makes the same writes fail (EFBIG instead of
ENOSPC).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from spectrascope.cli import main
from spectrascope.errors import OutputError
from spectrascope.io.claims import CLAIM_SUFFIX, FolderClaim
from spectrascope.io.naming import safe_name, unique_names
from spectrascope.io.results import MANIFEST, StagedOutput, read_manifest, record_outputs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model-kwargs", "depths=1,1,2,1", "--model-kwargs", "dims=8,16,24,32"]
SYNTH = "synthetic:num_classes=4,train_size=8,val_size=8,size=32"


def tree(folder: Path) -> dict:
    """Relative path -> sha256 of every file under ``folder`` (hidden ones too)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Staging folders, lock files and temporary files anywhere under ``parent``."""
    return sorted(p.name for p in parent.rglob("*") if ".partial-" in p.name or p.name.endswith(CLAIM_SUFFIX)
                  or ".tmp" in p.name)


# ---------------------------------------------------------------------------- manifests are data


@pytest.mark.parametrize("entry, why", [("../x.txt", "not a normalised path"), ("/etc/passwd", "absolute"),
                                        ("a/../b", "not a normalised path"), ("./a", "not a normalised path"),
                                        ("", "not a file name"), (3, "not a file name"), ("a\\b", "backslash"),
                                        (MANIFEST, "the manifest itself")])
def test_a_manifest_entry_outside_its_folder_is_refused(tmp_path, entry, why):
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"command": "amplitude", "files": ["ok.json", entry]}))
    with pytest.raises(OutputError, match=why) as err:
        read_manifest(folder)
    assert str(folder / MANIFEST) in str(err.value)


def test_a_manifest_entry_through_a_link_is_refused_and_nothing_is_deleted(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "sub").symlink_to(outside)
    (folder / MANIFEST).write_text(json.dumps({"command": "x", "files": ["sub/precious.txt"]}))
    with pytest.raises(OutputError, match="symbolic link"):
        StagedOutput(folder, command="x", overwrite=True)
    assert (outside / "precious.txt").read_text() == "keep me"
    with pytest.raises(Exception, match="cannot record"):
        record_outputs(tmp_path / "run", command="train", files=["../escape.pth"])


def test_a_replacement_removes_only_listed_files_and_the_folders_it_emptied(tmp_path):
    folder = tmp_path / "res"
    with StagedOutput(folder, command="x") as st:
        (st / "maps").mkdir()
        (st / "maps" / "a.npy").write_bytes(b"a")
        (st / "keep.json").write_text("{}")
    with StagedOutput(folder, command="x", overwrite=True) as st:
        (st / "keep.json").write_text('{"v": 2}')
    assert tree(folder).keys() == {"keep.json", MANIFEST} and not (folder / "maps").exists()
    assert read_manifest(folder)["files"] == ["keep.json"] and not leftovers(tmp_path)


# ---------------------------------------------------------------------------- claims


def test_a_claimed_folder_is_refused_and_the_claim_leaves_nothing(tmp_path):
    folder = tmp_path / "deep" / "er" / "res"
    holder = FolderClaim(folder, command="train").acquire()
    assert (folder.parent / f".res{CLAIM_SUFFIX}").is_file()
    with pytest.raises(OutputError, match=r"being written by `spectrascope train` \(process"):
        with StagedOutput(folder, command="amplitude"):
            pass
    holder.release()
    assert not (tmp_path / "deep").exists()              # the parents the claim made are gone again
    with StagedOutput(folder, command="amplitude") as st:
        (st / "r.json").write_text("{}")
    assert tree(folder).keys() == {"r.json", MANIFEST} and not leftovers(tmp_path)


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    folder = tmp_path / "res"
    (tmp_path / f".res{CLAIM_SUFFIX}").write_text("otherhost 1 0 amplitude\n")     # no process holds it
    with StagedOutput(folder, command="amplitude") as st:
        (st / "r.json").write_text("{}")
    assert (folder / "r.json").is_file() and not leftovers(tmp_path)


def test_a_folder_changed_during_the_run_is_refused_at_the_commit(tmp_path):
    folder = tmp_path / "res"
    folder.mkdir()
    with pytest.raises(OutputError, match="changed while this command ran"):
        with StagedOutput(folder, command="amplitude") as st:
            (st / "results.json").write_text("{}")
            (folder / "theirs.txt").write_text("written by another program meanwhile")
    assert tree(folder) == {"theirs.txt": hashlib.sha256(b"written by another program meanwhile").hexdigest()}
    assert not leftovers(tmp_path)


def _writer(folder: str, command: str, overwrite: bool, seed: int, files: int, queue) -> None:
    rnd = random.Random(seed)
    time.sleep(rnd.uniform(0, 0.05))
    try:
        with StagedOutput(folder, command=command, overwrite=overwrite) as st:
            for k in range(files):
                (st / f"{command}-{k}.txt").write_text(f"{command} {seed} {k}")
                time.sleep(rnd.uniform(0, 0.02))
        queue.put((command, seed, "ok"))
    except OutputError as exc:
        queue.put((command, seed, "refused: " + str(exc)))
    except Exception as exc:                             # a bug: reported, never a hang
        queue.put((command, seed, f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("trial", range(6))
def test_concurrent_writers_each_write_everything_or_are_refused(tmp_path, trial):
    """Property: N processes write one folder at once (different commands, some with --overwrite);
    afterwards the folder holds exactly the complete file set of one writer, every other writer was
    refused, and no staging folder or lock file is left."""
    ctx = mp.get_context("fork")
    folder = tmp_path / "out"
    rnd = random.Random(trial)
    if trial % 2:                                        # a previous result of one of the commands
        with StagedOutput(folder, command="c0") as st:
            (st / "c0-old.txt").write_text("old")
    queue = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(str(folder), f"c{i % 3}", bool(rnd.getrandbits(1)),
                                                  trial * 10 + i, rnd.randint(1, 4), queue)) for i in range(5)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    outcomes = [queue.get(timeout=10) for _ in writers]
    done = [(c, s) for c, s, how in outcomes if how == "ok"]
    assert all(how == "ok" or how.startswith("refused: ") for _, _, how in outcomes), outcomes
    man = read_manifest(folder)
    files = set(tree(folder)) - {MANIFEST}
    assert man is not None and files == set(man["files"])       # nothing unlisted, nothing listed missing
    contents = {(folder / f).read_text() for f in files}
    if not done:                                         # every writer refused: the old result as it was
        assert contents == {"old"} and man["command"] == "c0", outcomes
    else:
        winner = man["command"]
        assert all(c == winner for c, _ in done), outcomes   # a command never replaced another's files
        seeds = {s for c, s in done}
        assert any(all(t.startswith(f"{winner} {s} ") for t in contents) for s in seeds), contents
        assert len(files) == len(contents)               # one complete file set: every file of one writer
    assert not leftovers(tmp_path)


def _spawn(args, cwd, env):
    return subprocess.Popen([sys.executable, "-m", "spectrascope.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


PAIRS = {
    "amplitude+train": (["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2"],
                        ["train", "--model", "dfformer_s18", *TINY, "--data", SYNTH, "--epochs", "1", "-b", "8",
                         "--limit-train-batches", "1", "--limit-val-batches", "1", "--no-progress"]),
    "spectrum+amplitude": (["spectrum", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2"],
                           ["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2"]),
    "cka+amplitude": (["cka", "--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, "--img-size", "32",
                       "--num-images", "4", "--batch-size", "4"],
                      ["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2"]),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_two_commands_into_one_output(tmp_path, pair):
    """Two commands started together into one --output: one writes all its files, the other is
    refused in one line; nothing of the winner is lost, nothing is left behind."""
    env = dict(os.environ, MPLBACKEND="Agg", SPECTRASCOPE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = tmp_path / "shared"
    procs = [_spawn([*args, "--output", str(out)], tmp_path, env) for args in PAIRS[pair]]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
    loser = next(err for p, _, err in results if p.returncode == 2)
    lines = [ln for ln in loser.split("\n") if ln.split("\r")[-1].strip() and "%|" not in ln]
    assert [ln for ln in lines if ln.startswith("Error: ")] == [lines[-1]] and "--output" in lines[-1], loser
    assert "Traceback" not in loser
    man = read_manifest(out)
    assert set(tree(out)) - {MANIFEST} == set(man["files"]) and man["files"]
    assert "results.json" in man["files"] and not leftovers(tmp_path)


# ---------------------------------------------------------------------------- small disks


def _namespaces() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True)
    return probe.returncode == 0


#: SPECTRASCOPE_TEST_FSIZE=1 runs the file-size-limit variant where namespaces work too
NAMESPACES = _namespaces() and not os.environ.get("SPECTRASCOPE_TEST_FSIZE")

#: runs inside the namespace: mount a small tmpfs, put the old files on it, fill it up to leave
#: ``free_kb``, run the command, and report (outside the tmpfs) what the disk holds afterwards
_ON_SMALL_DISK = textwrap.dedent('''
    import hashlib, json, os, shutil, subprocess, sys
    cfg = json.loads(sys.argv[1])
    disk = cfg["disk"]
    if cfg["size_kb"]:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dk" % cfg["size_kb"], "tmpfs", disk], check=True)
    for src, rel in cfg["copy"]:
        dst = os.path.join(disk, rel)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
    for d in cfg.get("readonly", []):
        subprocess.run(["mount", "--bind", d, d], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", d, d], check=True)
    filler = os.path.join(disk, ".filler")
    if cfg["free_kb"] is not None:
        st = os.statvfs(disk)
        with open(filler, "wb") as f:
            f.write(b"\\1" * max(0, st.f_bavail * st.f_frsize - cfg["free_kb"] * 1024))
    def limit():
        if cfg["fsize_kb"]:
            import resource
            resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize_kb"] * 1024,) * 2)
    p = subprocess.run([sys.executable, "-m", "spectrascope.cli", *cfg["argv"]], capture_output=True, text=True,
                       cwd=cfg["cwd"], env=dict(os.environ, **cfg["env"]), preexec_fn=limit)
    files = {}
    for base, _, names in os.walk(disk):
        for n in names:
            full = os.path.join(base, n)
            if full != filler:
                files[os.path.relpath(full, disk)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    json.dump({"rc": p.returncode, "stderr": p.stderr, "files": files}, open(cfg["report"], "w"))
''')


def on_small_disk(tmp_path, argv, *, size_kb=4096, free_kb=None, copy=(), readonly=(), env=None,
                  fsize_kb=None) -> dict:
    """Run the command line with ``argv`` against a small disk at ``tmp_path/disk`` (see the module
    doc); ``{disk}`` in ``argv`` is that folder. Returns rc, stderr and the disk's files."""
    disk = tmp_path / "disk"
    disk.mkdir(parents=True, exist_ok=True)
    cfg = {"disk": str(disk), "size_kb": size_kb if NAMESPACES else 0, "free_kb": free_kb if NAMESPACES else None,
           "copy": [[str(s), r] for s, r in copy], "readonly": [str(d) for d in readonly] if NAMESPACES else [],
           "argv": [a.format(disk=disk) for a in argv], "cwd": str(tmp_path), "report": str(tmp_path / "report.json"),
           "env": dict(MPLBACKEND="Agg", OMP_NUM_THREADS="1", **(env or {})),
           "fsize_kb": None if NAMESPACES else (fsize_kb or 8)}
    prefix = ["unshare", "--user", "--map-root-user", "--mount"] if NAMESPACES else []
    subprocess.run([*prefix, sys.executable, "-c", _ON_SMALL_DISK, json.dumps(cfg)], check=True, timeout=900,
                   cwd=ROOT)
    return json.loads((tmp_path / "report.json").read_text())


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.split("\n") if ln.split("\r")[-1].strip() and "%|" not in ln]
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert errors and errors == [lines[-1]] and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.fixture(scope="module")
def old_results(tmp_path_factory):
    """Results of a first, successful run of each command (copied onto the small disks)."""
    root = tmp_path_factory.mktemp("old")
    runs = {"amplitude": ["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2"],
            "cka": ["cka", "--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, "--img-size", "32",
                    "--num-images", "4", "--batch-size", "4"],
            "train": ["train", "--model", "dfformer_s18", *TINY, "--data", SYNTH, "--epochs", "1", "-b", "8",
                      "--limit-train-batches", "1", "--limit-val-batches", "1", "--no-progress"]}
    for name, args in runs.items():
        res = CliRunner().invoke(main, [*args, "--output", str(root / name)])
        assert res.exit_code == 0, res.output
    return root


@pytest.mark.parametrize("command", ["amplitude", "cka"])
def test_a_full_disk_keeps_the_old_results(tmp_path, old_results, command):
    """--overwrite on a disk with too little space for the new results: one line naming the file and
    what was kept, exit 1, the old results byte for byte, no staging folder, lock or temporary file."""
    before = tree(old_results / command)
    args = {"amplitude": ["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2"],
            "cka": ["cka", "--model-a", "dfformer_s18", "--model-b", "dfformer_s18", *TINY, "--img-size", "32",
                    "--num-images", "4", "--batch-size", "4"]}[command]
    rep = on_small_disk(tmp_path, [*args, "--output", "{disk}/res", "--overwrite"], free_kb=48,
                        copy=[(old_results / command, "res")], env={"SPECTRASCOPE_CACHE": str(tmp_path / "cache")})
    assert rep["rc"] == 1, rep["stderr"]
    line = one_error_line(rep["stderr"])
    assert "--output" in line and str(tmp_path / "disk" / "res") in line and "nothing was written" in line, line
    assert ("no space left" if NAMESPACES else "too large") in line and ".partial-" not in line
    assert {k[len("res/"):]: v for k, v in rep["files"].items() if k.startswith("res/")} == before
    assert set(rep["files"]) == {f"res/{k}" for k in before}         # nothing else on the disk


def test_a_full_disk_during_training(tmp_path, old_results):
    """A new run on a full disk leaves no folder; a resumed run keeps its last checkpoint intact."""
    run = ["train", "--model", "dfformer_s18", *TINY, "--data", SYNTH, "--epochs", "1", "-b", "8",
           "--limit-train-batches", "1", "--limit-val-batches", "1", "--no-progress"]
    rep = on_small_disk(tmp_path / "new", [*run, "--output", "{disk}/run"], free_kb=64, fsize_kb=64)
    assert rep["rc"] == 1 and rep["files"] == {}, rep
    line = one_error_line(rep["stderr"])
    assert str(tmp_path / "new" / "disk" / "run") in line, line
    before = tree(old_results / "train")
    rep = on_small_disk(tmp_path / "resume", ["train", "--resume", "{disk}/run/last.pth", "--epochs", "2",
                                              "--no-progress"], free_kb=64, fsize_kb=64,
                        copy=[(old_results / "train", "run")])
    assert rep["rc"] == 1, rep["stderr"]
    line = one_error_line(rep["stderr"])
    assert "last.pth" in line and "was kept" in line, line
    after = {k[len("run/"):]: v for k, v in rep["files"].items()}
    assert set(after) == set(before)                     # no temporary file, nothing new
    assert all(after[f] == before[f] for f in ("last.pth", "best.pth", "metrics.csv", "results.json"))


@pytest.mark.skipif(not NAMESPACES, reason="needs a mount namespace (a mount point as --output)")
def test_an_output_folder_that_is_a_mount_point(tmp_path, old_results):
    """--output on a mount point (its own file system): written file by file, replaced with
    --overwrite, never a busy-folder or cross-device traceback."""
    args = ["amplitude", "--model", "dfformer_s18", *TINY, "--img-size", "32", "--num-images", "2"]
    rep = on_small_disk(tmp_path, [*args, "--output", "{disk}"], env={"SPECTRASCOPE_CACHE": str(tmp_path / "c")})
    assert rep["rc"] == 0, rep["stderr"]
    assert set(rep["files"]) == set(tree(old_results / "amplitude")), rep["files"]
    rep = on_small_disk(tmp_path, [*args, "--output", "{disk}", "--overwrite"], copy=[
        (old_results / "amplitude" / f, f) for f in tree(old_results / "amplitude")],
        env={"SPECTRASCOPE_CACHE": str(tmp_path / "c")})
    assert rep["rc"] == 0 and set(rep["files"]) == set(tree(old_results / "amplitude")), rep
    assert not leftovers(tmp_path)


@pytest.mark.skipif(not NAMESPACES, reason="needs a mount namespace (a read-only cache)")
def test_a_read_only_cache(tmp_path):
    """Synthetic images cannot be cached: one line, exit 1, nothing written; weights already in a
    read-only cache still load."""
    cache = tmp_path / "cache"
    (cache / "weights").mkdir(parents=True)
    rep = on_small_disk(tmp_path, ["amplitude", "--model", "dfformer_s18", *TINY, "--data", SYNTH,
                                   "--num-images", "2", "--output", "{disk}/out"], readonly=[cache],
                        env={"SPECTRASCOPE_CACHE": str(cache)})
    assert rep["rc"] == 1 and rep["files"] == {}, rep
    line = one_error_line(rep["stderr"])
    assert "--data" in line and "read-only" in line and str(cache) in line, line


# ---------------------------------------------------------------------------- output names


def test_unique_names_per_model_checkpoint_and_image():
    keys = [("m", "a.pth", "imgs/x.png"), ("m", "a.pth", "imgs/x.jpg"), ("m", "b.pth", "imgs/x.png"),
            ("n", "a.pth", "imgs/y.png"), ("m", "a.pth", "imgs/x.png")]
    labels = [f"{m}_{Path(p).stem}" for m, _, p in keys]
    names = unique_names(keys, labels)
    assert names[3] == "n_y"                                   # no clash: the readable label as it is
    assert len(set(names[:3])) == 3 and all(n.startswith("m_x-") for n in names[:3])
    assert names[4] == names[0] and names == unique_names(keys, labels)    # same key, same name
    assert len({n.lower() for n in unique_names([("A",), ("a",)])}) == 2  # unique without case too
    assert safe_name("../../etc/passwd") == "etc_passwd" and safe_name(b"\xffx.png") == "x.png"
    assert safe_name("") == "_" and len(safe_name("x" * 500)) <= 96
