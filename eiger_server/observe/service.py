"""Everything of eiger_server.observe put together for one server process.

``Observation(ctrl, options)`` attaches the observer to the stream, opens the
PUB socket (``--publish``) and the HTTP server (``--http-port``), and gives
the /status dict that the page, /status and /metrics show.
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import threading
import time
from typing import Any, Deque, Dict, Optional, Tuple

import requests

from eiger_server.observe.metrics import Metrics, TimedHandler
from eiger_server.observe.observer import DROP_CAUSES, Observer
from eiger_server.observe.publish import Publisher

log = logging.getLogger(__name__)

_DCU_EVERY = 1.0          # seconds between DCU state reads (only when asked for)
_DCU_TIMEOUT = 1.0


class ErrorLog(logging.Handler):
    """Keeps the last warnings and errors of the server for the live page."""

    def __init__(self, size: int = 8) -> None:
        super().__init__(logging.WARNING)
        self.records: Deque[Tuple[float, str, str]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.created, record.levelname, record.getMessage()))
        except Exception:                      # a bad format must not break logging
            pass


class DcuPoll:
    """The detector's state and the DCU's dropped count, read when asked for,
    at most once a second, with a short timeout, never by the command path."""

    def __init__(self, ctrl: Any) -> None:
        self.ctrl = ctrl
        self._lock = threading.Lock()
        self._at = 0.0
        self.value: Dict[str, Any] = {"state": "unknown", "dcu_reachable": False,
                                      "dcu_dropped": None}

    def read(self) -> Dict[str, Any]:
        if not self._lock.acquire(blocking=False):
            return dict(self.value)               # another request is reading it
        try:
            if time.monotonic() - self._at >= _DCU_EVERY:
                self.value = self._poll()
                self._at = time.monotonic()
            return dict(self.value)
        finally:
            self._lock.release()

    def _poll(self) -> Dict[str, Any]:
        simplon = self.ctrl.simplon
        if not getattr(simplon, "host", ""):
            return {"state": "no detector address", "dcu_reachable": False, "dcu_dropped": None}
        out: Dict[str, Any] = {"dcu_dropped": None}
        try:
            with requests.Session() as session:
                answer = session.get(simplon.url("detector", "status", "state"),
                                     timeout=_DCU_TIMEOUT)
                answer.raise_for_status()
                out["state"] = str(answer.json().get("value"))
                out["dcu_reachable"] = True
                try:
                    dropped = session.get(simplon.url("stream", "status", "dropped"),
                                          timeout=_DCU_TIMEOUT)
                    if dropped.ok:
                        out["dcu_dropped"] = int(dropped.json().get("value") or 0)
                except (requests.RequestException, ValueError, TypeError):
                    pass
        except Exception as exc:          # unreachable, not JSON, version unknown...
            log.debug("DCU state unreadable: %s", exc)
            out.update(state="unreachable", dcu_reachable=False)
        return out


class Observation:
    """The observer, the PUB socket, the metrics and the HTTP server of a server."""

    def __init__(self, ctrl: Any, options: Any) -> None:
        self.ctrl = ctrl
        self.options = options
        self.publisher: Optional[Publisher] = None
        self.http: Any = None
        address = getattr(options, "publish", None)
        if getattr(options, "publish_decoded", 0.0) and not address:
            log.warning("--publish-decoded needs --publish tcp://HOST:PORT; nothing is "
                        "published")
        if address:
            self.publisher = Publisher(address, hwm=getattr(options, "queue_depth", 64) or 64,
                                       decoded_rate=getattr(options, "publish_decoded", 0.0))
        self.observer = Observer(ctrl.stream.counters, publisher=self.publisher)
        ctrl.stream.observer = self.observer
        self.dcu = DcuPoll(ctrl)
        self.errors = ErrorLog()
        logging.getLogger("eiger_server").addHandler(self.errors)
        self.metrics = Metrics(self.status)
        self.observer.start()
        port = getattr(options, "http_port", None)
        if port is not None:
            from eiger_server.observe.http import LiveServer
            try:
                self.http = LiveServer(self, getattr(options, "bind", "") or "", port)
            except OSError:
                self.close()
                raise

    def wrap(self, handler: Any) -> Any:
        """The command handler with its requests timed for /metrics."""
        return TimedHandler(handler, self.metrics.request_latency)

    @property
    def url(self) -> str:
        return self.http.url if self.http is not None else ""

    def status(self) -> Dict[str, Any]:
        """The server as the page, /status and /metrics show it."""
        out = self.observer.snapshot()
        out.update(self.dcu.read())
        counters = out["counters"]
        by_cause = {cause: counters.get(cause, 0) for cause in DROP_CAUSES}
        if out.get("dcu_dropped") is not None:
            by_cause["dcu"] = out["dcu_dropped"]
        stream = self.ctrl.stream
        try:
            collected = stream.get_images_collected()
        except Exception:
            collected = counters.get("images_collected", 0)
        directory = str(getattr(self.ctrl.settings, "data_directory", "") or "")
        out.update(images_collected=collected, dropped=sum(by_cause.values()),
                   dropped_by_cause=by_cause, data_directory=directory,
                   free_disk_bytes=_free_bytes(directory),
                   counting=bool(_call(getattr(self.ctrl.acq, "counting", None))),
                   latest_file=getattr(stream, "latest_file", ""),
                   errors=[{"time": time.strftime("%H:%M:%S", time.localtime(t)),
                            "level": level, "message": message}
                           for t, level, message in list(self.errors.records)[::-1]])
        if self.publisher is not None:
            out["publish"] = {"address": self.publisher.endpoint, "sent": self.publisher.sent,
                              "dropped": self.publisher.dropped,
                              "decoded_sent": self.publisher.decoded_sent}
        return out

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        self.observer.close()
        if self.publisher is not None:
            self.publisher.close()
        logging.getLogger("eiger_server").removeHandler(self.errors)


def _call(func: Any) -> Any:
    try:
        return func() if func is not None else None
    except Exception:
        return None


def _free_bytes(directory: str) -> Optional[int]:
    """Free bytes where ``directory`` is (or would be created)."""
    path = os.path.abspath(directory or ".")
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
