"""The observer of the stream: counts, the latest image, rates and series summaries.

The stream path calls it (see hooks.py) with what it already has; each call
is a few counter updates and reference assignments. Everything slower (rates,
log lines, summaries, file sizes) happens on the observer's own reporter
thread or when someone asks (the HTTP server, /metrics).

* At verbosity 3 (PROGRESS), while a series streams, a line every
  ``interval`` seconds: frames/s, MB/s, queue fill.
* When a series is over (its end message came and the pipeline has settled:
  the decode and save queues are empty and the counts stop moving), one INFO
  line: images received, decoded, saved, dropped by cause, duration, rates,
  files written and their total size.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from eiger_server.logsetup import PROGRESS

log = logging.getLogger(__name__)

DROP_CAUSES = ("lost", "unreadable", "unsaved")
_IGNORED = ("duplicates", "stale")
_SETTLE = 0.5          # seconds the counts must stand still before a summary
_SETTLE_MAX = 20.0     # a summary is written this long after the end at the latest


def header_meta(header: Any) -> Dict[str, Any]:
    """The series' header values that fit in JSON (numbers, text, short lists)."""
    meta: Dict[str, Any] = {}
    for key, value in (getattr(header, "config", None) or {}).items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            meta[str(key)] = value
        elif isinstance(value, (list, tuple)) and len(value) <= 16 and all(
                isinstance(v, (bool, int, float, str)) for v in value):
            meta[str(key)] = list(value)
        elif isinstance(value, Mapping) and len(value) <= 16 and all(
                isinstance(v, (bool, int, float, str)) for v in value.values()):
            meta[str(key)] = {str(k): v for k, v in value.items()}
    meta["series"] = header.series
    if getattr(header, "channels", None):
        meta["channels"] = list(header.channels)
    if getattr(header, "nimages", None) is not None:
        meta["nimages_expected"] = header.nimages
    return meta


@dataclass
class SeriesStats:
    """What happened to one series."""

    series: int
    started: float = field(default_factory=time.monotonic)
    first: Optional[float] = None           # first and last image's arrival
    last: Optional[float] = None
    ended: Optional[float] = None           # end message (or replaced by the next series)
    received: int = 0
    nbytes: int = 0
    decoded: int = 0
    saved: int = 0
    files: int = 0
    file_bytes: int = 0
    base: Dict[str, int] = field(default_factory=dict)   # stream counters at the start
    dropped: Dict[str, int] = field(default_factory=dict)
    ignored: Dict[str, int] = field(default_factory=dict)
    logged: Tuple[int, int] = (0, 0)        # (received, nbytes) at the last rate line

    def summary(self) -> Dict[str, Any]:
        span = (self.last - self.first) if self.first is not None and self.last else 0.0
        duration = ((self.last or self.started) - self.started)
        out = asdict(self)
        for key in ("started", "first", "last", "ended", "base", "logged"):
            out.pop(key)
        out.update(duration=round(duration, 3),
                   fps=round((self.received - 1) / span, 1) if span > 0 else 0.0,
                   mbps=round(self.nbytes / span / 1e6, 1) if span > 0 else 0.0,
                   dropped_total=sum(self.dropped.values()))
        return out


