"""Finding a model card's official weights: ``create_model(..., pretrained=True)`` and ``--pretrained``.

Looked up in order:

1. a local weights folder (``weights_dir=`` / ``--weights-dir``, else ``SPECTRASCOPE_WEIGHTS``): the
   file under its official name (``dfformer_s18.pth``, ``gfnet-ti.pth``; AFFNet's cvnets names
   may match the card's pattern ``checkpoint_ema_score_*.pt``);
2. the download cache ``$SPECTRASCOPE_CACHE/weights`` (default ``~/.cache/spectrascope/weights``):
   a file downloaded earlier, verified against the size and sha256 recorded on its first download
   (a truncated file is resumed, a corrupt one fetched again);
3. a mirror (``SPECTRASCOPE_WEIGHTS_MIRROR``): ``<mirror>/<official file name>``;
4. the card's official URL when it is a direct download (GitHub releases, the Hugging Face hub's
   ``resolve`` links, Tsinghua Cloud ``?dl=1`` links). Cloud-drive folders (OneDrive, Google
   Drive, ...) are not: they fail in one line naming the URL and the folder to put the file in.

Downloads go to ``<file>.part`` (resumed with an HTTP Range request after an interruption; a
range answer that starts elsewhere starts the file again), show progress, are checked against
the announced size and become a cache entry only once the file loads as weights (read without
running pickled code): a mirror that served an HTML page or a short body leaves nothing behind,
and an entry that does not load (recorded by an earlier version) names itself and the line that
removes it. Ctrl-C / SIGTERM remove the ``.part``; the ``.lock`` that keeps two processes from
downloading one file is removed after use. A cache that cannot be written still serves what it
holds."""
from __future__ import annotations

import contextlib
import fnmatch
import http.client
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from spectrascope.errors import CheckpointError, Interrupted

log = logging.getLogger("spectrascope")

__all__ = ["WeightsError", "resolve", "weights_folder", "cache_dir", "mirror_url", "is_direct", "official_url",
           "download", "verify_cached"]

ENV_DIR, ENV_MIRROR, ENV_CACHE = "SPECTRASCOPE_WEIGHTS", "SPECTRASCOPE_WEIGHTS_MIRROR", "SPECTRASCOPE_CACHE"
#: hosts whose links open a web page (a cloud-drive folder or viewer), not the file itself
NOT_DIRECT = ("onedrive.live.com", "1drv.ms", "sharepoint.com", "drive.google.com", "docs.google.com",
              "pan.baidu.com", "mega.nz", "box.com")
#: where the official weights of families without a direct link are listed
MANUAL_SOURCES = {"affnet": "https://github.com/microsoft/TokenMixers (OneDrive links in the README)"}
CHUNK = 1 << 16
TIMEOUT_S = 30
RETRIES = 2


class WeightsError(CheckpointError):
    """Official weights that cannot be found, downloaded or verified."""


def weights_folder(explicit=None) -> Path | None:
    """The local weights folder: ``explicit``, else ``SPECTRASCOPE_WEIGHTS``, else None."""
    value = explicit if explicit else os.environ.get(ENV_DIR)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    base = os.environ.get(ENV_CACHE)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "spectrascope") / "weights"


def mirror_url(file_name: str, mirror=None) -> str | None:
    base = mirror if mirror is not None else os.environ.get(ENV_MIRROR)
    if not base:
        return None
    return base.rstrip("/") + "/" + urllib.parse.quote(file_name)


def is_direct(url: str | None) -> bool:
    """Whether ``url`` downloads the file itself (rather than a cloud-drive page)."""
    if not url:
        return False
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https", "file"):
        return False
    if "dropbox.com" in host:
        return "dl=1" in parts.query
    return not any(host == h or host.endswith("." + h) for h in NOT_DIRECT)


def official_url(card) -> str | None:
    return getattr(card, "weight_url", None)


# ---------------------------------------------------------------------------- the cache

def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
    from spectrascope.zoo.checkpoint import file_sha256
    return file_sha256(path)


