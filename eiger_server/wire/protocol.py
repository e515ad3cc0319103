"""spec's server_hdw wire protocol, without any I/O (bytes in, events out).

Requests are lines ``=: <cmdno> <command> [args]``; replies are
``@: <cmdno> <len>#<text>`` (success) or ``!: <cmdno> <len>#<text>`` (error),
optionally followed by raw binary data (``read``). A ``write`` request is
followed by raw bytes whose count the server announces in its answer.

:class:`ServerConnection` is the server side of one connection,
:class:`ClientConnection` the client side. Neither touches a socket: the
caller feeds received bytes in and sends the bytes they return.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from eiger_server.values import format_value

log = logging.getLogger(__name__)

#: Longest request line accepted by default; longer lines are dropped.
DEFAULT_MAX_LINE = 64 * 1024


# --------------------------------------------------------------------------
# Data types of binary transfers

@dataclass(frozen=True)
class WireType:
    """One element type of ``read``/``write`` data."""

    name: str       # the name spec uses on the reply line
    code: str       # Python struct code (little-endian, standard sizes)
    itemsize: int   # bytes per element
    dtype: str      # numpy dtype string, little-endian


#: The element types spec knows, by name.
TYPES: Dict[str, WireType] = {t.name: t for t in (
    WireType("ubyte", "B", 1, "<u1"),
    WireType("ushort", "H", 2, "<u2"),
    WireType("ulong", "L", 4, "<u4"),
    WireType("ulong64", "Q", 8, "<u8"),
    WireType("byte", "b", 1, "<i1"),
    WireType("short", "h", 2, "<i2"),
    WireType("long", "l", 4, "<i4"),
    WireType("long64", "q", 8, "<i8"),
    WireType("float", "f", 4, "<f4"),
    WireType("double", "d", 8, "<f8"),
)}

# numpy kind+itemsize -> wire type name
_BY_KIND = {("u", 1): "ubyte", ("u", 2): "ushort", ("u", 4): "ulong", ("u", 8): "ulong64",
            ("i", 1): "byte", ("i", 2): "short", ("i", 4): "long", ("i", 8): "long64",
            ("f", 4): "float", ("f", 8): "double", ("b", 1): "ubyte"}


def wire_type(name: str) -> WireType:
    """The :class:`WireType` called ``name`` (KeyError names the known ones)."""
    try:
        return TYPES[name]
    except KeyError:
        raise KeyError(f"unknown data type {name!r}; known: {', '.join(TYPES)}") from None


def wire_type_for(dtype: Any) -> WireType:
    """The wire type matching a numpy dtype (or anything np.dtype accepts)."""
    import numpy as np

    dt = np.dtype(dtype)
    try:
        return TYPES[_BY_KIND[(dt.kind, dt.itemsize)]]
    except KeyError:
        raise ValueError(f"data type {dt} cannot be sent to spec; "
                         f"convert it to one of {', '.join(TYPES)}") from None


def payload_size(text: str) -> Optional[int]:
    """Bytes that follow a 2-D ``read`` reply ``<npoints> <type>``, else None."""
    parts = text.split()
    if len(parts) == 2 and parts[0].isascii() and parts[0].isdigit() and parts[1] in TYPES:
        return int(parts[0]) * TYPES[parts[1]].itemsize
    return None


# --------------------------------------------------------------------------
# Events and replies

@dataclass
class Request:
    """One command from the client."""

    cmdno: int
    command: str
    args: List[str] = field(default_factory=list)
    address: Optional[str] = None   # from an ``a=<address>`` argument


@dataclass
class Payload:
    """The raw bytes announced by a ``write`` (all of them, in one event)."""

    data: bytes


Event = Union[Request, Payload]


@dataclass
class Reply:
    """What the server answers to one request.

    ``payload`` is sent raw right after the reply line (``read``);
    ``expect_bytes`` tells the server to collect that many raw bytes from
    the client next (``write``); ``shutdown`` stops the server once the
    reply has been sent (``exit``).
    """

    ok: bool = True
    text: str = ""
    payload: Union[bytes, bytearray, memoryview] = b""
    expect_bytes: int = 0
    shutdown: bool = False

    @classmethod
    def value(cls, value: Any) -> "Reply":
        """A success reply carrying ``format_value(value)``."""
        return cls(True, format_value(value))


def array_reply(array: Any, with_type: bool = True) -> Reply:
    """A ``read`` reply for a numpy array: text ``<npoints> <type>`` (or just
    ``<npoints>`` for 1-D devices when ``with_type`` is false) and the
    elements little-endian, row after row, as payload (no copy if the
    array already is little-endian and C-contiguous)."""
    import numpy as np

    arr = np.asarray(array)
    wt = wire_type_for(arr.dtype)
    arr = np.ascontiguousarray(arr, dtype=np.dtype(wt.dtype))
    text = f"{arr.size} {wt.name}" if with_type else str(arr.size)
    return Reply(True, text, memoryview(arr).cast("B"))  # type: ignore[arg-type]  # numpy stubs: buffer on 3.12+ only


def format_reply(cmdno: int, reply: Reply) -> List[Union[bytes, memoryview]]:
    """The byte chunks of a reply: the reply line, then the payload if any."""
    body = reply.text.encode("utf-8", errors="replace")
    mark = b"@" if reply.ok else b"!"
    head = b"%s: %d %d#%s\n" % (mark, cmdno, len(body), body)
    if len(reply.payload):
        payload = reply.payload if isinstance(reply.payload, memoryview) else memoryview(reply.payload)
        return [head, payload.cast("B") if payload.format != "B" else payload]
    return [head]


# --------------------------------------------------------------------------
# Server side

_CMDNO = re.compile(r"[0-9]+\Z")   # the reference ignores negative numbers


class ServerConnection:
    """The server side of one client connection.

    Feed received bytes to :meth:`receive_data`; it returns the requests
    (and ``write`` payloads) they complete. After a ``write`` request the
    connection pauses (keeps later bytes unparsed) until the caller either
    calls :meth:`expect_payload` with the byte count it announced, or
    :meth:`resume` if the write was refused.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE,
                 pause_after: Sequence[str] = ("write",), name: str = "") -> None:
        self.max_line = max_line
        self.pause_after = frozenset(pause_after)
        self.name = name                 # for log messages (e.g. the peer address)
        self.rejected = 0                # malformed or oversized lines dropped
        self.retransmissions = 0         # repeated cmdno dropped
        self.last_cmdno: Optional[int] = None
        self._buf = bytearray()
        self._discarding = False         # inside an over-long line
        self._paused = False
        self._payload_left = 0
        self._payload: Optional[bytearray] = None

    # -- state ---------------------------------------------------------------
    @property
    def paused(self) -> bool:
        """True while waiting for the caller to answer a ``write``."""
        return self._paused

    @property
    def collecting(self) -> bool:
        """True while raw ``write`` bytes are being collected."""
        return self._payload is not None

    @property
    def unparsed(self) -> int:
        """Bytes received and not yet looked at (lines or payload)."""
        return len(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf) + (len(self._payload) if self._payload is not None else 0)

    # -- input ---------------------------------------------------------------
    def receive_data(self, data: bytes, limit: Optional[int] = None) -> List[Event]:
        """Take received bytes; return the events they complete (at most
        ``limit``: the rest stays buffered for the next call, which may pass
        no data)."""
        if data:
            self._buf += data
        return self._process(limit)

    def expect_payload(self, nbytes: int, limit: Optional[int] = None) -> List[Event]:
        """Collect the next ``nbytes`` raw bytes as one :class:`Payload`.

        Unpauses the connection; returns the events (at most ``limit``) that
        the bytes already buffered complete.
        """
        if nbytes < 0:
            raise ValueError(f"payload size must not be negative, got {nbytes}")
        self._paused = False
        self._payload_left = nbytes
        self._payload = bytearray()
        return self._process(limit)

    def resume(self, limit: Optional[int] = None) -> List[Event]:
        """Parse lines again after a pause without collecting a payload."""
        self._paused = False
        return self._process(limit)

    def _process(self, limit: Optional[int] = None) -> List[Event]:
        events: List[Event] = []
        buf = self._buf
        pos = 0
        while not self._paused and (limit is None or len(events) < limit):
            if self._payload is not None:
                take = min(self._payload_left, len(buf) - pos)
                self._payload += buf[pos:pos + take]
                pos += take
                self._payload_left -= take
                if self._payload_left:
                    break
                events.append(Payload(bytes(self._payload)))
                self._payload = None
                continue
            end = buf.find(b"\n", pos)
            if self._discarding:
                if end < 0:
                    pos = len(buf)
                    break
                self._discarding = False
                pos = end + 1
                continue
            if end < 0:
                if len(buf) - pos > self.max_line:
                    # Drop what we have and skip to the next newline instead
                    # of buffering an endless line.
                    self.rejected += 1
                    log.warning("%sdropping a request line longer than %d bytes",
                                self._who(), self.max_line)
                    self._discarding = True
                    pos = len(buf)
                break
            line = bytes(buf[pos:end])
            pos = end + 1
            if len(line) > self.max_line:
                self.rejected += 1
                log.warning("%sdropping a request line of %d bytes (limit %d)",
                            self._who(), len(line), self.max_line)
                continue
            req = self._parse(line)
            if req is None:
                continue
            events.append(req)
            if req.command in self.pause_after:
                self._paused = True
        del buf[:pos]
        return events

    def _parse(self, raw: bytes) -> Optional[Request]:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._reject(raw, "not UTF-8")
        stripped = line.strip()
        if not stripped.startswith("=:"):
            return self._reject(raw, "does not start with '=:'")
        tokens = stripped[2:].split()
        if len(tokens) < 2:
            return self._reject(raw, "needs a command number and a command")
        if not _CMDNO.match(tokens[0]):
            return self._reject(raw, "command number is not an integer")
        cmdno = int(tokens[0])
        if cmdno == self.last_cmdno:
            self.retransmissions += 1
            log.debug("%signoring retransmission of request %d", self._who(), cmdno)
            return None
        self.last_cmdno = cmdno
        address = None
        args: List[str] = []
        for tok in tokens[2:]:
            if tok.startswith("a="):
                address = tok[2:]
            else:
                args.append(tok)
        return Request(cmdno, tokens[1], args, address)

    def _reject(self, raw: bytes, why: str) -> Optional[Request]:
        self.rejected += 1
        log.debug("%signoring malformed request line (%s): %r", self._who(), why, raw[:200])
        return None

    def _who(self) -> str:
        return f"{self.name}: " if self.name else ""

    # -- output --------------------------------------------------------------
    @staticmethod
    def reply(cmdno: int, reply: Reply) -> bytes:
        """The bytes of a reply (line plus payload) as one string."""
        return b"".join(format_reply(cmdno, reply))

    @staticmethod
    def reply_parts(cmdno: int, reply: Reply) -> List[Union[bytes, memoryview]]:
        """The reply as chunks, the payload uncopied."""
        return format_reply(cmdno, reply)


