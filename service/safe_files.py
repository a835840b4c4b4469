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


def printable_name(name: str, max_bytes: int | None = None) -> str:
    """A file name as people and JSON can read it: undecodable bytes and control characters
    (newlines, tabs, escapes) become ``_``, cut to ``max_bytes`` of UTF-8 if given; path separators
    cannot occur in a name."""
    cleaned = "".join(ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF else "_" for ch in name).strip()
    return (utf8_bytes_cut(cleaned, max_bytes) if max_bytes is not None else cleaned) or "file"


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


def open_folder(root: Path, folder: Path) -> int:
    """A descriptor of ``folder`` (``root`` or below it), opened one component at a time from
    ``root`` without following links, so a folder swapped for a link is never entered.

    Raises :class:`IngestError` (``symlink``) when a component is a link or not a folder.
    """
    relative = Path(os.path.abspath(folder)).relative_to(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in relative.parts:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise IngestError(Reason.SYMLINK, f"the folder {part!r} on the way to it is a symbolic link or "
                                                      "no folder; links are never followed") from exc
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def move_entry(root: Path, source: Path, target: Path) -> None:
    """Move the entry ``source`` (under ``root``) to ``target`` as it is: a link moves as a link,
    and no folder on the way is followed. Works across file systems for files and links."""
    parent = open_folder(root, source.parent)
    try:
        try:
            os.rename(source.name, target, src_dir_fd=parent)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_entry(parent, source.name, target)
            os.unlink(source.name, dir_fd=parent)
    finally:
        os.close(parent)


def _copy_entry(parent: int, name: str, target: Path) -> None:
    mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(name, dir_fd=parent), target)
        return
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    with os.fdopen(fd, "rb") as source, open(target, "wb") as copy:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise IngestError(Reason.NOT_A_FILE, f"{name} is not a regular file; only files are processed")
        while chunk := source.read(1 << 20):
            copy.write(chunk)


def open_regular_file(path: Path, root: Path | None = None) -> int:
    """Open a regular file for reading without following a link or blocking on a FIFO.

    With ``root`` (the inbox), the folders from ``root`` down are not followed either. Returns the
    descriptor; raises :class:`IngestError` (``symlink`` / ``not_a_file``) when the entry is
    something else, ``FileNotFoundError`` when it is gone.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        if root is None:
            fd = os.open(path, flags)
        else:
            parent = open_folder(root, path.parent)
            try:
                fd = os.open(path.name, flags, dir_fd=parent)
            finally:
                os.close(parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise entry_problem(path) or exc from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise entry_problem(path) or IngestError(Reason.NOT_A_FILE, f"{path.name} is not a regular file")
    return fd


def hash_regular_file(path: Path, root: Path | None = None, max_bytes: int | None = None) -> tuple[str, int]:
    """(SHA-256, size) of a regular file, read through a descriptor opened without following links
    (see :func:`open_regular_file`). A file over ``max_bytes`` is refused (``file_too_large``)
    before a byte of it is read."""
    fd = open_regular_file(path, root)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise IngestError(Reason.FILE_TOO_LARGE, f"{path.name} is {size:,} bytes; the limit is {max_bytes:,}")
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
