"""Requests in order, never ``busy``; bounds and quoted values (issue 11, items 1, 4, 5).

eiger_server runs as a process against the fake DCU; everything goes over
real sockets. A slow DCU is made with the fake DCU's ``/fake/faults`` HTTP
control (``delay`` seconds before every SIMPLON answer).
"""
from __future__ import annotations

import socket
import threading
import time
from typing import List

import numpy as np
import pytest
import requests

from eiger_server.fakedcu.app import FakeDCUApp
from eiger_server.wire.client import WireClient
from eiger_server.wire.protocol import ClientConnection, Request, Response
from eiger_server.control.commands import CommandHandler

from helpers import ServerProcess, server_args_for, take_first_image, wait_for

SLOW = 2.0      # seconds the fake DCU waits before each answer in the slow tests


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A fake DCU and eiger_server with one image taken over the stream;
    yields (app, server, rows, cols)."""
    tmp = tmp_path_factory.mktemp("order")
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=tmp / "dcu")
    app.start()
    server = ServerProcess(server_args_for(app), tmp)
    try:
        with WireClient("127.0.0.1", server.port, 20) as c:
            _, rows, cols = take_first_image(c, tmp / "data")
        yield app, server, int(rows), int(cols)
    finally:
        server.stop()
        app.stop()


def slow_dcu(app, seconds: float) -> None:
    r = requests.put(f"http://127.0.0.1:{app.http_port}/fake/faults",
                     json={"delay": seconds}, timeout=5)
    r.raise_for_status()


class Raw:
    """A bare socket: bytes out, replies (with any payload) in, in arrival order."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "server closed the connection"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "server closed the connection"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def has_data(self) -> bool:
        """True if anything has arrived (without waiting)."""
        if self.buf:
            return True
        self.sock.setblocking(False)
        try:
            chunk = self.sock.recv(1 << 16)
        except BlockingIOError:
            return False
        finally:
            self.sock.setblocking(True)
        self.buf += chunk
        return True

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------- order

def test_pipelined_requests_in_one_packet_are_answered_in_order(rig):
    _, server, _, _ = rig
    raw = Raw(server.port)
    raw.send(b"=: 3 clear\n=: 4 goodbye\n=: 5 xfer_done\n")
    assert [raw.line() for _ in range(3)] == [b"@: 3 2#ok\n", b"@: 4 2#ok\n", b"@: 5 2#ok\n"]
    raw.close()


def test_retransmission_then_the_next_request(rig):
    _, server, _, _ = rig
    raw = Raw(server.port)
    raw.send(b"=: 7 get nimages\n=: 7 get nimages\n=: 8 get_status\n=: 9 clear\n")
    assert raw.line() == b"@: 7 1#1\n"
    assert raw.line() == b"@: 8 1#0\n"
    assert raw.line() == b"@: 9 2#ok\n"
    raw.close()


def test_requests_sent_while_a_dcu_call_runs_wait_their_turn(rig):
    app, server, _, _ = rig
    raw = Raw(server.port)
    slow_dcu(app, 0.5)
    try:
        # get nimages reads the DCU; everything after it waits, none is busy
        raw.send(b"=: 1 get nimages\n=: 2 get_status\n=: 3 get images_collected\n"
                 b"=: 4 hello\n=: 5 clear\n")
        lines = [raw.line() for _ in range(5)]
    finally:
        slow_dcu(app, 0)
    assert [ln.split()[1] for ln in lines] == [b"1", b"2", b"3", b"4", b"5"]
    assert lines[0] == b"@: 1 1#1\n"
    assert lines[1:3] == [b"@: 2 1#0\n", b"@: 3 1#1\n"]
    assert lines[3].startswith(b"@: 4 ") and b"hello back V2" in lines[3]
    assert lines[4] == b"@: 5 2#ok\n"
    raw.close()


def test_second_client_polling_the_dcu_never_makes_the_first_busy(rig):
    _, server, _, _ = rig
    stop = threading.Event()
    seen: List[str] = []

    def poll() -> None:
        with WireClient("127.0.0.1", server.port, 20) as monitor:
            while not stop.is_set():
                seen.append(monitor.command("get", "state").text)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        wait_for(lambda: len(seen) >= 3, 20, what="the monitor's first answers")
        with WireClient("127.0.0.1", server.port, 20) as spec:
            answers = [spec.command(*req).text
                       for _ in range(40)
                       for req in (("get_status",), ("get", "nimages"), ("clear",))]
    finally:
        stop.set()
        poller.join(20)
    assert "busy" not in answers
    assert answers == ["0", "1", "ok"] * 40
    assert "busy" not in seen and set(seen) <= {"idle", "ready", "configure"}


