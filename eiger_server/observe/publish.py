"""``--publish tcp://HOST:PORT``: the stream re-published on a ZeroMQ PUB socket.

Every message is multipart, its first part the topic:

* ``start``   [topic, header JSON]: a series begins (its header values);
* ``image``   [topic, envelope JSON, header JSON, *the DCU's message parts]:
  every image exactly as received (still compressed); the envelope holds
  ``series``, ``frame``, ``version`` (V1/V2: how to parse the parts) and
  ``seq``, the image's number on this socket (a gap = images dropped);
* ``decoded`` [topic, envelope JSON, meta JSON, pixels]: with
  ``--publish-decoded HZ``, the latest decoded image at most HZ times a
  second (``dtype`` and ``shape`` in the envelope, C order, little-endian);
* ``end``     [topic, envelope JSON]: the series' end message came.

A slow subscriber never slows the server: sends never block; when a
subscriber's queue (the high-water mark) is full the message is dropped for
every subscriber and counted (``dropped``). The socket is an XPUB, so it knows
what is subscribed: a topic nobody subscribes to costs nothing (images are
not even handed to ZeroMQ). formats.stream_v1/stream_v2 parse the image
parts; :func:`eiger_server.listen` does all of it.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Any, Mapping, Optional, Sequence, Set

import numpy as np
import zmq

from eiger_server.observe.observer import to_json

log = logging.getLogger(__name__)

TOPIC_START, TOPIC_IMAGE, TOPIC_DECODED, TOPIC_END = b"start", b"image", b"decoded", b"end"
_SUBSCRIPTIONS_EVERY = 0.05       # seconds between reads of (un)subscriptions


class Publisher:
    """The PUB socket; ``send_frame`` and the series calls come from the
    receiver thread, decoded images go out from the publisher's own thread."""

    def __init__(self, address: str, *, hwm: int = 64, decoded_rate: float = 0.0,
                 context: Optional[zmq.Context] = None) -> None:
        self.address = address
        self._context = context or zmq.Context.instance()
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, max(1, int(hwm)))
        sock.setsockopt(zmq.LINGER, 0)
        # With NODROP a full subscriber queue makes a non-blocking send fail
        # (zmq.Again) instead of dropping silently: the drop can be counted.
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(f"--publish {address}: cannot bind: {exc}; give "
                          "tcp://HOST:PORT with a free port on this host") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._lock = threading.Lock()      # the socket is used by two threads, one at a time
        self.sent = 0
        self.dropped = 0
        self.decoded_sent = 0
        self._image_seq = 0                # receiver thread only
        self._header = b"{}"
        self._subscriptions: Set[bytes] = set()
        self._checked = 0.0
        self._wanted = {TOPIC_IMAGE: False, TOPIC_DECODED: False}
        self.decoded_rate = float(decoded_rate or 0.0)
        self._offer: Optional[tuple] = None
        self._offer_event = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if self.decoded_rate > 0:
            self._thread = threading.Thread(target=self._decoded_loop, daemon=True,
                                            name="observe-publish-decoded")
            self._thread.start()
        # Messages still queued hold image buffers zero-copy: the socket must be
        # closed before Python shuts down, or freeing them later crashes it.
        atexit.register(_close_at_exit, weakref.ref(self))
        log.info("publishing the stream on %s%s", self.endpoint,
                 f" (decoded images at most {self.decoded_rate:g}/s)" if self.decoded_rate
                 else "")

    # -- receiver thread ---------------------------------------------------------
    def series_start(self, meta: Mapping[str, Any], version: str) -> None:
        self._header = to_json(meta)
        self._send([TOPIC_START, self._header])

    def send_frame(self, parts: Sequence[Any], series: int, frame: int, version: str) -> None:
        if not self.wanted(TOPIC_IMAGE):
            self._image_seq += 1
            return
        envelope = b'{"series":%d,"frame":%d,"version":"%s","seq":%d}' % (
            series, frame, version.encode(), self._image_seq)
        self._image_seq += 1
        self._send([TOPIC_IMAGE, envelope, self._header, *parts])

    def series_end(self, series: int) -> None:
        self._send([TOPIC_END, b'{"series":%d}' % series])

    # -- worker threads: only a reference is kept ----------------------------------
    def offer_decoded(self, image: Any, meta: Mapping[str, Any]) -> None:
        if self._thread is not None:
            self._offer = (image, meta)
            self._offer_event.set()

    def close(self) -> None:
        self._stop.set()
        self._offer_event.set()
        if self._thread is not None:
            self._thread.join(2)
        with self._lock:
            if not self._sock.closed:
                self._sock.close(0)

    def wanted(self, topic: bytes) -> bool:
        """True when some subscriber takes ``topic`` (subscriptions re-read
        every 50 ms at most)."""
        now = time.monotonic()
        if now - self._checked >= _SUBSCRIPTIONS_EVERY:
            self._checked = now
            with self._lock:
                self._read_subscriptions()
        return self._wanted[topic]

    # -- internals -------------------------------------------------------------------
    def _read_subscriptions(self) -> None:
        """(under _lock) Take the XPUB's (un)subscription messages."""
        changed = False
        while True:
            try:
                message = self._sock.recv(zmq.NOBLOCK)
            except zmq.ZMQError:          # zmq.Again: none left (or closed)
                break
            if message[:1] == b"\x01":
                self._subscriptions.add(message[1:])
            elif message[:1] == b"\x00":
                self._subscriptions.discard(message[1:])
            changed = True
        if changed:
            for topic in self._wanted:
                self._wanted[topic] = any(topic.startswith(s) for s in self._subscriptions)
            log.debug("publish: subscriptions %s", sorted(self._subscriptions))
    def _send(self, message: list) -> None:
        with self._lock:
            try:
                self._sock.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
                self.sent += 1
            except zmq.Again:
                self.dropped += 1
            except zmq.ZMQError as exc:        # closed while stopping
                self.dropped += 1
                log.debug("publish: %s", exc)

    def _decoded_loop(self) -> None:
        period = 1.0 / self.decoded_rate
        while not self._stop.is_set():
            self._offer_event.wait()
            self._offer_event.clear()
            offer, self._offer = self._offer, None
            if offer is None or self._stop.is_set():
                continue
            image, meta = offer
            if not self.wanted(TOPIC_DECODED):
                continue
            array = np.ascontiguousarray(image)
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            envelope = to_json({"series": meta.get("series"), "frame": meta.get("frame"),
                                "dtype": array.dtype.str, "shape": list(array.shape),
                                "seq": self.decoded_sent})
            self._send([TOPIC_DECODED, envelope, to_json(dict(meta)), array])
            self.decoded_sent += 1
            # at most decoded_rate a second; the newest image offered meanwhile goes next
            self._stop.wait(period)


def _close_at_exit(ref: "weakref.ref[Publisher]") -> None:
    publisher = ref()
    if publisher is not None:
        publisher.close()