class Observer:
    """Implements hooks.StreamObserver; the source of /status, /metrics, the page.

    ``counters`` gives the data path's own counts (StreamHandler.counters);
    ``publisher`` (publish.Publisher) re-publishes what arrives.
    """

    def __init__(self, counters: Callable[[], Dict[str, int]] = dict, *,
                 publisher: Any = None, interval: float = 3.0) -> None:
        self._counters = counters
        self.publisher = publisher
        self.interval = float(interval)
        self._lock = threading.Lock()
        # totals (receiver thread writes received/nbytes; workers decoded under _lock)
        self.received = 0
        self.nbytes = 0
        self.decoded = 0
        self.saved = 0
        self.files = 0
        self.file_bytes = 0
        # the latest decoded image: a reference, never a copy
        self.latest: Optional[Tuple[int, Any, Mapping[str, Any]]] = None
        self._image_id = 0
        self.current: Optional[SeriesStats] = None
        self._by_series: Dict[int, SeriesStats] = {}
        self._ending: List[SeriesStats] = []
        self.summaries: Deque[Dict[str, Any]] = collections.deque(maxlen=20)
        self.fps = 0.0
        self.mbps = 0.0
        self._settle_key: Any = None          # the counts the reporter saw last
        self._settle_since = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- hooks (stream threads) -------------------------------------------------
    def on_series_start(self, header: Any, version: str) -> None:
        meta = header_meta(header)
        self._begin(header.series)
        if self.publisher is not None:
            self.publisher.series_start(meta, version)

    def on_frame(self, parts: Sequence[Any], series: int, frame: int, nbytes: int,
                 version: str) -> None:
        stats = self.current
        if stats is None or stats.series != series:
            stats = self._begin(series)     # images without a header
        now = time.monotonic()
        if stats.first is None:
            stats.first = now
        stats.last = now
        stats.received += 1
        stats.nbytes += nbytes
        self.received += 1
        self.nbytes += nbytes
        if self.publisher is not None:
            self.publisher.send_frame(parts, series, frame, version)

    def on_image(self, image: Any, meta: Mapping[str, Any]) -> None:
        n = max(1, _number(meta.get("nframes"), 1)) if meta.get("accumulated") else 1
        with self._lock:
            self.decoded += n
            stats = self._by_series.get(meta.get("series", -1))
            if stats is not None:
                stats.decoded += n
            latest = self.latest
            # two workers may finish out of order: keep the newest frame
            if latest is None or latest[2].get("series") != meta.get("series") or \
                    _number(latest[2].get("frame")) <= _number(meta.get("frame")):
                self._image_id += 1
                self.latest = (self._image_id, image, meta)
        if self.publisher is not None:
            self.publisher.offer_decoded(image, meta)

    def on_saved(self, paths: Sequence[str], nimages: int) -> None:
        files = _with_data_files(paths)
        size = 0
        for path in files:
            try:
                size += os.stat(path).st_size
            except OSError:
                pass
        count = len(files)
        with self._lock:
            self.saved += nimages
            self.files += count
            self.file_bytes += size
            # saved in arrival order: the oldest series not yet summed up
            stats = self._ending[0] if self._ending else self.current
            if stats is not None:
                stats.saved += nimages
                stats.files += count
                stats.file_bytes += size

    def on_series_end(self, series: int) -> None:
        stats = self._by_series.get(series)
        if stats is not None and stats.ended is None:
            stats.ended = time.monotonic()
            with self._lock:
                self._ending.append(stats)
        if self.publisher is not None:
            self.publisher.series_end(series)

    # -- the rest of the server ----------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._report, name="observe-reporter",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self._finish_all()

    def counters(self) -> Dict[str, int]:
        try:
            return dict(self._counters())
        except Exception as exc:            # the stream may be closing
            log.debug("stream counters unreadable: %s", exc)
            return {}

    def snapshot(self) -> Dict[str, Any]:
        """Totals, rates and the data path's counters, for /status and /metrics."""
        counters = self.counters()
        current = self.current
        latest = self.latest
        image = None
        if latest is not None:
            ident, array, meta = latest
            image = {"id": ident, "series": meta.get("series"), "frame": meta.get("frame"),
                     "shape": list(getattr(array, "shape", ())),
                     "dtype": str(getattr(array, "dtype", "")),
                     "nframes": meta.get("nframes", 1)}
        return {"series": current.series if current is not None else None,
                "streaming": current is not None and current.ended is None,
                "received": self.received, "bytes_received": self.nbytes,
                "decoded": self.decoded, "saved": self.saved, "files": self.files,
                "file_bytes": self.file_bytes, "fps": round(self.fps, 1),
                "mbps": round(self.mbps, 1), "counters": counters, "image": image,
                "last_series": self.summaries[-1] if self.summaries else None}

    # -- internals ---------------------------------------------------------------------
    def _begin(self, series: int) -> SeriesStats:
        old = self.current
        if old is not None and old.ended is None:
            self.on_series_end(old.series)   # replaced before its end
        stats = SeriesStats(series, base=self.counters())
        with self._lock:
            self._by_series[series] = stats
            for key in list(self._by_series)[:-8]:
                if self._by_series[key] not in self._ending:
                    self._by_series.pop(key)
        self.current = stats
        return stats

    def _report(self) -> None:
        last_t, last_n, last_b = time.monotonic(), self.received, self.nbytes
        last_log = last_t
        while not self._stop.wait(0.5):
            now = time.monotonic()
            n, b = self.received, self.nbytes
            dt = max(1e-6, now - last_t)
            self.fps, self.mbps = (n - last_n) / dt, (b - last_b) / dt / 1e6
            last_t, last_n, last_b = now, n, b
            current = self.current
            if current is not None and current.ended is None and current.last is not None \
                    and now - current.last < self.interval and now - last_log >= self.interval:
                self._log_rates(current, now - last_log)
                last_log = now
            elif current is None or current.ended is not None:
                last_log = now
            self._finish_settled(now)

    def _log_rates(self, stats: SeriesStats, window: float) -> None:
        counters = self.counters()
        received, nbytes = stats.received, stats.nbytes
        prev, stats.logged = stats.logged, (received, nbytes)
        fps = (received - prev[0]) / window
        mbps = (nbytes - prev[1]) / window / 1e6
        depth = counters.get("queue_depth") or 0
        queue = counters.get("queue", 0)
        fill = f"{queue}/{depth} ({100.0 * queue / depth:.0f} %)" if depth else str(queue)
        log.log(PROGRESS, "series %s streaming: %.0f frames/s, %.1f MB/s, queue %s, save "
                "queue %s, %d images so far", stats.series, fps, mbps, fill,
                counters.get("save_queue", 0), received)

    def _finish_settled(self, now: float) -> None:
        with self._lock:
            ending = list(self._ending)
        if not ending:
            return
        counters = self.counters()
        key = (self.decoded, self.saved, tuple(sorted(counters.items())))
        if key != self._settle_key:
            self._settle_key, self._settle_since = key, now
        quiet = (counters.get("queue", 0) == 0 and counters.get("save_queue", 0) == 0
                 and now - self._settle_since >= _SETTLE)
        for stats in ending:
            if quiet or now - (stats.ended or now) > _SETTLE_MAX:
                self._finish(stats, counters)

    def _finish_all(self) -> None:
        with self._lock:
            ending = list(self._ending)
        current = self.current
        if current is not None and current.ended is None and current.received:
            ending.append(current)
        counters = self.counters()
        for stats in ending:
            self._finish(stats, counters)

    def _finish(self, stats: SeriesStats, counters: Dict[str, int]) -> None:
        with self._lock:
            if stats in self._ending:
                self._ending.remove(stats)
            if stats is self.current and stats.ended is None:
                stats.ended = time.monotonic()
        stats.dropped = {k: max(0, counters.get(k, 0) - stats.base.get(k, 0))
                         for k in DROP_CAUSES}
        stats.ignored = {k: max(0, counters.get(k, 0) - stats.base.get(k, 0))
                         for k in _IGNORED}
        summary = stats.summary()
        self.summaries.append(summary)
        dropped = ", ".join(f"{k} {v}" for k, v in stats.dropped.items())
        log.info("series %s summary: received %d, decoded %d, saved %d, dropped %d (%s), "
                 "in %.2f s: %.1f frames/s, %.1f MB/s; %d files written, %s",
                 stats.series, stats.received, stats.decoded, stats.saved,
                 summary["dropped_total"], dropped, summary["duration"], summary["fps"],
                 summary["mbps"], stats.files, _size(stats.file_bytes))


def _number(value: Any, default: int = -1) -> int:
    """An int from metadata, ``default`` when there is none (hooks never raise)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _with_data_files(paths: Sequence[str]) -> List[str]:
    """``paths`` and, for an HDF5 master, the data files beside it."""
    out = list(paths)
    for path in paths:
        if path.endswith("_master.h5"):
            stem = os.path.basename(path)[:-len("_master.h5")]
            directory = os.path.dirname(path) or "."
            try:
                out += sorted(os.path.join(directory, name) for name in os.listdir(directory)
                              if name.startswith(stem + "_") and "_data_" in name
                              and name.endswith(".h5"))
            except OSError:
                pass
    return out


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def to_json(value: Any) -> bytes:
    """JSON bytes of ``value``; what JSON cannot hold becomes text."""
    return json.dumps(value, default=_plain, separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)
