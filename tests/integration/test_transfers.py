"""FileWriter files end to end: a WRITER acquisition on the fake DCU, files /
filelist / transfer / delete / auto_delete, failures midway, a full disk,
background commands, and the protocol answering during a 200 MB transfer.

The fake DCU runs in this process (real HTTP); the controller talks to it
directly or through :class:`Proxy`, a TCP proxy that can throttle or cut the
answers to ``GET /data/...``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filters)
import numpy as np
import pytest

from conftest import controller_options
from helpers import ServerProcess, acquire, wait_for
from eiger_server.control.controller import EigerController
from eiger_server.errors import Busy, DataError
from eiger_server.fakedcu.app import FakeDCUApp

def wait_job(ctrl, timeout: float = 60.0) -> str:
    """Wait for the background command to end; its answer."""
    wait_for(lambda: ctrl.get("cmd_executing") == "0", timeout, what="the background command")
    return ctrl.get("get_answer")


def writer_acquisition(ctrl, nimages: int = 25, per_file: int = 10,
                       prefix: str = "scan_$id") -> int:
    """arm / trigger / disarm with the filewriter on; the series id. Waits for the files."""
    ctrl.set("prefix", [prefix])
    ctrl.set("writer_mode", ["1"])
    ctrl.set("nimages_per_file", [str(per_file)])
    seqid = acquire(ctrl, nimages)
    nfiles = 1 + ((nimages + per_file - 1) // per_file if per_file else 0)
    base = prefix.replace("$id", str(seqid))
    wait_for(lambda: len([n for n in ctrl.files.get_files() if n.startswith(base + "_")])
             == nfiles, 20, what=f"{nfiles} files of series {seqid} on the DCU")
    return seqid


def make_big_h5(path: Path, mbytes: int, shape=(512, 1024)) -> np.ndarray:
    """A data file of about ``mbytes`` MB (uncompressed uint16); its last frame."""
    frame_bytes = shape[0] * shape[1] * 2
    n = max(1, mbytes * 1024 * 1024 // frame_bytes)
    base = (np.arange(shape[0] * shape[1], dtype=np.uint32) % 65521).astype(np.uint16)
    base = base.reshape(shape)
    with h5py.File(path, "w") as h5:
        dset = h5.create_dataset("/entry/data/data", shape=(n,) + shape, dtype=np.uint16,
                                 chunks=(1,) + shape)
        for i in range(n):
            frame = base + np.uint16(i)
            dset[i] = frame
    return frame


class Proxy:
    """A TCP proxy to the fake DCU's HTTP port that can throttle or cut
    responses to ``GET /data/...`` (a network that fails midway)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after: Optional[int] = None     # bytes of a /data/ answer before the cut
        self.rate: Optional[float] = None        # bytes/s of /data/ answers
        self.cuts = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        self._conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._conns += [client, upstream]
            state = {"data": False, "sent": 0}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state),
                             daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if data[:4] in (b"GET ", b"PUT ", b"DELE", b"HEAD"):
                    state["data"] = data.startswith(b"GET /data/") and \
                        not data.startswith(b"GET /data/ ")
                    state["sent"] = 0
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _shut(upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if state["data"]:
                    if self.cut_after is not None and state["sent"] + len(data) > self.cut_after:
                        client.sendall(data[:max(0, self.cut_after - state["sent"])])
                        self.cuts += 1
                        break
                    if self.rate:
                        time.sleep(len(data) / self.rate)
                    state["sent"] += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client)
            _shut(upstream)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# ---------------------------------------------------------------- tests
def local_files(directory: Path) -> List[str]:
    return sorted(p.name for p in Path(directory).iterdir()) if Path(directory).exists() else []


def expected_frames(app, nimages: int, dtype) -> np.ndarray:
    """The frames the fake DCU made for a series (its frame source is deterministic)."""
    w, h = (int(app.model.config_value("detector", k))
            for k in ("x_pixels_in_detector", "y_pixels_in_detector"))
    return np.stack([app.model.source.frame(i, w, h, np.dtype(dtype), ["threshold_1"])
                     ["threshold_1"] for i in range(nimages)])


