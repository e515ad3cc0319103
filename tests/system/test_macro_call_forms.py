"""The image_par call forms eiger.mac uses, over the wire (issue 16).

spec sends a three-argument ``image_par(unit, "filelist", pattern)`` as
``set filelist <pattern>`` and ``image_par(unit, "transfer", pattern)`` as
``set transfer <pattern>``.  Both must work against eiger_server as a process
with the fake DCU; ``filelist`` stays read-only for anything else.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import ServerProcess, server_args_for, wait_for
from eiger_server.wire.client import WireClient, WireError
from eiger_server.fakedcu.app import FakeDCUApp

NAMES = ["s12_eiger_1_master.h5", "s12_eiger_1_data_000001.h5", "other_7_master.h5"]


@pytest.fixture
def dcu_with_files(tmp_path):
    """A fake DCU (1.8) whose buffer already holds three small HDF5 files."""
    dcu_dir = tmp_path / "dcu"
    dcu_dir.mkdir()
    for name in NAMES:
        with h5py.File(dcu_dir / name, "w") as h5:
            h5["/entry/data/data"] = np.arange(12, dtype=np.uint16).reshape(1, 3, 4)
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=dcu_dir)
    app.start()
    yield app
    app.stop()


def test_filelist_and_transfer_take_the_pattern_as_a_value(dcu_with_files, tmp_path):
    server = ServerProcess(server_args_for(dcu_with_files), tmp_path)
    data = tmp_path / "local"
    try:
        with WireClient("127.0.0.1", server.port) as client:
            client.hello()
            client.set("data_directory", str(data))
            # The documented form: the pattern as the value of a set.
            assert sorted(client.set("filelist", "s12_eiger_*").split()) == sorted(NAMES[:2])
            assert client.set("filelist", "nothing*") == ""
            # The read with the pattern as an argument still answers the same.
            assert sorted(client.get("filelist", "s12_eiger_*").split()) == sorted(NAMES[:2])
            # A set without a pattern is not a read: filelist stays read-only.
            with pytest.raises(WireError, match="read-only"):
                client.set("filelist")
            # transfer with a pattern, as eiger_scan_tail and eiger_transfer send it.
            assert client.set("transfer", "s12_eiger_*") == "started"
            wait_for(lambda: client.get("cmd_executing") == "0", 30, what="the transfer")
            assert client.get("get_answer").startswith("2 files transferred")
        assert sorted(p.name for p in Path(data).iterdir()) == sorted(NAMES[:2])
    finally:
        server.stop()
