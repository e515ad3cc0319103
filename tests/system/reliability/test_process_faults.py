"""Reliability of the process: kill -9, SIGTERM during a transfer, a second
server on a port already served. eiger_server runs as spec starts it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from eiger_server.wire.client import WireClient
from eiger_server.fakedcu.app import FakeDCUApp
from eiger_server.app.process import pid_alive
from helpers import ROOT, ServerProcess, hello_ok, server_args_for, wait_for
from test_transfers import Proxy, make_big_h5


def test_kill_9_leaves_a_stale_lock_that_the_next_start_cleans(dcu, tmp_path):
    first = ServerProcess(server_args_for(dcu), tmp_path)
    port, lock = first.port, first.lock
    old_pid = first.proc.pid
    assert lock.read_text().strip() == str(old_pid)
    os.kill(old_pid, signal.SIGKILL)
    first.proc.wait(10)
    first.stop()
    assert lock.exists() and not pid_alive(old_pid)        # what kill -9 leaves behind
    second = ServerProcess(server_args_for(dcu), tmp_path, port=port)   # same port and lock
    try:
        assert lock.read_text().strip() == str(second.proc.pid)
        assert f"stale lock file {lock} of pid {old_pid}" in second.log_text()
        with WireClient("127.0.0.1", port, 10) as c:
            assert c.hello().split()[4] == str(second.proc.pid)
            assert c.command("config", "127.0.0.1", check=True).text == "ushort 514 1030"
    finally:
        second.stop()
    assert not lock.exists()                                # a clean exit removes it


def test_a_second_server_on_a_served_port_refuses_cleanly(dcu, tmp_path):
    first = ServerProcess(server_args_for(dcu), tmp_path)
    try:
        other_lock = tmp_path / "other.lock"               # not the first one's lock
        result = subprocess.run(
            [sys.executable, "-m", "eiger_server", "-p", str(first.port), "-L", str(other_lock),
             *server_args_for(dcu)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        output = result.stdout + result.stderr
        assert "cannot listen" in output and str(first.port) in output, output
        assert "Traceback" not in output
        assert not other_lock.exists()                     # it cleaned up after itself
        assert first.alive() and hello_ok(first.port)
        assert first.lock.read_text().strip() == str(first.proc.pid)
    finally:
        first.stop()


@pytest.fixture
def slow_file_dcu(tmp_path):
    """A fake DCU holding a 40 MB data file, reached through a throttling proxy."""
    directory = tmp_path / "dcu-files"
    directory.mkdir()
    make_big_h5(directory / "big_data_000001.h5", 40)
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=directory)
    app.start()
    proxy = Proxy(app.http_port)
    proxy.rate = 10e6                                      # ~4 s for the file
    yield app, proxy
    proxy.close()
    app.stop()


def test_sigterm_during_a_transfer_leaves_no_partial_file(slow_file_dcu, tmp_path):
    app, proxy = slow_file_dcu
    data = tmp_path / "data"
    server = ServerProcess(["-a", "127.0.0.1", "-P", str(proxy.port)], tmp_path)
    try:
        with WireClient("127.0.0.1", server.port, 10) as c:
            c.set("data_directory", data)
            c.set("auto_delete", 1)
            assert c.set("transfer", "big_data_000001.h5") == "started"
            wait_for(lambda: any(p.name.endswith(".part") and p.stat().st_size > 0
                                 for p in data.iterdir()), 10, what="the download to start")
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
        assert time.monotonic() - t0 < 5                    # it does not finish the file first
    finally:
        server.stop()
    assert sorted(os.listdir(data)) == []                   # no final name, no temporary
    assert "big_data_000001.h5" in app.model.filestore.list_files()
    assert not [p for m, p, _ in app.http.request_log if m == "DELETE"]
    log = server.log_text()
    assert "transfer of 'big_data_000001.h5' failed" in log and "shutting down" in log
    assert not server.lock.exists()
