"""The fake DCU's file writer: real HDF5 files in the legacy NXmx layout.

:class:`FileWriterStore` is a :class:`~eiger_server.fakedcu.interfaces.FrameSink`.
The engine thread only queues work (bounded by bytes, so a slow disk drops
frames instead of stalling the acquisition); one writer thread does all HDF5
I/O. Per series it writes

* ``<prefix>_data_NNNNNN.h5`` with ``/entry/data/data`` of shape (n, y, x),
  one image per chunk, compressed with bitshuffle/LZ4 or LZ4 like the DCU,
  carrying ``image_nr_low``/``image_nr_high``;
* ``<prefix>_master.h5`` with the NXmx metadata and external links
  ``/entry/data/data_NNNNNN`` to the data files (or, with
  ``nimages_per_file`` 0, the images themselves in ``/entry/data/data``).

``<prefix>`` is the ``name_pattern`` with ``$id`` replaced by the series id.
Every file is written under a hidden temporary name and renamed when closed,
so :meth:`FileWriterStore.list_files` (and ``GET /data/``) only ever shows
complete files -- unless the :class:`FileWriterProfile` says otherwise: with
``open_files_listed`` the master is listed from arm and each data file while
it is written, under its own name and with its current size, as on a real
DCU; with ``write_behind`` the writer lags that many seconds behind the
images (its state stays ``acquire`` and the files grow after the series).
Only the first channel (threshold_1) is stored: the legacy layout has one
image per frame.
"""
from __future__ import annotations

import collections
import logging
import os
import pathlib
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

import h5py
import numpy as np

from eiger_server.formats import nxmx
from eiger_server.formats.compression import hdf5_filter
from eiger_server.fakedcu.device.filewriter_profile import FileWriterProfile
from eiger_server.fakedcu.interfaces import Frame, SeriesEnd, SeriesStart

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4 * 1024 ** 3
DEFAULT_QUEUE_BYTES = 256 * 1024 ** 2
DEFAULT_NAME_PATTERN = "series_$id"


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "enabled", "on")
    return bool(value)


def _file_prefix(pattern: Any, series_id: int) -> str:
    """``name_pattern`` with ``$id`` substituted, made safe as a plain file name."""
    text = str(pattern or "").strip() or DEFAULT_NAME_PATTERN
    text = text.replace("$id", str(series_id))
    safe = text.replace("/", "_").replace("\\", "_").replace("..", "_").lstrip(".")
    if safe != text:
        log.warning("file writer name_pattern %r gives %r; writing %r instead "
                    "(the fake DCU keeps all files in one flat directory)",
                    pattern, text, safe)
    return safe or f"series_{series_id}"


@dataclass
class _DataFile:
    """A data file (or the master's own dataset) being filled."""

    index: int                      # 0-based file number
    first_image: int                # 0-based image id of position 0
    dset: Any                       # h5py.Dataset
    h5: Optional[h5py.File]         # None when the dataset lives in the master
    temp_path: Optional[pathlib.Path]
    name: Optional[str]
    high: int = -1                  # highest position written


@dataclass
class _Series:
    start: SeriesStart
    prefix: str
    nper: int
    nr_start: int
    compression: str                # of the stored chunks: "bslz4", "lz4" or "none"
    direct: bool                    # Frame.encoded blobs can go straight into chunks
    channel: Optional[str]
    master: h5py.File
    master_temp: pathlib.Path
    master_name: str
    current: Optional[_DataFile] = None
    done_data: List[str] = field(default_factory=list)
    written: int = 0
    abandoned: bool = False


