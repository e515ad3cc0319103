"""spec's macros in WRITER mode, over the wire against the fake DCU: a ``ct``
with the DCU's filewriter on, then ``eiger_save`` with no argument, which
asks eiger_server for ``transfer`` of the latest acquisition's files.

What the user checks: the answer says the files were transferred, and the
master and data files are in data_directory and open with h5py.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the DCU's files are bslz4 compressed)
import numpy as np
import pytest

from eiger_server.wire.client import WireClient
from helpers import ServerProcess, server_args_for, wait_for

NIMAGES = 2


@pytest.fixture
def client(dcu, tmp_path):
    server = ServerProcess(server_args_for(dcu), tmp_path)
    try:
        with WireClient("127.0.0.1", server.port, 30) as c:
            c.command("config", "127.0.0.1", check=True)
            yield c
    finally:
        server.stop()


def background(c: WireClient, name: str, *args) -> str:
    """A background command as the macros run it: start, poll cmd_executing,
    read get_answer. An error refused at once is returned as its reply text."""
    resp = c.command("get", name, *args)
    if not resp.ok:
        return resp.text
    wait_for(lambda: c.get("cmd_executing") == "0", 60, what=f"'{name}' to finish")
    assert c.get("get_command") == name
    return c.get("get_answer")


def writer_ct(c: WireClient, data: Path, prefix: str = "ct_$id") -> int:
    """``ct`` in WRITER mode; the series id once the DCU lists its master file."""
    c.set("data_directory", str(data))
    c.set("writer_mode", 1)
    c.set("prefix", prefix)
    c.set("nimages", NIMAGES)
    c.command("run", 0.05, check=True)
    wait_for(lambda: c.command("get_status", check=True).text == "0", 60,
             what="the count to end")
    seqid = int(c.get("seqid"))
    c.set("disarm")
    master = f"{prefix.replace('$id', str(seqid))}_master.h5"
    wait_for(lambda: master in c.get("files").split(), 30,
             what=f"the DCU to list {master}")
    return seqid


def check_local_series(data: Path, base: str) -> None:
    """The master and its data files in ``data``, readable with h5py."""
    local = sorted(p.name for p in data.iterdir())
    assert f"{base}_master.h5" in local
    data_files = [n for n in local if n.startswith(f"{base}_data_")]
    assert data_files, local
    with h5py.File(data / f"{base}_master.h5", "r") as master:
        links = sorted(k for k in master["/entry/data"] if k.startswith("data_"))
        assert links
        frames = np.concatenate([master[f"/entry/data/{k}"][()] for k in links])
    assert frames.shape[0] == NIMAGES and frames.ndim == 3
    for name in data_files:
        with h5py.File(data / name, "r") as h5:
            assert h5["/entry/data/data"].shape[0] >= 1


def test_ct_then_transfer_without_argument(client, dcu, tmp_path):
    c = client
    data = tmp_path / "data"
    writer_ct(c, data, prefix="earlier_$id")          # another prefix, also on the DCU
    seqid = writer_ct(c, data)
    base = f"ct_{seqid}"
    on_dcu = sorted(n for n in c.get("files").split() if n.startswith(base + "_"))
    assert f"{base}_master.h5" in on_dcu and any("_data_" in n for n in on_dcu)

    answer = background(c, "transfer")               # eiger_save: no argument
    # the files of the latest acquisition's prefix, and only those
    assert answer.startswith(f"{len(on_dcu)} files transferred"), answer
    assert str(data) in answer
    assert sorted(p.name for p in data.iterdir()) == on_dcu
    check_local_series(data, base)
    # the frames are the ones the fake DCU took
    width, height = (int(c.get(k)) for k in ("x_pixels_in_detector", "y_pixels_in_detector"))
    with h5py.File(data / f"{base}_master.h5", "r") as master:
        links = sorted(k for k in master["/entry/data"] if k.startswith("data_"))
        frames = np.concatenate([master[f"/entry/data/{k}"][()] for k in links])
    expected = [dcu.model.source.frame(i, width, height, frames.dtype, ["threshold_1"])
                ["threshold_1"] for i in range(NIMAGES)]
    np.testing.assert_array_equal(frames, np.stack(expected))


def test_transfer_with_an_explicit_pattern(client, tmp_path):
    c = client
    data = tmp_path / "data"
    seqid = writer_ct(c, data)
    base = f"ct_{seqid}"
    on_dcu = sorted(n for n in c.get("files").split() if n.startswith("ct_"))
    answer = background(c, "transfer", "ct_*")
    assert answer.startswith(f"{len(on_dcu)} files transferred"), answer
    check_local_series(data, base)


@pytest.mark.parametrize("pattern", ["ct_$id*", "ct_1:*", "C:ct_*"])
def test_transfer_refuses_a_pattern_with_dollar_or_colon(client, tmp_path, pattern):
    c = client
    data = tmp_path / "data"
    writer_ct(c, data)
    answer = background(c, "transfer", pattern)
    assert "error: " in answer and "refused" in answer and pattern in answer, answer
    assert not data.exists() or not [p for p in data.iterdir() if p.suffix == ".h5"]
    # the server still transfers after a refused pattern
    assert "files transferred" in background(c, "transfer", "ct_*")
