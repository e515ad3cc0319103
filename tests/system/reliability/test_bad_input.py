"""Reliability of the wire side: eiger_server as a process, against bad input.

Every case runs against the real server process (``python -m eiger_server``)
and the fake DCU, and ends by checking that a fresh connection still gets its
``hello`` answered. The unit tests of the server loop (integration/test_wire_server.py) use a
scripted handler; these use the real command handler and controller.
"""
from __future__ import annotations

import random
import socket
import struct
import threading
import time
from typing import Dict, List, Tuple

import pytest

from eiger_server.control import table
from eiger_server.wire.client import WireClient
from eiger_server.fakedcu.app import FakeDCUApp
from eiger_server.wire.protocol import ClientConnection, Response
from helpers import ServerProcess, hello_ok, server_args_for, take_first_image, wait_for

IMAGE_ROWS, IMAGE_COLS = 514, 1030          # the fake 500K


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A fake DCU and eiger_server (a process) with one image taken over the stream."""
    tmp = tmp_path_factory.mktemp("protocol")
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=tmp / "dcu")
    app.start()
    server = ServerProcess(server_args_for(app), tmp)
    try:
        with WireClient("127.0.0.1", server.port, 20) as c:
            take_first_image(c, tmp / "data")
        yield app, server
    finally:
        server.stop()
        app.stop()


class Raw:
    """A bare socket speaking the protocol by hand."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = ClientConnection()
        self.ready: List[Response] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, cmdno: int, timeout: float = 10.0) -> Response:
        """The reply to ``cmdno``; replies to other numbers are an error."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(1 << 20)
            assert data, f"server closed the connection before replying to #{cmdno}"
            self.ready += self.conn.receive_data(data)
        resp = self.ready.pop(0)
        assert resp.cmdno == cmdno, f"reply to #{resp.cmdno} ({resp.text!r}), expected #{cmdno}"
        return resp

    def nothing_pending(self, wait: float = 0.2) -> bool:
        """True if no reply arrives within ``wait`` seconds."""
        if self.ready:
            return False
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return True
        self.ready += self.conn.receive_data(data)
        return not data and not self.ready

    def close(self, reset: bool = False) -> None:
        if reset:   # a reset instead of an orderly close
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def assert_serving(server: ServerProcess) -> None:
    """The process lives and a new connection gets its hello answered."""
    assert server.alive(), server.log_text()[-3000:]
    assert hello_ok(server.port), "a fresh hello was not answered"
    with WireClient("127.0.0.1", server.port, 10) as c:
        assert c.hello("after").startswith("hello back V2 ")
        assert c.get("state") in ("idle", "ready", "na")


def unexpected_errors(server: ServerProcess) -> List[str]:
    """Log lines of exceptions the server did not expect (bugs, not bad input)."""
    return [line for line in server.log_text().splitlines()
            if "unexpected" in line or line.startswith("Traceback")]


# ------------------------------------------------------------------ garbage

def test_random_bytes_are_ignored(rig):
    _, server = rig
    rnd = random.Random(1)
    raw = Raw(server.port)
    blob = bytes(rnd.getrandbits(8) for _ in range(1 << 20))
    # No random line may look like a request: make sure none starts with "=:".
    blob = blob.replace(b"=:", b"==")
    raw.send(blob)
    raw.send(b"\n=: 7 hello\n")                      # the same connection goes on
    assert raw.reply(7).text.startswith("hello back V2 ")
    raw.close()
    assert_serving(server)


def test_a_one_megabyte_line_is_dropped_and_the_next_line_served(rig):
    _, server = rig
    raw = Raw(server.port)
    raw.send(b"=: 1 get " + b"x" * (1 << 20) + b"\n")
    raw.send(b"=: 2 get state\n")
    assert raw.reply(2).ok
    # The same once more, sent in pieces with no newline for a while.
    for _ in range(16):
        raw.send(b"=: 3 set nimages " + b"9" * 65536)
    raw.send(b"\n=: 4 get nimages\n")
    assert raw.reply(4).text == "1"                  # the long 'set' did nothing
    assert "longer than" in server.log_text()
    raw.close()
    assert_serving(server)


def test_a_line_without_newline_then_hangup(rig):
    _, server = rig
    raw = Raw(server.port)
    raw.send(b"=: 1 set nimages 5")                  # never ends
    raw.close()
    raw = Raw(server.port)
    raw.send(b"=: 1 get nimages")
    time.sleep(0.1)
    assert raw.nothing_pending(0.1)                  # an unfinished line is not run
    raw.send(b"\n")
    assert raw.reply(1).text == "1"
    raw.close()
    assert_serving(server)


@pytest.mark.parametrize("line", [
    b"=: 1 get \xff\xfe\n",                      # not UTF-8
    b"=: 1 \xc3\x28 state\n",                    # broken 2-byte sequence
    b"=: 1 get state\x00\x00\n",                 # NUL bytes
    b"=: \xe2\x82 get state\n",
    b"\xef\xbb\xbf=: 1 get state\n",             # a byte-order mark in front
])
def test_non_utf8_and_control_bytes(rig, line):
    _, server = rig
    raw = Raw(server.port)
    if b"\x00" in line:       # NULs are text: the line is a request with an odd name
        raw.send(line)
        first = raw.reply(1)
        assert not first.ok and "unknown parameter" in first.text
        raw.send(b"=: 2 get nimages\n")
    else:                     # not a request at all: no reply, the next line is served
        raw.send(line + b"=: 2 get nimages\n")
    assert raw.reply(2).text == "1"
    raw.close()
    assert_serving(server)


def test_thousands_of_real_requests_in_one_packet(rig):
    _, server = rig
    raw = Raw(server.port)
    n = 5000
    kinds = [b"get state", b"get nimages", b"hello", b"get_status", b"get bogus_name",
             b"get data_directory"]
    raw.send(b"".join(b"=: %d %s\n" % (i, kinds[(i - 1) % len(kinds)]) for i in range(1, n + 1)))
    got: Dict[int, Response] = {}
    deadline = time.monotonic() + 30
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} replies"
        raw.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = raw.sock.recv(1 << 20)
        assert data, "server closed the connection"
        for resp in raw.conn.receive_data(data):
            assert resp.cmdno not in got, f"two replies to #{resp.cmdno}"
            got[resp.cmdno] = resp
    assert sorted(got) == list(range(1, n + 1))      # each request answered once
    executed = [r for r in got.values() if r.text != "busy"]
    assert got[1].ok and got[1].text in ("idle", "ready")
    assert all(got[i].text.startswith("hello back V2 ") for i in range(3, n + 1, 6))
    assert len(executed) >= n // 6                   # at least the hellos
    raw.close()
    assert_serving(server)


# ------------------------------------------------------------------ clients misbehaving

def test_a_client_that_never_reads_does_not_block_the_server(rig):
    _, server = rig
    lazy = Raw(server.port)
    lazy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop = threading.Event()

    def flood() -> None:
        # full-image reads (1 MB each), spaced so most of them run; never reading a byte
        deadline = time.monotonic() + 15
        for i in range(1, 100_000):
            if stop.is_set() or time.monotonic() > deadline \
                    or "does not read its replies" in server.log_text():
                return
            try:
                lazy.send(b"=: %d read 0 %d 0 %d\n" % (i, IMAGE_ROWS - 1, IMAGE_COLS - 1))
            except OSError:
                return                               # the server gave up on us: fine
            time.sleep(0.01)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    worst = 0.0
    try:
        with WireClient("127.0.0.1", server.port, 30) as other:
            while flooder.is_alive():
                t0 = time.monotonic()
                assert other.hello().startswith("hello back V2 ")
                resp = other.command("get", "nimages")
                assert resp.text in ("1", "busy")
                worst = max(worst, time.monotonic() - t0)
            image = other.read(0, IMAGE_ROWS - 1, 0, IMAGE_COLS - 1)
            assert image.shape == (IMAGE_ROWS, IMAGE_COLS)
    finally:
        stop.set()
        flooder.join(10)
    # not a speed test: a server that waited for the lazy client would hold the
    # other client until it gave up on the lazy one
    assert worst < 10.0, f"the server took {worst:.2f} s to answer another client"
    # far more asked for than the 64 MiB a client may leave unread
    wait_for(lambda: "does not read its replies" in server.log_text(), 10,
             what="the server to give up on the client that never reads")
    lazy.close()
    assert_serving(server)


@pytest.mark.parametrize("reset", [False, True])
def test_a_client_that_disconnects_mid_reply(rig, reset):
    _, server = rig
    raw = Raw(server.port)
    raw.send(b"=: 1 read 0 %d 0 %d\n" % (IMAGE_ROWS - 1, IMAGE_COLS - 1))
    got = b""
    while len(got) < 4000:
        got += raw.sock.recv(4000)
    assert got.startswith(b"@: 1 ")
    raw.close(reset=reset)                           # leaves with most of the image unsent
    with WireClient("127.0.0.1", server.port, 10) as c:
        image = c.read(0, IMAGE_ROWS - 1, 0, IMAGE_COLS - 1)
        assert image.size == IMAGE_ROWS * IMAGE_COLS
    assert_serving(server)


def test_a_client_that_leaves_during_a_slow_command(rig):
    app, server = rig
    app.faults.update({"delay": 0.5})
    try:
        mark = len(app.http.request_log)
        raw = Raw(server.port)
        raw.send(b"=: 1 get temperature\n")
        # leave once the command runs: the detector has the request
        wait_for(lambda: any("temperature" in path
                             for _, path, _ in list(app.http.request_log)[mark:]),
                 10, what="the server to ask the detector for the temperature")
        raw.close(reset=True)
    finally:
        app.faults.update({"delay": 0})
    wait_for(lambda: "left before the reply" in server.log_text(), 5,
             what="the server to notice the client left")
    assert_serving(server)


def test_two_clients_at_once(rig):
    _, server = rig
    errors: List[str] = []
    answered = {"a": 0, "b": 0}

    def client(tag: str, value_name: str, expected: str) -> None:
        try:
            with WireClient("127.0.0.1", server.port, 10) as c:
                for i in range(300):
                    resp = c.command("get", value_name)
                    if resp.text == "busy":
                        continue
                    if resp.text != expected:
                        errors.append(f"{tag}: get {value_name} -> {resp.text!r}")
                    answered[tag] += 1
                    if i % 50 == 0:
                        assert c.hello(tag).startswith("hello back V2 ")
        except Exception as exc:                     # noqa: BLE001 (reported below)
            errors.append(f"{tag}: {exc!r}")

    threads = [threading.Thread(target=client, args=("a", "nimages", "1")),
               threading.Thread(target=client, args=("b", "trigger_mode", "ints"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert answered["a"] > 0 and answered["b"] > 0   # both were served, not only busy
    assert_serving(server)


# ------------------------------------------------------------------ fuzz

# Names that stop the server or the detector, or write outside the test's
# directories, are left out; everything else in the image_par table is fair game.
_FUZZ_SKIP = {"kill", "restart", "reboot", "shutdown", "delete_logs", "data_directory",
              "arm", "trigger", "initialize", "pixelmask_calibrate", "pixelmask_load",
              "stream_save_mode", "pixelmask_save", "flatfield_save"}
_WORDS = ["0", "1", "-1", "1.5", "2", "10", "1e308", "1e400", "-1e400", "nan", "NaN", "inf",
          "-inf", "99999999999999999999", "0x10", "1_000", "", "..", "../x", "/etc/passwd",
          "a/b", "%2e%2e", "%2F", "$id", "*", "?", "[", "]", "é", "日本", "\u200b", "true",
          "no", "ints", "V1", "V2", "bslz4", "lz4", "enabled", "a=1.2.3.4", "x" * 3000,
          "\\", "'", '"', ";", "|", "`id`", "$(id)", "&&", "%s", "%n", "{}", "[]", "null"]


def fuzz_request(rnd: random.Random, names: List[str]) -> Tuple[str, List[str]]:
    """One random request (command, args) built from spec's grammar."""
    command = rnd.choice(["get", "get", "get", "set", "set", "set", "hello", "get_status",
                          "clear", "goodbye", "halt", "read", "get_roi", "set_roi", "config",
                          "xfer_done", "frobnicate", "GET", "Set", "run"])
    nargs = rnd.choice([0, 1, 1, 2, 2, 3, 4, 5])
    args = [rnd.choice(_WORDS + names) for _ in range(nargs)]
    if command in ("get", "set") and args and rnd.random() < 0.8:
        args[0] = rnd.choice(names)
    if command == "run":                             # never a real count: only bad presets
        args = [rnd.choice(["nan", "-1", "0", "inf", "x", "", "-0"])]
    if command == "config":                          # the detector address must not change
        args = ["127.0.0.1"]
    return command, [a for a in args if a.split()]


