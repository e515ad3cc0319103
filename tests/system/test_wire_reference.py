"""Differential tests: the same bytes to the protocol's reference server and to
eiger_server, the replies compared byte by byte (issue 11, item 7).

The reference is certif-pyspec's ``HardwareServer`` (a test-only dependency)
run as a process by ``reference_hdw.py``, a small subclass that serves the
very image eiger_server took from the fake DCU. Where eiger_server differs on
purpose (README, "Protocol notes"), the tests below assert both answers.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():     # it imports asyncore, deprecated since 3.6
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyspec.hardware.server  # noqa: F401  (certif-pyspec: make test installs it)

from eiger_server.fakedcu.app import FakeDCUApp
from eiger_server.wire.client import WireClient

from helpers import ServerProcess, free_port, server_args_for, take_first_image, wait_for

REFERENCE = Path(__file__).with_name("reference_hdw.py")
END = b"=: 999 goodbye\n"           # ends every script: its reply marks the end
END_REPLY = b"@: 999 2#ok\n"


class Reference:
    """The reference server as a process."""

    def __init__(self, tmp: Path, image: Optional[Path] = None) -> None:
        self.port = free_port()
        cmd = [sys.executable, str(REFERENCE), "-p", str(self.port),
               "-L", str(tmp / f"ref-{self.port}.lock")]
        if image is not None:
            cmd += ["--image", str(image)]
        self.proc = subprocess.Popen(cmd, cwd=str(tmp), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None or _connects(self.port), 20,
                 what="the reference server to listen")
        assert self.proc.poll() is None, "the reference server did not start"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def talk(port: int, script: Union[bytes, Sequence[bytes]], *, end: bool = True,
         timeout: float = 20.0) -> bytes:
    """Send ``script`` (pieces 50 ms apart), then :data:`END` unless ``end`` is
    false; return every byte received up to END's reply or the server's close."""
    pieces: List[bytes] = [script] if isinstance(script, bytes) else list(script)
    if end:
        pieces.append(END)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    try:
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.05)
            try:
                sock.sendall(piece)
            except OSError:       # the reference may already have dropped us
                break
        deadline = time.monotonic() + timeout
        while not (end and got.endswith(END_REPLY)):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        sock.close()
    return got


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference port, eiger_server port, rows, cols): eiger_server with one
    image from the fake DCU, the reference serving that same image."""
    tmp = tmp_path_factory.mktemp("reference")
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=tmp / "dcu")
    app.start()
    server = ref = None
    try:
        server = ServerProcess(server_args_for(app), tmp)
        with WireClient("127.0.0.1", server.port, 20) as c:
            typename, rows, cols = take_first_image(c, tmp / "data")
            rows, cols = int(rows), int(cols)
            resp = c.command("read", 0, rows - 1, 0, cols - 1, check=True)
        npoints, typename = resp.text.split()
        dtype = {"ushort": "<u2", "ulong": "<u4"}[typename]
        raw = np.frombuffer(resp.payload, dtype=dtype).reshape(rows, cols)
        # eiger_server leaves pixels EIGER marks as masked out of sums
        summed = np.where(raw == np.iinfo(raw.dtype).max, 0, raw)
        image = tmp / "image.npz"
        np.savez(image, raw=raw, summed=summed)
        ref = Reference(tmp, image)
        yield ref.port, server.port, rows, cols
    finally:
        if ref is not None:
            ref.stop()
        if server is not None:
            server.stop()
        app.stop()


@pytest.fixture
def fresh_pair(tmp_path):
    """A reference with no data and an eiger_server that took no image (both
    may be told to exit)."""
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=tmp_path / "dcu")
    app.start()
    server = ref = None
    try:
        server = ServerProcess(server_args_for(app), tmp_path)
        ref = Reference(tmp_path)
        yield ref, server
    finally:
        if ref is not None:
            ref.stop()
        if server is not None:
            server.stop()
        app.stop()


# ------------------------------------------------------------ the same bytes