def make_controller(app, tmp_path: Path, port: Optional[int] = None) -> EigerController:
    options = controller_options(app)
    if port is not None:
        options.dcu_port = port
    ctrl = EigerController(options)
    ctrl.set("data_directory", [str(tmp_path / "data")])
    ctrl.simplon.command("detector", "initialize")
    return ctrl


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    """big_data_000001.h5 (~200 MB) and small_data_000001.h5 (~3 MB), made once."""
    directory = tmp_path_factory.mktemp("bigfiles")
    last = make_big_h5(directory / "big_data_000001.h5", 200)
    make_big_h5(directory / "small_data_000001.h5", 3)
    return directory, last


@pytest.fixture
def big_dcu(tmp_path, big_files):
    """A fake DCU (1.8, 500K) whose buffer already holds the big and the small file."""
    source, last = big_files
    dcu_dir = tmp_path / "dcu"
    dcu_dir.mkdir()
    for path in source.iterdir():
        os.link(path, dcu_dir / path.name)     # the DCU may delete its copy
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=dcu_dir)
    app.start()
    app.big_last_frame = last
    yield app
    app.stop()


@pytest.fixture
def proxy(big_dcu):
    p = Proxy(big_dcu.http_port)
    yield p
    p.close()


# -- the acquisition, listing, transfer, auto_delete (both API versions) ----
def test_writer_series_transfers_and_reads_back(controller, fake_dcu, tmp_path):
    ctrl, app = controller, fake_dcu
    seqid = writer_acquisition(ctrl, nimages=25, per_file=10)
    base = f"scan_{seqid}"
    names = ctrl.get("files").split()
    assert sorted(names) == sorted([f"{base}_master.h5"] + [f"{base}_data_{i:06d}.h5"
                                                           for i in (1, 2, 3)])
    assert sorted(ctrl.get("filelist", ["*_data_*"]).split()) == sorted(
        n for n in names if "_data_" in n)
    assert ctrl.get("filelist", ["nothing*"]) == ""

    # auto_delete: every DELETE must come after all files are complete here.
    assert ctrl.set("auto_delete", ["1"]) == "1"
    data_dir = tmp_path / "data"
    seen_at_delete: List[List[str]] = []
    real_delete = ctrl.simplon.delete_data

    def spy(name):
        seen_at_delete.append(local_files(data_dir))
        return real_delete(name)

    ctrl.simplon.delete_data = spy
    assert ctrl.set("transfer") == "started"        # no name: the files of the prefix
    answer = wait_job(ctrl)
    assert answer.startswith("4 files transferred"), answer
    assert "deleted from the DCU" in answer
    assert ctrl.get("get_command") == "transfer"
    assert ctrl.get("files") == ""
    assert len(seen_at_delete) == 4
    assert all(sorted(names) == seen for seen in seen_at_delete)
    assert local_files(data_dir) == sorted(names)    # no temporary files left

    with h5py.File(data_dir / f"{base}_master.h5", "r") as master:
        parts = [master[f"/entry/data/data_{i:06d}"][()] for i in (1, 2, 3)]
    frames = np.concatenate(parts)
    assert frames.shape[0] == 25
    np.testing.assert_array_equal(frames, expected_frames(app, 25, frames.dtype))


def test_transfer_without_auto_delete_keeps_dcu_files_and_never_overwrites(controller,
                                                                           tmp_path):
    ctrl = controller
    seqid = writer_acquisition(ctrl, nimages=5, per_file=0)
    name = f"scan_{seqid}_master.h5"
    ctrl.set("transfer", [name])
    assert wait_job(ctrl).startswith("1 file transferred")
    assert name in ctrl.get("files").split()
    # Same file again: identical, so nothing new appears.
    ctrl.set("transfer", [name])
    assert "already there" in wait_job(ctrl)
    assert local_files(tmp_path / "data") == [name]
    # A different local file with that name is kept; the copy gets a new name.
    (tmp_path / "data" / name).write_bytes(b"precious local data")
    ctrl.set("transfer", [name])
    answer = wait_job(ctrl)
    assert "-img001" in answer, answer
    assert (tmp_path / "data" / name).read_bytes() == b"precious local data"
    with h5py.File(tmp_path / "data" / name.replace(".h5", "-img001.h5"), "r") as h5:
        assert h5["/entry/data/data"].shape[0] == 5


