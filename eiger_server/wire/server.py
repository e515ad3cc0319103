"""The TCP server spec connects to: one I/O loop, two executor threads.

The I/O loop (``selectors``) accepts any number of clients, parses their
requests with :class:`~eiger_server.wire.protocol.ServerConnection` and sends
replies from a per-client output buffer without ever blocking.

Order: each client has a FIFO of received requests and at most one of them
in flight, so every well-formed request is executed once, in arrival order,
and answered in that order; nothing is answered ``busy`` by the server.
``hello`` is answered by the loop itself when it reaches the head of its
client's queue.

Executors: requests the handler's ``is_memory_only(request)`` classifies as
answered from the server's own memory (``get_status``, ``get
images_collected``, ...) run on the *memory* thread; every other request
(anything that may call the DCU) runs on the serial *DCU* thread, one at a
time across all clients. So a second client's memory-only reads never wait
behind the first client's slow DCU call, while a client's own memory-only
read queued behind its own DCU call still waits for it.

Bounds per client: at most ``max_pending`` requests wait in its queue; past
that, lines already received stay unparsed in its buffer (at most one
read's worth) and the loop stops reading its socket (TCP flow control makes
the client wait) until the queue drains; nothing is refused. Replies the
client does not read are capped at ``max_output`` bytes, past which the
connection is closed. After ``exit`` nothing more is started; the server
stops once that reply has been sent.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import queue
import selectors
import socket
import struct
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

from eiger_server.logsetup import CLIENT
from eiger_server.wire.protocol import DEFAULT_MAX_LINE, Event, Payload, Reply, Request, ServerConnection

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_RECV_SIZE = 256 * 1024
_LOG_TEXT = 160          # characters of a request/reply shown in the log
_SHUTDOWN_FLUSH = 2.0    # seconds to let the last reply drain before stopping


def _short(text: str, limit: int = _LOG_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def error_text(req: Request, exc: BaseException) -> str:
    """The error line spec gets for a command that raised."""
    message = str(exc) or type(exc).__name__
    return f"{req.command}. error: {message}"


class _Client:
    """One connected client: socket, protocol state and output buffer."""

    def __init__(self, sock: socket.socket, name: str, max_line: int) -> None:
        self.sock = sock
        self.name = name
        self.conn = ServerConnection(max_line=max_line, name=name)
        self.out: Deque[memoryview] = collections.deque()
        self.out_bytes = 0
        self.mask = 0           # events currently registered with the selector
        self.closed = False
        self.pending: Deque[Event] = collections.deque()   # received, not yet started
        self.inflight = False   # one of its requests (or write payloads) is executing


class HardwareServer:
    """spec's server_hdw server around a command handler.

    ``handler`` needs ``execute(Request) -> Reply``, ``receive_payload(bytes)``
    and ``describe() -> str`` (the last is called on the I/O thread for
    ``hello`` and must not block); an optional ``is_memory_only(Request) ->
    bool`` (called on the I/O thread, must not block) sends requests to the
    memory thread. The listening socket is bound in the constructor, so
    ``port`` is known (and a busy port reported) at once; ``port=0`` picks a
    free port.
    """

    def __init__(self, handler: Any, port: int = 5000, bind: str = "", *,
                 max_output: int = 64 * MiB, max_line: int = DEFAULT_MAX_LINE,
                 max_pending: int = 1024) -> None:
        self.handler = handler
        self.max_output = max_output
        self.max_line = max_line
        self.max_pending = max(1, max_pending)
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        try:
            self._listener = socket.create_server((bind, port), family=family, backlog=32)
        except OSError as exc:
            where = f"{bind or 'all interfaces'} port {port}"
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            err = OSError(f"cannot listen on {where}: {why}; is another server using it? "
                          f"choose another port with -p")
            err.errno = exc.errno
            raise err from exc
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.bind = bind
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._clients: Dict[int, _Client] = {}
        # Unbounded in type, bounded in fact: each client has at most one item in them.
        self._commands: "queue.Queue[Optional[Tuple[_Client, Event]]]" = queue.Queue()
        self._memory: "queue.Queue[Optional[Tuple[_Client, Event]]]" = queue.Queue()
        self._results: Deque[Tuple[_Client, Event, Optional[Reply]]] = collections.deque()
        self._stop = threading.Event()
        self._shutdown_client: Optional[_Client] = None
        self._shutdown_deadline = 0.0
        self._accept_paused_until = 0.0
        self._thread: Optional[threading.Thread] = None
        self._workers: List[threading.Thread] = []
        self._started = False
        self._done = threading.Event()
        self.requests = 0                         # requests executed or answered

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Run the server on a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="eiger-io", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the server to stop; wait for it unless called on its own thread
        (or from a signal handler interrupting it)."""
        self._stop.set()
        self._wake()
        if (self._thread is not None and self._thread is not threading.current_thread()
                and self._thread.is_alive()):
            self._thread.join(timeout)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the server has stopped; True if it has."""
        return self._done.wait(timeout)

    @property
    def address(self) -> Tuple[str, int]:
        """(host, port) the server listens on."""
        return self._listener.getsockname()[:2]

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` or a reply with ``shutdown`` set."""
        if self._started:
            raise RuntimeError("serve_forever() can run only once per HardwareServer")
        self._started = True
        for name, jobs in (("eiger-command", self._commands), ("eiger-memory", self._memory)):
            worker = threading.Thread(target=self._command_loop, args=(jobs,), name=name,
                                      daemon=True)
            worker.start()
            self._workers.append(worker)
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        host, port = self.address
        log.info("listening for spec on %s port %d", host or "all interfaces", port)
        try:
            while not self._stop.is_set():
                try:
                    if self._step():
                        break
                except Exception:  # never let one bad event end the server
                    log.exception("unexpected error in the server loop; continuing")
                    time.sleep(0.01)
        finally:
            self._close_all()
            self._done.set()
            log.info("server on port %d stopped", self.port)

    # --------------------------------------------------------------- the loop
    def _step(self) -> bool:
        """One round of the loop; True when the server should stop."""
        timeout: Optional[float] = None
        now = time.monotonic()
        if self._shutdown_client is not None:
            timeout = max(0.0, self._shutdown_deadline - now)
        if self._accept_paused_until:
            if now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._sel.register(self._listener, selectors.EVENT_READ, "listen")
            else:
                left = self._accept_paused_until - now
                timeout = left if timeout is None else min(timeout, left)
        for key, mask in self._sel.select(timeout):
            if key.data == "listen":
                self._accept()
            elif key.data == "wake":
                self._drain_wake()
            else:
                client: _Client = key.data
                try:
                    if mask & selectors.EVENT_WRITE and not client.closed:
                        self._flush(client)
                    if mask & selectors.EVENT_READ and not client.closed:
                        self._read(client)
                except Exception:
                    log.exception("%s: unexpected error; closing the connection", client.name)
                    self._close(client)
        self._take_results()
        sc = self._shutdown_client
        if sc is not None:
            if sc.closed or not sc.out or time.monotonic() >= self._shutdown_deadline:
                log.info("shutting down as requested by %s", sc.name)
                return True
        return False

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a second rather
                    # than spinning on a listener that stays readable.
                    log.error("cannot accept a connection: %s; retrying in 1 s", exc)
                    self._sel.unregister(self._listener)
                    self._accept_paused_until = time.monotonic() + 1.0
                else:
                    log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            name = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            client = _Client(sock, name, self.max_line)
            self._clients[sock.fileno()] = client
            if self._shutdown_client is None:
                self._set_interest(client)
            log.info("client %s connected", name)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or the server is closed

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("client %s: connection lost (%s)", client.name, exc)
            self._close(client)
            return
        if not data:
            log.info("client %s disconnected", client.name)
            self._close(client)
            return
        self._handle_events(client, client.conn.receive_data(data, self._room(client)))
        self._set_interest(client)

    def _room(self, client: _Client) -> int:
        """How many more requests the client may have waiting (lines past that
        stay unparsed in its buffer, and its socket unread)."""
        return max(0, self.max_pending - len(client.pending))

    # ---------------------------------------------------------------- requests
    def _handle_events(self, client: _Client, events: List[Event]) -> None:
        """Queue what the client sent, then start its next request if it has none running."""
        self._queue(client, events)
        self._dispatch(client)

    def _queue(self, client: _Client, events: List[Event]) -> None:
        for ev in events:
            if isinstance(ev, Request):
                self.requests += 1
                if log.isEnabledFor(CLIENT):
                    words = " ".join([ev.command] + ev.args)
                    if ev.address is not None:
                        words += f" a={ev.address}"
                    log.log(CLIENT, "%s -> #%d %s", client.name, ev.cmdno, _short(words))
            client.pending.append(ev)

    def _dispatch(self, client: _Client) -> None:
        while not client.closed and self._shutdown_client is None:
            room = self._room(client)
            if room:    # lines left unparsed while its queue was full
                self._queue(client, client.conn.receive_data(b"", room))
            if client.inflight or not client.pending:
                break
            ev = client.pending.popleft()
            if isinstance(ev, Payload):
                log.debug("client %s: received %d bytes of write data", client.name, len(ev.data))
                client.inflight = True
                self._commands.put((client, ev))
            elif ev.command == "hello":
                self._send(client, ev.cmdno, Reply(True, self._hello_text(ev)))
            else:
                client.inflight = True
                jobs = self._memory if self._memory_only(ev) else self._commands
                jobs.put((client, ev))

    def _memory_only(self, req: Request) -> bool:
        check = getattr(self.handler, "is_memory_only", None)
        if check is None:
            return False
        try:
            return bool(check(req))
        except Exception:
            log.exception("is_memory_only(%s) failed; sending it to the DCU thread", req.command)
            return False

    def _hello_text(self, req: Request) -> str:
        if req.args:
            log.info("client introduces itself as %s", " ".join(req.args))
        try:
            description = str(self.handler.describe())
        except Exception as exc:
            log.warning("describe() failed: %s", exc)
            description = "eiger_server"
        return f"hello back V2 {socket.gethostname()} {os.getpid()} {description}".rstrip()

    def _take_results(self) -> None:
        while self._results:
            client, ev, reply = self._results.popleft()
            client.inflight = False
            if reply is None:               # a write payload was taken: no reply
                self._dispatch(client)
                self._set_interest(client)
                continue
            req: Request = ev  # type: ignore[assignment]
            if client.closed:
                log.info("client %s left before the reply to #%d %s", client.name,
                         req.cmdno, req.command)
                if reply.shutdown:
                    self._begin_shutdown(client)
                continue
            self._send(client, req.cmdno, reply)
            if client.closed:
                continue
            room = self._room(client)
            if reply.ok and reply.expect_bytes > 0:
                events = client.conn.expect_payload(reply.expect_bytes, room)
            else:
                events = client.conn.resume(room) if client.conn.paused else []
            if reply.shutdown:
                self._begin_shutdown(client)
            self._handle_events(client, events)
            if not client.closed:
                self._set_interest(client)

    def _begin_shutdown(self, client: _Client) -> None:
        self._shutdown_client = client
        self._shutdown_deadline = time.monotonic() + _SHUTDOWN_FLUSH
        # Read nothing more from anyone; only let the output drain.
        for c in list(self._clients.values()):
            self._set_interest(c)

    # ------------------------------------------------------------------ output
    def _send(self, client: _Client, cmdno: int, reply: Reply) -> None:
        if log.isEnabledFor(CLIENT):
            extra = f" +{len(reply.payload)} bytes" if len(reply.payload) else ""
            log.log(CLIENT, "%s <- #%d %s %s%s", client.name, cmdno, "@" if reply.ok else "!",
                    _short(reply.text), extra)
        if client.out_bytes > self.max_output:
            log.warning("client %s does not read its replies (%d bytes waiting, limit %d); "
                        "closing the connection", client.name, client.out_bytes, self.max_output)
            self._close(client, abort=True)
            return
        for part in client.conn.reply_parts(cmdno, reply):
            mv = part if isinstance(part, memoryview) else memoryview(part)
            client.out.append(mv)
            client.out_bytes += len(mv)
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        while client.out:
            chunk = client.out[0]
            try:
                sent = client.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.info("client %s: connection lost while sending (%s)", client.name, exc)
                self._close(client)
                return
            client.out_bytes -= sent
            if sent < len(chunk):
                client.out[0] = chunk[sent:]
                break
            client.out.popleft()
        self._set_interest(client)

    def _set_interest(self, client: _Client) -> None:
        if client.closed:
            return
        mask = 0
        # Read on only while its queue has room and what is left unparsed is at
        # most a partial line: a client's memory stays bounded.
        if (self._shutdown_client is None and not client.conn.paused
                and len(client.pending) < self.max_pending
                and client.conn.unparsed <= self.max_line):
            mask |= selectors.EVENT_READ
        if client.out:
            mask |= selectors.EVENT_WRITE
        if mask == client.mask:
            return
        if client.mask == 0:
            self._sel.register(client.sock, mask, client)
        elif mask == 0:
            self._sel.unregister(client.sock)
        else:
            self._sel.modify(client.sock, mask, client)
        client.mask = mask

    def _close(self, client: _Client, abort: bool = False) -> None:
        """Forget a client; with ``abort`` also drop what the kernel still
        holds for it (a reset instead of an orderly close)."""
        if client.closed:
            return
        client.closed = True
        if abort:
            try:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            except OSError:
                pass
        if client.mask:
            try:
                self._sel.unregister(client.sock)
            except (KeyError, ValueError):
                pass
        self._clients.pop(client.sock.fileno(), None)
        client.pending.clear()
        client.out.clear()
        client.out_bytes = 0
        try:
            client.sock.close()
        except OSError:
            pass
        if client.conn.collecting:
            log.warning("client %s left before sending all its write data", client.name)

    def _close_all(self) -> None:
        for client in list(self._clients.values()):
            self._close(client)
        for sock in (self._listener, self._wake_r):
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._sel.close()
        self._commands.put(None)
        self._memory.put(None)
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(5.0)
                if worker.is_alive():
                    log.warning("a command was still running when the server stopped")
        self._wake_w.close()

    # ---------------------------------------------------------- command thread
    def _command_loop(self, jobs: "queue.Queue[Optional[Tuple[_Client, Event]]]") -> None:
        """One executor: runs the requests put on ``jobs``, one at a time."""
        while True:
            item = jobs.get()
            if item is None:
                return
            client, ev = item
            if isinstance(ev, Payload):
                try:
                    self.handler.receive_payload(ev.data)
                except Exception:
                    log.exception("the write data from %s could not be taken", client.name)
                self._results.append((client, ev, None))
                self._wake()
                continue
            req = ev
            start = time.monotonic()
            try:
                reply = self.handler.execute(req)
                if not isinstance(reply, Reply):
                    reply = Reply.value(reply)
            except Exception as exc:
                reply = Reply(False, error_text(req, exc))
                if _is_expected(exc):
                    log.debug("%s failed: %s", req.command, exc)
                else:
                    log.exception("%s %s failed unexpectedly", req.command, " ".join(req.args))
            log.debug("#%d %s took %.3f s", req.cmdno, req.command, time.monotonic() - start)
            self._results.append((client, req, reply))
            self._wake()


def _is_expected(exc: BaseException) -> bool:
    """Errors meant for spec (no traceback in the log) versus bugs."""
    try:
        from eiger_server.errors import EigerError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, EigerError)
