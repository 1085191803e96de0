"""What a failed write says: every ``OSError`` a user meets while spectrascope writes (a full
disk, a read-only file system, a permission, a busy mount point, ...) becomes one
``WriteError`` line that names the path, says what happened in plain words and what was kept.

``WriteError`` is an ``OutputError`` (one line on the command line) with exit status 1: the
input was fine, the machine refused the write.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from spectrascope.errors import OutputError

__all__ = ["WriteError", "describe_oserror", "write_error", "is_write_failure", "writing"]

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EBUSY: "the folder is busy (a mount point or in use)",
    errno.EXDEV: "it lies on another file system",
    errno.EFBIG: "the file is too large for the file system",
    errno.EIO: "an input/output error of the device",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOTDIR: "a part of the path is a file",
    errno.EISDIR: "it is a folder",
    errno.ENOENT: "a folder on the way does not exist",
    errno.EMFILE: "too many open files",
    errno.ENOTEMPTY: "the folder is not empty",
}
#: errors that come from where a file is written, whatever the file name (``write()`` has none)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


class WriteError(OutputError):
    """A write refused by the machine (disk full, read-only, permission, busy); nothing half-written
    is left and the message says what was kept."""

    exit_code = 1

    def __init__(self, message: str, *, path=None, reason: str = "", option: str | None = None):
        super().__init__(message, option=option)
        self.path = None if path is None else Path(path)
        self.reason = reason


def describe_oserror(exc: BaseException) -> str:
    """Plain words for an ``OSError`` (``no space left on the device``)."""
    code = getattr(exc, "errno", None)
    if code in _REASONS:
        return _REASONS[code]
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[0].lower() + text[1:] if text else "an error"


def is_write_failure(exc: BaseException, under=None) -> bool:
    """Whether ``exc`` is an ``OSError`` of writing (its errno, or a file name under ``under``)."""
    if not isinstance(exc, OSError):
        return False
    if getattr(exc, "errno", None) in _WRITE_ERRNOS:
        return True
    if under is not None:
        for name in (exc.filename, getattr(exc, "filename2", None)):
            if name is None:
                continue
            with contextlib.suppress(ValueError, TypeError):
                Path(os.path.abspath(os.fsdecode(name))).relative_to(os.path.abspath(under))
                return True
    return False


def write_error(exc: BaseException, path, kept: str, *, option: str | None = None) -> WriteError:
    """``WriteError("cannot write PATH: <reason>; <kept>")`` for an ``OSError`` while writing ``path``."""
    reason = describe_oserror(exc)
    return WriteError(f"cannot write {path}: {reason}; {kept}", path=path, reason=reason, option=option)


@contextlib.contextmanager
def writing(path, kept: str, *, option: str | None = None):
    """``with writing(path, "nothing was written"):`` -- an ``OSError`` inside becomes a ``WriteError``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(exc, path, kept, option=option) from None
