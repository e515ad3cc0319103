"""The stream receiver: one thread, one ZeroMQ PULL socket, events out.

The thread connects to the DCU's stream port (ZeroMQ reconnects by itself
when the DCU restarts), polls with a short timeout so :meth:`StreamReceiver.stop`
is prompt, parses each message (streamv1/stream_v2) and hands the event to a
callback. It keeps the books of each series by the stream's own series
numbers:

* a frame number jumping ahead means frames were lost: each lost frame is
  counted and logged at warning ("frame 17 of series 4 lost");
* a frame number seen before is a duplicate, an image of a series that has
  already ended or been replaced is stale: both are counted, logged and not
  passed on;
* a series header always starts a new series, even with a number seen
  before (a restarted DCU counts from 1 again).

Messages that cannot be understood become :class:`StreamErrorEvent` events;
nothing raises out of the thread.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Optional

import zmq

from eiger_server.formats import stream_v1
from eiger_server.formats import stream_v2
from eiger_server.formats.stream_events import Event, ImageMessage, SeriesEnd, SeriesHeader, StreamErrorEvent
from eiger_server.observe.hooks import NO_OBSERVER, StreamObserver, notify

log = logging.getLogger(__name__)

_MAX_LOST_LINES = 20          # lost frames named one by one per gap, then a summary


class StreamReceiver:
    """Receives stream V1 or V2 messages from ``endpoint`` on its own thread.

    ``on_event(event)`` is called on the receiver thread for every header,
    accepted image, series end and error. It may block briefly (that is how
    back-pressure reaches the DCU) but must not raise. ``observer`` hears of
    every accepted header, image (with its raw message parts) and end.
    """

    def __init__(self, endpoint: str, version: str, on_event: Callable[[Event], Any], *,
                 rcvhwm: int = 64, poll_ms: int = 100,
                 context: Optional[zmq.Context] = None,
                 observer: StreamObserver = NO_OBSERVER) -> None:
        version = str(version).upper()
        if version not in ("V1", "V2"):
            raise ValueError(f"stream version {version!r} is not V1 or V2")
        self.endpoint = endpoint
        self.version = version
        self.on_event = on_event
        self.observer = observer
        self.rcvhwm = int(rcvhwm)
        self.poll_ms = int(poll_ms)
        self._parse = stream_v1.Parser() if version == "V1" else stream_v2.parse
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._stopped = False             # stop() was called: start() does nothing
        self._life = threading.Lock()     # start() and stop() one at a time
        self._thread: Optional[threading.Thread] = None
        self._connected = threading.Event()
        # bookkeeping (receiver thread writes, others read)
        self.messages = 0
        self.images = 0
        self.lost = 0
        self.duplicates = 0
        self.stale = 0
        self.errors = 0
        self.last_errors: Deque[str] = collections.deque(maxlen=5)
        self.current_series: Optional[int] = None
        self._next_frame = 0
        self._past: Deque[int] = collections.deque(maxlen=32)
        self._warned_stale: set = set()

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout: float = 2.0) -> None:
        """Start the thread; returns once the socket is connecting.

        A receiver that has been stopped stays stopped (start() does nothing),
        so one retired by another thread before it started never runs: make
        a new receiver to receive again.
        """
        with self._life:
            if self._stopped or (self._thread is not None and self._thread.is_alive()):
                return
            self._connected.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"stream-{self.version.lower()}-receiver")
            self._thread.start()
        self._connected.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (within about one poll period); for good."""
        with self._life:
            self._stopped = True
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread ---------------------------------------------------------
    def _run(self) -> None:
        sock = None
        try:
            sock = self._context.socket(zmq.PULL)
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            log.info("stream %s: receiving from %s", self.version, self.endpoint)
        except zmq.ZMQError as exc:
            self._error(f"cannot connect to {self.endpoint}: {exc}; check the DCU "
                        "address and the stream port options")
            if sock is not None:
                sock.close(0)
            self._connected.set()
            return
        self._connected.set()
        try:
            while not self._stop.is_set():
                try:
                    if not sock.poll(self.poll_ms, zmq.POLLIN):
                        continue
                    parts = sock.recv_multipart(copy=False)
                except zmq.ZMQError as exc:
                    if self._stop.is_set():
                        break
                    self._error(f"receiving from {self.endpoint} failed: {exc}")
                    time.sleep(self.poll_ms / 1000.0)
                    continue
                self.messages += 1
                try:
                    event = self._parse(parts)
                    if self._track(event):
                        self.on_event(event)
                        notify(self.observer, parts, event, self.version)
                except Exception as exc:          # nothing may kill the receiver
                    log.exception("stream %s: handling a message failed", self.version)
                    self._error(f"handling a message failed: {exc}")
        finally:
            sock.close(0)
            log.info("stream %s: receiver for %s stopped", self.version, self.endpoint)

    def _error(self, message: str) -> None:
        self.errors += 1
        self.last_errors.append(message)
        if self.errors <= 20 or self.errors % 1000 == 0:
            log.warning("stream %s: %s", self.version, message)

    # -- series bookkeeping ---------------------------------------------------
    def _retire_current(self) -> None:
        if self.current_series is not None:
            self._past.append(self.current_series)
        self.current_series = None

    def _track(self, event: Event) -> bool:
        """Update the books; False for an event that must not be passed on."""
        if isinstance(event, ImageMessage):
            return self._track_image(event)
        if isinstance(event, SeriesHeader):
            if self.current_series is not None and self.current_series != event.series:
                log.debug("series %s replaced by series %s before its end",
                          self.current_series, event.series)
            self._retire_current()
            try:
                self._past.remove(event.series)
            except ValueError:
                pass
            self.current_series = event.series
            self._next_frame = 0
            self._warned_stale.discard(event.series)
            log.info("stream %s: series %s starts", self.version, event.series)
            return True
        if isinstance(event, SeriesEnd):
            if event.series == self.current_series:
                self._retire_current()
                log.info("stream %s: series %s ends after frame %s", self.version,
                         event.series, self._next_frame - 1)
            else:
                log.debug("stream %s: end of series %s, which is not current (%s)",
                          self.version, event.series, self.current_series)
            return True
        if isinstance(event, StreamErrorEvent):
            where = ""
            if event.frame is not None:
                where = f"frame {event.frame} of series {event.series}: "
            self._error(where + event.message)
            if (event.frame is not None and event.series == self.current_series
                    and event.frame >= self._next_frame):
                self._next_frame = event.frame + 1   # not lost: it came, unreadable
            return True
        return True

    def _track_image(self, event: ImageMessage) -> bool:
        series, frame = event.series, event.frame
        if series != self.current_series:
            if series in self._past:
                self.stale += 1
                if series not in self._warned_stale:
                    self._warned_stale.add(series)
                    log.warning("stream %s: frame %s of series %s arrived after that series "
                                "ended; ignored", self.version, frame, series)
                return False
            # No header seen (connected mid-series, or the header was lost):
            # follow the series from this frame on.
            log.info("stream %s: images of series %s without a series header; following "
                     "it from frame %s", self.version, series, frame)
            self._retire_current()
            self.current_series = series
            self._next_frame = frame
        if frame < self._next_frame:
            self.duplicates += 1
            log.warning("stream %s: frame %s of series %s received again; ignored",
                        self.version, frame, series)
            return False
        if frame > self._next_frame:
            missing = frame - self._next_frame
            self.lost += missing
            for number in range(self._next_frame, min(frame, self._next_frame + _MAX_LOST_LINES)):
                log.warning("frame %s of series %s lost", number, series)
            if missing > _MAX_LOST_LINES:
                log.warning("... %s more frames of series %s lost (frames %s to %s)",
                            missing - _MAX_LOST_LINES, series,
                            self._next_frame + _MAX_LOST_LINES, frame - 1)
        self._next_frame = frame + 1
        self.images += 1
        return True
