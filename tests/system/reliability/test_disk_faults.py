"""Reliability of saving: data_directory missing, read-only or full, while
TIFF images are saved from the stream and while the DCU's files are
transferred. eiger_server runs as a process against the fake DCU.

What must hold: spec gets a clear error, no partial file ever carries a
final name, and nothing is deleted from the DCU that is not safely on disk.
The small file systems are tmpfs mounts (root only; skipped otherwise).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List

import h5py
import hdf5plugin  # noqa: F401  (registers the HDF5 filters)
import numpy as np
import pytest
import tifffile

from eiger_server.storage import tiff
from eiger_server.wire.client import WireClient, WireError
from eiger_server.fakedcu.app import FakeDCUApp
from helpers import ServerProcess, server_args_for, wait_for
from test_dcu_faults import configure, frame, status, stream_setup


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True,
                   capture_output=True)


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A 1.5 MB tmpfs: room for one 500K image (1 MB as TIFF), not two."""
    mount = tmp_path / "small"
    mount_tmpfs(mount, "1536k")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def listing(directory: Path) -> List[str]:
    """Every name in ``directory``, hidden ones included."""
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.fixture
def client(dcu, tmp_path):
    server = ServerProcess(server_args_for(dcu), tmp_path)
    try:
        with WireClient("127.0.0.1", server.port, 30) as c:
            configure(c)
            c.server = server
            yield c
    finally:
        server.stop()


def assert_complete_tiffs(app: FakeDCUApp, paths: List[Path]) -> None:
    for path in paths:
        number = tiff.read_metadata(str(path))["frame"]
        np.testing.assert_array_equal(tifffile.imread(path), frame(app, number))


# ------------------------------------------------------------------ TIFF saving

def fill_and_trigger(c: WireClient, directory: Path, nimages: int, prefix: str,
                     version: str = "V1") -> None:
    stream_setup(c, directory, version, nimages=nimages, prefix=prefix)
    c.set("trigger")
    assert status(c) == (True, "0")               # the count itself ends
    assert c.get("images_collected") == str(nimages)


def test_full_disk_while_saving_tiffs(dcu, client, small_fs):
    c = client
    fill_and_trigger(c, small_fs, 4, "full")
    error = wait_for(lambda: (lambda e: e if e.count("failed") >= 3 else None)(
        c.get("stream_error")), 10, what="the failed saves in stream_error")
    assert "disk is full" in error and "full_1_0003.tif" in error, error
    names = listing(small_fs)
    assert names == ["full_1_0000.tif"]            # no partial file, no temporary leftovers
    assert_complete_tiffs(dcu, [small_fs / names[0]])
    assert "the disk is full" in c.server.log_text()
    # Space again: the next series is saved whole.
    os.unlink(small_fs / names[0])
    fill_and_trigger(c, small_fs, 1, "again")
    saved = wait_for(lambda: [small_fs / n for n in listing(small_fs)], 10, what="a TIFF")
    assert [p.name for p in saved] == ["again_2_0000.tif"]
    assert_complete_tiffs(dcu, saved)


def test_images_that_could_not_be_saved_count_as_dropped(dcu, client, small_fs):
    c = client
    fill_and_trigger(c, small_fs, 4, "full")
    wait_for(lambda: c.get("stream_error").count("failed") >= 3, 10,
             what="the failed saves in stream_error")
    assert c.get("dropped") == "3"


def test_read_only_data_directory(dcu, client, small_fs):
    c = client
    # Refused when set: spec learns it before any image is lost.
    remount(small_fs, "ro")
    with pytest.raises(WireError, match="not writable"):
        c.set("data_directory", small_fs)
    # Read-only after it was set (a file server going read-only during a scan).
    remount(small_fs, "rw")
    stream_setup(c, small_fs, "V2", nimages=2, prefix="ro")
    remount(small_fs, "ro")
    c.set("trigger")
    assert status(c) == (True, "0")
    error = wait_for(lambda: (lambda e: e if e.count("failed") >= 2 else None)(
        c.get("stream_error")), 10, what="the failed saves in stream_error")
    assert "read-only" in error, error
    assert listing(small_fs) == []
    remount(small_fs, "rw")                   # writable again: saving resumes
    fill_and_trigger(c, small_fs, 1, "rw", "V2")
    saved = wait_for(lambda: [small_fs / n for n in listing(small_fs)], 10, what="a TIFF")
    assert [p.name for p in saved] == ["rw_2_0000.tif"]
    assert_complete_tiffs(dcu, saved)