def test_memory_only_reads_of_a_second_client_do_not_wait_for_the_dcu(rig):
    app, server, _, _ = rig
    first, second = Raw(server.port), Raw(server.port)
    slow_dcu(app, SLOW)
    try:
        first.send(b"=: 1 get nimages\n")          # waits SLOW seconds on the DCU
        second.send(b"=: 1 get_status\n=: 2 get images_collected\n=: 3 get cmd_executing\n"
                    b"=: 4 get is_waiting_data\n")
        answers = [second.line() for _ in range(4)]
        # The second client is answered while the first still waits for the DCU.
        assert not first.has_data()
        assert answers == [b"@: 1 1#0\n", b"@: 2 1#1\n", b"@: 3 1#0\n", b"@: 4 1#0\n"]
        # The first client's own memory-only read waits behind its DCU call.
        first.send(b"=: 2 get_status\n")
        assert first.line() == b"@: 1 1#1\n"
        assert first.line() == b"@: 2 1#0\n"
    finally:
        slow_dcu(app, 0)
        first.close()
        second.close()


def test_memory_only_rule_is_explicit():
    handler = CommandHandler(None)      # the rule looks at the request alone
    memory = [Request(1, "get_status"), Request(1, "get", ["images_collected"]),
              Request(1, "get", ["get_answer"]), Request(1, "clear"), Request(1, "frobnicate")]
    dcu = [Request(1, "get", ["state"]), Request(1, "get", ["dropped"]), Request(1, "get"),
           Request(1, "set", ["images_collected", "1"]), Request(1, "config"),
           Request(1, "read", ["0", "1", "0", "1"])]
    assert all(handler.is_memory_only(r) for r in memory)
    assert not any(handler.is_memory_only(r) for r in dcu)


# ----------------------------------------------------------------- bounds

def test_write_takes_bounds_like_read(rig):
    _, server, _, _ = rig
    raw = Raw(server.port)
    # 4 rows x 5 columns of 4-byte elements = 80 bytes, then xfer_done
    raw.send(b"=: 1 write 0 3 0 4\n" + b"\xab" * 80 + b"=: 2 xfer_done\n=: 3 get_status\n")
    assert [raw.line() for _ in range(3)] == [b"@: 1 2#ok\n", b"@: 2 2#ok\n", b"@: 3 1#0\n"]
    raw.send(b"=: 4 write 2 5\n" + b"\0" * 16 + b"=: 5 xfer_done\n")     # 1-D: 4 elements
    assert [raw.line() for _ in range(2)] == [b"@: 4 2#ok\n", b"@: 5 2#ok\n"]
    raw.send(b"=: 6 write 3 0 0 4\n=: 7 write 0 x 0 4\n=: 8 clear\n")
    inverted, text, after = raw.line(), raw.line(), raw.line()
    assert inverted.startswith(b"!: 6 ") and b"inverted" in inverted
    assert text.startswith(b"!: 7 ") and b"'x' is not a number" in text
    assert after == b"@: 8 2#ok\n"
    raw.close()


def test_read_and_get_roi_clip_bounds_to_the_image(rig):
    _, server, rows, cols = rig
    raw = Raw(server.port)
    raw.send(b"=: 1 read 0 %d 0 %d\n" % (rows - 1, cols - 1))
    head = raw.line()
    npoints, typename = head.split(b"#")[1].split()
    assert int(npoints) == rows * cols
    itemsize = {b"ushort": 2, b"ulong": 4}[typename]
    whole = np.frombuffer(raw.exactly(rows * cols * itemsize),
                          dtype=f"<u{itemsize}").reshape(rows, cols)
    # an end equal to the number of rows (or far past it) stops at the edge
    raw.send(b"=: 2 read %d %d 0 3\n" % (rows - 2, rows))
    assert raw.line() == b"@: 2 %d#8 %s\n" % (len(b"8 " + typename), typename)
    part = np.frombuffer(raw.exactly(8 * itemsize), dtype=f"<u{itemsize}").reshape(2, 4)
    assert (part == whole[rows - 2:, :4]).all()
    raw.send(b"=: 3 get_roi 0 2000 0 2000\n")
    total = raw.line()
    assert total.startswith(b"@: 3 ")
    masked = whole[whole != np.iinfo(whole.dtype).max]
    assert int(total.split(b"#")[1]) == int(masked.sum(dtype=np.uint64))
    raw.send(b"=: 4 set_roi big 10 5000 20 5000\n=: 5 get_roi big\n"
             b"=: 6 get roisum 10 20 5000 5000\n")
    assert raw.line() == b"@: 4 0#\n"
    sub = whole[10:, 20:]
    expect = int(sub[sub != np.iinfo(whole.dtype).max].sum(dtype=np.uint64))
    assert int(raw.line().split(b"#")[1]) == expect
    assert int(raw.line().split(b"#")[1]) == expect
    raw.close()