def _read_record(path: Path) -> dict | None:
    rec = _record_path(path)
    if not rec.is_file():
        return None
    try:
        data = json.loads(rec.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "sha256" in data and "size" in data else None


def _write_record(path: Path, url: str | None, fmt: str | None = None) -> dict:
    """Record size, sha256 and the checked format beside ``path``; a cache that cannot be written
    (read-only) keeps the file unrecorded, with a note."""
    data = {"file": path.name, "url": url, "size": path.stat().st_size, "sha256": _sha256(path), "format": fmt}
    tmp = _record_path(path).with_name(_record_path(path).name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, _record_path(path))
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("note: cannot record %s in the cache (%s); it is used unrecorded", path.name,
                    exc.strerror or exc)
    return data


def loadable_format(path: Path, name: str | None = None) -> str:
    """The format of a weights file once it loaded (``torch`` or ``safetensors``, by the suffix of
    ``name``, default the file's), read without running pickled code; a file that does not load is
    a ``CheckpointError`` saying why."""
    from spectrascope.zoo.checkpoint import _find_state_dict, torch_load_plain
    if Path(name or path.name).suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        return "safetensors"
    obj = torch_load_plain(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    _find_state_dict(obj, use_ema=False)
    return "torch"


def _head(path: Path) -> str:
    """How a file starts, for a message (``; it starts with '<!DOCTYPE html>'``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return ""
    text = head.decode("ascii", "replace").split("\n")[0].strip()
    return f"; it starts with {text!r}" if text and all(c.isprintable() for c in text) else ""


def _damaged(path: Path, why: str) -> WeightsError:
    return WeightsError(f"the cached weights {path} are damaged ({why}); delete them to fetch them again: "
                        f"rm '{path}' '{_record_path(path)}'")


def verify_cached(path: Path) -> str:
    """State of a cached file: ``ok``, ``missing``, ``unrecorded`` (no record yet), ``truncated``
    (shorter than recorded) or ``corrupt`` (other size or sha256)."""
    if not path.is_file():
        return "missing"
    rec = _read_record(path)
    if rec is None:
        return "unrecorded"
    size = path.stat().st_size
    if size < int(rec["size"]):
        return "truncated"
    if size != int(rec["size"]) or _sha256(path) != rec["sha256"]:
        return "corrupt"
    return "ok"


# ---------------------------------------------------------------------------- downloads

class _Incomplete(Exception):
    pass


def _fetch_once(url: str, part: Path, progress: bool, label: str) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "spectrascope"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        length = resp.headers.get("Content-Length")
        if have and getattr(resp, "status", 200) == 206:
            start = _range_start(resp.headers.get("Content-Range"))
            if start != have:                 # another range than the one asked for: start again
                part.unlink()
                raise _Incomplete(f"the server answered bytes={have}- with a range starting at {start}")
            mode, total = "ab", (have + int(length)) if length is not None else None
        else:
            mode, have, total = "wb", 0, int(length) if length is not None else None
        from tqdm import tqdm
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=label,
                                         disable=not progress, file=sys.stderr, leave=False) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                    raise _Incomplete(str(exc) or type(exc).__name__) from None
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Incomplete(f"got {size} of {total} bytes")


def _range_start(header: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/TOTAL`` (None when absent or malformed)."""
    try:
        return int(str(header).split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def download(url: str, dest: Path, *, progress: bool = True, retries: int = RETRIES) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed after an interruption, up to
    ``retries`` more attempts), check the announced size, rename atomically and record size and
    sha256 next to it. Raises ``WeightsError`` (one line) when the file cannot be fetched."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights cache {dest.parent} ({exc.strerror or exc}); set "
                           f"{ENV_CACHE} to a writable folder") from None
    part = dest.with_name(dest.name + ".part")
    last = ""
    try:
        for attempt in range(retries + 1):
            try:
                _fetch_once(url, part, progress, dest.name)
            except _Incomplete as exc:
                last = f"download interrupted ({exc})"
                if attempt < retries:
                    log.warning("note: %s: %s; resuming (try %d of %d)", dest.name, last, attempt + 2, retries + 1)
                continue
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and part.exists():    # the partial file is already complete or longer
                    part.unlink()
                    last = "HTTP 416 on resume"
                    continue
                raise WeightsError(f"HTTP {exc.code} for {url}") from None
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
                raise WeightsError(f"cannot download {url} ({reason})") from None
            return _accept(part, dest, url)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, Interrupted)):     # Ctrl-C / SIGTERM: no half-written file stays
            with contextlib.suppress(OSError):
                part.unlink()
        raise
    raise WeightsError(f"{url}: {last}; the partial file {part} is kept and resumed by the next run")


def _accept(part: Path, dest: Path, url: str) -> Path:
    """A complete download becomes a cache entry only once it loads as weights (a mirror that served
    an HTML page or another file leaves nothing behind)."""
    try:
        fmt = loadable_format(part, dest.name)
    except CheckpointError as exc:
        head = _head(part)
        with contextlib.suppress(OSError):
            part.unlink()
        why = str(exc).split("): ", 1)[-1] if "): " in str(exc) else str(exc).split(": ", 1)[-1]
        raise WeightsError(f"{url} did not serve weights ({why}{head}); nothing was cached") from None
    os.replace(part, dest)
    _write_record(dest, url, fmt)
    return dest


