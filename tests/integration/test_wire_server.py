"""HardwareServer over real sockets on 127.0.0.1, with a handler made for the test."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

import numpy as np
import pytest

from eiger_server.wire.client import WireClient, WireError
from eiger_server.logsetup import CLIENT
from eiger_server.wire.protocol import ClientConnection, Reply, Request, array_reply, payload_size
from eiger_server.wire.server import HardwareServer

IMAGE = (np.arange(6 * 7, dtype=np.uint32) * 65537).reshape(6, 7)


class ScriptedHandler:
    """A stand-in for CommandHandler: a few commands with known behaviour."""

    def __init__(self, description: str = "test detector") -> None:
        self.description = description
        self.payloads: list[bytes] = []
        self.executed: list[Request] = []
        self.slow_started = threading.Event()
        self.slow_release = threading.Event()
        self.big = b""

    def describe(self) -> str:
        return self.description

    def execute(self, req: Request):
        self.executed.append(req)
        cmd, args = req.command, req.args
        if cmd == "echo":
            return Reply(True, " ".join(args))
        if cmd == "slow":
            self.slow_started.set()
            self.slow_release.wait(10)
            return Reply(True, "done")
        if cmd == "fail":
            raise ValueError("the detector said no")
        if cmd == "plain":
            return 42            # not a Reply: the server formats it
        if cmd == "read":
            r0, r1, c0, c1 = (int(a) for a in args)
            return array_reply(IMAGE[r0:r1 + 1, c0:c1 + 1])
        if cmd == "big":
            return Reply(True, f"{len(self.big)} ubyte", self.big)
        if cmd == "write":
            n = int(np.prod([int(a) for a in args]))
            return Reply(True, "ok", expect_bytes=4 * n)
        if cmd == "xfer_done":
            return Reply(True, "ok")
        if cmd == "count":
            return Reply(True, str(len(self.payloads)))
        if cmd == "exit":
            return Reply(True, "ok", shutdown=True)
        return Reply(True, "unknown")

    def receive_payload(self, data: bytes) -> None:
        self.payloads.append(data)

    def close(self) -> None:
        pass


@pytest.fixture
def handler():
    h = ScriptedHandler()
    yield h
    h.slow_release.set()


@pytest.fixture
def server(handler):
    srv = HardwareServer(handler, 0, "127.0.0.1")
    srv.start()
    yield srv
    handler.slow_release.set()
    srv.stop()


class Raw:
    """A bare socket speaking the protocol by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "server closed the connection"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# ------------------------------------------------------------------ basics

def test_hello_names_host_pid_and_description(server):
    raw = Raw(server.port)
    raw.send(b"=: 1 hello spec\n")
    text = f"hello back V2 {socket.gethostname()} {os.getpid()} test detector"
    assert raw.line() == f"@: 1 {len(text)}#{text}\n".encode()


def test_port_zero_reports_the_bound_port(server):
    assert server.port > 0
    assert server.address == ("127.0.0.1", server.port)


def test_busy_port_is_reported(server, handler):
    with pytest.raises(OSError, match="another server"):
        HardwareServer(handler, server.port, "127.0.0.1")


def test_error_reply_line(server):
    raw = Raw(server.port)
    raw.send(b"=: 3 fail now\n")
    text = "fail. error: the detector said no"
    assert raw.line() == f"!: 3 {len(text)}#{text}\n".encode()
    raw.send(b"=: 4 echo still alive\n")   # the server keeps serving
    assert raw.line() == b"@: 4 11#still alive\n"


def test_non_reply_return_value_is_formatted(server):
    with WireClient("127.0.0.1", server.port, 5) as c:
        assert c.command("plain").text == "42"


def test_unknown_is_the_handlers_answer(server):
    with WireClient("127.0.0.1", server.port, 5) as c:
        r = c.command("frobnicate")
        assert r.ok and r.text == "unknown"


def test_malformed_and_retransmitted_lines_get_no_reply(server, handler):
    raw = Raw(server.port)
    raw.send(b"garbage\n=: x echo a\n=: 5 echo first\n")
    assert raw.line() == b"@: 5 5#first\n"
    raw.send(b"=: 5 echo again\n\n=: 6 echo b\n")
    assert raw.line() == b"@: 6 1#b\n"
    assert [r.args for r in handler.executed] == [["first"], ["b"]]


def test_address_argument_reaches_the_handler_separately(server, handler):
    with WireClient("127.0.0.1", server.port, 5) as c:
        assert c.command("echo", "x", "a=10.0.0.7", "y").text == "x y"
    assert handler.executed[-1].address == "10.0.0.7"


# ------------------------------------------------------------------ order, never busy

