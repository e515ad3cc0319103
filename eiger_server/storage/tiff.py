"""TIFF files of streamed images: names, atomic writes, a saving thread.

* :func:`save_tiff` writes one image through ``paths.atomic_file``: a reader
  never sees a partial file under the final name, and a failed write leaves
  nothing behind. The acquisition metadata is stored as JSON in the TIFF
  ImageDescription. The directory is made when missing (also when it was
  removed since the last image).
* The layout of our files is defined here (TIFF 6.0, baseline): little-endian,
  one IFD, one uncompressed strip, minisblack, the tags ImageWidth,
  ImageLength, BitsPerSample, Compression, PhotometricInterpretation,
  ImageDescription, StripOffsets, SamplesPerPixel, RowsPerStrip,
  StripByteCounts, X/YResolution (1/1), ResolutionUnit (none), Software
  and, for signed and float pixels, SampleFormat; the values that do not fit
  in their entry follow the IFD in tag order, each of even length, and the
  pixels start at the next multiple of 16 bytes. That is the file tifffile
  wrote for us (``tifffile.imwrite(..., photometric="minisblack",
  description=..., software="eiger_server", metadata=None)``), byte for byte
  (checked with tifffile 2026.3); it is written here directly, header and
  pixels in one writev, because tifffile's own Python work per call (about
  0.2 ms) was more than all the rest of save_tiff. Images this layout does
  not cover (other dtypes, not 2-D, 2 GB and more) are still written by
  tifffile.
* :func:`tiff_name` builds the file names of autosaved images.
* :class:`TiffSaver` runs save jobs on its own thread, in the order they were
  submitted, from a queue bounded in jobs and bytes: when the disk is too slow
  the job is refused (the caller counts and logs it) instead of memory growing.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import struct
import threading
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tifffile

from eiger_server.storage import paths
from eiger_server.errors import DataError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
SOFTWARE = "eiger_server"         # the Software tag of our files
_name_lock = threading.Lock()     # choosing a unique name and creating it is one step


def with_suffix(name: str) -> str:
    """``name`` with ``.tif`` added unless it already ends in .tif/.tiff."""
    return name if name.lower().endswith(TIFF_SUFFIXES) else name + ".tif"


# -- the ImageDescription: JSON of the metadata ---------------------------------------------
def _plain(value: Any) -> Any:
    """``value`` as JSON can take it: numpy scalars as Python ones, bytes as
    text, mappings with string keys, anything else unknown as its str()."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _json_default(value: Any) -> Any:
    """What the JSON encoder cannot take itself, made plain (as :func:`_plain`)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Mapping, bytes, bytearray, memoryview)):
        return _plain(value)
    return str(value)


def _odd_keys(value: Any) -> bool:
    """True when a dict inside ``value`` has a key that is not a str (the
    encoder would write True as "true", and sort 2 before 10)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                return True
            if isinstance(item, (dict, list, tuple)) and _odd_keys(item):
                return True
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (dict, list, tuple)) and _odd_keys(item):
                return True
    return False


_ENCODER = json.JSONEncoder(sort_keys=True, default=_json_default)


