"""Handling inbox entries as hostile: links are never followed, names are bounded on disk.

A file in the inbox may be a symbolic link (to a file, a folder, or something outside the project),
a FIFO that would block a reader forever, or carry a name of 255 bytes, control characters or bytes
that are not UTF-8. The helpers here let :mod:`service.jobs` and :mod:`service.daemon` read and move
such entries without ever touching what a link points to.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from service.errors import IngestError, Reason

# Names we write (work, archive, quarantine) stay well under NAME_MAX (255 bytes on ext4, xfs,
# tmpfs), leaving room for ``.reason.txt`` and the ``.<name>.`` prefix of temporary files.
MAX_DISK_NAME_BYTES = 200
_MAX_SUFFIX_CHARS = 16


def utf8_bytes_cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8")[:max(limit, 0)].decode("utf-8", errors="ignore")


def printable_name(name: str) -> str:
    """A file name as people and JSON can read it: undecodable bytes and control characters
    (newlines, tabs, escapes) become ``_``; path separators cannot occur in a name."""
    cleaned = "".join(ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF else "_" for ch in name)
    return cleaned.strip() or "file"


def disk_name(job_id: int, name: str) -> str:
    """``<job id>-<name>`` for the work, archive and quarantine folders, bounded in bytes.

    The original name is kept in the database and the JSON; on disk the stem is shortened (the
    extension kept) so that the name fits :data:`MAX_DISK_NAME_BYTES`.
    """
    prefix = f"{job_id}-"
    safe = printable_name(name)
    stem, dot, suffix = safe.rpartition(".")
    if not dot or not stem or len(suffix) > _MAX_SUFFIX_CHARS:
        stem, suffix = safe, ""
    else:
        suffix = "." + suffix
    budget = MAX_DISK_NAME_BYTES - len(prefix.encode()) - len(suffix.encode("utf-8"))
    return prefix + utf8_bytes_cut(stem, budget) + suffix


def is_utf8_name(path: Path) -> bool:
    """Whether a path decoded from the file system is valid UTF-8 (no surrogate escapes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def entry_problem(path: Path) -> IngestError | None:
    """Why an inbox entry cannot be read as a document (a link, a FIFO, a device), or ``None``.

    Looks at the entry itself (``lstat``); raises ``FileNotFoundError`` when it is gone.
    """
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        return IngestError(Reason.SYMLINK, f"{path.name} is a symbolic link (to {target!r}); links are "
                                           "never followed: copy the file itself into the inbox")
    if not stat.S_ISREG(mode):
        return IngestError(Reason.NOT_A_FILE, f"{path.name} is not a regular file "
                                              f"({_kind_of(mode)}); only files are processed")
    return None


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "a special file"


def open_regular_file(path: Path) -> int:
    """Open a regular file for reading without following a link or blocking on a FIFO.

    Returns the descriptor; raises :class:`IngestError` (``symlink`` / ``not_a_file``) when the
    entry is something else, ``FileNotFoundError`` when it is gone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise entry_problem(path) or exc from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise entry_problem(path) or IngestError(Reason.NOT_A_FILE, f"{path.name} is not a regular file")
    return fd


def hash_regular_file(path: Path) -> tuple[str, int]:
    """(SHA-256, size) of a regular file, read through a descriptor opened without following links."""
    fd = open_regular_file(path)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest(), size


def inside(path: Path, folder: Path) -> bool:
    """Whether the entry ``path`` really lies under ``folder`` (a resolved path).

    The entry itself is not followed (a link's own location counts), but its parent folders are:
    ``inbox/linked-folder/file`` is outside the inbox when ``linked-folder`` is a link.
    """
    real = Path(os.path.realpath(Path(os.path.abspath(path)).parent)) / Path(path).name
    try:
        real.relative_to(folder)
    except ValueError:
        return False
    return True


def walk_entries(folder: Path, recursive: bool) -> list[Path]:
    """Every entry under ``folder`` that is not a real folder (files, links, FIFOs...).

    Links to folders are returned as entries and never descended into; hidden folders are skipped.
    """
    found: list[Path] = []
    for parent, dirs, files in os.walk(folder, followlinks=False):
        base = Path(parent)
        links = [d for d in dirs if os.path.islink(base / d)]
        dirs[:] = [d for d in dirs if d not in links and not d.startswith(".")] if recursive else []
        found.extend(base / name for name in [*files, *links])
    return found
