"""Issue 2 acceptance: a script that speaks only the wire protocol.

The fake DCU and eiger_server both run as separate processes; the client
below is written from PROTOCOL.md alone and imports nothing of the project.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest

from helpers import ServerProcess, free_port, wait_for

REPLY = re.compile(rb"([@!]): (\d+) (\d+)#")


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.cmdno = 0
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def call(self, *words: str):
        self.cmdno += 1
        self.sock.sendall(f"=: {self.cmdno} {' '.join(words)}\n".encode())
        while True:
            match = REPLY.match(self.buffer)
            if match:
                length = int(match.group(3))
                end = match.end() + length
                if len(self.buffer) >= end + 1:
                    text = self.buffer[match.end():end].decode()
                    assert self.buffer[end:end + 1] == b"\n"
                    self.buffer = self.buffer[end + 1:]
                    assert int(match.group(2)) == self.cmdno
                    return match.group(1) == b"@", text
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self.buffer += chunk

    def ok(self, *words: str) -> str:
        good, text = self.call(*words)
        assert good, f"{words}: {text}"
        return text

    def error(self, *words: str) -> str:
        good, text = self.call(*words)
        assert not good, f"{words} should fail but answered {text!r}"
        return text


@pytest.fixture(params=["1.6.0", "1.8.0"])
def wire(request, tmp_path):
    http = free_port()
    dcu = subprocess.Popen([sys.executable, "-m", "eiger_server.fakedcu", "--http-port", str(http),
                            "--stream-port", "0", "--stream2-port", "0",
                            "--api", request.param, "--model", "1M"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # Once serving, the fake DCU prints a line with "stream_port N stream2_port N".
        words = dcu.stdout.readline().split()
        ports = {key: words[i + 1] for i, key in enumerate(words[:-1])
                 if key.endswith("port")}
        assert "stream_port" in ports, f"fake DCU did not start: {words}"
        server = ServerProcess(["-a", "127.0.0.1", "-P", str(http), "--stream-port",
                                ports["stream_port"], "--stream2-port", ports["stream2_port"]],
                               tmp_path)
        client = RawClient(server.port)
        yield request.param, client, server
        client.close()
        server.stop()
    finally:
        dcu.terminate()
        dcu.wait(10)
        dcu.stdout.close()


def test_a_wire_only_client_drives_the_detector(wire):
    api, client, server = wire
    assert client.ok("hello").startswith("hello back V2 ")
    typename, rows, cols = client.ok("config", "127.0.0.1").split()
    assert typename in ("ubyte", "ushort", "ulong") and (int(rows), int(cols)) == (1062, 1028)
    client.ok("set", "initialize")
    wait_for(lambda: client.ok("get", "cmd_executing") == "0", 20, what="initialize")
    assert client.ok("get", "state") == "idle"

    assert client.ok("set", "nimages", "3") == "3"
    assert client.ok("get", "nimages") == "3"
    assert float(client.ok("set", "count_time", "0.02")) == pytest.approx(0.02)
    assert float(client.ok("get", "count_time")) == pytest.approx(0.02)
    assert client.ok("set", "photon_energy", "9000") == "9000"
    assert float(client.ok("get", "photon_energy")) == 9000
    assert client.ok("set", "trigger_mode", "ints") == "ints"
    assert client.ok("get", "trigger_mode") == "ints"

    seq = client.ok("get", "arm")
    assert client.ok("get", "state") == "ready"
    assert client.ok("get", "seqid") == seq
    client.ok("get", "trigger")
    wait_for(lambda: client.ok("get_status") == "0", 10, what="trigger to finish")
    client.ok("get", "disarm")
    assert client.ok("get", "state") == "idle"

    assert float(client.ok("get", "temperature")) > 0
    assert float(client.ok("get", "humidity")) >= 0
    assert client.ok("get", "simplon_version") == api
    assert client.ok("get", "desc")
    assert client.ok("get", "x_pixels_in_detector") == "1028"

    # A count of 0.05 s, as spec's ct does.
    client.ok("run", "0.05", "0")
    wait_for(lambda: client.ok("get_status") == "0", 10, what="the count")

    assert "did you mean 'nimages'" in client.error("get", "nimage")
    assert "read-only" in client.error("set", "x_pixels_in_detector", "10")
    assert "maximum" in client.error("set", "photon_energy", "1e9")
    assert client.error("set", "nimages", "0").startswith("set. error: ")
    assert client.ok("bogus_command") == "unknown"
    assert server.alive()


def test_run_counts_for_the_preset(wire):
    api, client, server = wire
    client.ok("config", "127.0.0.1")
    client.ok("set", "initialize")
    wait_for(lambda: client.ok("get", "cmd_executing") == "0", 20, what="initialize")
    client.ok("set", "nimages", "1")
    started = time.monotonic()
    client.ok("run", "0.3", "0")
    assert client.ok("get_status") == "1"
    wait_for(lambda: client.ok("get_status") == "0", 10, what="the count")
    assert time.monotonic() - started >= 0.3
    assert float(client.ok("get", "count_time")) == pytest.approx(0.3, rel=0.01)
    # The same preset again triggers the armed series without re-programming.
    client.ok("run", "0.3", "0")
    wait_for(lambda: client.ok("get_status") == "0", 10, what="the second count")
