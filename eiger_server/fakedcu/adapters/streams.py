"""ZeroMQ adapters of the fake DCU: stream V1 (JSON multipart) and V2 (CBOR).

Each adapter is a :class:`~eiger_server.fakedcu.interfaces.FrameSink`. The
acquisition engine calls ``series_start``/``frame``/``series_end`` on its own
thread; those calls only put work on a bounded queue. The adapter's sender
thread compresses, encodes and sends, so a slow or absent receiver never
stalls the engine: when the queue is full the frame is dropped and counted
in ``status()["dropped"]``, as the real DCU does.

The stream configuration (``mode``, ``header_detail``, ``header_appendix``,
``image_appendix``, ``format``) is read from the model at series start.
"""
from __future__ import annotations

import collections
import datetime as _dt
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Set, Tuple

import numpy as np
import zmq

from eiger_server.formats import stream_v1, stream_v2
from eiger_server.formats.compression import (Buffer, compress_buffer, lz4_hdf5_single_block,
                                              v1_encoding)
from eiger_server.formats.decode import Encoded
from eiger_server.fakedcu.interfaces import Frame, SeriesEnd, SeriesStart

log = logging.getLogger(__name__)

__all__ = [
    "StreamFaults",
    "StreamV1Adapter",
    "StreamV2Adapter",
]

_BOGUS_ENCODING = "zstd-bogus<"
_BOGUS_ALGORITHM = "bogus"

_DEFAULT_QUEUE_FRAMES = 256
_DEFAULT_QUEUE_BYTES = 1 << 30
_DEFAULT_SNDHWM = 64
_POLL_MS = 100


@dataclass
class StreamFaults:
    """Frame indices (``image_id``) the adapter mistreats on purpose.

    Used by the receiver's reliability tests. Changing the sets while a
    series runs is allowed; each frame is checked when it is sent.
    """

    drop: Set[int] = field(default_factory=set)          # never sent
    duplicate: Set[int] = field(default_factory=set)     # sent twice
    corrupt: Set[int] = field(default_factory=set)       # blob truncated and garbled
    bad_encoding: Set[int] = field(default_factory=set)  # unknown encoding name
    stale_series: Set[int] = field(default_factory=set)  # previous series number

    def clear(self) -> None:
        for name in ("drop", "duplicate", "corrupt", "bad_encoding", "stale_series"):
            getattr(self, name).clear()