# --------------------------------------------------------------------------
# Client side

@dataclass
class Response:
    """One reply as a client sees it."""

    cmdno: int
    ok: bool
    text: str
    payload: bytes = b""


#: How a client knows the payload size of a reply: a byte count, or a
#: function of the reply text returning one.
ExpectPayload = Union[int, Callable[[str], int], None]

_HEAD = re.compile(rb"([@!]):[ \t]*(-?[0-9]+)[ \t]+([0-9]+)#")


class ClientConnection:
    """The client side: numbers requests and parses replies.

    Successful ``read`` replies of the 2-D form ``<npoints> <type>`` are
    followed by ``npoints * itemsize`` bytes, which are collected into
    :attr:`Response.payload` automatically. For other cases pass
    ``expect_payload`` to :meth:`send`: a function of the reply text giving
    the byte count (e.g. :func:`one_d_payload` for 1-D ``<npoints>``
    replies), or a fixed byte count used when the success text starts with
    a digit.
    """

    def __init__(self, first_cmdno: int = 1) -> None:
        self._next = first_cmdno
        self._buf = bytearray()
        self._pending: Dict[int, tuple] = {}   # cmdno -> (command, expect_payload)
        self._current: Optional[Response] = None
        self._payload_left = 0
        self._collected = bytearray()
        self.garbage = 0                       # bytes skipped that were no reply

    def send(self, command: str, *args: Any, expect_payload: ExpectPayload = None) -> bytes:
        """The bytes of a new request; its cmdno is :attr:`last_cmdno`."""
        words = [str(command)] + [format_value(a) for a in args]
        for w in words:
            if "\n" in w or "\r" in w:
                raise ValueError(f"request word {w!r} contains a line break")
        if not str(command).strip() or len(str(command).split()) != 1:
            raise ValueError(f"command must be one word, got {command!r}")
        cmdno = self._next
        self._next += 1
        self._pending[cmdno] = (str(command), expect_payload)
        return ("=: %d %s\n" % (cmdno, " ".join(words))).encode("utf-8")

    @property
    def last_cmdno(self) -> int:
        """The cmdno of the latest request made by :meth:`send`."""
        return self._next - 1

    def receive_data(self, data: bytes) -> List[Response]:
        """Take received bytes; return the replies they complete."""
        self._buf += data
        out: List[Response] = []
        buf = self._buf
        pos = 0
        while True:
            if self._current is not None:
                take = min(self._payload_left, len(buf) - pos)
                self._collected += buf[pos:pos + take]
                pos += take
                self._payload_left -= take
                if self._payload_left:
                    break
                self._current.payload = bytes(self._collected)
                self._collected = bytearray()
                out.append(self._current)
                self._current = None
                continue
            m = _HEAD.search(buf, pos)
            if m is None:
                # A header is shorter than 64 bytes: anything older cannot
                # be the start of one that is still arriving.
                keep = max(pos, len(buf) - 64)
                self.garbage += keep - pos
                pos = keep
                break
            if m.start() != pos:
                self.garbage += m.start() - pos
            textlen = int(m.group(3))
            tstart = m.end()
            if len(buf) < tstart + textlen + 1:
                pos = m.start()
                break
            text = bytes(buf[tstart:tstart + textlen]).decode("utf-8", errors="replace")
            pos = tstart + textlen
            if buf[pos:pos + 1] == b"\n":
                pos += 1
            cmdno = int(m.group(2))
            ok = m.group(1) == b"@"
            resp = Response(cmdno, ok, text, b"")
            nbytes = self._payload_bytes(resp)
            if nbytes:
                self._current = resp
                self._payload_left = nbytes
            else:
                out.append(resp)
        del buf[:pos]
        return out

    def _payload_bytes(self, resp: Response) -> int:
        command, expect = self._pending.pop(resp.cmdno, (None, None))
        if not resp.ok or command is None:
            return 0
        if callable(expect):
            return int(expect(resp.text) or 0)
        if isinstance(expect, int):
            # Only data headers start with a digit; "busy", "not ready" and
            # the like carry no payload.
            return expect if resp.text[:1].isdigit() else 0
        if command == "read":
            return payload_size(resp.text) or 0
        return 0


def one_d_payload(itemsize: int) -> Callable[[str], int]:
    """``expect_payload`` for a 1-D ``read`` reply ``<npoints>`` whose
    elements are ``itemsize`` bytes each."""
    def size(text: str) -> int:
        t = text.strip()
        return int(t) * itemsize if t.isascii() and t.isdigit() else 0
    return size
