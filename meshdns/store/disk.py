"""Why a write to a file on local disk failed, in words an operator acts on."""
from __future__ import annotations

import errno
import os
from pathlib import Path


class StorageError(RuntimeError):
    """The database refused a write; nothing was changed.

    `reason` says why in words an operator acts on: "disk full", "read-only",
    "locked" or "I/O error" (all temporary from a client's point of view).
    """

    def __init__(self, message: str, *, reason: str = "I/O error"):
        super().__init__(message)
        self.reason = reason


_ERRNO_REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk full", errno.EROFS: "read-only",
                  errno.EPERM: "read-only", errno.EACCES: "read-only"}


def diagnose(exc: BaseException, path: Path) -> StorageError:
    """Why a write failed, in terms an operator can act on.

    SQLite often reports only "disk I/O error", so on failure (rare) we ask
    the file system directly: create, write and fsync a probe file next to
    the database, and name what the kernel says (ENOSPC, EROFS, EPERM, ...).
    """
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        reason = "disk full"
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        reason = "locked"
    elif name.startswith("SQLITE_READONLY"):
        reason = "read-only"
    else:
        reason = _probe(path.parent) or ("read-only" if path.exists() and not os.access(path, os.W_OK)
                                         else "I/O error")
    detail = f"{exc}, {name}" if name else f"{type(exc).__name__}: {exc}"
    return StorageError(f"{reason}: cannot write {path} ({detail})", reason=reason)


def _probe(directory: Path) -> str | None:
    """Write one byte durably in `directory`; the errno of a failure, as a reason (None if it worked)."""
    probe = directory / ".meshdns-write-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return _ERRNO_REASONS.get(exc.errno, f"I/O error ({os.strerror(exc.errno)})" if exc.errno else None)
    return None