def test_delete_by_pattern_and_unknown_names(controller):
    ctrl = controller
    seqid = writer_acquisition(ctrl, nimages=25, per_file=10)
    ctrl.set("delete", [f"scan_{seqid}_data_00000[12].h5"])
    assert wait_job(ctrl) == "2 files deleted from the DCU"
    assert sorted(ctrl.get("files").split()) == [f"scan_{seqid}_data_000003.h5",
                                                 f"scan_{seqid}_master.h5"]
    ctrl.set("delete", ["nothing_*"])
    answer = wait_job(ctrl)
    assert answer.startswith("error:") and "no file on the DCU matches 'nothing_*'" in answer
    ctrl.set("transfer", ["missing_master.h5"])
    assert "is not on the DCU" in wait_job(ctrl)


def _transfers_without_a_dcu():
    from eiger_server.control.settings import Settings
    from eiger_server.control.transfers import FileTransfers
    return FileTransfers(detector=None, simplon=None, settings=Settings(lambda *a: True),
                         stopping=lambda: False)


@pytest.mark.parametrize("name", ["../escape.h5", "a/b.h5", "/etc/passwd", "..", ".hidden",
                                  "x;rm.h5", "*/*"])
def test_names_that_could_escape_are_refused(name, tmp_path, monkeypatch):
    files = _transfers_without_a_dcu()   # no DCU needed: refused before
    monkeypatch.setattr(files, "get_files", lambda *a: ["../escape.h5", "ok.h5"])
    for call in (files.do_transfer, files.do_delete, files.get_filelist):
        with pytest.raises(DataError, match="refused"):
            call(name)


def test_dcu_names_outside_the_safe_set_are_refused(tmp_path, monkeypatch):
    files = _transfers_without_a_dcu()
    monkeypatch.setattr(files, "get_files", lambda *a: ["../../etc/passwd_master.h5"])
    with pytest.raises(DataError, match="refused"):
        files.do_transfer("*master.h5")


# -- failures ------------------------------------------------------------
def test_connection_cut_midway_leaves_nothing_and_deletes_nothing(big_dcu, proxy, tmp_path):
    ctrl = make_controller(big_dcu, tmp_path, port=proxy.port)
    try:
        ctrl.set("auto_delete", ["1"])
        before = ctrl.get("files").split()
        proxy.cut_after = 1_500_000
        ctrl.set("transfer", ["small_data_000001.h5"])
        answer = wait_job(ctrl)
        assert proxy.cuts == 1
        assert answer.startswith("error: transfer of 'small_data_000001.h5' failed")
        assert "broke off" in answer and "nothing was deleted" in answer
        assert local_files(tmp_path / "data") == []          # no final name, no temp file
        assert ctrl.get("files").split() == before
        proxy.cut_after = None                               # the network is back
        ctrl.set("transfer", ["small_data_000001.h5"])
        assert wait_job(ctrl).startswith("1 file transferred")
        assert "small_data_000001.h5" not in ctrl.get("files").split()
    finally:
        ctrl.close()


