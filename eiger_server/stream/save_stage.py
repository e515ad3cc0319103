"""The save stage: images to disk on one thread, in the order they arrived.

TIFF images (one file per channel, as the detector sent them) and HDF5RAW
series (the compressed frames as chunks, and a master at the series' end)
are written by the saver thread from a bounded queue (storage/tiff.py's
TiffSaver). A frame the queue cannot take, or that the disk refuses, is
counted as unsaved (part of ``dropped``) and named in ``stream_error``;
nothing waits for the disk but the saver.
"""
from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional

from eiger_server.errors import DataError
from eiger_server.formats.stream_events import ImageMessage, SeriesHeader
from eiger_server.observe.hooks import StreamObserver
from eiger_server.storage import paths
from eiger_server.storage.hdf5raw import Hdf5RawWriter
from eiger_server.storage.tiff import TiffSaver, save_tiff, tiff_name
from eiger_server.stream.counters import Counters
from eiger_server.stream.imageproc import ImageResult

__all__ = ["SaveStage", "series_nimages"]

log = logging.getLogger(__name__)
#: Refused frames logged one by one; after these, every 1000th.
_REFUSED_LINES = 20


def series_nimages(meta: Mapping[str, Any]) -> Optional[int]:
    """Images the series announced (nimages x ntrigger), None when unknown."""
    nimages = meta.get("nimages")
    try:
        return int(nimages) * max(1, int(meta.get("ntrigger") or 1)) if nimages else None
    except (TypeError, ValueError):
        return None


