"""Reliability against a misbehaving detector: eiger_server as a process, the
fake DCU with its fault switches (slow answers, HTTP 500, dropped
connections, restarts, and stream frames lost, doubled, stale or corrupt).

Each case checks what spec sees (the reply text, get_status, dropped,
stream_error), that the server keeps answering, and that it recovers.
"""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import requests
import tifffile

from eiger_server.storage import tiff
from eiger_server.wire.client import WireClient, WireError
from eiger_server.fakedcu.app import FakeDCUApp
from helpers import ServerProcess, hello_ok, server_args_for, wait_for

TIMEOUT = "1"          # eiger_server --timeout: seconds for a parameter read


def status(c: WireClient, timeout: float = 30.0):
    """Wait for the count to end; the final get_status reply (ok, text)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = c.command("get_status")
        if resp.text != "1":
            return resp.ok, resp.text
        assert time.monotonic() < deadline, "the count did not end"
        time.sleep(0.02)


def stream_setup(c: WireClient, data: Path, version: str, nimages: int,
                 frame_time: float = 0.005, prefix: str = "rel", compression: str = "bslz4"):
    """What spec's macros set before a stream series with autosave."""
    for name, value in [("data_directory", data), ("stream_version", version),
                        ("stream_mode", 1), ("compression", compression),
                        ("trigger_mode", "ints"), ("ntrigger", 1), ("nimages", nimages),
                        ("count_time", frame_time), ("frame_time", frame_time),
                        ("stream_autosave", 1), ("stream_autoindex", 1),
                        ("stream_prefix", prefix + "_$id")]:
        c.set(name, value)


def configure(c: WireClient) -> None:
    c.command("config", "127.0.0.1", check=True)
    c.set("initialize")
    wait_for(lambda: c.get("cmd_executing") == "0", 20, what="initialize")


def frame(app: FakeDCUApp, index: int, dtype=np.uint16) -> np.ndarray:
    width, height = (int(app.model.config_value("detector", k))
                     for k in ("x_pixels_in_detector", "y_pixels_in_detector"))
    return app.model.source.frame(index, width, height, np.dtype(dtype),
                                  ["threshold_1"])["threshold_1"]


