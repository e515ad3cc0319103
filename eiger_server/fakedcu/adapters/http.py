"""HTTP adapter of the fake DCU: the SIMPLON REST API over http.server.

Routes (``<v>`` must be the model's API version):

* ``GET /detector/api/version/``
* ``GET|PUT /<subsystem>/api/<v>/<task>/<name with slashes>``,
  ``GET /<subsystem>/api/<v>/<task>/keys``
* ``GET|HEAD|DELETE /data/<name>`` (files of the file writer), ``GET /data/``
* ``GET /monitor/api/<v>/images``, ``images/monitor``, ``images/next``,
  ``images/<series>/<id>[/<threshold>]`` (TIFF; no other path). With no image
  the request waits ``?timeout=`` ms (default 500) and answers 408, as a DCU does.
* ``GET /filewriter/api/<v>/files/`` (the list of files, as status/files)
* fake-only controls: ``PUT /fake/trigger`` ``{"value": x}``, ``PUT /fake/set``
  ``{"subsystem", "task", "name", "value"}``, ``GET|PUT /fake/faults``,
  ``PUT /fake/restart``, ``GET /fake/state``

Errors answer with their status code and a plain-text body saying what went
wrong. The fault switches (:class:`Faults`, ``server.faults``) apply to every
route except ``/fake/``. JSON and the darray encoding of array values live
here only: the model takes and gives Python values and numpy arrays.
"""
from __future__ import annotations

import collections
import html
import json
import logging
import os
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from eiger_server.formats.darray import decode_darray, encode_darray
from eiger_server.fakedcu.device.model import FakeDCU, FakeDCUError
from eiger_server.fakedcu.device.definitions import API_VERSIONS, SUBSYSTEM_VERSIONS
from eiger_server.fakedcu.interfaces import FileStore, MonitorImages

log = logging.getLogger(__name__)

__all__ = ["FakeDCUHTTPServer", "DCURequestHandler", "Faults"]

_CHUNK = 1 << 20
_MAX_BODY = 512 * 1024 * 1024   # a 16M pixel mask as base64 JSON is ~100 MB


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays coming from stores
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _matches(spec: Any, name: str) -> bool:
    """Does a fault spec (True, "*", a name, or a list of names) apply to ``name``?"""
    if spec is True or spec == "*":
        return True
    if isinstance(spec, str):
        return spec == name
    if isinstance(spec, (list, tuple, set)):
        return "*" in spec or name in spec
    return False


class Faults:
    """Switches that make the fake DCU's REST API misbehave on purpose.

    * ``delay``: seconds added before every answer.
    * ``error500``: name -> text; that name (or ``"*"``: every name) answers
      HTTP 500 with the text.
    * ``drop_connection``: ``True``/``"*"``, a name or a list of names: the
      socket is closed without an answer.
    * ``serve_version``: False to answer 404 at ``/detector/api/version/``.
    """

    _FIELDS = ("delay", "error500", "drop_connection", "serve_version")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.delay = 0.0
        self.error500: Dict[str, str] = {}
        self.drop_connection: Any = False
        self.serve_version = True

    def update(self, values: Dict[str, Any]) -> None:
        """Set switches from a dict (the body of ``PUT /fake/faults``)."""
        if not isinstance(values, dict):
            raise FakeDCUError(400, "fault switches must be a JSON object, e.g. "
                                    '{"delay": 0.5, "error500": {"arm": "boom"}}')
        unknown = set(values) - set(self._FIELDS) - {"clear"}
        if unknown:
            raise FakeDCUError(400, f"unknown fault switch(es) {sorted(unknown)}; "
                                    f"known: {list(self._FIELDS)} and 'clear'")
        if values.get("clear"):
            self.clear()
        if "delay" in values:
            try:
                delay = float(values["delay"] or 0.0)
            except (TypeError, ValueError):
                raise FakeDCUError(400, "fault 'delay' must be a number of seconds") from None
            if not 0.0 <= delay <= 600.0:
                raise FakeDCUError(400, "fault 'delay' must be between 0 and 600 s")
            self.delay = delay
        if "error500" in values:
            e = values["error500"] or {}
            if isinstance(e, str):
                e = {e: "simulated internal error"}
            if not isinstance(e, dict):
                raise FakeDCUError(400, "fault 'error500' must be {name: text}")
            self.error500 = {str(k): str(v) for k, v in e.items()}
        if "drop_connection" in values:
            self.drop_connection = values["drop_connection"]
        if "serve_version" in values:
            self.serve_version = bool(values["serve_version"])

    def as_dict(self) -> Dict[str, Any]:
        return {"delay": self.delay, "error500": dict(self.error500),
                "drop_connection": self.drop_connection, "serve_version": self.serve_version}

    def error_for(self, name: str) -> Optional[str]:
        """The HTTP 500 text for ``name``, or None."""
        if not self.error500:
            return None
        if name in self.error500:
            return self.error500[name]
        return self.error500.get("*")

    def drops(self, name: str) -> bool:
        return bool(self.drop_connection) and _matches(self.drop_connection, name)