def test_data_directory_removed_behind_the_servers_back(dcu, client, tmp_path):
    c = client
    data = tmp_path / "vanishing"
    stream_setup(c, data, "V1", nimages=2, prefix="gone")
    shutil.rmtree(data)
    c.set("trigger")
    assert status(c) == (True, "0")
    # TIFF saving makes the directory again: nothing is lost.
    files = wait_for(lambda: sorted(data.glob("gone_*.tif")) if len(
        list(data.glob("gone_*.tif"))) == 2 else None, 10, what="2 TIFF files")
    assert_complete_tiffs(dcu, files)
    assert c.get("dropped") == "0"


# ------------------------------------------------------------------ transfers

def make_h5(path: Path, rows: int = 300, cols: int = 1024, value: int = 0) -> None:
    """A DCU-style data file of one frame (rows x cols uint16, ~rows*cols*2 bytes)."""
    data = (np.arange(rows * cols, dtype=np.uint32) % 65521 + value).astype(np.uint16)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("/entry/data/data", data=data.reshape(1, rows, cols),
                          chunks=(1, rows, cols))


@pytest.fixture
def file_dcu(tmp_path):
    """A fake DCU whose buffer holds two ~600 kB data files."""
    directory = tmp_path / "dcu-files"
    directory.mkdir()
    make_h5(directory / "a_data_000001.h5", value=1)
    make_h5(directory / "b_data_000001.h5", value=2)
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=directory)
    app.start()
    yield app
    app.stop()


@pytest.fixture
def file_client(file_dcu, tmp_path):
    server = ServerProcess(server_args_for(file_dcu), tmp_path)
    try:
        with WireClient("127.0.0.1", server.port, 30) as c:
            c.hello()
            c.server = server
            yield c
    finally:
        server.stop()


def transfer(c: WireClient, pattern: str) -> str:
    assert c.set("transfer", pattern) == "started"
    wait_for(lambda: c.get("cmd_executing") == "0", 30, what="the transfer")
    return c.get("get_answer")


def deletes(app: FakeDCUApp) -> List[str]:
    return [path for method, path, _ in app.http.request_log if method == "DELETE"]


def test_full_disk_during_transfer_deletes_nothing(file_dcu, file_client, tmp_path):
    c, app = file_client, file_dcu
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "1m")                     # room for one of the two files
    try:
        c.set("data_directory", disk)
        c.set("auto_delete", 1)
        answer = transfer(c, "*_data_*")
        assert answer.startswith("error: transfer of 'b_data_000001.h5' failed"), answer
        assert "the disk is full" in answer and "nothing was deleted from the DCU" in answer
        assert "1 of 2 files were transferred" in answer
        assert deletes(app) == []
        assert sorted(app.model.filestore.list_files()) == ["a_data_000001.h5",
                                                            "b_data_000001.h5"]
        assert listing(disk) == ["a_data_000001.h5"]       # complete, no partial b
        with h5py.File(disk / "a_data_000001.h5", "r") as h5:
            assert h5["/entry/data/data"].shape == (1, 300, 1024)
        # More room: the same request now completes, and only then deletes.
        remount(disk, "size=4m")
        answer = transfer(c, "*_data_*")
        assert answer.startswith("2 files transferred"), answer
        assert "1 already there, identical" in answer and "deleted from the DCU" in answer
        assert listing(disk) == ["a_data_000001.h5", "b_data_000001.h5"]
        assert app.model.filestore.list_files() == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_read_only_disk_during_transfer(file_dcu, file_client, tmp_path):
    c, app = file_client, file_dcu
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "4m")
    try:
        c.set("data_directory", disk)
        c.set("auto_delete", 1)
        remount(disk, "ro")
        answer = transfer(c, "a_data_000001.h5")
        assert answer.startswith("error: transfer of 'a_data_000001.h5' failed"), answer
        assert "read-only" in answer and "nothing was deleted" in answer
        assert deletes(app) == [] and listing(disk) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_transfer_into_a_removed_data_directory(file_dcu, file_client, tmp_path):
    c, app = file_client, file_dcu
    data = tmp_path / "vanishing"
    c.set("data_directory", data)
    c.set("auto_delete", 1)
    shutil.rmtree(data)
    answer = transfer(c, "a_data_000001.h5")
    assert answer.startswith("error: transfer of 'a_data_000001.h5' failed"), answer
    assert "does not exist" in answer and "data_directory" in answer
    assert deletes(app) == []
    assert "a_data_000001.h5" in app.model.filestore.list_files()
