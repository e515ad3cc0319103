"""StreamHandler: the data path from the DCU's stream to spec (the stream rows).

Pipeline (each stage bounded, none on the command thread)::

    receiver thread ──> decode queue ──> worker threads ──> latest image / accumulator
     (zmq PULL, parse,   (bounded;        (decode with         │
      series books)       back-pressure)   GIL-free codecs)    └──> TiffSaver thread
                                                                    (bounded; full ->
                                                                     frame not saved,
                                                                     counted in dropped)

* Images are numbered in arrival order on the receiver thread; autosave
  names (autoindex) follow that order, and the saver writes in that order.
* A count (``begin_count``) collects the images that arrive after it; in
  accumulation mode their sum becomes the one result image. The count is
  over when every image is in or known to be lost (lost and unreadable frames
  are counted in ``dropped`` and named in the log and ``stream_error``).
* Statistics (sum, maxval, ROIs) and the oriented/filtered image spec reads
  are computed on request from the latest image, not per frame.
* ROI-only counts (spec asked only for ROI sums in the last count) and
  HDF5RAW autosave decode only the ROI rows, or nothing (roi_stage.py); the
  image is decoded whole only if spec asks for more.
* ``--workers N``: accumulating counts go to worker processes over ZeroMQ
  (workers.py) instead of the decode threads; their partial sums are merged
  into the count's Accumulator when its last image is in.
* Saved TIFF files hold the images as the detector sent them (every channel,
  detector orientation, no filters), so they compare with the DCU's own
  files; rotation, flips and filters shape only what spec reads (read, sum,
  maxval, roisum, ROIs). See imageproc.py for the conventions.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from eiger_server.options import ServerOptions
from eiger_server.components.binding import component
from eiger_server.components.protocols import DetectorConfig, FileSettings
from eiger_server.simplon.rest import SimplonClient
from eiger_server.stream import imageproc, roi_stage
from eiger_server.storage import paths
from eiger_server.storage.hdf5raw import DEFAULT_IMAGES_PER_FILE, Hdf5RawWriter
from eiger_server.formats.decode import DecodeError
from eiger_server.errors import DataError, DetectorError, EigerError, ParameterError
from eiger_server.wire.protocol import wire_type_for
from eiger_server.values import flag_arg, one_arg, parse_number
from eiger_server.stream.imageproc import ImageResult
from eiger_server.stream.counters import Counters
from eiger_server.stream.receiver import StreamReceiver
from eiger_server.stream.workers import WorkerPool
from eiger_server.formats.stream_events import ImageMessage, SeriesEnd, SeriesHeader, StreamErrorEvent
from eiger_server.observe.hooks import NO_OBSERVER, StreamObserver
from eiger_server.storage.tiff import TiffSaver, channel_path, save_tiff, tiff_name, with_suffix

log = logging.getLogger(__name__)

_BIT_DEPTH_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}
# Detector values copied into the metadata of every saved image.
_META_KEYS = ("count_time", "frame_time", "photon_energy", "threshold_energy",
              "bit_depth_image", "nimages", "ntrigger", "trigger_mode", "compression")
_META_KEYS_18 = ("threshold/1/energy", "threshold/2/energy")
SAVE_MODES = ("TIFF", "HDF5RAW")


class _Job:
    """One image on its way through the pipeline."""

    __slots__ = ("event", "seq", "gen", "meta", "result", "failed", "done", "skippable",
                 "rois")

    def __init__(self, event: ImageMessage, seq: int, gen: int, meta: Dict[str, Any]) -> None:
        self.event: Optional[ImageMessage] = event
        self.seq = seq
        self.gen = gen
        self.meta = meta
        self.result: Optional[ImageResult] = None
        self.failed = False
        self.done = threading.Event()
        # True when nothing needs this image's pixels unless it is the newest:
        # a worker finding newer images queued counts it without decoding.
        self.skippable = False
        # Not None: decode only the rows of these ROIs (an ROI-only count), or
        # nothing ([]: HDF5RAW saves the compressed frame); roi_stage keeps the
        # image encoded until spec asks for more
        self.rois: Optional[List[Tuple[int, int, int, int]]] = None


@component
class StreamHandler:
    """The stream as spec sees it: parameters, counting, the latest image.

    ``detector`` is the cached configuration, ``simplon`` gives the DCU's
    address and stream status, ``settings`` where files go, ``acq_mode`` the
    acquisition mode (SINGLE or ACCUM) of the next count.
    """

    def __init__(self, detector: DetectorConfig, simplon: SimplonClient,
                 settings: FileSettings, options: ServerOptions,
                 acq_mode: Callable[[], str]) -> None:
        self.detector = detector
        self.simplon = simplon
        self.settings = settings
        self.options = options
        self._acq_mode = acq_mode
        self.workers = max(1, int(options.stream_workers))
        # --queue-depth bounds every frame buffer of the stream path: ZeroMQ's
        # receive buffer, the decode queue and the save queue (plus 1 GiB of
        # pending saves at most), so memory stays bounded whatever the disk does.
        self.queue_depth = max(1, int(options.queue_depth))
        self.save_depth = self.queue_depth
        self.save_bytes = 1 << 30
        self.rcvhwm = self.queue_depth
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._closing = threading.Event()
        # settings
        self.autosave = False
        self.save_mode = "TIFF"          # stream_save_mode: TIFF or HDF5RAW
        self.images_per_file = DEFAULT_IMAGES_PER_FILE
        self._raw_writer = Hdf5RawWriter()   # used on the saver thread only
        self.overwrite = False
        self.prefix = ""                 # stream_prefix; "" = the shared prefix
        self.autoindex = False
        self.index = 0
        self.low_filter = 0.0
        self.high_filter = 0.0
        self.rois: "collections.OrderedDict[str, Tuple[int, int, int, int]]" = \
            collections.OrderedDict()
        self.latest_file = ""
        self.accumulate = False          # of the current/last count
        # pipeline
        self._receiver: Optional[StreamReceiver] = None
        self._receiver_lost_base = 0
        self._receiver_errors: Deque[str] = collections.deque(maxlen=5)
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue(self.queue_depth)
        self._threads: List[threading.Thread] = []
        self._saver: Optional[TiffSaver] = None
        self._seq = 0
        self._series_meta: Dict[int, Dict[str, Any]] = {}
        self._series_channels: Dict[int, List[str]] = {}
        self._series_headers: Dict[int, SeriesHeader] = {}   # for the HDF5RAW master
        self._count_meta: Dict[str, Any] = {}
        # count state (under _lock)
        self._gen = 0
        self._counting = False
        self._expected = 0
        self._collected = 0
        self._failed_in_count = 0
        self._lost_in_count = 0              # ... of which lost in transit (not unreadable)
        self._last_meta: Dict[str, Any] = {}  # the metadata of the count's latest image
        self._lost_seen = 0
        # which images are the count's: those of series _count_series (None:
        # any, but not one of _stale_series) with frames in [_count_lo, _count_hi)
        self._count_series: Optional[int] = None
        self._count_lo = 0
        self._count_hi: Optional[int] = None
        self._count_next = 0              # the next frame of the count due
        self._stale_series: frozenset = frozenset()
        self._recent_series: Deque[int] = collections.deque(maxlen=16)
        self._lost_frames: List[int] = []    # frames of the count that never came
        self._bad_frames: List[int] = []     # ... that came unreadable
        self._outcome: Optional[str] = None  # why the count has no valid result
        self._accumulator: Optional[imageproc.Accumulator] = None
        self._latest: Optional[ImageResult] = None
        self._latest_seq = -1
        self._delivered: Optional[Tuple[tuple, ImageResult]] = None
        self._stats: Dict[tuple, Any] = {}
        # ROI-only counts (roi_stage): spec asked for more than ROI sums since
        # the last count began (read, sum, maxval, save), so decode whole images
        self._full_asked = True
        self._roi_only = False
        # --workers N: accumulation by worker processes (stream/workers.py)
        self._pool: Optional[WorkerPool] = None
        self._pool_gen: Optional[int] = None
        self._pool_sent = 0
        self._pool_meta: Dict[str, Any] = {}
        # counters (added to by the receiver, the workers and the saver) and errors
        self._loss = Counters("decode_failures", "unsaved")
        self._errors: Deque[str] = collections.deque(maxlen=5)
        # set before the first receiver starts (eiger_server.observe)
        self.observer: StreamObserver = NO_OBSERVER

    # =====================================================================
    # API for the rest of the server
    # =====================================================================
    @property
    def decode_failures(self) -> int:
        """Images that arrived but could not be read."""
        return self._loss["decode_failures"]

    @property
    def unsaved(self) -> int:
        """Images that were to be saved and were not (queue full, disk error, ...)."""
        return self._loss["unsaved"]

    def enabled(self) -> bool:
        """True when the DCU's stream is enabled (cached value)."""
        try:
            return str(self.detector.config_value("mode", "stream")).lower() == "enabled"
        except EigerError as exc:
            log.debug("stream mode unknown: %s", exc)
            return False

    def prepare_series(self) -> None:
        """Before arm: make sure the receiver is connected when the stream is on."""
        if self.save_mode == "HDF5RAW":
            self._read_images_per_file()
        if self.enabled():
            self._ensure_receiver()

    def open_count(self) -> None:
        """A count is starting: from now on images are awaited (``is_waiting_data``
        1) and the previous count's result is gone, before the count's thread
        knows what it will be (:meth:`begin_count`)."""
        with self._lock:
            self._reset_count()
            self._expected = 0            # not known yet: never complete
            self._cond.notify_all()

    def begin_count(self, nimages: int, accumulate: bool = False, series: Optional[int] = None,
                    first_frame: int = 0, new_series: bool = False) -> None:
        """Start counting ``nimages`` images (summed into one when ``accumulate``).

        With ``series`` (the id the DCU answered to arm) only that series'
        frames ``first_frame`` .. ``first_frame + nimages - 1`` belong to the
        count, and a frame missing among them is lost; ``new_series`` (the id
        is not known yet) leaves out images of every series seen before.
        """
        meta = self._snapshot_meta()
        with self._lock:
            self._reset_count()
            self._expected = max(1, int(nimages))
            if series is not None:
                self._count_series = int(series)
                self._count_lo = self._count_next = int(first_frame)
                self._count_hi = self._count_lo + self._expected
            elif new_series:
                self._stale_series = frozenset(self._recent_series)
            self.accumulate = bool(accumulate)
            self._accumulator = imageproc.Accumulator(self._expected) if accumulate else None
            self._count_meta = meta
            self._roi_only = not self._full_asked
            self._full_asked = False
            self._cond.notify_all()
        if self.enabled():
            self._ensure_receiver()

    def bind_series(self, series: Optional[int], first_frame: int = 0) -> None:
        """The running count is series ``series`` (known once arm answered)."""
        if series is None:
            return
        with self._lock:
            self._count_series = int(series)
            self._count_lo = int(first_frame)
            self._count_next = max(self._count_next, self._count_lo)
            self._count_hi = self._count_lo + self._expected

    def _reset_count(self) -> None:
        """(under _lock) A new count: nothing counted, no result, no outcome."""
        self._gen += 1
        self._counting = True
        self._collected = 0
        self._failed_in_count = 0
        self._lost_seen = self._receiver_lost()
        self._count_series = None
        self._count_lo = self._count_next = 0
        self._count_hi = None
        self._stale_series = frozenset()
        self._lost_frames = []
        self._bad_frames = []
        self._lost_in_count = 0
        self._last_meta = {}
        self._outcome = None
        self._accumulator = None
        # the previous count's result is never presented as this one's
        self._latest = None
        self._delivered = None
        self._stats = {}

    def fail_count(self, reason: str) -> None:
        """The count ends without a valid result (halted, timed out, ...):
        reads of its data answer ``reason`` until the next count starts."""
        with self._cond:
            if self._outcome is None:
                self._outcome = reason
            self._counting = False
            self._accumulator = None
            self._cond.notify_all()

    def count_outcome(self) -> Optional[str]:
        """Why the last count has no valid result; None when it has one (or runs)."""
        with self._lock:
            if self._outcome is not None:
                return self._outcome
            if not self._failed_in_count or not self._count_complete():
                return None
            parts = []
            total = max(self._expected, self._collected + self._failed_in_count)
            lost = self._lost_in_count
            bad = self._failed_in_count - lost
            if lost > 0:
                parts.append(f"{lost} of {total} images were lost in transit"
                             + _frames_text(self._lost_frames))
            if bad > 0:
                parts.append(f"{bad} of {total} images arrived unreadable"
                             + _frames_text(self._bad_frames))
            return "; ".join(parts) + "; this count has no valid result"

    def _check_result(self, what: str) -> None:
        outcome = self.count_outcome()
        if outcome is not None:
            raise DataError(f"{what}: {outcome}")

    def wait_count(self, timeout: float) -> bool:
        """True once the count's images (or the accumulated result) are in."""
        deadline = time.monotonic() + max(0.0, float(timeout))
        with self._cond:
            while not self._count_complete():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def images_collected(self) -> int:
        """Images received in the current count (the acquisition's progress)."""
        with self._lock:
            return self._collected

    def has_image(self) -> bool:
        """True once there is a latest image (without decoding it)."""
        with self._lock:
            return self._latest is not None

    def latest(self) -> Optional[ImageResult]:
        """The latest image with ``data`` as spec reads it (oriented, filtered)."""
        self._full_asked = True
        return self._latest_delivered()[1]

    def _latest_delivered(self) -> Tuple[tuple, Optional[ImageResult]]:
        """(cache key, delivered latest image); the key changes with the image
        and with the orientation/filter settings."""
        with self._lock:
            result = self._latest
            key = (self._latest_seq,) + self._delivery_key()
            cached = self._delivered
        if result is None:
            return key, None
        result = self._complete(result)
        if cached is not None and cached[0] == key:
            return key, cached[1]
        rotation, flipv, fliph, low, high = key[1:]
        data = imageproc.deliver(result.raw, rotation, flipv, fliph, low, high)
        delivered = ImageResult(data=data, raw=result.raw, channels=result.channels,
                                series=result.series, frame=result.frame,
                                nframes=result.nframes, metadata=result.metadata)
        with self._lock:
            if self._latest is result:
                self._delivered = (key, delivered)
        return key, delivered

    def result_dtype(self) -> np.dtype:
        """The pixel type ``read`` delivers."""
        latest = self._latest
        accumulate = self.accumulate or str(self._acq_mode()) == "ACCUM"
        try:
            depth = int(self.detector.config_value("bit_depth_image"))
            dtype = np.dtype(_BIT_DEPTH_DTYPES.get(depth, np.uint32))
        except (EigerError, TypeError, ValueError):
            if latest is None:
                raise
            return latest.raw.dtype
        return imageproc.accumulated_dtype(dtype) if accumulate else dtype

    def set_roi(self, name: str, r0: int, r1: int, c0: int, c1: int) -> None:
        """Define ROI ``name``: rows r0..r1, columns c0..c1 (inclusive)."""
        r0, r1, c0, c1 = (int(v) for v in (r0, r1, c0, c1))
        if r0 > r1 or c0 > c1 or min(r0, r1, c0, c1) < 0:
            raise DataError(f"set_roi {name}: rows {r0}..{r1}, columns {c0}..{c1} is not a "
                            "valid range; give row_beg row_end col_beg col_end")
        with self._lock:
            self.rois[str(name)] = (r0, r1, c0, c1)

    def get_roi(self, *args: Any) -> Any:
        """Sum of ROI ``name`` (or of ``r0 r1 c0 c1``) over the latest image."""
        bounds: Optional[Tuple[int, ...]]
        if len(args) == 1:
            with self._lock:
                bounds = self.rois.get(str(args[0]))
            if bounds is None:
                raise DataError("Unknown ROI")
        elif len(args) == 4:
            bounds = tuple(int(parse_number(a, "get_roi", integer=True)) for a in args)
        else:
            raise ParameterError("get_roi needs a ROI name or row_beg row_end col_beg col_end")
        return self._stat("roi", bounds)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> Tuple[str, int, bytes]:
        """(type name, number of pixels, little-endian bytes) of rows r0..r1,
        columns c0..c1 (inclusive) of the latest image."""
        self._check_result("read")
        latest = self.latest()
        if latest is None:
            raise DataError("not ready")
        rows, cols = imageproc.roi_bounds(latest.data.shape, r0, r1, c0, c1)
        part = latest.data[rows, cols]
        dtype = part.dtype.newbyteorder("<") if part.dtype.itemsize > 1 else part.dtype
        data = np.ascontiguousarray(part, dtype=dtype).tobytes()
        return wire_type_for(part.dtype).name, int(part.size), data

    def close(self) -> None:
        """Stop the receiver, the workers and the saver."""
        self._closing.set()
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.stop()
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads = []
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        saver, self._saver = self._saver, None
        stopped = True
        if saver is not None:
            saver.submit(self._close_raw, always=True)
            stopped = saver.close(timeout=5)
            self._loss.add("unsaved", saver.dropped)
        if not stopped:
            # The saver thread still writes: the writer is its alone.
            log.error("the saver thread did not stop; the open HDF5RAW series (if any) "
                      "is left unfinished")
        elif self._raw_writer.series is not None:
            try:
                self._close_raw()        # its job was dropped: finish here
            except DataError as exc:
                log.error("%s", exc)

    # -- for tests and the benchmark ------------------------------------------
    def wait_saved(self, timeout: float = 10.0) -> bool:
        """Wait until every queued TIFF has been written."""
        saver = self._saver
        return True if saver is None else saver.wait_idle(timeout)

    @property
    def receiver(self) -> Optional[StreamReceiver]:
        return self._receiver

    def start_pipeline(self) -> None:
        """Start the decode workers and the saver, without a receiver."""
        self._start_pipeline()

    def feed(self, event: Any) -> None:
        """Handle one stream event as if the receiver had delivered it."""
        self._on_event(event)

    @property
    def saver(self) -> Optional[TiffSaver]:
        """The save queue (None until the pipeline starts)."""
        return self._saver

    @property
    def raw_writer(self) -> Hdf5RawWriter:
        """The HDF5RAW writer (used on the saver thread only)."""
        return self._raw_writer
    def counters(self) -> Dict[str, int]:
        """The data path's own counts and buffer fill, read without locking
        (for eiger_server.observe; no DCU request)."""
        receiver, saver = self._receiver, self._saver
        return {"lost": self._receiver_lost(), "unreadable": self.decode_failures,
                "unsaved": self.unsaved,
                "duplicates": receiver.duplicates if receiver is not None else 0,
                "stale": receiver.stale if receiver is not None else 0,
                "queue": self._queue.qsize(), "queue_depth": self.queue_depth,
                "save_queue": saver.pending() if saver is not None else 0,
                "images_collected": self._collected}

    # =====================================================================
    # image_par rows (bound in control/table.py)
    # =====================================================================
    def get_mode(self) -> int:
        return 1 if self.enabled() else 0

    def set_mode(self, *args: str) -> int:
        on = flag_arg(args, "stream_mode")
        self.detector.write_config("stream", "mode", "enabled" if on else "disabled")
        if on:
            self._ensure_receiver()
        else:
            self._stop_receiver()
        return 1 if on else 0

    def get_version(self) -> str:
        return self._stream_version()

    def set_version(self, *args: str) -> str:
        version = one_arg(args, "stream_version").upper()
        if version in ("1", "2"):
            version = "V" + version
        if version not in ("V1", "V2"):
            raise ParameterError(f"stream_version: '{version}' is not V1 or V2")
        if not self.detector.version_at_least(1, 8):
            if version == "V2":
                raise ParameterError(f"stream_version V2 needs SIMPLON 1.8 or later; the "
                                     f"detector runs {self.detector.version}; use V1")
            return "V1"
        self.detector.write_config("stream", "format", "cbor" if version == "V2" else "legacy")
        if self.enabled():
            self._ensure_receiver()
        return version

    def get_save_mode(self) -> str:
        return self.save_mode

    def set_save_mode(self, *args: str) -> str:
        mode = one_arg(args, "stream_save_mode").upper()
        if mode not in SAVE_MODES:
            raise ParameterError(f"stream_save_mode: '{mode}' is not one of "
                                 f"{', '.join(SAVE_MODES)}")
        if mode == "HDF5RAW":
            self._read_images_per_file()
        with self._lock:
            self.save_mode = mode
        return mode

    def _read_images_per_file(self) -> None:
        try:
            value = int(self.detector.config_value("nimages_per_file", "filewriter") or 0)
        except (EigerError, TypeError, ValueError) as exc:
            log.debug("nimages_per_file unknown (%s); HDF5RAW uses %s", exc,
                      self.images_per_file)
            return
        self.images_per_file = value if value > 0 else DEFAULT_IMAGES_PER_FILE

    def get_autosave(self) -> int:
        return int(self.autosave)

    def set_autosave(self, *args: str) -> int:
        self.autosave = flag_arg(args, "stream_autosave")
        return int(self.autosave)

    def get_latest_file(self) -> str:
        """The last file written. A count ends when its images are in, and
        they are saved after: wait for the saves queued so far, so the name is
        never the previous count's."""
        saver = self._saver
        if saver is not None and not saver.wait_submitted(10.0):
            raise DataError("stream_latest_file: the images queued for saving are not all "
                            "written after 10 s (the disk is slow or full; see stream_error); "
                            "ask again")
        return self.latest_file

    def get_overwrite_images(self) -> int:
        return int(self.overwrite)

    def set_overwrite_images(self, *args: str) -> int:
        self.overwrite = flag_arg(args, "overwrite_images")
        return int(self.overwrite)

    def get_prefix(self) -> str:
        return self.prefix

    def set_prefix(self, *args: str) -> str:
        prefix = " ".join(str(a) for a in args).strip()
        if prefix:
            self._user_path(paths.expand_id(prefix, 0), "stream_prefix")
        with self._lock:
            if prefix != self.prefix:
                self.index = 0
            self.prefix = prefix
        return prefix

    def get_autoindex(self) -> int:
        return int(self.autoindex)

    def set_autoindex(self, *args: str) -> int:
        self.autoindex = flag_arg(args, "stream_autoindex")
        return int(self.autoindex)

    def get_low_filter(self) -> float:
        return self.low_filter

    def set_low_filter(self, *args: str) -> float:
        value = parse_number(one_arg(args, "low_filter"), "low_filter")
        if value < 0:
            raise ParameterError("low_filter must be 0 (off) or positive")
        self.low_filter = value
        return value

    def get_high_filter(self) -> float:
        return self.high_filter

    def set_high_filter(self, *args: str) -> float:
        value = parse_number(one_arg(args, "high_filter"), "high_filter")
        if value < 0:
            raise ParameterError("high_filter must be 0 (off) or positive")
        self.high_filter = value
        return value

    def get_is_waiting_data(self) -> int:
        with self._lock:
            return 0 if self._count_complete() else 1

    def get_images_collected(self) -> int:
        return self.images_collected()

    def get_dropped(self) -> int:
        dcu = 0
        try:
            value = self.simplon.get("stream", "status", "dropped").get("value")
            dcu = int(value or 0)
        except (EigerError, TypeError, ValueError, AttributeError) as exc:
            log.debug("stream dropped count of the DCU unknown: %s", exc)
        return dcu + self._receiver_lost() + self.decode_failures + self.unsaved

    def get_error(self) -> str:
        parts: List[str] = []
        try:
            value = self.simplon.get("stream", "status", "error").get("value")
            if value:
                parts.append(f"DCU: {value}" if not isinstance(value, list)
                             else "DCU: " + "; ".join(str(v) for v in value))
        except (EigerError, AttributeError) as exc:
            parts.append(f"stream status unreadable: {exc}")
        receiver = self._receiver
        errors = list(self._receiver_errors)
        if receiver is not None:
            errors += list(receiver.last_errors)
        errors += list(self._errors)
        if self._saver is not None:
            errors += list(self._saver.errors)
        seen = set()
        for message in errors:
            if message not in seen:
                seen.add(message)
                parts.append(message)
        return "; ".join(parts)

    def get_sum(self) -> Any:
        return self._stat("sum")

    def get_maxval(self) -> Any:
        return self._stat("max")

    def get_roisum(self, *args: str) -> Any:
        if len(args) != 4:
            raise ParameterError("roisum needs row_beg col_beg row_end col_end")
        r0, c0, r1, c1 = (int(parse_number(a, "roisum", integer=True)) for a in args)
        return self._stat("roi", (r0, r1, c0, c1))

    def get_roival(self) -> List[Any]:
        with self._lock:
            rois = list(self.rois.values())
        return [self._stat("roi", bounds) for bounds in rois]

    def do_save(self, *args: str) -> str:
        """Save the latest image; one file per channel when there are several."""
        name = " ".join(str(a) for a in args).strip()
        base = self._user_path(with_suffix(name), "save") if name else ""
        self._check_result("save")
        with self._lock:
            result = self._latest
            self._full_asked = True
        if result is None:
            raise DataError("save: no image yet; take one with the stream enabled")
        result = self._complete(result)
        if not base:
            base = self._user_path(with_suffix(self._prefix_for(result.series)), "save")
        channels = result.channels or {"image": result.raw}
        saved = []
        for channel, array in channels.items():
            path = channel_path(base, channel) if len(channels) > 1 else base
            meta = dict(result.metadata, channel=channel)
            saved.append(save_tiff(path, array, meta, overwrite=self.overwrite))
        self.latest_file = saved[0]
        return saved[0]

    # =====================================================================
    # internals: receiver and pipeline
    # =====================================================================
    def _stream_version(self) -> str:
        if not self.detector.version_at_least(1, 8):
            return "V1"
        try:
            value = self.detector.config_value("format", "stream")
        except DetectorError:
            return "V1"
        return "V2" if str(value).lower() == "cbor" else "V1"

    def _endpoint(self, version: str) -> str:
        host = self.simplon.host
        port = self.options.stream2_port if version == "V2" else self.options.stream_port
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"tcp://{host}:{int(port)}"

    def _ensure_receiver(self) -> None:
        version = self._stream_version()
        endpoint = self._endpoint(version)
        with self._lock:
            current = self._receiver
            if (current is not None and current.running and current.version == version
                    and current.endpoint == endpoint):
                return
            self._start_pipeline()
            receiver = StreamReceiver(endpoint, version, self._on_event, rcvhwm=self.rcvhwm,
                                      observer=self.observer)
            self._receiver = receiver
        # The old receiver's thread may be waiting for _lock: stop it outside.
        if current is not None:
            self._retire_receiver(current)
        receiver.start()

    def _stop_receiver(self) -> None:
        with self._lock:
            current, self._receiver = self._receiver, None
        if current is not None:
            self._retire_receiver(current)

    def _retire_receiver(self, receiver: StreamReceiver) -> None:
        receiver.stop()
        with self._lock:
            self._receiver_lost_base += receiver.lost
            self._receiver_errors.extend(receiver.last_errors)

    def _receiver_lost(self) -> int:
        receiver = self._receiver
        return self._receiver_lost_base + (receiver.lost if receiver is not None else 0)

    def _start_pipeline(self) -> None:
        if self._threads:
            return
        self._closing.clear()
        for number in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"stream-decode-{number}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        if self._saver is None:
            self._saver = TiffSaver(self.save_depth, self.save_bytes)
        if int(self.options.workers) > 0 and self._pool is None:
            self._pool = WorkerPool(int(self.options.workers), host=self._worker_host(),
                                    port=int(self.options.worker_port),
                                    queue_depth=self.queue_depth)
            self._pool.start(wait_for=0)     # begin() waits for the local ones

    # -- receiver thread ---------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        if isinstance(event, ImageMessage):
            self._dispatch(event)
        elif isinstance(event, SeriesHeader):
            with self._lock:
                self._note_series(event.series)
            self._series_meta[event.series] = self._header_meta(event)
            self._series_channels[event.series] = list(event.channels)
            self._series_headers[event.series] = event
            for old in [s for s in self._series_meta if s != event.series][:-8]:
                self._series_meta.pop(old, None)
                self._series_channels.pop(old, None)
                self._series_headers.pop(old, None)
        elif isinstance(event, StreamErrorEvent):
            if event.frame is not None:
                # an image that came but cannot be read is lost for the user
                self._loss.add("decode_failures")
                with self._lock:
                    mine = (self._count_series is None if event.series is None
                            else self._of_count(event.series, event.frame))
                    if mine and event.series == self._count_series:
                        self._count_next = max(self._count_next, event.frame + 1)
                    gen = self._gen if mine else -1
                self._count_failure(gen, event.frame)
        elif isinstance(event, SeriesEnd):
            if self._pool_gen is not None:
                self._pool_finish()      # images lost on the way will not come
            self._series_ended(event.series)
            # Finish an HDF5RAW series whatever autosave and the mode are now
            # (a no-op when none is open); queued after the series' frames.
            saver = self._saver
            if saver is not None:
                saver.submit(self._close_raw, always=True)

    def _note_series(self, series: int) -> None:
        """(under _lock) Remember a series the stream carried."""
        if not self._recent_series or self._recent_series[-1] != series:
            self._recent_series.append(series)

    def _of_count(self, series: int, frame: int) -> bool:
        """(under _lock) Is frame ``frame`` of ``series`` one of the running count's?"""
        if series in self._stale_series:
            return False
        if self._count_series is None:
            return True
        return series == self._count_series and frame >= self._count_lo and (
            self._count_hi is None or frame < self._count_hi)

    def _belongs(self, event: ImageMessage) -> bool:
        """(under _lock, receiver thread, stream order) Is ``event`` one of the
        running count's images? Frames of the count skipped over are lost."""
        if not self._of_count(event.series, event.frame):
            return False
        if self._count_series is None:
            return True
        frame = event.frame
        if frame > self._count_next:
            self._mark_lost(range(self._count_next, frame))
        self._count_next = max(self._count_next, frame + 1)
        return True

    def _mark_lost(self, frames: range) -> None:
        """(under _lock) Frames of the count that will not come."""
        if not frames:
            return
        self._failed_in_count += len(frames)
        self._lost_in_count += len(frames)
        if len(self._lost_frames) < 1000:
            self._lost_frames.extend(frames[:1000])
        self._cond.notify_all()

    def _series_ended(self, series: int) -> None:
        """The end message of ``series``: the count's frames not in by now are lost."""
        with self._lock:
            if series != self._count_series or self._count_hi is None:
                return
            self._mark_lost(range(self._count_next, self._count_hi))
            self._count_next = self._count_hi
            gen = self._gen
        self._maybe_finish_accumulation(gen)

    def _maybe_finish_accumulation(self, gen: int) -> None:
        """Finish an accumulation whose missing images are known to be lost."""
        with self._lock:
            accumulator = self._accumulator if gen == self._gen else None
            done = accumulator is not None and accumulator.added > 0 and \
                accumulator.added + self._failed_in_count >= accumulator.nimages
            # the latest image's metadata (series, times) over the count's own
            meta = dict(self._count_meta, **self._last_meta)
        if done:
            assert accumulator is not None
            self._finish_accumulation(gen, accumulator, meta)

    def _dispatch(self, event: ImageMessage) -> None:
        with self._lock:
            lost_before = self._failed_in_count
            self._seq += 1
            self._note_series(event.series)
            gen = self._gen if self._belongs(event) else -1
            lost_now = self._receiver_lost()
            if lost_now > self._lost_seen:
                if self._count_series is None:
                    # frames the receiver found missing belong to the running count
                    self._failed_in_count += lost_now - self._lost_seen
                    self._lost_in_count += lost_now - self._lost_seen
                    self._cond.notify_all()
                self._lost_seen = lost_now
            lost_more = self._failed_in_count > lost_before
            meta = dict(self._series_meta.get(event.series, {}))
            meta.update(self._count_meta)
            meta.update(series=event.series, frame=event.frame)
            for key in ("start_time", "stop_time", "real_time"):
                value = getattr(event, key)
                if value is not None:
                    meta[key] = value
            if event.appendix is not None:
                meta["image_appendix"] = event.appendix
            job = _Job(event, self._seq, gen, meta)
            if gen == self._gen:
                self._last_meta = meta
            pooled = self._accumulator if self._pool is not None and gen == self._gen else None
            save_single = self.autosave and self._accumulator is None
            save_raw = save_single and self.save_mode == "HDF5RAW"
            if save_raw:
                save_single = False
                job.skippable = True
                directory = self.settings.data_directory
                prefix = self._prefix_for(event.series)
                overwrite = self.overwrite
                per_file = self.images_per_file
            # Without TIFF saving or accumulation only the latest image's pixels
            # matter (sum, maxval, ROIs and read look at it alone): an older
            # image may be counted without decoding when newer ones wait.
            if not save_single and self._accumulator is None:
                job.skippable = True
                rois = list(self.rois.values())
                if self._roi_only and roi_stage.applies(
                        rois, self.options.rotation, self.options.flipv, self.options.fliph):
                    job.rois = rois
                elif save_raw:
                    job.rois = []
            if save_single:
                index = None
                if self.autoindex:
                    index = self.index
                    self.index += 1
                directory = self.settings.data_directory
                prefix = self._prefix_for(event.series)
                overwrite = self.overwrite
        if lost_more:
            self._maybe_finish_accumulation(self._gen)
        if save_single:
            nbytes = sum(int(np.prod(e.shape)) * e.dtype.itemsize
                         for e in event.channels.values())
            self._submit_save(lambda: self._save_job(job, directory, prefix, index, overwrite),
                              nbytes, f"frame {event.frame} of series {event.series}")
        if save_raw:
            self._submit_save(
                lambda: self._save_raw(event, meta, directory, prefix, per_file, overwrite),
                event.nbytes, f"frame {event.frame} of series {event.series}")
        if pooled is not None:
            self._pool_accumulate(job, event, pooled)
            return
        # Block while the workers are busy: back-pressure reaches zmq and the DCU.
        while not self._closing.is_set():
            try:
                self._queue.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    # -- worker processes (--workers N), on the receiver thread --------------------
    def _worker_host(self) -> str:
        return "0.0.0.0" if int(self.options.worker_port) else "127.0.0.1"

    def _pool_accumulate(self, job: _Job, event: ImageMessage,
                         accumulator: imageproc.Accumulator) -> None:
        """Hand one image of an accumulating count to the worker processes."""
        pool = self._pool
        assert pool is not None
        if self._pool_gen != job.gen:
            if self._pool_gen is not None:
                self._pool_finish()
            pool.begin(job.gen, "accum")
            self._pool_gen, self._pool_sent = job.gen, 0
        self._pool_meta = job.meta
        if not pool.submit(job.gen, event):
            self._errors.append(f"frame {event.frame} of series {event.series}: no stream "
                                "worker took it; counted as lost")
            self._loss.add("decode_failures")
            self._count_failure(job.gen, event.frame)
        else:
            self._pool_sent += 1
        with self._lock:
            due = self._pool_sent + self._failed_in_count >= accumulator.nimages
        if due:
            self._pool_finish()

    def _pool_finish(self) -> None:
        """Merge the workers' partial sums of the open count and finish it."""
        pool, gen = self._pool, self._pool_gen
        self._pool_gen = None
        if pool is None or gen is None:
            return
        merged = pool.finish(gen)
        with self._lock:
            accumulator = self._accumulator if gen == self._gen else None
        for message in merged.errors + [reason for _, reason in merged.failed]:
            self._errors.append(message)
            log.warning("%s", message)
        if accumulator is None:
            return
        accumulator.add_partial(merged.sums, merged.masks, merged.frames)
        with self._cond:
            if gen == self._gen:
                # counted when merged: until then the count is not complete
                self._collected += len(merged.frames)
        for frame in merged.lost:                # a worker died with them
            self._loss.add("decode_failures")
            self._count_failure(gen, frame, lost=True)
        for frame, _ in merged.failed:
            self._loss.add("decode_failures")
            self._count_failure(gen, frame)
        if accumulator.added:
            self._finish_accumulation(gen, accumulator, dict(self._pool_meta))

    # -- worker threads ----------------------------------------------------------
    def _work(self) -> None:
        while not self._closing.is_set():
            try:
                job = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                return
            try:
                if job.skippable and not self._queue.empty():
                    self._skip(job)
                    continue
                self._process(job)
            except Exception as exc:          # nothing may kill a worker
                log.exception("processing an image failed")
                self._errors.append(f"processing an image failed: {exc}")
                self._loss.add("decode_failures")
                job.failed = True
                self._count_failure(job.gen, job.event.frame if job.event else None)
            finally:
                job.event = None
                job.done.set()

    def _process(self, job: _Job) -> None:
        event = job.event
        assert event is not None
        if job.rois is not None:
            self._process_rois(job, event)
            return
        try:
            arrays = {name: encoded.decode(f"frame {event.frame} of series {event.series}, "
                                           f"channel {name}")
                      for name, encoded in event.channels.items()}
        except DecodeError as exc:
            job.failed = True
            self._loss.add("decode_failures")
            self._errors.append(str(exc))
            log.warning("%s", exc)
            self._count_failure(job.gen, event.frame)
            return
        first = next(iter(arrays.values()))
        accumulator = None
        with self._lock:
            if job.gen == self._gen:
                accumulator = self._accumulator
        if accumulator is not None:
            finished = accumulator.add(arrays, event.frame)
            with self._cond:
                if job.gen == self._gen:
                    self._collected += 1
                    # images lost earlier in the count will not come: finish without them
                    finished = finished or (
                        accumulator.added + self._failed_in_count >= accumulator.nimages)
                    self._cond.notify_all()
            if finished:
                self._finish_accumulation(job.gen, accumulator, job.meta)
            return
        result = ImageResult(data=first, raw=first, channels=arrays, series=event.series,
                             frame=event.frame, nframes=1, metadata=job.meta)
        job.result = result
        self.observer.on_image(first, job.meta)
        with self._cond:
            if job.gen == self._gen:
                self._collected += 1
            # an image that is not the count's (a stale series) is never its result
            if job.seq > self._latest_seq and job.gen == self._gen:
                self._set_latest(result, job.seq)
            self._cond.notify_all()

    def _process_rois(self, job: _Job, event: ImageMessage) -> None:
        """ROI-only count or HDF5RAW: only the ROI rows (if any) are decoded (roi_stage)."""
        try:
            result = roi_stage.partial_image(event, job.rois or [], job.meta, self.low_filter,
                                             self.high_filter)
        except DecodeError as exc:
            job.failed = True
            self._loss.add("decode_failures")
            self._errors.append(str(exc))
            log.warning("%s", exc)
            self._count_failure(job.gen, event.frame)
            return
        with self._cond:
            if job.gen == self._gen:
                self._collected += 1
            # an image that is not the count's (a stale series) is never its result
            if job.seq > self._latest_seq and job.gen == self._gen:
                self._set_latest(result, job.seq)
            self._cond.notify_all()

    def _skip(self, job: _Job) -> None:
        """Count an image whose pixels nobody needs (newer ones are queued)."""
        with self._cond:
            if job.gen == self._gen:
                self._collected += 1
            self._cond.notify_all()

    def _finish_accumulation(self, gen: int, accumulator: imageproc.Accumulator,
                             meta: Dict[str, Any]) -> None:
        channels = accumulator.result()
        first = next(iter(channels.values()))
        meta = dict(meta, nframes=accumulator.added, accumulated=True,
                    first_frame=accumulator.first_frame, frame=accumulator.last_frame)
        result = ImageResult(data=first, raw=first, channels=channels,
                             series=int(meta.get("series", 0)),
                             frame=int(accumulator.last_frame or 0),
                             nframes=accumulator.added, metadata=meta)
        with self._cond:
            if gen != self._gen or self._accumulator is not accumulator:
                return                    # finished already (or a new count began)
            self._accumulator = None
            self._seq += 1
            self._set_latest(result, self._seq)
            self._cond.notify_all()
            save = self.autosave
            if save:
                index = None
                if self.autoindex:
                    index = self.index
                    self.index += 1
                directory = self.settings.data_directory
                prefix = self._prefix_for(result.series)
                overwrite = self.overwrite
        self.observer.on_image(first, meta)
        if save:
            job = _Job(None, 0, gen, meta)   # type: ignore[arg-type]
            job.result = result
            job.done.set()
            self._submit_save(lambda: self._save_job(job, directory, prefix, index, overwrite),
                              sum(a.nbytes for a in channels.values()),
                              f"accumulated image of series {result.series}")

    def _complete(self, result: ImageResult) -> ImageResult:
        """``result`` decoded whole (a ROI-only image is decoded now, once)."""
        if not isinstance(result, roi_stage.PartialImage):
            return result
        full = result.complete()
        with self._lock:
            if self._latest is result:
                self._latest = full
        return full

    def _set_latest(self, result: ImageResult, seq: int) -> None:
        self._latest = result
        self._latest_seq = seq
        self._delivered = None
        self._stats = {}

    def _count_failure(self, gen: int, frame: Optional[int] = None, *,
                       lost: bool = False) -> None:
        """An image (``frame``) of count ``gen`` arrived and cannot be read
        (``lost``: it never arrived, e.g. a worker died with it)."""
        with self._cond:
            if gen != self._gen:
                return
            self._failed_in_count += 1
            if lost:
                self._lost_in_count += 1
                if len(self._lost_frames) < 1000 and frame is not None:
                    self._lost_frames.append(int(frame))
            elif len(self._bad_frames) < 1000:
                self._bad_frames.append(-1 if frame is None else int(frame))
            self._cond.notify_all()
        # finish with the images that did arrive; the rest are in dropped
        self._maybe_finish_accumulation(gen)

    def _count_complete(self) -> bool:
        """(under _lock) True when no image of the count is still expected."""
        if not self._counting:
            return True
        if self._expected <= 0:
            return False                  # opened, not yet begun
        if self.accumulate:
            return self._accumulator is None or (
                self._collected + self._failed_in_count >= self._expected
                and self._accumulator.added == 0)
        return self._collected + self._failed_in_count >= self._expected

    # -- saver thread ------------------------------------------------------------
    def _submit_save(self, job: Any, nbytes: int, what: str) -> None:
        saver = self._saver
        if saver is None or not saver.submit(job, nbytes):
            if nbytes:
                self._loss.add("unsaved")
            log.warning("%s not saved: saving is behind (queue of %s images full); the "
                        "disk is too slow", what, self.save_depth)

    def _save_raw(self, event: ImageMessage, meta: Dict[str, Any], directory: str,
                  prefix: str, per_file: int, overwrite: bool) -> None:
        """(saver thread) Store one frame's compressed blobs in the HDF5RAW files.

        Any failure (a bad name, a full disk, ...) counts the frame as unsaved
        and is raised as a DataError for the saver to report."""
        writer = self._raw_writer
        base = ""
        try:
            base = tiff_name(directory, prefix, event.series)[:-len(".tif")]
            if writer.series != event.series or writer.requested_base != base:
                if writer.series is not None:
                    try:
                        self._close_raw()
                    except DataError as exc:      # that series' problem, not this frame's
                        self._saver_error(exc)
                nimages = meta.get("nimages")
                try:
                    nimages = int(nimages) * max(1, int(meta.get("ntrigger") or 1)) \
                        if nimages else None
                except (TypeError, ValueError):
                    nimages = None
                writer.start(base, event.series, nimages=nimages, images_per_file=per_file,
                             overwrite=overwrite, metadata=meta,
                             header=self._series_headers.get(event.series))
            writer.write(event.frame, event.channels)
        except Exception as exc:
            self._loss.add("unsaved")
            if isinstance(exc, DataError):
                raise
            raise paths.disk_error(exc, base or directory, "HDF5RAW: saving frame "
                                   f"{event.frame} of series {event.series} in") from None

    def _close_raw(self) -> None:
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
                self.observer.on_saved([writer.written_master], writer.frames_written)

    def _saver_error(self, exc: Exception) -> None:
        """Report a saving error that is not raised to the saver."""
        log.error("%s", exc)
        saver = self._saver
        if saver is not None:
            saver.errors.append(str(exc))

    def _save_job(self, job: _Job, directory: str, prefix: str, index: Optional[int],
                  overwrite: bool) -> None:
        while not job.done.wait(0.5):
            if self._closing.is_set():
                self._loss.add("unsaved")           # the server stops before the image was decoded
                return
        result = job.result
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
                written.append(save_tiff(path, array, meta, overwrite=overwrite))
        except Exception:
            self._loss.add("unsaved")               # lost for good (disk full, ...): counts as dropped
            raise
        self.latest_file = written[0] if written else ""
        self.observer.on_saved(written, 1)

    # -- names and metadata ------------------------------------------------------
    def _prefix_for(self, series: Optional[int]) -> str:
        return paths.expand_id(self.prefix or self.settings.prefix, series)

    def _user_path(self, name: str, what: str) -> str:
        """The full path for a name from spec (see paths.resolve_user_path)."""
        return paths.resolve_user_path(self.settings.data_directory, name, what)

    def _snapshot_meta(self) -> Dict[str, Any]:
        """Detector values for the metadata of this count's images (cached reads)."""
        meta: Dict[str, Any] = {}
        keys = _META_KEYS + (_META_KEYS_18 if self.detector.version_at_least(1, 8) else ())
        for key in keys:
            try:
                meta[key] = self.detector.config_value(key)
            except (EigerError, KeyError, TypeError):
                continue
        if "photon_energy" in meta:
            meta["energy"] = meta["photon_energy"]
        thresholds = {f"threshold_{n}": meta[f"threshold/{n}/energy"] for n in (1, 2)
                      if f"threshold/{n}/energy" in meta}
        if not thresholds and "threshold_energy" in meta:
            thresholds = {"threshold_1": meta["threshold_energy"]}
        if thresholds:
            meta["thresholds"] = thresholds
        return meta

    @staticmethod
    def _header_meta(header: SeriesHeader) -> Dict[str, Any]:
        config = header.config or {}
        meta: Dict[str, Any] = {"series": header.series}
        for key in ("count_time", "frame_time", "photon_energy", "incident_energy",
                    "threshold_energy", "bit_depth_image", "nimages", "ntrigger",
                    "description", "detector_description", "detector_number",
                    "detector_serial_number", "wavelength", "incident_wavelength"):
            if key in config:
                value = config[key]
                meta[key] = dict(value) if isinstance(value, dict) or hasattr(value, "items") \
                    else value
        if "incident_energy" in meta and "photon_energy" not in meta:
            meta["photon_energy"] = meta["incident_energy"]
        if "photon_energy" in meta:
            meta["energy"] = meta["photon_energy"]
        threshold = meta.get("threshold_energy")
        if isinstance(threshold, dict):            # V2: energy per channel
            meta["thresholds"] = meta.pop("threshold_energy")
        elif threshold is not None:
            meta["thresholds"] = {"threshold_1": threshold}
        if header.channels:
            meta["channels"] = list(header.channels)
        if header.unique_id:
            meta["series_unique_id"] = header.unique_id
        if header.appendix is not None:
            meta["header_appendix"] = header.appendix
        return meta

    # -- statistics on the latest image ------------------------------------------
    def _delivery_key(self) -> tuple:
        options = self.options
        return (int(options.rotation), bool(options.flipv), bool(options.fliph),
                self.low_filter, self.high_filter)

    def _stat(self, kind: str, bounds: Optional[tuple] = None) -> Any:
        self._check_result({"sum": "sum", "max": "maxval"}.get(kind, "roi"))
        if kind == "roi":
            with self._lock:
                partial = self._latest
            value = roi_stage.known_sum(partial, bounds, *self._delivery_key())
            if value is not None:
                return value
        else:
            self._full_asked = True
        image_key, latest = self._latest_delivered()
        if latest is None:
            with self._lock:
                running = self._counting and not self._count_complete()
            raise DataError("the running count has no result yet; wait for get_status 0"
                            if running else "No acquisition done")
        key = (image_key, kind, bounds)
        with self._lock:
            if key in self._stats:
                return self._stats[key]
        if kind == "sum":
            value = imageproc.masked_sum(latest.data)
        elif kind == "max":
            value = imageproc.masked_max(latest.data)
        else:
            r0, r1, c0, c1 = bounds  # type: ignore[misc]
            value = imageproc.roi_sum(latest.data, r0, r1, c0, c1)
        with self._lock:
            if len(self._stats) > 64:
                self._stats.clear()
            self._stats[key] = value
        return value


def _frames_text(frames: List[int]) -> str:
    """" (frames 2, 4, 6)" for the known frame numbers, at most 20 of them."""
    known = [f for f in frames if f >= 0]
    if not known:
        return ""
    shown = ", ".join(str(f) for f in known[:20])
    more = f" and {len(known) - 20} more" if len(known) > 20 else ""
    return f" (frame{'s' if len(known) > 1 else ''} {shown}{more})"