def junk_line(rnd: random.Random) -> bytes:
    """A line the server must ignore without a reply."""
    kind = rnd.randrange(4)
    if kind == 0:
        return bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 200))) \
            .replace(b"\n", b"").replace(b"=:", b"==") + b"\n"
    if kind == 1:
        return b"=: x%d get state\n" % rnd.randrange(1000)
    if kind == 2:
        return b"=:\n"
    return b"=: 12 \xff\xfe\xfd\n"


def test_fuzz_ten_thousand_requests(rig):
    app, server = rig
    rnd = random.Random(20240611)
    names = [row.name for row in table.TABLE if row.name not in _FUZZ_SKIP]
    names = [n.replace("/n", "/1") for n in names]
    raw = Raw(server.port, timeout=30)
    n, busy, errors, started = 10_000, 0, 0, time.monotonic()
    for cmdno in range(1, n + 1):
        command, args = fuzz_request(rnd, names)
        line = " ".join([f"=: {cmdno}", command, *args]).encode() + b"\n"
        prefix = b"".join(junk_line(rnd) for _ in range(rnd.random() < 0.1))
        raw.send(prefix + line)
        resp = raw.reply(cmdno, timeout=60)
        if resp.text == "busy":
            busy += 1                                # a background job or count still runs
        elif not resp.ok:
            errors += 1
            # bare texts are the reference server's own error answers
            assert resp.text in ("not ready", "cannot decode args", "No acquisition done",
                                 "Unknown ROI", "Bad ROI parameters",
                                 "Wrong number of values for ROI set") \
                or resp.text.startswith(f"{command}. error: "), \
                resp.text
        if cmdno % 2000 == 0:
            assert server.alive()
    elapsed = time.monotonic() - started
    raw.close()
    assert_serving(server)
    assert errors > n // 10                          # the fuzz did reach the error paths
    assert busy < n // 2
    assert not unexpected_errors(server), unexpected_errors(server)[:10]
    print(f"fuzz: {n} requests in {elapsed:.1f} s, {errors} errors, {busy} busy")