@pytest.fixture
def server(dcu, tmp_path):
    proc = ServerProcess(server_args_for(dcu) + ["--timeout", TIMEOUT], tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def client(server):
    with WireClient("127.0.0.1", server.port, 30) as c:
        configure(c)
        yield c


# ------------------------------------------------------------------ HTTP faults

def reserved_ports(n: int) -> List[socket.socket]:
    """``n`` local ports held by sockets bound but not listening: nobody else
    can take them, and a connection to them is refused at once."""
    held = []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    return held


# the server's clear errors for a detector that does not answer (refused, or a
# connect that timed out on a busy machine)
UNREACHABLE = r"cannot reach the detector|did not answer within"


def test_dcu_unreachable_at_start_then_appears(tmp_path):
    held = reserved_ports(3)
    http, s1, s2 = (sock.getsockname()[1] for sock in held)
    args = ["-a", "127.0.0.1", "-P", str(http), "--stream-port", str(s1),
            "--stream2-port", str(s2), "--timeout", TIMEOUT]
    app: Optional[FakeDCUApp] = None
    server: Optional[ServerProcess] = None
    try:
        server = ServerProcess(args, tmp_path)          # starts although nothing answers
        with WireClient("127.0.0.1", server.port, 30) as c:
            assert c.hello().startswith("hello back V2 ")
            resp = c.command("config", "127.0.0.1")
            assert not resp.ok
            assert resp.text.startswith("config. error: ")
            assert re.search(UNREACHABLE, resp.text) and str(http) in resp.text
            with pytest.raises(WireError, match=UNREACHABLE):
                c.get("state")
            assert c.hello().startswith("hello back V2 ")
            # The detector comes up on the ports eiger_server was told about.
            for sock in held:
                sock.close()
            app = FakeDCUApp(api="1.8.0", model="500K", data_dir=tmp_path / "dcu",
                             http_port=http, stream_port=s1, stream2_port=s2)
            app.start()
            assert c.command("config", "127.0.0.1", check=True).text == "ushort 514 1030"
            assert c.get("simplon_version") == "1.8.0"
            stream_setup(c, tmp_path / "data", "V2", nimages=2)
            c.set("trigger")
            assert status(c) == (True, "0")
            assert c.get("images_collected") == "2"
    finally:
        for sock in held:
            sock.close()
        if server is not None:
            server.stop()
        if app is not None:
            app.stop()


def test_dcu_stops_answering_mid_command(dcu, server, client):
    c = client
    dcu.faults.update({"delay": 4})
    other = WireClient("127.0.0.1", server.port, 10)
    try:
        mark = len(dcu.http.request_log)
        c.sock.sendall(c.conn.send("get", "photon_energy"))
        cmdno = c.conn.last_cmdno
        wait_for(lambda: any("photon_energy" in path
                             for _, path, _ in list(dcu.http.request_log)[mark:]),
                 10, what="the server to ask the detector for photon_energy")
        # While the DCU holds the request, the loop still answers, and reads
        # from memory do not wait for it.
        assert other.hello().startswith("hello back V2 ")       # the loop never waits
        assert other.command("get_status").text == "0"          # memory-only: beside it
        resp = c.wait_reply(cmdno, timeout=10)
        assert not resp.ok
        assert "did not answer within 1 s" in resp.text and "photon_energy" in resp.text
    finally:
        dcu.faults.update({"delay": 0})
    assert float(other.get("photon_energy")) > 0                # recovered at once
    other.close()
    # A DCU that closes connections without answering.
    dcu.faults.update({"drop_connection": "nimages"})
    try:
        with pytest.raises(WireError, match="cannot reach the detector") as err:
            c.set("nimages", 7)
        assert "'nimages'" in str(err.value)
        assert c.get("count_time")                               # other names still work
    finally:
        dcu.faults.update({"drop_connection": False})
    assert c.set("nimages", 7) == "7"
    assert hello_ok(server.port)


def test_http_500_text_reaches_spec(dcu, client):
    c = client
    dcu.faults.update({"error500": {"count_time": "sensor overheated: cooling water low",
                                    "arm": "high voltage supply not ready",
                                    "temperature": "board 0 sensor unreadable"}})
    try:
        with pytest.raises(WireError) as err:
            c.set("count_time", 0.1)
        assert "HTTP 500" in str(err.value) and "sensor overheated: cooling water low" \
            in str(err.value)
        with pytest.raises(WireError, match="board 0 sensor unreadable"):
            c.get("temperature")
        with pytest.raises(WireError, match="high voltage supply not ready"):
            c.set("arm")
        # A count that cannot arm: spec learns why from get_status.
        dcu.faults.update({"error500": {"arm": "high voltage supply not ready"}})
        c.command("run", "0.1", check=True)
        ok, text = status(c)
        assert not ok and "high voltage supply not ready" in text
        assert c.command("get_status").text == "0"               # reported once
    finally:
        dcu.faults.update({"clear": True})
    assert float(c.set("count_time", 0.1)) == pytest.approx(0.1)
    assert c.get("arm")


def test_dcu_reboot_mid_series(tmp_path):
    """The DCU goes away during a series and comes back (same ports, fresh state)."""
    dcu = FakeDCUApp(api="1.8.0", model="500K", data_dir=tmp_path / "dcu")
    dcu.start()
    ports = dict(http_port=dcu.http_port, stream_port=dcu.stream_port,
                 stream2_port=dcu.stream2_port)
    server = ServerProcess(server_args_for(dcu) + ["--timeout", TIMEOUT], tmp_path)
    data = tmp_path / "data"
    try:
        with WireClient("127.0.0.1", server.port, 30) as c:
            configure(c)
            stream_setup(c, data, "V2", nimages=300, frame_time=0.01)
            c.set("trigger")
            wait_for(lambda: int(c.get("images_collected")) >= 20, 10, what="20 images")
            dcu.stop()                                        # power cut
            dcu = FakeDCUApp(api="1.8.0", model="500K", data_dir=tmp_path / "dcu2", **ports)
            dcu.start()                                       # back, in state 'na'
            ok, text = status(c)
            # The trigger's connection broke; the images that never came are reported.
            assert not ok and "cannot reach the detector" in text, text
            match = re.search(r"(\d+) of the count's 300 images had arrived, the other "
                              r"(\d+) are lost", text)
            assert match, text
            arrived, lost = int(match.group(1)), int(match.group(2))
            assert arrived >= 20 and arrived + lost == 300
            # The next series: the server finds the DCU in 'na', initializes it and
            # programs spec's settings again before it arms.
            c.set("trigger")
            assert status(c) == (True, "0")
            assert dcu.model.config_value("detector", "nimages") == 300
            assert "programmed" in server.log_text()
            # spec's reconfig (config) brings it back; the stream reconnects.
            configure(c)
            stream_setup(c, data, "V2", nimages=3, prefix="after")
            c.set("trigger")
            assert status(c) == (True, "0")
            assert c.get("images_collected") == "3"
            assert c.get("is_waiting_data") == "0"
            series = c.get("seqid")
            files = wait_for(lambda: sorted(p.name for p in data.glob("after_*.tif"))
                             if len(list(data.glob("after_*.tif"))) == 3 else None, 10,
                             what="3 TIFF files of the series after the reboot")
            assert files == [f"after_{series}_{i:04d}.tif" for i in range(3)]
            np.testing.assert_array_equal(tifffile.imread(data / files[-1]), frame(dcu, 2))
            # values set after the reboot really reached the DCU
            assert dcu.model.config_value("detector", "nimages") == 3
    finally:
        server.stop()
        dcu.stop()


def test_settings_set_after_a_dcu_restart_reach_the_dcu(dcu, client):
    """A restarted DCU is back at its defaults: a value spec sets again, equal to
    the one set before the restart, must still reach it (no stale cache)."""
    c = client
    c.set("count_time", 0.02)
    c.set("nimages", 2)
    requests.put(f"{dcu.url}/fake/restart", timeout=5).raise_for_status()
    assert dcu.model.config_value("detector", "count_time") != pytest.approx(0.02)
    assert float(c.set("count_time", 0.02)) == pytest.approx(0.02)
    assert c.set("nimages", 2) == "2"
    assert dcu.model.config_value("detector", "count_time") == pytest.approx(0.02)
    assert dcu.model.config_value("detector", "nimages") == 2
    # State 'na': the arm initializes the DCU and programs the settings again.
    assert c.set("arm")
    assert dcu.model.config_value("detector", "count_time") == pytest.approx(0.02)
    configure(c)
    assert c.set("arm")


# ------------------------------------------------------------------ stream faults

FAULTS = {"drop": 1, "duplicate": 2, "corrupt": 3, "bad_encoding": 4, "stale_series": 5}


@pytest.mark.parametrize("version,compression", [("V1", "bslz4"), ("V2", "bslz4"),
                                                 ("V1", "lz4"), ("V2", "lz4")])
def test_stream_faults_are_counted_logged_and_survived(dcu, server, client, tmp_path,
                                                       version, compression):
    c = client
    data = tmp_path / "data"
    adapter = dcu.stream_v1 if version == "V1" else dcu.stream_v2
    # A clean series first, so that a frame can claim to be from a previous one.
    stream_setup(c, data, version, nimages=2, prefix="clean", compression=compression)
    c.set("trigger")
    assert status(c) == (True, "0")
    assert c.get("dropped") == "0" and c.get("stream_error") == ""
    for kind, index in FAULTS.items():
        getattr(adapter.faults, kind).add(index)
    stream_setup(c, data, version, nimages=8, prefix="faulty", compression=compression)
    series = int(c.set("arm"))
    c.set("trigger")
    assert status(c) == (True, "0")               # the count ends: nothing waits forever
    c.set("disarm")
    good = [0, 2, 6, 7]                           # frames that arrived intact
    assert c.get("images_collected") == str(len(good))
    assert c.get("is_waiting_data") == "0"
    assert c.get("dropped") == "4"                # lost, stale, corrupt, unknown encoding
    error = c.get("stream_error")
    assert f"frame 3 of series {series}" in error                      # corrupt blob
    assert f"frame 4 of series {series}" in error and "unknown" in error   # encoding
    log = server.log_text()
    assert f"frame 1 of series {series} lost" in log
    assert f"frame 2 of series {series} received again" in log
    assert f"of series {series - 1} arrived after that series ended" in log
    assert "unexpected" not in log and "Traceback" not in log
    # What was saved is what arrived intact, each a complete image.
    files = wait_for(lambda: sorted(data.glob("faulty_*.tif")) if len(
        list(data.glob("faulty_*.tif"))) == len(good) else None, 10, what="the saved images")
    frames = sorted(tiff.read_metadata(str(p))["frame"] for p in files)
    assert frames == good
    for path in files:
        number = tiff.read_metadata(str(path))["frame"]
        np.testing.assert_array_equal(tifffile.imread(path), frame(dcu, number))
    # The receiver thread lives on: the next series is whole.
    adapter.faults.clear()
    stream_setup(c, data, version, nimages=3, prefix="next", compression=compression)
    c.set("trigger")
    assert status(c) == (True, "0")
    assert c.get("images_collected") == "3"
    assert c.get("dropped") == "4"                # nothing new lost
    wait_for(lambda: len(list(data.glob("next_*.tif"))) == 3, 10, what="3 more images")
    assert not list(data.glob(".*"))              # no temporary files left behind
