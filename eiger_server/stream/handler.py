"""StreamHandler: the stream rows of image_par, over the stream pipeline.

The pipeline, one job per stage, bounded hand-offs between them::

    receiver.py ──> decode_stage.py ──> reduce.py ──> latest.py (latest wins)
    (ZeroMQ PULL,    (bounded queue,      (accumulate,     └─> save_stage.py
     parse, series    decode threads,      offer the          (saver thread,
     books)           back-pressure)       latest image)       TIFF, HDF5RAW)
          └──> pool_bridge.py (--workers N: accumulation in worker processes)

count.py keeps the count's books (which frames are the count's, collected,
lost, unreadable, the outcome); series_meta.py the metadata of each image.
This module holds spec's settings of the stream, answers its rows, and
plans each frame on the receiver thread (``_dispatch``): which count it is
in, whether it is saved and how, and whether its pixels are needed at all:

* Without TIFF saving or accumulation only the latest image's pixels matter
  (sum, maxval, ROIs and read look at it alone): an older image may be
  counted without decoding when newer ones wait.
* ROI-only counts (spec asked only for ROI sums in the last count) and
  HDF5RAW autosave decode only the ROI rows, or nothing (roi_stage.py); the
  image is decoded whole only if spec asks for more.
* Saved TIFF files hold the images as the detector sent them (every channel,
  detector orientation, no filters), so they compare with the DCU's own
  files; rotation, flips and filters shape only what spec reads (read, sum,
  maxval, roisum, ROIs). See imageproc.py for the conventions.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from eiger_server.components.binding import component
from eiger_server.components.protocols import DetectorConfig, FileSettings
from eiger_server.errors import DataError, DetectorError, EigerError, ParameterError
from eiger_server.formats.stream_events import ImageMessage, SeriesEnd, SeriesHeader, StreamErrorEvent
from eiger_server.observe.hooks import NO_OBSERVER, StreamObserver
from eiger_server.options import ServerOptions
from eiger_server.simplon.rest import SimplonClient
from eiger_server.storage import paths
from eiger_server.storage.hdf5raw import DEFAULT_IMAGES_PER_FILE, Hdf5RawWriter
from eiger_server.storage.tiff import TiffSaver, channel_path, save_tiff, with_suffix
from eiger_server.stream import imageproc, kernels, roi_stage
from eiger_server.stream.count import NOT_COUNTED, CountBook
from eiger_server.stream.counters import Counters
from eiger_server.stream.decode_stage import DecodeStage, FrameJob
from eiger_server.stream.imageproc import ImageResult
from eiger_server.stream.latest import LatestImage
from eiger_server.stream.pool_bridge import PoolBridge
from eiger_server.stream.receiver import StreamReceiver
from eiger_server.stream.reduce import Reducer
from eiger_server.stream.save_stage import SaveStage, wait_result
from eiger_server.stream.series_meta import SeriesCatalog, frame_meta, snapshot_meta
from eiger_server.stream.workers import WorkerPool
from eiger_server.values import flag_arg, one_arg, parse_number
from eiger_server.wire.protocol import wire_type_for

log = logging.getLogger(__name__)

_BIT_DEPTH_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}
SAVE_MODES = ("TIFF", "HDF5RAW")


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
        self.rcvhwm = self.queue_depth
        self._closing = threading.Event()
        # settings (spec's rows; read by the receiver thread under the count's lock)
        self.autosave = False
        self.save_mode = "TIFF"          # stream_save_mode: TIFF or HDF5RAW
        self.images_per_file = DEFAULT_IMAGES_PER_FILE
        self.overwrite = False
        self.prefix = ""                 # stream_prefix; "" = the shared prefix
        self.autoindex = False
        self.index = 0
        self.low_filter = 0.0
        self.high_filter = 0.0
        self.rois: "collections.OrderedDict[str, Tuple[int, int, int, int]]" = \
            collections.OrderedDict()
        # counters (added to by the receiver, the decode threads and the saver) and errors
        self._loss = Counters("decode_failures", "unsaved")
        self._errors: Deque[str] = collections.deque(maxlen=5)
        # set before the first receiver starts (eiger_server.observe)
        self.observer: StreamObserver = NO_OBSERVER
        # the stages
        self._book = CountBook()
        self._lock = self._book.cond     # the count's lock guards the settings too
        self._latest = LatestImage(self._book.cond)
        self._series = SeriesCatalog()
        self._reducer = Reducer(self._book, self._latest, self._loss, self._errors,
                                lambda: self.observer,
                                lambda: (self.low_filter, self.high_filter),
                                self._accumulated)
        self._decode = DecodeStage(self.workers, self.queue_depth, run=self._reducer.run,
                                   skip=self._reducer.skip, failed=self._reducer.failed,
                                   closing=self._closing)
        self._save = SaveStage(self.save_depth, 1 << 30, self._loss, lambda: self.observer)
        self._receiver: Optional[StreamReceiver] = None
        self._receiver_lost_base = 0
        self._receiver_errors: Deque[str] = collections.deque(maxlen=5)
        self._bridge: Optional[PoolBridge] = None
        # ROI-only counts (roi_stage): spec asked for more than ROI sums since
        # the last count began (read, sum, maxval, save), so decode whole images
        self._full_asked = True
        self._roi_only = False

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

    @property
    def accumulate(self) -> bool:
        """True when the current (or last) count accumulates."""
        return self._book.accumulate

    @property
    def latest_file(self) -> str:
        """The last file written (TIFF, HDF5RAW master, ``save``)."""
        return self._save.latest_file

    @latest_file.setter
    def latest_file(self, value: str) -> None:
        self._save.latest_file = value

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
            self._book.open(self._receiver_lost())
            self._latest.clear()

    def begin_count(self, nimages: int, accumulate: bool = False, series: Optional[int] = None,
                    first_frame: int = 0, new_series: bool = False) -> None:
        """Start counting ``nimages`` images (summed into one when ``accumulate``).

        With ``series`` (the id the DCU answered to arm) only that series'
        frames ``first_frame`` .. ``first_frame + nimages - 1`` belong to the
        count, and a frame missing among them is lost; ``new_series`` (the id
        is not known yet) leaves out images of every series seen before.
        """
        meta = snapshot_meta(self.detector)
        with self._lock:
            self._book.begin(self._receiver_lost(), nimages, accumulate, series, first_frame,
                             new_series, meta)
            # the previous count's result is never presented as this one's
            self._latest.clear()
            self._roi_only = not self._full_asked
            self._full_asked = False
        if self.enabled():
            self._ensure_receiver()

    def bind_series(self, series: Optional[int], first_frame: int = 0) -> None:
        """The running count is series ``series`` (known once arm answered)."""
        if series is not None:
            self._book.bind(series, first_frame)

    def fail_count(self, reason: str) -> None:
        """The count ends without a valid result (halted, timed out, ...):
        reads of its data answer ``reason`` until the next count starts."""
        self._book.fail(reason)

    def count_outcome(self) -> Optional[str]:
        """Why the last count has no valid result; None when it has one (or runs)."""
        return self._book.outcome()

    def _check_result(self, what: str) -> None:
        outcome = self.count_outcome()
        if outcome is not None:
            raise DataError(f"{what}: {outcome}")

    def wait_count(self, timeout: float) -> bool:
        """True once the count's images (or the accumulated result) are in."""
        return self._book.wait(timeout, time.monotonic)

    def images_collected(self) -> int:
        """Images received in the current count (the acquisition's progress)."""
        with self._lock:
            return self._book.collected

    def images_arrived(self) -> int:
        """Images of the current count received, decoded or not yet."""
        with self._lock:
            return self._book.arrived

    def has_image(self) -> bool:
        """True once there is a latest image (without decoding it)."""
        return self._latest.held is not None

    def held_image(self) -> Optional[ImageResult]:
        """The latest image as held, without decoding it (a ROI-only image is
        a roi_stage.PartialImage until spec asks for more than ROI sums)."""
        return self._latest.held

    def latest(self) -> Optional[ImageResult]:
        """The latest image with ``data`` as spec reads it (oriented, filtered)."""
        self._full_asked = True
        return self._latest.delivered(self._delivery_key())[1]

    def result_dtype(self) -> np.dtype:
        """The pixel type ``read`` delivers."""
        latest = self._latest.held
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
        """Stop the receiver, the decode threads, the workers and the saver."""
        self._closing.set()
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.stop()
        self._decode.close()
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.pool.close()
        self._save.close()

    # -- for tests and the benchmark ------------------------------------------
    def wait_saved(self, timeout: float = 10.0) -> bool:
        """Wait until every queued image has been written."""
        return self._save.wait_idle(timeout)

    @property
    def receiver(self) -> Optional[StreamReceiver]:
        return self._receiver

    def start_pipeline(self) -> None:
        """Start the decode threads, the saver and the workers, without a receiver."""
        self._start_pipeline()

    def feed(self, event: Any) -> None:
        """Handle one stream event as if the receiver had delivered it."""
        self._on_event(event)

    @property
    def saver(self) -> Optional[TiffSaver]:
        """The save queue (None until the pipeline starts)."""
        return self._save.saver

    @property
    def raw_writer(self) -> Hdf5RawWriter:
        """The HDF5RAW writer (used on the saver thread only)."""
        return self._save.raw_writer

    def worker_pids(self) -> List[int]:
        """The process ids of the local worker processes (--workers N)."""
        bridge = self._bridge
        return bridge.pool.pids if bridge is not None else []

    def counters(self) -> Dict[str, int]:
        """The data path's own counts and buffer fill, read without locking
        (for eiger_server.observe; no DCU request)."""
        receiver = self._receiver
        return {"lost": self._receiver_lost(), "unreadable": self.decode_failures,
                "unsaved": self.unsaved,
                "duplicates": receiver.duplicates if receiver is not None else 0,
                "stale": receiver.stale if receiver is not None else 0,
                "queue": self._decode.qsize(), "queue_depth": self.queue_depth,
                "save_queue": self._save.pending(),
                "images_collected": self._book.collected}

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
        if not self._save.wait_submitted(10.0):
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
        return 0 if self._book.complete() else 1

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
        errors += self._save.errors()
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
            result = self._latest.held
            self._full_asked = True
        if result is None:
            raise DataError("save: no image yet; take one with the stream enabled")
        result = self._latest.complete(result)
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
        if self._decode.started:
            return
        self._closing.clear()
        kernels.warm_up_in_background()      # loads the compiled kernels before the first count
        self._decode.start()
        self._save.start()
        if int(self.options.workers) > 0 and self._bridge is None:
            pool = WorkerPool(int(self.options.workers), host=self._worker_host(),
                              port=int(self.options.worker_port),
                              queue_depth=self.queue_depth)
            pool.start(wait_for=0)     # begin() waits for the local ones
            self._bridge = PoolBridge(pool, self._book, self._reducer, self._loss,
                                      self._errors)

    def _worker_host(self) -> str:
        return "0.0.0.0" if int(self.options.worker_port) else "127.0.0.1"

    # -- receiver thread ---------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        if isinstance(event, ImageMessage):
            self._dispatch(event)
        elif isinstance(event, SeriesHeader):
            self._book.note_series(event.series)
            self._series.record(event)
        elif isinstance(event, StreamErrorEvent):
            if event.frame is not None:
                # an image that came but cannot be read is lost for the user
                self._loss.add("decode_failures")
                self._reducer.count_failure(self._book.unreadable(event.series, event.frame),
                                            event.frame)
        elif isinstance(event, SeriesEnd):
            bridge = self._bridge
            if bridge is not None and bridge.open:
                bridge.finish()          # images lost on the way will not come
            gen = self._book.series_ended(event.series)
            if gen is not None:
                self._reducer.maybe_finish(gen)
            # Finish an HDF5RAW series whatever autosave and the mode are now
            # (a no-op when none is open); queued after the series' frames.
            self._save.end_series()

    def _dispatch(self, event: ImageMessage) -> None:
        """Plan one frame: its count, its metadata, how it is saved, whether
        its pixels are needed; then hand it to the stages."""
        book = self._book
        with self._lock:
            lost_before = book.failed
            seq = book.next_seq()
            book.note_series(event.series)
            gen = book.belongs(event.series, event.frame)
            book.receiver_lost(self._receiver_lost())
            lost_more = book.failed > lost_before
            meta = frame_meta(self._series.meta(event.series), book.meta, event)
            job = FrameJob(event, seq, gen, meta)
            counted = gen != NOT_COUNTED and gen == book.gen
            if counted:
                book.last_meta = meta
            accumulator = book.accumulator if counted else None
            bridge = self._bridge if accumulator is not None else None
            save_single = self.autosave and book.accumulator is None
            save_raw = save_single and self.save_mode == "HDF5RAW"
            if save_raw:
                save_single = False
                job.skippable = True
            if not save_single and book.accumulator is None:
                job.skippable = True
                rois = list(self.rois.values())
                if self._roi_only and roi_stage.applies(
                        rois, self.options.rotation, self.options.flipv, self.options.fliph):
                    job.rois = rois
                elif save_raw:
                    job.rois = []
            if save_single or save_raw:
                directory = self.settings.data_directory
                prefix = self._prefix_for(event.series)
                overwrite = self.overwrite
                per_file = self.images_per_file
            index = None
            if save_single and self.autoindex:
                index = self.index
                self.index += 1
        if lost_more:
            self._reducer.maybe_finish(book.gen)
        if save_single:
            nbytes = sum(int(np.prod(e.shape)) * e.dtype.itemsize
                         for e in event.channels.values())
            self._save.save_tiffs(lambda: wait_result(job.done, lambda: job.result,
                                                      self._closing, self._loss),
                                  directory, prefix, index, overwrite,
                                  f"frame {event.frame} of series {event.series}", nbytes)
        if save_raw:
            self._save.save_raw(event, meta, directory, prefix, per_file, overwrite,
                                self._series.header(event.series))
        if bridge is not None and accumulator is not None:
            bridge.accumulate(job, event, accumulator)
            return
        if job.rois == []:
            # HDF5RAW without ROIs: nothing to decode, the frame is kept as it came
            self._decode.run_here(job)
            return
        # Blocks while the decode threads are busy: back-pressure reaches zmq and the DCU.
        self._decode.put(job)

    def _accumulated(self, gen: int, result: ImageResult) -> Optional[Callable[[], None]]:
        """(decode thread, under the count's lock) A count's accumulated image
        is in: plan its save now (its autoindex number before any later
        image's); returns what submits it."""
        with self._lock:
            if not self.autosave:
                return None
            index = None
            if self.autoindex:
                index = self.index
                self.index += 1
            directory = self.settings.data_directory
            prefix = self._prefix_for(result.series)
            overwrite = self.overwrite
        return lambda: self._save.save_tiffs(
            lambda: result, directory, prefix, index, overwrite,
            f"accumulated image of series {result.series}",
            sum(a.nbytes for a in result.channels.values()))

    # -- names -------------------------------------------------------------------
    def _prefix_for(self, series: Optional[int]) -> str:
        return paths.expand_id(self.prefix or self.settings.prefix, series)

    def _user_path(self, name: str, what: str) -> str:
        """The full path for a name from spec (see paths.resolve_user_path)."""
        return paths.resolve_user_path(self.settings.data_directory, name, what)

    # -- statistics on the latest image ------------------------------------------
    def _delivery_key(self) -> tuple:
        options = self.options
        return (int(options.rotation), bool(options.flipv), bool(options.fliph),
                self.low_filter, self.high_filter)

    def _stat(self, kind: str, bounds: Optional[tuple] = None) -> Any:
        self._check_result({"sum": "sum", "max": "maxval"}.get(kind, "roi"))
        if kind == "roi":
            value = roi_stage.known_sum(self._latest.held, bounds, *self._delivery_key())
            if value is not None:
                return value
        else:
            self._full_asked = True
        image_key, latest = self._latest.delivered(self._delivery_key())
        if latest is None:
            running = not self._book.complete()
            raise DataError("the running count has no result yet; wait for get_status 0"
                            if running else "No acquisition done")
        key = (image_key, kind, bounds)
        found, value = self._latest.cached(key)
        if found:
            return value
        if kind == "sum":
            value = imageproc.masked_sum(latest.data)
        elif kind == "max":
            value = imageproc.masked_max(latest.data)
        else:
            r0, r1, c0, c1 = bounds  # type: ignore[misc]
            value = imageproc.roi_sum(latest.data, r0, r1, c0, c1)
        self._latest.remember(key, value)
        return value