@pytest.mark.parametrize("request_line,expect", [
    (b"read %(rows)d %(rows)d 0 3", b"outside the image"),       # wholly outside
    (b"read 5 2 0 3", b"must not be after the last"),          # inverted
    (b"read 0 x 0 3", b"'x' is not a number"),
    (b"read 0 3", b"cannot decode args"),
    (b"get_roi 0 1 %(cols)d 9999", b"outside the image"),
    (b"get_roi 9 1 0 3", b"must not be after the last"),
    (b"get_roi 0 1 0 y", b"'y' is not a number"),
    (b"get_roi nosuch", b"Unknown ROI"),
    (b"get_roi 1 2", b"Bad ROI parameters"),
    (b"get roisum %(rows)d 0 9999 9999", b"outside the image"),
    (b"set_roi r 3 1 0 2", b"not a valid range"),
    (b"set_roi r 0 z 0 2", b"'z' is not a number"),
])
def test_bad_bounds_get_a_clear_error(rig, request_line, expect):
    _, server, rows, cols = rig
    raw = Raw(server.port)
    raw.send(b"=: 1 " + request_line % {b"rows": rows, b"cols": cols} + b"\n=: 2 clear\n")
    line = raw.line()
    assert line.startswith(b"!: 1 ") and expect in line, line
    assert raw.line() == b"@: 2 2#ok\n"
    raw.close()


# ----------------------------------------------------------------- values

def test_quoted_values_lose_one_pair_of_quotes(rig, tmp_path):
    _, server, _, _ = rig
    with WireClient("127.0.0.1", server.port, 20) as c:
        conn = ClientConnection(first_cmdno=100)
        raw = Raw(server.port)
        target = tmp_path / "with space"
        raw.send(b'=: 1 set acq_mode "SINGLE"\n'
                 b"=: 2 get acq_mode\n"
                 b"=: 3 set data_directory '%s'\n"
                 b"=: 4 get data_directory\n" % str(target).encode())
        replies: List[Response] = []
        while len(replies) < 4:
            replies += conn.receive_data(raw.sock.recv(1 << 16))
        assert [(r.ok, r.text) for r in replies] == [
            (True, "SINGLE"), (True, "SINGLE"), (True, str(target)), (True, str(target))]
        c.set("data_directory", tmp_path)
        raw.close()


# ----------------------------------------------------------------- bounded queue

class _GateHandler:
    """Every request waits for the gate, then echoes its number."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.order: List[int] = []

    def describe(self) -> str:
        return "gate"

    def execute(self, req: Request):
        self.gate.wait(20)
        self.order.append(req.cmdno)
        from eiger_server.wire.protocol import Reply
        return Reply(True, str(req.cmdno))

    def receive_payload(self, data: bytes) -> None:
        pass


def test_a_client_past_its_queue_bound_waits_and_nothing_is_refused():
    from eiger_server.wire.server import HardwareServer
    handler = _GateHandler()
    srv = HardwareServer(handler, 0, "127.0.0.1", max_pending=4)
    srv.start()
    try:
        raw = Raw(srv.port)
        sender = threading.Thread(target=raw.send, daemon=True,
                                  args=(b"".join(b"=: %d q\n" % n for n in range(1, 3001)),))
        sender.start()
        wait_for(lambda: srv.requests >= 5, 10, what="the first requests")
        time.sleep(0.3)
        # one running, 4 waiting; the rest stays unparsed or unread
        assert srv.requests == 5
        handler.gate.set()
        lines = [raw.line() for _ in range(3000)]
        assert lines == [b"@: %d %d#%d\n" % (n, len(str(n)), n) for n in range(1, 3001)]
        assert handler.order == list(range(1, 3001))
        sender.join(10)
        raw.close()
    finally:
        handler.gate.set()
        srv.stop()