class _Drop(Exception):
    """Close the connection without answering (fault ``drop_connection``)."""


class DCURequestHandler(BaseHTTPRequestHandler):
    """One HTTP connection to the fake DCU."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeDCU/1.0"
    timeout = 300
    # headers and body go out in separate writes: without this, Nagle and
    # delayed ACKs add 40 ms to every answer on a kept-alive connection
    disable_nagle_algorithm = True
    server: "FakeDCUHTTPServer"

    # --------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def model(self) -> FakeDCU:
        return self.server.model

    def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain; charset=utf-8",
              head_only: bool = False) -> None:
        self.send_response(status)
        if body or status not in (204, 304):
            self.send_header("Content-Type", ctype)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head_only and self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj, default=_json_default).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _send_text(self, status: int, text: str) -> None:
        self._send(status, (text.rstrip("\n") + "\n").encode("utf-8"))

    def _body_left_unread(self) -> bool:
        """True when the request carried a body that was not read (an answer
        given before it, e.g. by a fault switch)."""
        if getattr(self, "_body_read", True):
            return False
        length = self.headers.get("Content-Length")
        return bool(length and length.strip() not in ("", "0"))

    def _read_body(self) -> Optional[Any]:
        self._body_read = True
        length = self.headers.get("Content-Length")
        if not length:
            return None
        try:
            n = int(length)
        except ValueError:
            raise FakeDCUError(400, f"Content-Length {length!r} is not a number") from None
        if n < 0 or n > _MAX_BODY:
            raise FakeDCUError(413, f"request body of {n} bytes is too large")
        raw = self.rfile.read(n)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FakeDCUError(400, f"request body is not valid JSON ({exc}); send "
                                    '{"value": ...} with Content-Type application/json') from None

    def _parts(self) -> List[str]:
        path = unquote(urlsplit(self.path).path)
        return [p for p in path.split("/") if p != ""]

    def _apply_faults(self, name: str) -> None:
        faults = self.server.faults
        if faults.delay:
            time.sleep(faults.delay)
        if faults.drops(name):
            raise _Drop()
        text = faults.error_for(name)
        if text is not None:
            raise FakeDCUError(500, text)

    def send_response(self, code: int, message: Optional[str] = None) -> None:
        entry = getattr(self, "_log_entry", None)
        if entry is not None:
            entry[2] = code
        super().send_response(code, message)

    def _dispatch(self, method: str) -> None:
        # Every request is recorded, so tests can check what a client asked for.
        self._log_entry = [method, self.path, None]
        self.server.request_log.append(self._log_entry)
        self._body_read = False
        try:
            parts = self._parts()
            if parts and parts[0] == "fake":
                self._fake(method, parts[1:])
                return
            self._route(method, parts)
        except _Drop:
            log.debug("dropping the connection for %s %s (fault switch)", method, self.path)
            self.close_connection = True
        except FakeDCUError as exc:
            if self._body_left_unread():
                # The unread body would be taken for the next request on this
                # keep-alive connection: answer, then close it.
                self.close_connection = True
            self._send_text(exc.status, exc.text)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # never let a request kill the server thread
            log.exception("%s %s failed", method, self.path)
            if self._body_left_unread():
                self.close_connection = True
            try:
                self._send_text(500, f"internal error of the fake DCU handling {method} "
                                     f"{self.path}: {exc!r}")
            except OSError:
                self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # ----------------------------------------------------------- routes
    def _route(self, method: str, parts: List[str]) -> None:
        if parts[:3] == ["detector", "api", "version"] and len(parts) == 3:
            self._apply_faults("version")
            self._need(method, ("GET", "HEAD"))
            if not self.server.faults.serve_version:
                raise FakeDCUError(404, "this DCU does not serve /detector/api/version/")
            self._send_json({"value": self.model.api, "value_type": "string"})
            return
        if parts and parts[0] == "data":
            self._data(method, "/".join(parts[1:]))
            return
        if len(parts) >= 4 and parts[1] == "api":
            subsystem, version = parts[0], parts[2]
            if version != self.model.api:
                raise FakeDCUError(404, f"API version {version} is not served here; this DCU "
                                        f"speaks {self.model.api} (GET /detector/api/version/)")
            if parts[3] == "images" and subsystem == "monitor":
                self._images(method, parts[4:])
                return
            if parts[3] == "files" and subsystem == "filewriter" and len(parts) == 4:
                self._apply_faults("files")
                self._need(method, ("GET", "HEAD"))
                self._send_json(self.server.files.list_files())
                return
            task = parts[3]
            name = "/".join(parts[4:])
            self._apply_faults(name or task)
            self._parameter(method, subsystem, task, name)
            return
        raise FakeDCUError(404, f"no such resource {self.path}; SIMPLON paths look like "
                                "/detector/api/<version>/config/<name>")

    @staticmethod
    def _need(method: str, allowed: Tuple[str, ...]) -> None:
        if method not in allowed:
            raise FakeDCUError(405, f"method {method} is not allowed here; use "
                                    f"{' or '.join(allowed)}")

    def _parameter(self, method: str, subsystem: str, task: str, name: str) -> None:
        model = self.model
        if name in ("", "keys") and task in ("config", "status", "command"):
            self._need(method, ("GET", "HEAD"))
            self._send_json(model.keys(subsystem, task))
            return
        if method in ("GET", "HEAD"):
            answer = model.get(subsystem, task, name)
            if isinstance(answer.get("value"), np.ndarray):
                answer = dict(answer, value=self.server.darray(subsystem, name, answer["value"]))
            self._send_json(answer)
        elif method == "PUT":
            body = self._read_body()
            if body is not None and not isinstance(body, dict):
                raise FakeDCUError(400, 'the request body must be a JSON object {"value": ...}')
            if task == "config" and body is not None and "value" in body:
                d = model.definition(subsystem, task, name)
                if d.access_mode != "r":    # read-only: the model refuses before decoding
                    body = dict(body, value=self._array(subsystem, name, d.darray,
                                                        body["value"], model.pixels()))
            answer = model.put(subsystem, task, name, body)
            if answer is None:
                self._send(200)
            else:
                self._send_json(answer)
        else:
            self._need(method, ("GET", "PUT"))

    @staticmethod
    def _array(subsystem: str, name: str, darray: Optional[str], value: Any,
               pixels: Tuple[int, int]) -> Any:
        """A PUT value as the model takes it: darray JSON decoded for array names
        (a real DCU takes the shape in either order when it matches the detector)."""
        if darray is None:
            return value
        try:
            return decode_darray(value, pixels)
        except ValueError as exc:
            raise FakeDCUError(400, f"{subsystem}/config/{name}: {exc}") from None

    def _data(self, method: str, name: str) -> None:
        self._apply_faults(name or "data")
        store = self.server.files
        if not name:
            self._need(method, ("GET", "HEAD"))
            links = "".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a><br>\n'
                            for n in store.list_files())
            self._send(200, f"<html><body>\n{links}</body></html>\n".encode(),
                       "text/html; charset=utf-8")
            return
        if method == "DELETE":
            try:
                store.delete_file(name)
            except KeyError as exc:
                raise FakeDCUError(404, _key_text(exc)) from None
            self._send(204)
            return
        self._need(method, ("GET", "HEAD", "DELETE"))
        try:
            path = store.file_path(name)
            f = open(path, "rb")
        except KeyError as exc:
            raise FakeDCUError(404, _key_text(exc)) from None
        except FileNotFoundError:
            raise FakeDCUError(404, f"file {name!r} vanished from the DCU buffer") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if method == "GET":
                # chunked copy: a file of hundreds of MB never sits in memory
                shutil.copyfileobj(f, self.wfile, _CHUNK)

    def _images(self, method: str, rest: List[str]) -> None:
        self._apply_faults("images")
        self._need(method, ("GET", "HEAD"))
        if self.model.api not in SUBSYSTEM_VERSIONS.get("monitor", API_VERSIONS):
            raise FakeDCUError(404, f"the monitor is not part of SIMPLON API {self.model.api}")
        store = self.server.monitor
        try:
            if not rest:
                self._send_json(store.image_list())
                return
            if rest[0] in ("monitor", "next") and len(rest) == 1:
                blob = self._wait_image(store.latest_tiff if rest[0] == "monitor"
                                        else store.pop_tiff)
            elif len(rest) in (2, 3) and rest[0] not in ("monitor", "next"):
                blob = store.get_tiff(_int(rest[0], "series"), _int(rest[1], "image id"),
                                      _int(rest[2], "threshold") if len(rest) == 3 else None)
            else:
                raise FakeDCUError(404, "monitor images: use images, images/monitor, "
                                        "images/next or images/<series>/<id>[/<threshold>]")
        except (KeyError, IndexError) as exc:
            raise FakeDCUError(404, _key_text(exc)) from None
        except ValueError as exc:
            raise FakeDCUError(400, str(exc)) from None
        self._send(200, blob, "application/tiff")

    def _wait_image(self, take: Callable[[], bytes]) -> bytes:
        """``take()`` once an image is there; 408 after ``?timeout=`` ms (500)."""
        query = parse_qs(urlsplit(self.path).query)
        try:
            timeout = float(query.get("timeout", ["500"])[0]) / 1000.0
        except ValueError:
            raise FakeDCUError(400, "monitor images: timeout must be a number of "
                                    "milliseconds") from None
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                return take()
            except KeyError:
                if time.monotonic() >= deadline:
                    raise FakeDCUError(408, "Request Timeout: no monitor image") from None
                time.sleep(0.02)

    # ----------------------------------------------------- fake controls
    def _fake(self, method: str, rest: List[str]) -> None:
        model = self.model
        what = rest[0] if len(rest) == 1 else ""
        faults = self.server.faults
        if what == "faults" and method == "GET":
            self._send_json(faults.as_dict())
            return
        if what == "state" and method == "GET":
            self._send_json({"state": model.state, "series_id": model.series_id,
                             "api": model.api, "model": model.detector_model})
            return
        if what not in ("trigger", "set", "faults", "restart"):
            raise FakeDCUError(404, "fake controls: PUT /fake/trigger, /fake/set, "
                                    "/fake/faults, /fake/restart; GET /fake/faults, /fake/state")
        self._need(method, ("PUT", "POST"))
        body = self._read_body()
        if what == "trigger":
            value = body.get("value") if isinstance(body, dict) else None
            model.external_trigger(value)
            self._send(200)
        elif what == "set":
            if not isinstance(body, dict) or not {"subsystem", "name", "value"} <= set(body):
                raise FakeDCUError(400, 'PUT /fake/set needs {"subsystem": ..., "task": '
                                        '"config", "name": ..., "value": ...}')
            subsystem, task, name = (str(body["subsystem"]), str(body.get("task", "config")),
                                     str(body["name"]))
            value = body["value"]
            if task == "config":
                value = self._array(subsystem, name,
                                    model.definition(subsystem, task, name).darray, value,
                                    model.pixels())
            self._send_json(model.force(subsystem, task, name, value))
        elif what == "faults":
            faults.update(body if body is not None else {})
            self._send_json(faults.as_dict())
        else:
            model.restart()
            self._send(200)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"monitor images: {what} {text!r} is not a number") from None


def _key_text(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else "not found"


class FakeDCUHTTPServer(ThreadingHTTPServer):
    """The REST server of one :class:`FakeDCU`; ``port`` is the bound port.

    ``files`` and ``monitor`` serve ``/data/`` and the monitor images;
    ``faults`` are the switches of ``/fake/faults`` (a new set when None).
    ``request_log`` holds the latest requests as ``[method, raw path, status]``
    (status None when the connection was dropped without an answer).
    """

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, model: FakeDCU, host: str = "127.0.0.1", port: int = 0, *,
                 files: FileStore, monitor: MonitorImages, faults: Optional[Faults] = None):
        self.model = model
        self.files = files
        self.monitor = monitor
        self.faults = faults if faults is not None else Faults()
        # (subsystem, name) -> (array, its darray JSON): a mask of 16M pixels
        # takes a while to encode, and the model replaces arrays, never edits them
        self._darrays: Dict[Tuple[str, str], Tuple[np.ndarray, Dict[str, Any]]] = {}
        self._darrays_lock = threading.Lock()
        self.request_log: Deque[List[Any]] = collections.deque(maxlen=100_000)
        self._open: set = set()          # accepted connections, closed at close()
        self._open_lock = threading.Lock()
        super().__init__((host, port), DCURequestHandler)
        self.host = host
        self.port: int = self.server_address[1]
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def darray(self, subsystem: str, name: str, array: np.ndarray) -> Dict[str, Any]:
        """The darray JSON of an array value, encoded once per array."""
        key = (subsystem, name)
        with self._darrays_lock:
            cached = self._darrays.get(key)
        if cached is not None and cached[0] is array:
            return cached[1]
        encoded = encode_darray(array)
        with self._darrays_lock:
            self._darrays[key] = (array, encoded)
        return encoded

    def start(self) -> None:
        """Serve on a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name="fakedcu-http",
                                            kwargs={"poll_interval": 0.1}, daemon=True)
            self._thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close(self) -> None:
        """Stop serving, close the listening socket and every open connection
        (as a DCU that goes down does: kept-alive clients see the connection end)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
        with self._open_lock:
            connections, self._open = list(self._open), set()
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)