# ---------------------------------------------------------------------------- resolving a card

def _in_folder(folder: Path | None, file_name: str) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    if any(c in file_name for c in "*?["):
        found = sorted(p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, file_name))
        return found[-1] if found else None
    path = folder / file_name
    return path if path.is_file() else None


def _cached(path: Path, url: str | None, progress: bool) -> Path | None:
    state = verify_cached(path)
    if state in ("ok", "unrecorded"):
        rec = _read_record(path) or {}
        if not rec.get("format"):        # put there by hand, or recorded before formats were checked
            try:
                fmt = loadable_format(path)
            except CheckpointError as exc:
                raise _damaged(path, str(exc).split("): ", 1)[-1] + _head(path)) from None
            _write_record(path, rec.get("url"), fmt)
        return path
    if state in ("truncated", "corrupt"):
        log.warning("note: cached %s is %s; fetching it again", path, state)
        try:
            if state == "truncated" and url:
                os.replace(path, path.with_name(path.name + ".part"))    # resume from the intact prefix
            else:
                path.unlink()
        except OSError as exc:
            raise WeightsError(f"the cached weights {path} are {state} and the cache cannot be changed "
                               f"({exc.strerror or exc}); delete them by hand: rm '{path}' '{_record_path(path)}'"
                               ) from None
    return None


def resolve(card, *, weights_dir=None, mirror=None, progress: bool = True) -> Path:
    """The local path of ``card``'s official weights (see the module docstring for the order)."""
    file_name = getattr(card, "weight_file", None)
    name = getattr(card, "name", str(card))
    folder = weights_folder(weights_dir)
    if not file_name:
        raise WeightsError(f"{name} has no released weights (an ablation or variant without a checkpoint); "
                           "train it or pass --checkpoint")
    local = _in_folder(folder, file_name)
    if local is not None:
        return local
    cache = cache_dir()
    url = official_url(card)
    mirrored = None if any(c in file_name for c in "*?[") else mirror_url(file_name, mirror)
    hit = _in_folder(cache, file_name)
    if hit is not None:
        hit = _cached(hit, mirrored or (url if is_direct(url) else None), progress)
        if hit is not None:
            return hit
    target = folder if folder is not None else cache
    if mirrored or is_direct(url):
        with _locked(cache / file_name):       # one download when several processes (torchrun ranks) ask
            hit = _in_folder(cache, file_name)
            if hit is not None and verify_cached(hit) == "ok":
                return hit
            return _download_card(name, file_name, url, mirrored, target, progress)
    where = url or MANUAL_SOURCES.get(getattr(card, "family", ""), getattr(card, "source", "") or "its model card")
    raise WeightsError(f"{name}: the official weights are not a direct download ({where}); download "
                       f"{file_name} by hand and put it in {target} ({ENV_DIR} or --weights-dir)")


def _lock_fd(lock: Path) -> int:
    """An open, ``flock``-ed descriptor of ``lock`` (the file still at that path: a file removed by
    the process that held it before is opened again)."""
    try:
        import fcntl
    except ImportError:       # not POSIX: no inter-process lock
        fcntl = None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path):
    """One download of ``path`` at a time across processes: ``<file>.lock`` held with ``flock``
    (waiting for the other process) and removed when the download is done or interrupted."""
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock_fd(lock)
    except OSError as exc:
        raise WeightsError(f"cannot write the weights cache {path.parent} ({exc.strerror or exc}); set "
                           f"{ENV_CACHE} to a writable folder or put {path.name} in --weights-dir") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)                  # unlinked while held: a waiting process opens it again
        os.close(fd)


def _download_card(name: str, file_name: str, url, mirrored, target: Path, progress: bool) -> Path:
    cache = cache_dir()
    if mirrored:
        try:
            return _verified(download(mirrored, cache / file_name, progress=progress))
        except WeightsError as exc:
            raise WeightsError(f"{name}: {exc}; or put {file_name} in {target} "
                               f"({ENV_DIR} or --weights-dir)") from None
    try:
        return _verified(download(url, cache / file_name, progress=progress))
    except WeightsError as exc:
        raise WeightsError(f"{name}: {exc}; offline? put {file_name} in {target} ({ENV_DIR} or --weights-dir) "
                           f"or set {ENV_MIRROR}") from None


def _verified(path: Path) -> Path:
    state = verify_cached(path)
    if state != "ok":
        raise WeightsError(f"{path} failed its check right after download ({state})")
    return path
