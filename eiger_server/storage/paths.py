"""File names from spec, made safe: nothing escapes the data directory,
nothing is left half-written under its final name.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, Optional, Sequence

from eiger_server.errors import DataError

_IMG_SUFFIX = re.compile(r"-img(\d{3,})\Z")
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def safe_join(directory: str, name: str, *, allow_subdirs: bool = True) -> str:
    """``directory/name``, refusing any name that would land outside ``directory``.

    Absolute names are accepted only when they are inside ``directory``.
    """
    if not name or "\x00" in name:
        raise DataError(f"file name '{name}' is empty or invalid")
    base = os.path.realpath(directory)
    candidate = name if os.path.isabs(name) else os.path.join(base, name)
    full = os.path.realpath(candidate)
    if os.path.commonpath([base, full]) != base or full == base:
        raise DataError(f"file name '{name}' points outside the data directory "
                        f"'{base}'; give a name inside it")
    if not allow_subdirs and os.path.dirname(full) != base:
        raise DataError(f"file name '{name}' must not contain a directory")
    return full


def resolve_user_path(directory: str, name: str, what: str = "",
                      allowed_extra: Sequence[str] = ("/tmp",)) -> str:
    """The full path of a file name from spec: a relative name goes in
    ``directory``; an absolute one must be inside ``directory`` or one of
    ``allowed_extra``. ``what`` (the command) starts the error message."""
    lead = f"{what}: " if what else ""
    try:
        if os.path.isabs(name) and not is_inside(directory, name):
            for extra in allowed_extra:
                if is_inside(extra, name):
                    return safe_join(extra, name)
            places = " and ".join(f"'{p}'" for p in allowed_extra)
            raise DataError(f"'{name}' is outside the data directory '{directory}'"
                            + (f" (and {places})" if places else "")
                            + "; give a name inside it or change data_directory")
        return safe_join(directory, name)
    except DataError as exc:
        raise DataError(f"{lead}{exc}") from None


def expand_id(prefix: str, series: Any, default: str = "0") -> str:
    """``prefix`` with ``$id`` replaced by ``series`` (``default`` when None)."""
    return prefix.replace("$id", str(series) if series is not None else default)


def unique_stem(stem: str, taken: Callable[[str], bool]) -> str:
    """``stem`` if not ``taken``, else ``stem-img###`` with the next free number
    (an ``-img###`` already on ``stem`` counts on from there)."""
    if not taken(stem):
        return stem
    match = _IMG_SUFFIX.search(stem)
    number = int(match.group(1)) if match else 0
    if match:
        stem = stem[:match.start()]
    while True:
        number += 1
        candidate = f"{stem}-img{number:03d}"
        if not taken(candidate):
            return candidate


def unique_path(path: str) -> str:
    """``path`` if free, else the same name with the next free ``-img###`` suffix."""
    stem, ext = os.path.splitext(path)
    return unique_stem(stem, lambda s: os.path.exists(s + ext)) + ext


def fsync_dir(path: str) -> None:
    """Make the renames and creations in directory ``path`` durable.

    Raises OSError when the directory cannot be synced; file systems that
    cannot sync a directory at all (EINVAL, ENOTSUP) are accepted as they are.
    """
    try:
        fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return          # cannot open it for reading: nothing more can be done here
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str, mode: str = "wb", *, durable: bool = True) -> Iterator[IO]:
    """Write to a hidden temporary file beside ``path``; rename it into place
    only when the block ends without error, so a reader (or a crash) never sees
    a partial file under the final name.

    ``durable`` also flushes the file and the rename to the disk (fsync), so
    they survive a power cut; images streamed at the detector's rate leave
    that to the kernel (two fsyncs per image would bound the rate by the
    disk's latency, not its bandwidth)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".part",
                               dir=directory)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(directory)


def temp_name(path: str) -> str:
    """The temporary name a download to ``path`` uses before its rename."""
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".part")


def ensure_dir(path: str, what: str = "data directory") -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the {what} '{path}': {exc.strerror}") from None
    return path


def disk_error(exc: BaseException, path: str, what: str) -> DataError:
    """A clear message for a failed write (full disk, permissions, ...); ``exc``
    is usually an OSError (h5py also raises RuntimeError)."""
    reason = getattr(exc, "strerror", None) or str(exc)
    code = getattr(exc, "errno", None) or 0
    if not code and _SHORT_WRITE.search(str(exc)):
        # numpy's tofile (used by tifffile) reports a short write without an
        # errno; on a local file system that means the device is full.
        code = errno.ENOSPC
        reason = f"{reason} (a short write)"
    hint = {errno.ENOSPC: "the disk is full; free space or change data_directory",
            errno.EDQUOT: "the disk quota is exceeded; free space or change data_directory",
            errno.EACCES: "permission denied; choose a writable data_directory",
            errno.EROFS: "the file system is read-only; change data_directory",
            errno.EFBIG: "the file is larger than the file system or a limit allows; "
                         "check the disk and the limits of the server's account",
            errno.ENOENT: "the directory does not exist; set data_directory again"}.get(
                code, "check data_directory")
    return DataError(f"{what} '{path}' failed: {reason}; {hint}")


def is_inside(directory: str, path: Optional[str]) -> bool:
    if not path:
        return False
    base = os.path.realpath(directory)
    return os.path.commonpath([base, os.path.realpath(path)]) == base