def test_requests_wait_their_turn_instead_of_busy(server, handler):
    a = WireClient("127.0.0.1", server.port, 5)
    b = WireClient("127.0.0.1", server.port, 5)
    a.sock.sendall(a.conn.send("slow"))
    slow_no = a.conn.last_cmdno
    assert handler.slow_started.wait(5)
    # "slow" runs until the test releases it: these wait for it, in order
    b.sock.sendall(b.conn.send("echo", "x"))
    b_no = b.conn.last_cmdno
    a.sock.sendall(a.conn.send("echo", "y"))
    a_no = a.conn.last_cmdno
    with WireClient("127.0.0.1", server.port, 5) as c:    # hello waits for no other client
        assert c.hello().startswith("hello back V2 ")
    assert [r.command for r in handler.executed] == ["slow"]
    handler.slow_release.set()
    assert a.wait_reply(slow_no).text == "done"
    assert a.wait_reply(a_no).text == "y"
    assert b.wait_reply(b_no).text == "x"
    assert sorted(" ".join(r.args) for r in handler.executed) == ["", "x", "y"]
    a.close()
    b.close()


def test_write_while_another_runs_waits_and_lines_continue(server, handler):
    a = WireClient("127.0.0.1", server.port, 5)
    b = Raw(server.port)
    a.sock.sendall(a.conn.send("slow"))
    assert handler.slow_started.wait(5)
    b.send(b"=: 1 write 2\n" + b"\x01" * 8 + b"=: 2 echo after\n")
    handler.slow_release.set()
    assert b.line() == b"@: 1 2#ok\n"
    assert b.line() == b"@: 2 5#after\n"
    assert handler.payloads == [b"\x01" * 8]
    a.close()


# ------------------------------------------------------------------ binary data

def test_read_reply_framing(server):
    raw = Raw(server.port)
    raw.send(b"=: 8 read 1 2 3 5\n")
    assert raw.line() == b"@: 8 7#6 ulong\n"
    data = raw.exact(24)
    assert np.array_equal(np.frombuffer(data, "<u4").reshape(2, 3), IMAGE[1:3, 3:6])
    raw.send(b"=: 9 echo next\n")   # nothing stray between the data and the next reply
    assert raw.line() == b"@: 9 4#next\n"


def test_wire_client_read(server):
    with WireClient("127.0.0.1", server.port, 5) as c:
        img = c.read(0, 5, 0, 6)
        assert img.dtype == np.uint32 and np.array_equal(img, IMAGE)


def test_large_binary_reply(server, handler):
    handler.big = os.urandom(20 * 1024 * 1024)
    with WireClient("127.0.0.1", server.port, 10) as c:
        r = c.command("big", expect_payload=payload_size)
        assert r.payload == handler.big
        assert c.command("echo", "ok").text == "ok"


@pytest.mark.parametrize("together", [False, True])
def test_write_payload_then_xfer_done(server, handler, together):
    raw = Raw(server.port)
    data = np.array([[1, 10, 0x0A0A0A0A], [0x3D3A2020, 7, 2**32 - 1]], "<u4").tobytes()
    if together:   # the client does not wait for "ok" before sending the data
        raw.send(b"=: 1 write 2 3\n" + data + b"=: 2 xfer_done\n")
        assert raw.line() == b"@: 1 2#ok\n"
    else:
        raw.send(b"=: 1 write 2 3\n")
        assert raw.line() == b"@: 1 2#ok\n"
        for i in range(0, len(data), 5):
            raw.send(data[i:i + 5])
            time.sleep(0.001)
        raw.send(b"=: 2 xfer_done\n")
    assert raw.line() == b"@: 2 2#ok\n"
    assert handler.payloads == [data]


# ------------------------------------------------------------------ many clients

def test_two_clients_interleaved(server):
    a = WireClient("127.0.0.1", server.port, 5)
    b = WireClient("127.0.0.1", server.port, 5)
    for i in range(50):
        assert a.command("echo", "a", i).text == f"a {i}"
        assert b.command("echo", "b", i).text == f"b {i}"
    a.close()
    b.close()


def test_thousands_of_requests_in_one_packet(server):
    raw = Raw(server.port)
    n = 5000
    raw.send(b"".join(b"=: %d hello spec\n" % i for i in range(1, n + 1)))
    conn = ClientConnection()
    got = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        got += conn.receive_data(raw.sock.recv(1 << 20))
    assert [r.cmdno for r in got] == list(range(1, n + 1))
    assert all(r.text.startswith("hello back V2") for r in got)


def test_pipelined_commands_each_get_one_answer(server, handler):
    raw = Raw(server.port)
    n = 2000
    raw.send(b"".join(b"=: %d echo %d\n" % (i, i) for i in range(1, n + 1)))
    conn = ClientConnection()
    got = {}
    while len(got) < n:
        for r in conn.receive_data(raw.sock.recv(1 << 20)):
            assert r.cmdno not in got
            got[r.cmdno] = r.text
    # each request ran or was answered busy, never both, never lost
    ran = {int(t) for t in got.values() if t != "busy"}
    assert ran == {int(r.args[0]) for r in handler.executed}
    assert 1 in ran