class FileWriterStore:
    """Files of the fake DCU: a FrameSink writing NXmx HDF5, plus the filewriter status/commands."""

    def __init__(self, model: Any, capacity_bytes: int = DEFAULT_CAPACITY,
                 queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 profile: Optional[FileWriterProfile] = None) -> None:
        self._model = model
        self.profile = profile or FileWriterProfile()
        data_dir = getattr(model, "data_dir", None)
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="fakedcu-files-")
        self.directory = pathlib.Path(data_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity_bytes = int(capacity_bytes)
        self.queue_bytes = int(queue_bytes)

        self._lock = threading.RLock()
        self._files: Dict[str, int] = {}         # complete files: name -> size in bytes
        self._errors: List[str] = []
        self._inflight_bytes = 0                 # bytes of the open temporary files
        self._busy_series = 0                    # accepted series the writer has not finished

        # Engine-thread state (only touched by series_start/frame/series_end).
        self._accepted_id: Optional[int] = None
        self._accepted_channel: Optional[str] = None
        self._accepted_direct = False
        self._dropped = 0
        self._offered = 0

        # The bounded queue to the writer thread.
        self._cond = threading.Condition()
        self._queue: Deque[Tuple[Any, ...]] = collections.deque()
        self._pending_bytes = 0
        self._working = False
        self._series: Optional[_Series] = None    # writer-thread state

        for path in sorted(self.directory.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                self._files[path.name] = path.stat().st_size

        self._thread = threading.Thread(target=self._run, name="fakedcu-filewriter",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ settings
    def _setting(self, start: Optional[SeriesStart], name: str, default: Any) -> Any:
        """A filewriter config value: the series snapshot first, then the model."""
        if start is not None and name in (start.filewriter or {}):
            value = start.filewriter[name]
        else:
            try:
                value = self._model.config_value("filewriter", name)
            except Exception:  # an unknown name must not break the acquisition
                log.debug("filewriter config %s unavailable; using %r", name, default)
                return default
        return default if value is None else value

    # ------------------------------------------------------------------ FrameSink
    def series_start(self, start: SeriesStart) -> None:
        """Accept the series for writing when the filewriter mode is ``enabled``."""
        mode = str(self._setting(start, "mode", "disabled")).lower()
        if self._accepted_id is not None:
            # The previous series never got its end: let the writer close it.
            self._enqueue(("end", None, self._dropped, self._offered), 0, force=True)
            self._accepted_id = None
        if mode != "enabled":
            log.debug("series %s: file writer mode %s, not writing", start.series_id, mode)
            return
        settings = {
            "nimages_per_file": self._setting(start, "nimages_per_file", 1000),
            "image_nr_start": self._setting(start, "image_nr_start", 1),
            "name_pattern": self._setting(start, "name_pattern", DEFAULT_NAME_PATTERN),
            "compression_enabled": _as_bool(self._setting(start, "compression_enabled", True)),
        }
        self._accepted_id = start.series_id
        self._accepted_channel = start.channels[0] if start.channels else None
        self._accepted_direct = (settings["compression_enabled"]
                                 and start.compression in ("bslz4", "lz4"))
        self._dropped = 0
        self._offered = 0
        with self._lock:
            self._busy_series += 1
            self._errors = []
        self._enqueue(("start", start, settings), 0, force=True)

    def frame(self, frame: Frame) -> None:
        """Queue one frame; drop it (and count it) when the writer is too far behind."""
        if self._accepted_id is None or frame.series_id != self._accepted_id:
            return
        self._offered += 1
        channel = self._accepted_channel
        blob = None
        if self._accepted_direct and frame.encoded and channel in frame.encoded:
            blob = frame.encoded[channel]
        if blob is not None:
            nbytes = len(blob)
        else:
            array = frame.data.get(channel) if channel is not None else None
            nbytes = int(array.nbytes) if array is not None else 0
        if not self._enqueue(("frame", frame), nbytes, force=False):
            self._dropped += 1

    def series_end(self, end: SeriesEnd) -> None:
        """Close the series: the writer finishes the files after the queued frames."""
        if self._accepted_id is None or end.series_id != self._accepted_id:
            return
        self._enqueue(("end", end, self._dropped, self._offered), 0, force=True)
        self._accepted_id = None

    def _enqueue(self, item: Tuple[Any, ...], nbytes: int, force: bool) -> bool:
        with self._cond:
            if (not force and self._queue
                    and self._pending_bytes + nbytes > self.queue_bytes):
                return False
            self._queue.append(item + (time.monotonic(), nbytes))
            self._pending_bytes += nbytes
            self._cond.notify_all()
            return True

    # ------------------------------------------------------------------ status and files
    def status(self) -> Dict[str, Any]:
        """The filewriter status values: state, error, time, buffer_free, files."""
        # Ask the model before taking our lock: the model may hold its own lock while
        # it calls our sink methods, and the two must never be taken in opposite order.
        try:
            mode = str(self._model.config_value("filewriter", "mode")).lower()
        except Exception:
            mode = "disabled"
        with self._lock:
            if self._errors:
                state = "error"
            elif self._busy_series:
                state = "acquire"
            else:
                state = "ready" if mode == "enabled" else "disabled"
            return {
                "state": state,
                "error": list(self._errors),
                "time": nxmx.now_iso(),
                "buffer_free": self.buffer_free(),
                "files": list(self._files),
            }

    def command(self, name: str, body: Any = None) -> None:
        """``clear`` deletes all files; ``initialize`` resets the error state."""
        if name == "clear":
            for file_name in self.list_files():
                try:
                    self.delete_file(file_name)
                except KeyError:
                    pass    # deleted meanwhile by someone else
            with self._lock:
                self._errors = []
        elif name == "initialize":
            with self._lock:
                self._errors = []
        else:
            raise ValueError(f"filewriter command {name!r} is unknown; "
                             "the fake DCU knows 'clear' and 'initialize'")

    def list_files(self) -> List[str]:
        """Names of the complete files, oldest first."""
        with self._lock:
            return list(self._files)

    def file_path(self, name: str) -> pathlib.Path:
        """Where a listed file lives. KeyError for unknown or unsafe names."""
        self._check_name(name)
        with self._lock:
            if name not in self._files:
                raise KeyError(f"file {name!r} is not on the DCU; "
                               "see filewriter/status/files for the list")
        return self.directory / name

    def delete_file(self, name: str) -> None:
        """Remove one file (``DELETE /data/<name>``). KeyError when it is not there."""
        path = self.file_path(name)
        with self._lock:
            self._files.pop(name, None)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def buffer_free(self) -> int:
        """Bytes left in the DCU's file buffer (capacity minus the files, open ones included)."""
        with self._lock:
            used = sum(self._files.values()) + self._inflight_bytes
        return max(0, self.capacity_bytes - used)

    @staticmethod
    def _check_name(name: str) -> None:
        if (not name or "/" in name or "\\" in name or ".." in name
                or name.startswith(".")):
            raise KeyError(f"file name {name!r} is not allowed: plain names only, "
                           "no '/', '\\' or '..'")

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until the writer has handled everything queued; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._working,
                                       timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer thread; an unfinished series is thrown away."""
        if not self._thread.is_alive():
            return
        self._enqueue(("stop",), 0, force=True)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                item = self._queue.popleft()
                self._pending_bytes -= item[-1]
                self._working = True
            kind = item[0]
            lag = self.profile.write_behind
            if lag > 0 and kind in ("frame", "end"):
                # A real FileWriter goes on writing after the detector is done.
                delay = item[-2] + lag - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                if kind == "stop":
                    self._abandon_series("the file writer was stopped")
                    return
                if kind == "start":
                    self._begin(item[1], item[2])
                elif kind == "frame":
                    self.write_frame(item[1])
                elif kind == "end":
                    self._finish(item[1], item[2], item[3])
            except Exception as exc:  # never let bad data kill the writer
                log.exception("file writer failed on %s", kind)
                self._add_error(f"file writer failed while handling {kind}: {exc}; "
                                "the series' files were discarded")
                self._abandon_series(None)
            finally:
                with self._cond:
                    self._working = False
                    self._cond.notify_all()

    def _add_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def _series_done(self) -> None:
        with self._lock:
            self._busy_series = max(0, self._busy_series - 1)
            self._inflight_bytes = 0

    def _filter_kwargs(self, compression: str, enabled: bool) -> Dict[str, Any]:
        if not enabled or compression not in ("bslz4", "lz4"):
            return {}
        return hdf5_filter(compression)

    def _begin(self, start: SeriesStart, settings: Dict[str, Any]) -> None:
        if self._series is not None:
            self._finish(None, 0, 0)
        try:
            self._open_series(start, settings)
        except Exception:
            if self._series is not None:
                self._abandon_series(None)
                self._series = None
            self._series_done()     # the series will not be written: not "acquire" any more
            raise

    def _open_series(self, start: SeriesStart, settings: Dict[str, Any]) -> None:
        try:
            nper = max(0, int(settings["nimages_per_file"]))
        except (TypeError, ValueError):
            nper = 1000
        try:
            nr_start = int(settings["image_nr_start"])
        except (TypeError, ValueError):
            nr_start = 1
        total = max(0, int(start.nimages) * max(1, int(start.ntrigger)))
        dtype = np.dtype(start.dtype)
        frame_bytes = int(start.width) * int(start.height) * dtype.itemsize
        filters = self._filter_kwargs(start.compression, settings["compression_enabled"])
        # Uncompressed series have a known size; compressed ones are checked as they grow.
        need = frame_bytes * max(1, total) if not filters else frame_bytes
        free = self.buffer_free()
        if need > free:
            self._add_error(
                f"series {start.series_id} needs about {need} bytes but the file "
                f"buffer has {free} of {self.capacity_bytes} bytes free; nothing was "
                "written. Download and delete files (or 'clear') and arm again")
            self._series_done()
            return
        prefix = _file_prefix(settings["name_pattern"], start.series_id)
        master_name = f"{prefix}_master.h5"
        master_temp = self._open_path(master_name)
        master = h5py.File(master_temp, "w", rdcc_nbytes=0)
        self._publish_open(master, master_temp)
        series = _Series(start=start, prefix=prefix, nper=nper, nr_start=nr_start,
                         compression=start.compression if filters else "none",
                         direct=bool(filters),
                         channel=start.channels[0] if start.channels else None,
                         master=master, master_temp=master_temp, master_name=master_name)
        self._series = series
        if nper == 0:
            dset = self._create_dataset(master, series, total)
            series.current = _DataFile(index=0, first_image=0, dset=dset, h5=None,
                                       temp_path=None, name=None)
        log.info("series %s: writing %s (%s, %s images per file)", start.series_id,
                 master_name, start.compression if filters else "uncompressed", nper)

    def _create_dataset(self, h5: h5py.File, series: _Series, n: int) -> Any:
        start = series.start
        return nxmx.create_data(h5, max(0, n), None, int(start.height), int(start.width),
                                start.dtype, series.compression)

    def _open_data_file(self, series: _Series, index: int) -> _DataFile:
        name = f"{series.prefix}_data_{index + 1:06d}.h5"
        temp = self._open_path(name)
        total = int(series.start.nimages) * max(1, int(series.start.ntrigger))
        count = min(series.nper, total - index * series.nper)
        if count <= 0:
            count = series.nper
        # No chunk cache: each chunk is written once, and the size on disk stays current
        # for buffer_free().
        h5 = h5py.File(temp, "w", rdcc_nbytes=0)
        dset = self._create_dataset(h5, series, count)
        self._publish_open(h5, temp)
        return _DataFile(index=index, first_image=index * series.nper, dset=dset, h5=h5,
                         temp_path=temp, name=name)

    def _close_data(self, series: _Series, current: _DataFile) -> None:
        """Trim the dataset to what was written, label it, and publish the file."""
        n = current.high + 1
        if current.dset.shape[0] != n:
            current.dset.resize(n, axis=0)
        low = series.nr_start + current.first_image
        nxmx.label_data(current.dset, low, low + n - 1)
        if current.h5 is None:
            return
        current.h5.close()
        assert current.temp_path is not None and current.name is not None  # set with h5
        self._publish(current.temp_path, current.name)
        series.done_data.append(current.name)

    def write_frame(self, frame: Frame) -> None:
        """Write one frame into the open series (on the writer thread)."""
        series = self._series
        if series is None or series.abandoned or frame.series_id != series.start.series_id:
            return
        index = int(frame.image_id)
        if index < 0:
            log.warning("series %s: frame with image id %s ignored", frame.series_id, index)
            return
        blob = None
        if series.direct and frame.encoded and series.channel in frame.encoded:
            blob = frame.encoded[series.channel]
        array = frame.data.get(series.channel) if series.channel is not None else None
        if blob is None and array is None:
            log.warning("series %s image %s has no %s data; not written",
                        frame.series_id, index, series.channel)
            return
        if series.nper > 0:
            file_index = index // series.nper
            current = series.current
            if current is None or current.index != file_index:
                if current is not None and file_index < current.index:
                    log.warning("series %s image %s arrived after its file was closed; "
                                "not written", frame.series_id, index)
                    return
                if current is not None:
                    self._close_data(series, current)
                series.current = current = self._open_data_file(series, file_index)
        # Check before writing so the files never outgrow the buffer (raw size for
        # filtered writes: the compressed size is only known afterwards).
        need = len(blob) if blob is not None else int(array.nbytes)  # type: ignore[union-attr]
        if need > self.buffer_free():
            self._buffer_full(series)
            return
        current = series.current
        assert current is not None          # opened above, or the master's own dataset
        pos = index - current.first_image
        dset = current.dset
        if pos >= dset.shape[0]:
            dset.resize(pos + 1, axis=0)
        if blob is not None:
            dset.id.write_direct_chunk((pos, 0, 0), bytes(blob))
        else:
            assert array is not None        # no blob: the array was checked above
            if array.shape != dset.shape[1:]:
                log.warning("series %s image %s has shape %s, the series %s; not written",
                            frame.series_id, index, array.shape, dset.shape[1:])
                return
            dset[pos] = array
        current.high = max(current.high, pos)
        series.written += 1
        self._account(series)

    def _account(self, series: _Series) -> None:
        """Track the open files' size for buffer_free() (and their listed size)."""
        size = 0
        listed = {}
        for path in (series.master_temp,
                     series.current.temp_path if series.current else None):
            if path is not None:
                try:
                    here = path.stat().st_size
                except OSError:
                    continue
                if self.profile.open_files_listed:
                    listed[path.name] = here
                else:
                    size += here
        with self._lock:
            self._inflight_bytes = size
            for name, here in listed.items():
                if name in self._files:          # not deleted meanwhile
                    self._files[name] = here

    # -- where a file is written, and when it is listed ----------------------
    def _open_path(self, name: str) -> pathlib.Path:
        """Where ``name`` is written: its own name when open files are listed,
        else a hidden temporary name renamed at close."""
        if self.profile.open_files_listed:
            return self.directory / name
        return self.directory / f".{name}.part"

    def _publish_open(self, h5: h5py.File, path: pathlib.Path) -> None:
        """List a file just opened, when the profile lists open files."""
        if not self.profile.open_files_listed:
            return
        h5.flush()
        with self._lock:
            self._files[path.name] = path.stat().st_size

    def _publish(self, path: pathlib.Path, name: str) -> None:
        """A closed file under its final name, listed with its size."""
        final = self.directory / name
        if path != final:
            os.replace(path, final)
        try:
            size = final.stat().st_size
        except FileNotFoundError:
            log.warning("'%s' was deleted while the file writer was writing it", name)
            return
        with self._lock:
            if path == final and name not in self._files:
                log.warning("'%s' was deleted while the file writer was writing it", name)
                return
            self._files[name] = size
            self._inflight_bytes = 0

    def _buffer_full(self, series: _Series) -> None:
        self._add_error(
            f"file buffer full ({self.capacity_bytes} bytes) after "
            f"{series.written} images of series {series.start.series_id}; the "
            "rest of the series is not written. Download and delete files "
            "(or 'clear') and arm again")
        self._abandon_series(None)

    def _abandon_series(self, reason: Optional[str]) -> None:
        """Throw away the open files of the current series (completed data files stay)."""
        series = self._series
        if series is None or series.abandoned:
            return
        series.abandoned = True
        if reason:
            log.warning("series %s: %s", series.start.series_id, reason)
        for h5, path in ((series.current.h5 if series.current else None,
                          series.current.temp_path if series.current else None),
                         (series.master, series.master_temp)):
            try:
                if h5 is not None:
                    h5.close()
            except Exception:
                log.debug("closing %s failed", path, exc_info=True)
            if path is not None:
                try:
                    path.unlink()
                except OSError:
                    pass
                with self._lock:
                    self._files.pop(path.name, None)    # listed while open
        with self._lock:
            self._inflight_bytes = 0

    def _finish(self, end: Optional[SeriesEnd], dropped: int, offered: int) -> None:
        series = self._series
        if series is None:
            return  # the series was refused at its start
        self._series = None
        try:
            if dropped:
                self._add_error(
                    f"the file writer dropped {dropped} of {offered} images of series "
                    f"{series.start.series_id}: it could not keep up with the "
                    "acquisition; the files have gaps (zeros) there")
            if series.abandoned:
                return
            if series.current is not None:
                self._close_data(series, series.current)
            self._write_master(series, end)
            series.master.close()
            self._publish(series.master_temp, series.master_name)
            log.info("series %s: %d images written, files %s", series.start.series_id,
                     series.written, [series.master_name] + series.done_data)
        except Exception:
            self._abandon_series(None)
            raise
        finally:
            self._series_done()

    # ------------------------------------------------------------------ master metadata
    def _write_master(self, series: _Series, end: Optional[SeriesEnd]) -> None:
        start = series.start
        nxmx.write_master(
            series.master, start.config or {}, nimages=int(start.nimages),
            ntrigger=int(start.ntrigger), width=int(start.width), height=int(start.height),
            dtype=start.dtype,
            compression=series.compression,
            channels=start.channels,
            software_version=f"eiger_server fake DCU, SIMPLON {start.api}",
            pixel_mask=start.pixel_mask, flatfield=start.flatfield,
            countrate_table=start.countrate_table,
            links={f"data_{number:06d}": name
                   for number, name in enumerate(series.done_data, start=1)})
