"""Claims on output folders: one command at a time writes a folder.

A command claims its output folder before it checks what the folder holds and keeps the
claim until its results are committed (or it fails). The claim is a lock file beside the
folder (``.NAME.spectrascope-claim``), locked with ``flock``: the kernel releases it when the
process dies, so a killed run never blocks a folder, and the file names the owner (host,
process id, command) for the message a second command gets. A second command that asks for a
claimed folder is refused at once, never waits and never empties it.

A claim also remembers which of the folder's parents it created, so a run that fails leaves
no empty folders behind, and takes a fingerprint of the folder (every file's size, mtime and
inode) so that the commit can see whether something else wrote there meanwhile (another
host, an older version, the user).

``claim_scope()`` collects the claims made inside it and releases them at its end: the
in-place writers (a training run) hold their claim for the whole run.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from pathlib import Path

from spectrascope.errors import OutputError

__all__ = ["CLAIM_SUFFIX", "FolderClaim", "claim_folder", "claim_scope", "fingerprint", "created_parents",
           "remove_created"]

#: the lock file beside a claimed folder: ``.NAME`` + this
CLAIM_SUFFIX = ".spectrascope-claim"
_HOST = socket.gethostname() or "host"
_SCOPES = threading.local()


def created_parents(folder: Path) -> list[Path]:
    """The missing ancestors of ``folder`` (and ``folder`` itself when missing), outermost first:
    what ``mkdir(parents=True)`` would create."""
    missing = []
    for p in [folder, *folder.parents]:
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    return list(reversed(missing))


def remove_created(paths) -> None:
    """Remove the folders of ``paths`` (innermost first) that are still empty."""
    for p in sorted(paths, key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            p.rmdir()


def fingerprint(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (relative posix path -> size, mtime_ns, inode, kind); {} when missing.
    Symbolic links are not followed."""
    out: dict[str, tuple] = {}
    if not folder.is_dir():
        return out
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            rel = Path(e.path).relative_to(folder).as_posix()
            kind = "d" if e.is_dir(follow_symlinks=False) else ("l" if e.is_symlink() else "f")
            out[rel] = (0 if kind == "d" else st.st_size, 0 if kind == "d" else st.st_mtime_ns, st.st_ino, kind)
            if kind == "d":
                stack.append(Path(e.path))
    return out


def _owner_text(command: str) -> str:
    return f"{_HOST} {os.getpid()} {int(time.time())} {command}\n"


def _describe_owner(text: str) -> str:
    parts = text.split(" ", 3)
    if len(parts) < 4 or not parts[1].isdigit():
        return "another spectrascope command"
    host, pid, since, command = parts
    when = ""
    if since.isdigit():
        when = f", since {time.strftime('%H:%M:%S', time.localtime(int(since)))}"
    where = f"process {pid}" + ("" if host == _HOST else f" on {host}")
    return f"`spectrascope {command.strip()}` ({where}{when})"


class FolderClaim:
    """This process's claim on ``folder`` (see the module doc). ``acquire()`` raises an
    ``OutputError`` naming the owner when another live command holds it."""

    def __init__(self, folder, *, command: str, option: str = "--output"):
        self.folder = Path(os.path.abspath(Path(folder).expanduser()))
        self.command = command
        self.option = option
        self.lock_path = self.folder.parent / f".{self.folder.name}{CLAIM_SUFFIX}"
        self.created: list[Path] = []
        self.baseline: dict[str, tuple] | None = None
        #: called (once) when the scope that holds this claim fails, before the release
        self.on_failure = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderClaim":
        if self._fd is not None:
            return self
        self.created = created_parents(self.folder.parent)
        for _ in range(20):
            try:
                self.folder.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:       # a parent was removed by a finishing command: try again
                continue
            except OSError as exc:
                remove_created(self.created)
                raise OutputError(f"cannot claim {self.folder}: cannot write into {self.folder.parent} "
                                  f"({exc.strerror or exc})", option=self.option) from None
            if self._lock(fd):
                return self
        remove_created(self.created)
        raise OutputError(f"cannot claim {self.folder}: its lock file {self.lock_path} keeps changing",
                          option=self.option)

    def _lock(self, fd: int) -> bool:
        """Lock ``fd`` (True: claimed). False when the lock file was replaced meanwhile (try again)."""
        try:
            import fcntl
        except ImportError:                  # not POSIX: the lock file's existence is the claim
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = self._read(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    remove_created(self.created)
                    raise OutputError(f"{self.folder} is being written by {_describe_owner(owner)}; wait for it "
                                      "to finish or choose another folder", option=self.option) from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:                     # released and removed by its owner in between
                os.close(fd)
                return False
        os.ftruncate(fd, 0)
        os.write(fd, _owner_text(self.command).encode())
        self._fd = fd
        return True

    @staticmethod
    def _read(fd: int) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 4096).decode("utf-8", "replace")
        except OSError:
            return ""

    def release(self) -> None:
        """Give the folder back: remove the lock file, and the parents this claim created when they
        are empty (a run that wrote nothing leaves no folders behind)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)            # unlinked while still locked: no one else holds this inode
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        remove_created(self.created)

    def __enter__(self) -> "FolderClaim":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.release()
        return False


def claim_folder(folder, *, command: str, option: str = "--output") -> FolderClaim:
    """Claim ``folder`` for this process until the innermost ``claim_scope`` ends (or the process
    exits, when there is none)."""
    claim = FolderClaim(folder, command=command, option=option).acquire()
    scopes = getattr(_SCOPES, "stack", None)
    if scopes:
        scopes[-1].append(claim)
    else:
        import atexit
        atexit.register(claim.release)
    return claim


@contextlib.contextmanager
def claim_scope():
    """``with claim_scope():`` -- the claims made by ``claim_folder`` inside are released at its end;
    ``on_failure(claim)`` runs for each of them first when the block raises."""
    stack = getattr(_SCOPES, "stack", None)
    if stack is None:
        stack = _SCOPES.stack = []
    stack.append([])
    try:
        yield
    except BaseException:
        for claim in stack[-1]:
            if claim.on_failure is not None:
                with contextlib.suppress(Exception):
                    claim.on_failure()
        raise
    finally:
        for claim in reversed(stack.pop()):
            claim.release()