SAME = {
    "pipelined": b"=: 1 clear\n=: 2 goodbye\n=: 3 xfer_done\n",
    "split over reads": [b"=: 4 cl", b"ear\n=: 5 good", b"bye\r\n=: 6 get_st", b"atus\n"],
    "retransmissions": b"=: 6 clear\n=: 6 clear\n=: 7 clear\n=: 7 goodbye\n=: 8 goodbye\n",
    "malformed lines": b"garbage\n\n=: x clear\n=: 9\n=: -3 clear\n@: 4 2#ok\n=: 10 clear\n",
    "unknown commands": b"=: 11 frobnicate a b\n=: 12 Clear\n",
    "address argument": b"=: 13 clear a=7\n=: 14 goodbye a=1 x\n",
    "leading zeros": b"=: 015 clear\n=: 16 get_status\n",
    "read": b"=: 20 read 0 3 0 4\n=: 21 read 2 2 5 5\n",
    "read clipped": b"=: 22 read 0 %(rows)d 0 2\n=: 23 read %(r2)d 5000 %(c2)d 5000\n",
    "read arguments": b"=: 25 read 1 2 3\n=: 26 read\n=: 27 read 1 2 3 4 5\n",
    "get_roi": b"=: 30 get_roi 5 9 7 11\n=: 31 get_roi 0 2000 0 2000\n"
               b"=: 32 get_roi 0 %(rows)d 3 %(cols)d\n",
    "named roi": b"=: 33 set_roi r 0 9 0 99999\n=: 34 get_roi r\n",
    "roi errors": b"=: 35 get_roi nosuch\n=: 36 get_roi 1 2 3\n=: 37 get_roi\n"
                  b"=: 38 set_roi r 1 2\n",
}


@pytest.mark.parametrize("name", list(SAME))
def test_same_bytes_same_answer(pair, name):
    ref_port, our_port, rows, cols = pair
    script = SAME[name]
    values = {b"rows": rows, b"cols": cols, b"r2": rows - 2, b"c2": cols - 3}
    if isinstance(script, bytes):
        script = script % values
    theirs, ours = talk(ref_port, script), talk(our_port, script)
    assert theirs.endswith(END_REPLY), theirs[:300]
    assert ours == theirs


def test_no_data_and_exit_answer_the_same(fresh_pair):
    ref, server = fresh_pair
    script = (b"=: 1 read 0 1 0 1\n=: 2 get_roi 0 1 0 1\n=: 3 get_roi r\n=: 4 get_roi\n"
              b"=: 5 get_status\n=: 6 exit\n")
    theirs, ours = talk(ref.port, script, end=False), talk(server.port, script, end=False)
    assert theirs == (b"!: 1 9#not ready\n!: 2 19#No acquisition done\n"
                      b"!: 3 19#No acquisition done\n!: 4 19#No acquisition done\n"
                      b"@: 5 1#0\n@: 6 2#ok\n")
    assert ours == theirs
    assert ref.proc.wait(10) == 0
    wait_for(lambda: not server.alive(), 10, what="eiger_server to exit")


# ----------------------------------------------------- differences on purpose

def test_difference_spacing_is_tolerated(pair):
    ref_port, our_port, _, _ = pair
    script = b"=:  21 clear\n=:22 clear\n  =: 23 clear\n=:\t24 clear\n=: 25  clear\n"
    assert talk(ref_port, script) == b"@: 25 2#ok\n" + END_REPLY
    assert talk(our_port, script) == b"".join(b"@: %d 2#ok\n" % n for n in range(21, 26)) \
        + END_REPLY


def test_difference_non_utf8_and_empty_lines_do_not_drop_the_client(pair):
    ref_port, our_port, _, _ = pair
    for script in (b"=: 30 cl\xffear\n=: 31 clear\n", b"=: 32  \n=: 31 clear\n"):
        assert talk(ref_port, script) == b""            # the reference hangs up
        assert talk(our_port, script) == b"@: 31 2#ok\n" + END_REPLY