class SaveStage:
    """The saver thread, the HDF5RAW writer it alone uses, and ``latest_file``.

    ``loss`` counts unsaved images (key ``"unsaved"``); ``observer`` hears of
    every file written.
    """

    def __init__(self, depth: int, max_bytes: int, loss: Counters,
                 observer: Callable[[], StreamObserver]) -> None:
        self.depth = depth
        self.max_bytes = max_bytes
        self._loss = loss
        self._observer = observer
        self._saver: Optional[TiffSaver] = None
        self._raw_writer = Hdf5RawWriter()      # the saver thread's alone
        self._raw_key: Optional[tuple] = None   # (directory, prefix, series) of _raw_base
        self._raw_base = ""
        self.latest_file = ""
        self._refused = itertools.count(1)      # numbers the frames the full queue refused

    # -- life ----------------------------------------------------------------------
    def start(self) -> None:
        if self._saver is None:
            self._saver = TiffSaver(self.depth, self.max_bytes)

    @property
    def saver(self) -> Optional[TiffSaver]:
        return self._saver

    @property
    def raw_writer(self) -> Hdf5RawWriter:
        return self._raw_writer

    def close(self) -> None:
        """Finish what is queued (5 s at most), the open HDF5RAW series, stop."""
        saver, self._saver = self._saver, None
        stopped = True
        if saver is not None:
            saver.submit(self.close_raw, always=True)
            stopped = saver.close(timeout=5)
            self._loss.add("unsaved", saver.dropped)
        if not stopped:
            # The saver thread still writes: the writer is its alone.
            log.error("the saver thread did not stop; the open HDF5RAW series (if any) "
                      "is left unfinished")
        elif self._raw_writer.series is not None:
            try:
                self.close_raw()        # its job was dropped: finish here
            except DataError as exc:
                log.error("%s", exc)

    # -- questions -----------------------------------------------------------------
    def pending(self) -> int:
        saver = self._saver
        return saver.pending() if saver is not None else 0

    def errors(self) -> List[str]:
        saver = self._saver
        return list(saver.errors) if saver is not None else []

    def wait_idle(self, timeout: float) -> bool:
        saver = self._saver
        return True if saver is None else saver.wait_idle(timeout)

    def wait_submitted(self, timeout: float) -> bool:
        saver = self._saver
        return True if saver is None else saver.wait_submitted(timeout)

    # -- submitting ------------------------------------------------------------------
    def submit(self, job: Callable[[], Any], nbytes: int, what: str) -> None:
        """Queue ``job``; when the queue is full it is counted unsaved."""
        saver = self._saver
        if saver is None or not saver.submit(job, nbytes):
            if nbytes:
                self._loss.add("unsaved")
            refused = next(self._refused)
            # the receiver thread logs this: a line for every refused frame
            # would slow it most when it is already behind (all are counted)
            if refused <= _REFUSED_LINES or refused % 1000 == 0:
                log.warning("%s not saved: saving is behind (queue of %s images full); the "
                            "disk is too slow (%d refused so far)", what, self.depth, refused)

    def end_series(self) -> None:
        """Finish the open HDF5RAW series after the frames queued before."""
        saver = self._saver
        if saver is not None:
            saver.submit(self.close_raw, always=True)

    def save_tiffs(self, result: Callable[[], Optional[ImageResult]], directory: str,
                   prefix: str, index: Optional[int], overwrite: bool,
                   what: str, nbytes: int) -> None:
        """Queue the TIFF files of one image; ``result`` (called on the saver
        thread) waits for the image to be decoded and gives None when it
        could not be (already counted)."""
        self.submit(lambda: self._write_tiffs(result(), directory, prefix, index, overwrite),
                    nbytes, what)

    def save_raw(self, event: ImageMessage, meta: Dict[str, Any], directory: str,
                 prefix: str, per_file: int, overwrite: bool,
                 header: Optional[SeriesHeader]) -> None:
        """Queue one compressed frame for the HDF5RAW files of its series."""
        self.submit(lambda: self._write_raw(event, meta, directory, prefix, per_file,
                                            overwrite, header),
                    event.nbytes, f"frame {event.frame} of series {event.series}")

    # -- on the saver thread -----------------------------------------------------------
    def _write_tiffs(self, result: Optional[ImageResult], directory: str, prefix: str,
                     index: Optional[int], overwrite: bool) -> None:
        if result is None:
            return                          # decode failed: already counted and logged
        channels = result.channels
        multi = len(channels) > 1
        written: List[str] = []
        try:
            for channel, array in channels.items():
                path = tiff_name(directory, prefix, result.series, index,
                                 channel if multi else None)
                meta = dict(result.metadata, channel=channel)
                # streamed images: renamed into place complete, but not fsync'ed each
                written.append(save_tiff(path, array, meta, overwrite=overwrite, durable=False))
        except Exception:
            self._loss.add("unsaved")       # lost for good (disk full, ...): counts as dropped
            raise
        self.latest_file = written[0] if written else ""
        self._observer().on_saved(written, 1)

    def _write_raw(self, event: ImageMessage, meta: Dict[str, Any], directory: str,
                   prefix: str, per_file: int, overwrite: bool,
                   header: Optional[SeriesHeader]) -> None:
        """Store one frame's compressed blobs in the HDF5RAW files.

        Any failure (a bad name, a full disk, ...) counts the frame as unsaved
        and is raised as a DataError for the saver to report."""
        writer = self._raw_writer
        base = ""
        try:
            key = (directory, prefix, event.series)
            if self._raw_key != key:       # the name is checked once a series, not per frame
                self._raw_base = tiff_name(directory, prefix, event.series)[:-len(".tif")]
                self._raw_key = key
            base = self._raw_base
            if writer.series != event.series or writer.requested_base != base:
                if writer.series is not None:
                    try:
                        self.close_raw()
                    except DataError as exc:      # that series' problem, not this frame's
                        self._report(exc)
                writer.start(base, event.series, nimages=series_nimages(meta),
                             images_per_file=per_file, overwrite=overwrite, metadata=meta,
                             header=header)
            writer.write(event.frame, event.channels)
        except Exception as exc:
            self._loss.add("unsaved")
            if isinstance(exc, DataError):
                raise
            raise paths.disk_error(exc, base or directory, "HDF5RAW: saving frame "
                                   f"{event.frame} of series {event.series} in") from None

    def close_raw(self) -> None:
        """(saver thread) Finish the open HDF5RAW series, if any; latest_file
        names its master once that is written."""
        writer = self._raw_writer
        if writer.series is None:
            return
        master = writer.master
        try:
            writer.close()
        except DataError:
            raise
        except Exception as exc:
            raise paths.disk_error(exc, master, "HDF5RAW: finishing the series of") from None
        finally:
            if writer.written_master:
                self.latest_file = writer.written_master
                self._observer().on_saved([writer.written_master], writer.frames_written)

    def _report(self, exc: Exception) -> None:
        """Report a saving error that is not raised to the saver."""
        log.error("%s", exc)
        saver = self._saver
        if saver is not None:
            saver.errors.append(str(exc))


def wait_result(done: threading.Event, result: Callable[[], Optional[ImageResult]],
                closing: threading.Event, loss: Counters) -> Optional[ImageResult]:
    """(saver thread) The image once decoded; None when the server stops first
    (counted unsaved) or the decode failed."""
    while not done.wait(0.5):
        if closing.is_set():
            loss.add("unsaved")
            return None
    return result()
