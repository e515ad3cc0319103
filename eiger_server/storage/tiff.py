"""TIFF files of streamed images: names, atomic writes, a saving thread.

* :func:`save_tiff` writes one image with tifffile through
  ``paths.atomic_file``: a reader never sees a partial file under the final
  name, and a failed write leaves nothing behind. The acquisition metadata is
  stored as JSON in the TIFF ImageDescription.
* :func:`tiff_name` builds the file names of autosaved images.
* :class:`TiffSaver` runs save jobs on its own thread, in the order they were
  submitted, from a queue bounded in jobs and bytes: when the disk is too slow
  the job is refused (the caller counts and logs it) instead of memory growing.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
from typing import Any, Callable, Deque, Dict, Mapping, Optional, Tuple

import numpy as np
import tifffile

from eiger_server.storage import paths
from eiger_server.errors import DataError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
_name_lock = threading.Lock()     # choosing a unique name and creating it is one step


def with_suffix(name: str) -> str:
    """``name`` with ``.tif`` added unless it already ends in .tif/.tiff."""
    return name if name.lower().endswith(TIFF_SUFFIXES) else name + ".tif"


def description(metadata: Mapping[str, Any]) -> str:
    """The JSON text stored in the ImageDescription tag."""
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8", "replace")
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        return str(value)
    return json.dumps(plain(dict(metadata)), sort_keys=True)


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata a file written by :func:`save_tiff` carries (for tests and tools)."""
    with tifffile.TiffFile(path) as tif:
        text = tif.pages[0].description  # type: ignore[union-attr]  # page 0 is a TiffPage
    return json.loads(text) if text else {}


def save_tiff(path: str, array: np.ndarray, metadata: Optional[Mapping[str, Any]] = None,
              *, overwrite: bool = True) -> str:
    """Write ``array`` to ``path`` (``.tif`` added when missing); returns the name used.

    With ``overwrite`` false an existing file is kept and the image goes to the
    next free ``-img###`` name. Disk errors become a DataError saying what to do.
    """
    path = with_suffix(path)
    image = np.asarray(array)
    if image.dtype.byteorder == ">":
        image = image.astype(image.dtype.newbyteorder("<"))
    text = description(metadata or {})
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise paths.disk_error(exc, directory, "creating the directory") from None
    try:
        if overwrite:
            _write(path, image, text)
            return path
        with _name_lock:
            final = paths.unique_path(path)
            _write(final, image, text)
            return final
    except OSError as exc:
        raise paths.disk_error(exc, path, "saving the image") from None


def _write(path: str, image: np.ndarray, text: str) -> None:
    with paths.atomic_file(path) as handle:
        # os.fdopen handles are named by their descriptor; tifffile wants a name
        target = tifffile.FileHandle(handle, mode="wb", name=os.path.basename(path))
        tifffile.imwrite(target, image, description=text, metadata=None,
                         photometric="minisblack", software="eiger_server")


def tiff_name(directory: str, prefix: str, series: Optional[int] = None,
              index: Optional[int] = None, channel: Optional[str] = None) -> str:
    """The path of an autosaved image.

    ``prefix`` with ``$id`` replaced by the series number, then ``_<index>``
    (4 digits) when autoindexing, ``_<channel>`` for a V2 image with several
    channels, and ``.tif``. A relative prefix is taken inside ``directory``;
    an absolute one must be inside it or /tmp (``paths.resolve_user_path``).
    """
    name = paths.expand_id(prefix, series)
    if name.lower().endswith(TIFF_SUFFIXES):
        name = os.path.splitext(name)[0]
    if index is not None:
        name = f"{name}_{index:04d}"
    path = paths.resolve_user_path(directory, name + ".tif", "stream_prefix")
    return channel_path(path, channel) if channel else path


def channel_path(path: str, channel: str) -> str:
    """``path`` with ``_<channel>`` before its extension, in the same directory."""
    stem, ext = os.path.splitext(os.path.basename(path))
    return paths.safe_join(os.path.dirname(path), f"{stem}_{channel}{ext}",
                           allow_subdirs=False)


class TiffSaver:
    """Runs save jobs in submission order on one thread, from a bounded queue."""

    def __init__(self, depth: int = 64, max_bytes: int = 1 << 30, name: str = "tiff-saver") -> None:
        self.depth = max(1, int(depth))
        self.max_bytes = max(1, int(max_bytes))
        self._cond = threading.Condition()
        self._jobs: Deque[Tuple[Callable[[], Any], int]] = collections.deque()
        self._queued_bytes = 0
        self._busy = False
        self._stop = False
        self._submitted = 0       # jobs accepted so far, and jobs finished (run or discarded)
        self._finished = 0
        self.saved = 0
        self.failed = 0
        self.dropped = 0          # jobs carrying data that close() discarded unrun
        self.errors: Deque[str] = collections.deque(maxlen=5)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any], nbytes: int = 0, *, always: bool = False) -> bool:
        """Queue ``job``; False (job refused) when the queue is full.

        ``always`` queues it even then: for small jobs that must run in order
        after the queued ones (finishing a file), never for image data.
        """
        with self._cond:
            if self._stop:
                return False
            if not always and (len(self._jobs) >= self.depth or (
                    self._jobs and self._queued_bytes + nbytes > self.max_bytes)):
                return False
            self._jobs.append((job, nbytes))
            self._submitted += 1
            self._queued_bytes += nbytes
            self._cond.notify_all()
            return True

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs) + (1 if self._busy else 0)

    def queued(self) -> int:
        """Jobs waiting to run (the one running not counted)."""
        with self._cond:
            return len(self._jobs)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the thread to end (after close); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every queued job has run; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def wait_submitted(self, timeout: float = 10.0) -> bool:
        """Wait until the jobs queued before this call have run (later ones
        are not waited for, so a running series cannot keep it waiting);
        False on timeout."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._finished >= target or self._stop, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Finish the queued jobs (up to ``timeout``), then stop the thread.

        Jobs still queued then are discarded; those carrying data (nbytes > 0)
        are counted in ``dropped``. True when the thread has stopped.
        """
        self.wait_idle(timeout)
        with self._cond:
            self._stop = True
            discarded = sum(1 for _, nbytes in self._jobs if nbytes > 0)
            if discarded:
                self.dropped += discarded
                log.error("%d queued images not saved: the server is stopping", discarded)
            self._queued_bytes -= sum(nbytes for _, nbytes in self._jobs)
            self._finished += len(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        self._thread.join(timeout=2)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job, nbytes = self._jobs.popleft()
                self._busy = True
            try:
                job()
                self.saved += 1
            except DataError as exc:
                self.failed += 1
                self.errors.append(str(exc))
                log.error("%s", exc)
            except Exception as exc:      # a bad job must not stop the saver
                self.failed += 1
                self.errors.append(f"saving failed: {exc}")
                log.exception("saving an image failed")
            finally:
                with self._cond:
                    self._queued_bytes -= nbytes
                    self._finished += 1
                    self._busy = False
                    self._cond.notify_all()