def test_shutdown_stops_a_transfer_between_chunks(big_dcu, proxy, tmp_path):
    ctrl = make_controller(big_dcu, tmp_path, port=proxy.port)
    proxy.rate = 20e6
    ctrl.set("transfer", ["big_data_000001.h5"])
    part = tmp_path / "data" / ".big_data_000001.h5.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 0, 10, what="the download to start")
    t0 = time.monotonic()
    ctrl.close()                                   # what the server does at SIGTERM
    assert time.monotonic() - t0 < 3
    assert ctrl.jobs.get_answer().startswith("error: transfer of 'big_data_000001.h5' failed")
    assert "shutting down" in ctrl.jobs.get_answer()
    assert local_files(tmp_path / "data") == []
    assert "big_data_000001.h5" in big_dcu.model.filestore.list_files()


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MB tmpfs as data_directory (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_gives_a_clear_error(big_dcu, small_fs, tmp_path, monkeypatch):
    ctrl = make_controller(big_dcu, tmp_path)
    try:
        ctrl.set("data_directory", [str(small_fs)])
        ctrl.set("auto_delete", ["1"])
        ctrl.set("transfer", ["small_data_000001.h5"])
        answer = wait_job(ctrl)
        assert "the disk is full" in answer and "bytes but only" in answer, answer
        # The free-space check passes (as if space had looked free): the write itself fails.
        import eiger_server.control.transfers as files_module
        monkeypatch.setattr(files_module.shutil, "disk_usage",
                            lambda path: SimpleNamespace(total=1 << 40, used=0, free=1 << 40))
        ctrl.set("transfer", ["small_data_000001.h5"])
        answer = wait_job(ctrl)
        assert "No space left on device" in answer and "the disk is full" in answer, answer
        assert local_files(small_fs) == []
        assert "small_data_000001.h5" in ctrl.get("files").split()
    finally:
        ctrl.close()


# -- background commands and responsiveness -----------------------------------------
def test_state_answers_fast_during_a_200mb_transfer(big_dcu, tmp_path):
    ctrl = make_controller(big_dcu, tmp_path)
    try:
        ctrl.get("state")
        ctrl.set("transfer", ["big_data_000001.h5"])
        assert ctrl.get("cmd_executing") == "1"
        assert ctrl.get("get_command") == "transfer"
        assert ctrl.get("get_answer") == ""
        with pytest.raises(Busy, match="'delete' refused: 'transfer' is still running"):
            ctrl.set("delete", ["small_data_000001.h5"])
        times = []
        while ctrl.jobs.get_executing():
            t0 = time.perf_counter()
            assert ctrl.get("state") in ("idle", "ready")
            times.append(time.perf_counter() - t0)
            time.sleep(0.005)
        answer = ctrl.get("get_answer")
        assert answer.startswith("1 file transferred (2"), answer
        # Many answers while the transfer was running: the control path never
        # waited for it (the latency itself is measured by bench/transfer_latency.py).
        assert len(times) >= 5, "the transfer ended before state could be sampled"
        with h5py.File(tmp_path / "data" / "big_data_000001.h5", "r") as h5:
            np.testing.assert_array_equal(h5["/entry/data/data"][-1], big_dcu.big_last_frame)
    finally:
        ctrl.close()


# -- over the wire ------------------------------------------------------------------
def test_over_the_wire_transfer_and_kill_midway(big_dcu, proxy, tmp_path):
    """eiger_server as a process: a transfer keeps the protocol answering; killing the
    server midway leaves no file under its final name."""
    from eiger_server.wire.client import WireClient
    args = ["-a", "127.0.0.1", "-P", str(proxy.port)]   # the REST API through the proxy
    data = tmp_path / "wire-data"
    proxy.rate = 50e6                              # ~4 s for the 200 MB file
    server = ServerProcess(args, tmp_path)
    try:
        with WireClient("127.0.0.1", server.port) as client:
            client.hello()
            client.set("data_directory", str(data))
            client.set("auto_delete", "1")
            assert client.set("transfer", "big_data_000001.h5") == "started"
            part = data / ".big_data_000001.h5.part"
            wait_for(lambda: part.exists() and part.stat().st_size > 0, 10,
                     what="the download to start")
            for _ in range(10):
                assert client.get("state") in ("na", "idle", "ready")
            # Ten answers, and the transfer is still running: it never blocked them.
            assert client.get("cmd_executing") == "1"
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        assert "big_data_000001.h5" not in local_files(data)
        assert "big_data_000001.h5" in big_dcu.model.filestore.list_files()
    finally:
        server.stop()

    # A new server finishes the job (the stale temporary file is simply overwritten).
    proxy.rate = None
    server = ServerProcess(args, tmp_path)
    try:
        with WireClient("127.0.0.1", server.port) as client:
            client.hello()
            client.set("data_directory", str(data))
            client.set("auto_delete", "1")
            client.set("transfer", "big_*")
            wait_for(lambda: client.get("cmd_executing") == "0", 60, what="the transfer")
            assert client.get("get_answer").startswith("1 file transferred")
        assert local_files(data) == ["big_data_000001.h5"]
        assert big_dcu.model.filestore.list_files() == ["small_data_000001.h5"]
    finally:
        server.stop()