def description(metadata: Mapping[str, Any]) -> str:
    """The JSON text stored in the ImageDescription tag (ASCII, keys sorted)."""
    data = metadata if isinstance(metadata, dict) else dict(metadata)
    if not _odd_keys(data):
        try:
            # the same text as below, without copying what JSON takes as it is
            return _ENCODER.encode(data)
        except TypeError:
            pass
    return json.dumps(_plain(dict(data)), sort_keys=True)


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata a file written by :func:`save_tiff` carries (for tests and tools)."""
    with tifffile.TiffFile(path) as tif:
        text = tif.pages[0].description  # type: ignore[union-attr]  # page 0 is a TiffPage
    return json.loads(text) if text else {}


# -- the file -----------------------------------------------------------------------------------
# TIFF 6.0 field types, and the SampleFormat of each numpy kind (1, unsigned, is the default)
_ASCII, _SHORT, _LONG, _RATIONAL = 2, 3, 4, 5
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
_ITEM_SIZES = {"u": (1, 2, 4, 8), "i": (1, 2, 4, 8), "f": (2, 4, 8)}
_LARGEST = 1 << 31                # from here on tifffile (which knows when BigTIFF is needed)
_SOFTWARE_VALUE = SOFTWARE.encode("ascii") + b"\0"
_SOFTWARE_SPACE = len(_SOFTWARE_VALUE) + (len(_SOFTWARE_VALUE) & 1)
_RESOLUTIONS = struct.pack("<4I", 1, 1, 1, 1)       # XResolution, YResolution: 1/1
# header ("II", 42, offset of the IFD), entry count, entries, offset of the next IFD (none)
_IFD = {count: struct.Struct("<2sHIH" + "HHII" * count + "I") for count in (14, 15)}


def tiff_header(image: np.ndarray, text: str) -> Optional[bytes]:
    """Everything of our TIFF file of ``image`` before its pixels, which follow
    at once; None for an image this layout does not cover (it is written by
    tifffile then). ``image`` is 2-D, little-endian and C-contiguous."""
    dtype = image.dtype
    kind = dtype.kind
    if (image.ndim != 2 or kind not in _ITEM_SIZES or dtype.itemsize not in _ITEM_SIZES[kind]
            or image.size == 0 or image.nbytes >= _LARGEST):
        return None
    try:
        desc = text.encode("ascii") + b"\0"
    except UnicodeEncodeError:
        return None
    height, width = image.shape
    sample_format = _SAMPLE_FORMAT[kind]
    count = 14 if sample_format == 1 else 15
    at = 8 + 2 + 12 * count + 4                        # the values after the IFD
    if len(desc) <= 4:                                 # fits in its entry
        desc_value = int.from_bytes(desc.ljust(4, b"\0"), "little")
        desc_space = b""
    else:
        desc_value = at
        desc_space = desc + b"\0" * (len(desc) & 1)
        at += len(desc_space)
    xres, yres, software = at, at + 8, at + 16
    end = software + _SOFTWARE_SPACE
    pixels = (end + 15) & ~15
    fields = [b"II", 42, 8, count,
              256, _LONG, 1, width,
              257, _LONG, 1, height,
              258, _SHORT, 1, 8 * dtype.itemsize,
              259, _SHORT, 1, 1,                       # no compression
              262, _SHORT, 1, 1,                       # minisblack
              270, _ASCII, len(desc), desc_value,
              273, _LONG, 1, pixels,
              277, _SHORT, 1, 1,
              278, _LONG, 1, height,                   # one strip
              279, _LONG, 1, image.nbytes,
              282, _RATIONAL, 1, xres,
              283, _RATIONAL, 1, yres,
              296, _SHORT, 1, 1,                       # no resolution unit
              305, _ASCII, len(_SOFTWARE_VALUE), software]
    if sample_format != 1:
        fields += [339, _SHORT, 1, sample_format]
    fields.append(0)                                   # no next IFD
    # a SHORT value sits in the first 2 bytes of its little-endian 4-byte field
    padding = pixels - software - len(_SOFTWARE_VALUE)
    return b"".join((_IFD[count].pack(*fields), desc_space, _RESOLUTIONS, _SOFTWARE_VALUE,
                     b"\0" * padding))


def save_tiff(path: str, array: np.ndarray, metadata: Optional[Mapping[str, Any]] = None,
              *, overwrite: bool = True, durable: bool = True) -> str:
    """Write ``array`` to ``path`` (``.tif`` added when missing); returns the name used.

    With ``overwrite`` false an existing file is kept and the image goes to the
    next free ``-img###`` name. A missing directory is made. Disk errors
    become a DataError saying what to do. ``durable`` false: the file is not
    flushed to the disk before it is renamed into place (paths.atomic_file).
    """
    path = with_suffix(path)
    image = np.asarray(array)
    if image.dtype.byteorder == ">":
        image = image.astype(image.dtype.newbyteorder("<"))
    text = description(metadata or {})
    # The directory is not checked first (that costs system calls per image):
    # when it is missing (not made yet, or removed since), creating the file
    # fails, and it is made then.
    try:
        return _save(path, image, text, overwrite, durable)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise paths.disk_error(exc, path, "saving the image") from None
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise paths.disk_error(exc, directory, "creating the directory") from None
    try:
        return _save(path, image, text, overwrite, durable)
    except OSError as exc:
        raise paths.disk_error(exc, path, "saving the image") from None


def _save(path: str, image: np.ndarray, text: str, overwrite: bool, durable: bool) -> str:
    if overwrite:
        _write(path, image, text, durable)
        return path
    with _name_lock:
        final = paths.unique_path(path)
        _write(final, image, text, durable)
        return final


def _write(path: str, image: np.ndarray, text: str, durable: bool = True) -> None:
    if image.ndim == 2 and not image.flags.c_contiguous:
        image = np.ascontiguousarray(image)
    header = tiff_header(image, text)
    with paths.atomic_file(path, durable=durable) as handle:
        if header is not None:
            # nothing is buffered in ``handle``: header and pixels go straight to its file
            write_all(handle.fileno(), (header, image))
            return
        # os.fdopen handles are named by their descriptor; tifffile wants a name
        target = tifffile.FileHandle(handle, mode="wb", name=os.path.basename(path))
        tifffile.imwrite(target, image, description=text, metadata=None,
                         photometric="minisblack", software=SOFTWARE)


def write_all(fd: int, buffers: Sequence[Any]) -> None:
    """Write the bytes of ``buffers`` (C-contiguous) to ``fd``, with as few system
    calls as the kernel allows; a short write is continued, errors raise OSError."""
    views: List[memoryview] = [memoryview(b).cast("B") for b in buffers]
    views = [v for v in views if v.nbytes]
    while views:
        written = os.writev(fd, views)
        if written <= 0:
            raise OSError(errno.EIO, "no bytes written")
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            del views[0]
        if written:
            views[0] = views[0][written:]


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