def test_slow_reader_gets_everything_while_others_are_served(handler):
    handler.description = "y" * 65536
    srv = HardwareServer(handler, 0, "127.0.0.1")          # 64 MiB output limit
    srv.start()
    try:
        slow = Raw(srv.port)
        n = 300                                           # ~19 MiB waiting for it
        slow.send(b"".join(b"=: %d hello\n" % i for i in range(1, n + 1)))
        time.sleep(0.1)                                   # let the kernel buffers fill
        with WireClient("127.0.0.1", srv.port, 5) as reader:
            for i in range(20):
                assert reader.command("echo", i).text == str(i)
        conn = ClientConnection()
        got = []
        while len(got) < n:
            got += conn.receive_data(slow.sock.recv(1 << 20))
        assert [r.cmdno for r in got] == list(range(1, n + 1))
        assert all(r.text.endswith("y" * 65536) for r in got)
    finally:
        srv.stop()


def test_client_that_never_reads_does_not_block_others(handler, caplog):
    handler.description = "x" * 65536          # each hello answer is 64 KiB
    srv = HardwareServer(handler, 0, "127.0.0.1", max_output=4 * 1024 * 1024)
    srv.start()
    try:
        lazy = Raw(srv.port)
        flood = b"".join(b"=: %d hello\n" % i for i in range(1, 3001))  # ~190 MiB of answers
        with caplog.at_level(logging.WARNING, logger="eiger_server.wire.server"):
            lazy.send(flood)
            with WireClient("127.0.0.1", srv.port, 30) as reader:
                for i in range(20):
                    t0 = time.monotonic()
                    assert reader.command("echo", i).text == str(i)
                    # not a speed test: only "not held up by the lazy client"
                    assert time.monotonic() - t0 < 10.0
            wait_for(lambda: "does not read its replies" in caplog.text)
        # the server gave up on the client that does not read: what it gets
        # is far less than it asked for, then the connection ends.
        received = 0
        lazy.sock.settimeout(5)
        try:
            while chunk := lazy.sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 3000 * 65536 / 4
    finally:
        srv.stop()


def test_client_disconnecting_mid_reply(server, handler):
    handler.big = bytes(32 * 1024 * 1024)
    raw = Raw(server.port)
    raw.send(b"=: 1 big\n")
    assert raw.line().startswith(b"@: 1 ")
    raw.exact(1000)
    raw.close()                      # leaves with most of the data unsent
    with WireClient("127.0.0.1", server.port, 5) as c:
        assert c.command("echo", "fine").text == "fine"


def test_client_leaving_before_its_reply(server, handler):
    raw = Raw(server.port)
    raw.send(b"=: 1 slow\n")
    assert handler.slow_started.wait(5)
    raw.close()
    handler.slow_release.set()
    with WireClient("127.0.0.1", server.port, 5) as c:
        wait_for(lambda: c.command("echo", "x").text == "x")


# ------------------------------------------------------------------ stopping

def test_exit_stops_the_server_after_replying(handler):
    srv = HardwareServer(handler, 0, "127.0.0.1")
    srv.start()
    with WireClient("127.0.0.1", srv.port, 5) as c:
        assert c.command("exit").text == "ok"
    assert srv.wait(5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2)


def test_serve_forever_returns_after_exit(handler):
    srv = HardwareServer(handler, 0, "127.0.0.1")
    result = []
    t = threading.Thread(target=lambda: result.append(srv.serve_forever()))
    t.start()
    with WireClient("127.0.0.1", srv.port, 5) as c:
        c.command("exit")
    t.join(5)
    assert not t.is_alive() and result == [None]


def test_stop_frees_the_port(handler):
    srv = HardwareServer(handler, 0, "127.0.0.1")
    srv.start()
    port = srv.port
    WireClient("127.0.0.1", port, 5).close()
    srv.stop()
    again = HardwareServer(handler, port, "127.0.0.1")   # rebinding works at once
    again.start()
    with WireClient("127.0.0.1", port, 5) as c:
        assert c.command("echo", "back").text == "back"
    again.stop()


# ------------------------------------------------------------------ logging

def test_requests_and_replies_are_logged_at_client_level(server, caplog):
    with caplog.at_level(CLIENT, logger="eiger_server.wire.server"):
        with WireClient("127.0.0.1", server.port, 5) as c:
            c.command("echo", "hi")
            with pytest.raises(WireError):
                c.command("fail", check=True)
        wait_for(lambda: "#2 !" in caplog.text)
    assert "-> #1 echo hi" in caplog.text
    assert "<- #1 @ hi" in caplog.text
    assert "fail. error: the detector said no" in caplog.text