def _garble(blob: Buffer) -> bytes:
    """A truncated copy of ``blob`` with its first bytes inverted."""
    view = memoryview(blob).cast("B")
    cut = bytearray(view[: max(1, view.nbytes // 2)])
    for i in range(min(16, len(cut))):
        cut[i] ^= 0xFF
    return bytes(cut)


@dataclass
class _Config:
    """Stream settings captured at series start."""

    active: bool
    header_detail: str = "basic"
    header_appendix: Any = ""
    image_appendix: Any = ""


@dataclass
class _Series:
    """Per-series state of the sender thread."""

    start: SeriesStart
    cfg: _Config
    stale_id: int
    series_date: _dt.datetime
    extra: Dict[str, Any] = field(default_factory=dict)


class _StreamAdapter:
    """Queue, sender thread and PUSH socket shared by both stream versions."""

    kind = "?"

    def __init__(self, model: Any, host: str = "127.0.0.1", port: int = 0, *,
                 queue_frames: int = _DEFAULT_QUEUE_FRAMES,
                 queue_bytes: int = _DEFAULT_QUEUE_BYTES,
                 sndhwm: int = _DEFAULT_SNDHWM,
                 context: Optional[zmq.Context] = None) -> None:
        self.model = model
        self.host = host
        self.port: Optional[int] = port or None
        self._want_port = port
        self.faults = StreamFaults()
        self._queue_frames = max(1, queue_frames)
        self._queue_bytes = max(1, queue_bytes)
        self._sndhwm = sndhwm
        self._context = context or zmq.Context.instance()
        self._socket: Optional[zmq.Socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        # (kind, item, size, when to send: the profile's stream latency)
        self._items: Deque[Tuple[str, Any, int, float]] = collections.deque()
        self._queued_frames = 0
        self._queued_bytes = 0
        self._busy = False
        self._active = False          # engine side: current series streams here
        self._dropped = 0
        self._error = ""
        self._last_series_id: Optional[int] = None
        self._series: Optional[_Series] = None
        self._hash_memo: "collections.OrderedDict[int, Tuple[Any, str]]" = collections.OrderedDict()
        self.frames_sent = 0
        self.messages_sent = 0
        # Benchmarks set this: a full queue makes the engine wait instead of
        # dropping, so frames go out as fast as ZeroMQ and the receiver allow.
        self.lossless = False

    # ------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        """The address receivers connect to."""
        return f"tcp://{self.host}:{self.port}"

    def start(self) -> None:
        """Bind the PUSH socket and start the sender thread."""
        if self._thread is not None:
            return
        sock = self._context.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, self._sndhwm)
        sock.setsockopt(zmq.SNDTIMEO, 500)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self._want_port:
                sock.bind(f"tcp://{self.host}:{self._want_port}")
                self.port = self._want_port
            else:
                self.port = sock.bind_to_random_port(f"tcp://{self.host}")
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(f"stream {self.kind}: cannot bind tcp://{self.host}:"
                          f"{self._want_port}: {exc}; choose another port") from exc
        self._socket = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"stream-{self.kind}",
                                        daemon=True)
        self._thread.start()
        log.info("stream %s pushing on %s", self.kind, self.endpoint)

    def close(self) -> None:
        """Stop the sender thread (unsent messages are discarded) and close the socket."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread.join(timeout=5)
        self._thread = None

    def initialize(self) -> None:
        """Forget errors and the drop counter (the stream `initialize` command)."""
        self._dropped = 0
        self._error = ""

    # --------------------------------------------------------------- status
    def _read(self, name: str, start: Optional[SeriesStart] = None) -> Any:
        value = None
        if self.model is not None:
            try:
                value = self.model.config_value("stream", name)
            except Exception:  # absent on this API version, or model not ready
                value = None
        if isinstance(value, dict) and "value" in value:
            value = value["value"]
        if value is None and start is not None:
            value = start.stream.get(name)
        return value

    def _wants(self, mode: Any, fmt: Any, api: str) -> bool:
        raise NotImplementedError

    def _read_active(self, start: Optional[SeriesStart] = None) -> bool:
        api = start.api if start is not None else str(getattr(self.model, "api", "") or "")
        return self._wants(self._read("mode", start), self._read("format", start), api)

    def status(self) -> Dict[str, Any]:
        """SIMPLON-like stream status: state, error, dropped."""
        ready = self._thread is not None and self._read_active()
        return {"state": "ready" if ready else "disabled", "error": self._error,
                "dropped": self._dropped}

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued has been sent; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy,
                                       timeout=timeout)

    # ------------------------------------------------------- FrameSink side
    def series_start(self, start: SeriesStart) -> None:
        try:
            active = self._read_active(start)
            cfg = _Config(active=active)
            if active:
                detail = self._read("header_detail", start) or "basic"
                cfg.header_detail = detail if detail in ("all", "basic", "none") else "basic"
                cfg.header_appendix = self._read("header_appendix", start) or ""
                cfg.image_appendix = self._read("image_appendix", start) or ""
        except Exception as exc:  # bad config must not stop the acquisition
            log.exception("stream %s: cannot read the stream configuration", self.kind)
            self._error = f"stream configuration unreadable: {exc}"
            cfg = _Config(active=False)
        self._active = cfg.active and self._thread is not None
        if self._active:
            self._put("start", (start, cfg), 0, control=True)

    def frame(self, frame: Frame) -> None:
        if not self._active:
            return
        if frame.encoded:
            size = sum(len(b) for b in frame.encoded.values())
        else:
            size = sum(a.nbytes for a in frame.data.values())
        self._put("frame", frame, size, control=False)

    def series_end(self, end: SeriesEnd) -> None:
        if self._active:
            self._put("end", end, 0, control=True)
        self._active = False

    def _put(self, kind: str, item: Any, size: int, control: bool) -> None:
        with self._cond:
            if not control:
                def full() -> bool:
                    return (self._queued_frames >= self._queue_frames
                            or bool(self._queued_frames
                                    and self._queued_bytes + size > self._queue_bytes))
                while self.lossless and full() and not self._stop.is_set():
                    self._cond.wait(0.1)
                if full():
                    self._dropped += 1
                    return
                self._queued_frames += 1
                self._queued_bytes += size
            latency = getattr(getattr(self.model, "profile", None), "stream_latency", 0.0)
            self._items.append((kind, item, size, time.monotonic() + latency))
            self._cond.notify()

    # ---------------------------------------------------------- sender side
    def _run(self) -> None:
        sock = self._socket
        try:
            while not self._stop.is_set():
                with self._cond:
                    while not self._items and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._stop.is_set():
                        break
                    kind, item, size, due = self._items.popleft()
                    if kind == "frame":
                        self._queued_frames -= 1
                        self._queued_bytes -= size
                    self._busy = True
                wait = due - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
                try:
                    self._handle(kind, item)
                except Exception as exc:  # one bad frame must not kill the stream
                    log.exception("stream %s: cannot send %s", self.kind, kind)
                    self._error = f"cannot send {kind}: {exc}"
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            with self._cond:
                self._items.clear()
                self._queued_frames = self._queued_bytes = 0
                self._busy = False
                self._cond.notify_all()
            if sock is not None:
                sock.close(0)
            self._socket = None

    def _handle(self, kind: str, item: Any) -> None:
        if kind == "start":
            start, cfg = item
            stale = self._last_series_id
            if stale is None or stale == start.series_id:
                stale = start.series_id - 1
            self._series = _Series(start=start, cfg=cfg, stale_id=stale,
                                   series_date=_dt.datetime.now(_dt.timezone.utc))
            self._last_series_id = start.series_id
            self._hash_memo.clear()
            self._send_start(self._series)
        elif kind == "frame":
            series = self._series
            if series is None or item.series_id != series.start.series_id:
                log.debug("stream %s: frame of series %s outside its series", self.kind,
                          item.series_id)
                return
            index = item.image_id
            faults = self.faults
            if index in faults.drop:
                return
            copies = 2 if index in faults.duplicate else 1
            self._send_frame(series, item, copies)
            self.frames_sent += 1
        elif kind == "end":
            if self._series is not None:
                self._send_end(self._series, item)
            self._series = None

    def _send(self, parts: List[Any]) -> bool:
        """Send one (multipart) message, waiting for a peer; False when stopping."""
        sock = self._socket
        assert sock is not None, "send before the socket was bound"
        while not self._stop.is_set():
            if not sock.poll(_POLL_MS, zmq.POLLOUT):
                continue
            try:
                sock.send_multipart(parts, copy=False)
            except zmq.Again:
                continue
            self.messages_sent += 1
            return True
        return False

    def _payload(self, series: _Series, frame: Frame, channel: str,
                 method: str) -> Tuple[Buffer, Any]:
        """Compressed data of one channel and the pre-encoded blob it came
        from (None when it was compressed here)."""
        source = frame.encoded.get(channel) if frame.encoded else None
        if source is not None:
            compression = series.start.compression
            if method == compression:
                return source, source
            if method == "lz4-raw" and compression == "lz4":
                raw = lz4_hdf5_single_block(source)
                if raw is not None:
                    return raw, source
        return compress_buffer(frame.data[channel], method), None

    def _send_start(self, series: _Series) -> None:
        raise NotImplementedError

    def _send_frame(self, series: _Series, frame: Frame, copies: int) -> None:
        raise NotImplementedError

    def _send_end(self, series: _Series, end: SeriesEnd) -> None:
        raise NotImplementedError


# ============================================================== stream V1
class StreamV1Adapter(_StreamAdapter):
    """Stream V1 ("legacy"): multipart JSON headers plus binary blobs, one channel."""

    kind = "v1"

    def _wants(self, mode: Any, fmt: Any, api: str) -> bool:
        if mode != "enabled":
            return False
        if api.startswith("1.6"):
            return True
        return fmt in (None, "", "legacy")

    def _md5(self, blob: Buffer, source: Any) -> str:
        """md5 hex digest of ``blob``; ``source`` is the pre-encoded object it
        came from (or None). Caches hand the same blobs out again and again,
        so their digests are remembered (keyed by identity, object kept alive)."""
        if source is not None:
            hit = self._hash_memo.get(id(source))
            if hit is not None and hit[0] is source:
                return hit[1]
        digest = hashlib.md5(blob).hexdigest()
        if source is not None:
            self._hash_memo[id(source)] = (source, digest)
            if len(self._hash_memo) > 64:
                self._hash_memo.popitem(last=False)
        return digest

    def _send_start(self, series: _Series) -> None:
        start, cfg = series.start, series.cfg
        self._send(stream_v1.encode_header(
            start.series_id, cfg.header_detail, start.config, flatfield=start.flatfield,
            pixel_mask=start.pixel_mask, countrate_table=start.countrate_table,
            appendix=cfg.header_appendix))

    def _send_frame(self, series: _Series, frame: Frame, copies: int) -> None:
        start, cfg = series.start, series.cfg
        channel = start.channels[0] if start.channels else next(iter(frame.data))
        method = "lz4-raw" if start.compression == "lz4" else start.compression
        blob, source = self._payload(series, frame, channel, method)
        digest = self._md5(blob, source)
        size = memoryview(blob).nbytes
        index = frame.image_id
        faults = self.faults
        encoding = v1_encoding(start.compression, start.dtype)
        if index in faults.bad_encoding:
            encoding = _BOGUS_ENCODING
        if index in faults.corrupt:
            blob = _garble(blob)   # header keeps the true size and hash
        series_no = series.stale_id if index in faults.stale_series else start.series_id
        image = Encoded(blob, encoding, _shape(start, frame, channel), np.dtype(start.dtype))
        parts = stream_v1.encode_image(
            series_no, index, image, hash=digest, size=size,
            times_ns=(frame.start_time_ns, frame.stop_time_ns, frame.real_time_ns),
            appendix=cfg.image_appendix, clock_ticks=start.api.startswith("1.6"))
        for _ in range(copies):
            if not self._send(parts):
                return

    def _send_end(self, series: _Series, end: SeriesEnd) -> None:
        self._send(stream_v1.encode_end(end.series_id))


# ============================================================== stream V2
class StreamV2Adapter(_StreamAdapter):
    """Stream V2: one self-described CBOR map per zmq message, all channels."""

    kind = "v2"

    def _wants(self, mode: Any, fmt: Any, api: str) -> bool:
        return mode == "enabled" and not api.startswith("1.6") and fmt == "cbor"

    def _send_start(self, series: _Series) -> None:
        start, cfg = series.start, series.cfg
        arrays = cfg.header_detail == "all"
        msg = stream_v2.start_message(
            start.series_id, start.series_unique_id, series.series_date, start.config,
            nimages=int(start.nimages) * max(1, int(start.ntrigger)), width=start.width,
            height=start.height, dtype=start.dtype, channels=start.channels,
            pixel_mask=start.pixel_mask if arrays else None,
            flatfield=start.flatfield if arrays else None,
            countrate_table=start.countrate_table if arrays else None,
            user_data=cfg.header_appendix)
        self._send([stream_v2.encode_start(msg)])

    def _channel(self, series: _Series, frame: Frame, channel: str, bogus: bool,
                 corrupt: bool) -> Encoded:
        """One channel as it is sent, faults applied."""
        start = series.start
        dtype = np.dtype(start.dtype)
        method = start.compression
        blob, _ = self._payload(series, frame, channel, method)
        if corrupt:
            blob = _garble(blob)
        if bogus:
            algorithm, elem_size = _BOGUS_ALGORITHM, dtype.itemsize
        elif method in ("bslz4", "lz4"):
            algorithm, elem_size = method, dtype.itemsize if method == "bslz4" else 0
        else:
            algorithm, elem_size = "raw", 0
        return Encoded(blob, algorithm, _shape(start, frame, channel), dtype, elem_size,
                       v2=True)

    def _send_frame(self, series: _Series, frame: Frame, copies: int) -> None:
        start, cfg = series.start, series.cfg
        index = frame.image_id
        faults = self.faults
        bogus = index in faults.bad_encoding
        corrupt = index in faults.corrupt
        channels = {ch: self._channel(series, frame, ch, bogus, corrupt)
                    for ch in start.channels
                    if ch in frame.data or (frame.encoded and ch in frame.encoded)}
        blob = stream_v2.encode_image(
            series.stale_id if index in faults.stale_series else start.series_id,
            start.series_unique_id, index, channels, series_date=series.series_date,
            times_ns=(frame.start_time_ns, frame.stop_time_ns, frame.real_time_ns),
            user_data=cfg.image_appendix)
        for _ in range(copies):
            if not self._send([blob]):
                return

    def _send_end(self, series: _Series, end: SeriesEnd) -> None:
        self._send([stream_v2.encode_end(end.series_id, end.series_unique_id)])


def _shape(start: SeriesStart, frame: Frame, channel: str) -> Tuple[int, int]:
    """(height, width) of one channel of a frame: its array's, else the series'."""
    array = frame.data.get(channel)
    height, width = array.shape[-2:] if array is not None else (start.height, start.width)
    return int(height), int(width)