def _error_line(got: bytes, cmdno: int) -> bytes:
    m = re.match(rb"!: %d (\d+)#" % cmdno, got)
    assert m, got[:200]
    text = got[m.end():m.end() + int(m.group(1))]
    assert got[m.end() + len(text):m.end() + len(text) + 1] == b"\n"
    return text


@pytest.mark.parametrize("request_line,reference_answer,our_error", [
    # bounds wholly outside the image: the reference sums or sends nothing
    (b"get_roi %(rows)d %(rows)d 0 3", b"@: 1 1#0\n", b"outside the image"),
    (b"read %(rows)d 9999 0 3", b"@: 1 %(len)d#0 %(type)s\n", b"outside the image"),
    # inverted bounds: the same empty slice
    (b"get_roi 5 2 0 3", b"@: 1 1#0\n", b"must not be after the last"),
    # negative bounds count from the far edge in the reference (numpy)
    (b"get_roi -1 -1 0 0", None, b"outside the image"),
])
def test_difference_bad_bounds_are_errors(pair, request_line, reference_answer, our_error):
    ref_port, our_port, rows, cols = pair
    values = {b"rows": rows, b"cols": cols}
    line = b"=: 1 " + request_line % values + b"\n"
    theirs, ours = talk(ref_port, line), talk(our_port, line)
    if reference_answer is not None:
        typename = b"ushort" if b"#ushort" in talk(ref_port, b"=: 1 config 0\n") else b"ulong"
        values = {b"type": typename, b"len": len(typename) + 2}
        assert theirs == reference_answer % values + END_REPLY
    else:
        assert theirs.startswith(b"@: 1 ")
    assert our_error in _error_line(ours, 1)
    assert ours.endswith(b"\n" + END_REPLY)


def test_difference_non_numeric_bounds_name_the_bad_word(pair):
    ref_port, our_port, _, _ = pair
    for command in (b"read 0 x 0 3", b"get_roi 0 x 0 3"):
        line = b"=: 1 " + command + b"\n"
        word = command.split()[0]
        assert _error_line(talk(ref_port, line), 1).startswith(word + b". error: invalid literal")
        assert _error_line(talk(our_port, line), 1) == word + b". error: " + word \
            + b": 'x' is not a number"


def test_difference_a_named_roi_can_be_read_twice(pair):
    ref_port, our_port, _, _ = pair
    script = b"=: 1 set_roi q 0 9 0 9\n=: 2 get_roi q\n=: 3 get_roi q\n"
    theirs, ours = talk(ref_port, script), talk(our_port, script)
    first = theirs.split(b"\n")[1] + b"\n"
    assert ours == b"@: 1 0#\n" + first + first.replace(b"@: 2", b"@: 3") + END_REPLY
    # the reference keeps the ROI as a one-pass iterator (Python 3): the second read fails
    assert b"get_roi. error: not enough values to unpack" in theirs.split(b"\n")[2]


def test_difference_write_takes_its_data(pair):
    ref_port, our_port, _, _ = pair
    script = b"=: 1 write 0 1 0 1\n" + b"\0" * 16 + b"=: 2 xfer_done\n"
    assert b"write. error: 'map' object is not subscriptable" in talk(ref_port, script)
    assert talk(our_port, script) == b"@: 1 2#ok\n@: 2 2#ok\n" + END_REPLY


def test_difference_hello_with_any_name_succeeds(pair):
    ref_port, our_port, _, _ = pair
    shape = rb"@: 1 (\d+)#hello back V2 \S+ \d+ .+\n"
    for port in (ref_port, our_port):
        got = talk(port, b"=: 1 hello\n")
        m = re.match(shape + re.escape(END_REPLY), got)
        assert m and int(m.group(1)) == len(got.split(b"#", 1)[1].split(b"\n")[0]), got
    assert talk(ref_port, b"=: 1 hello spec\n").startswith(b"!: 1 ")
    assert re.match(shape, talk(our_port, b"=: 1 hello spec\n"))
