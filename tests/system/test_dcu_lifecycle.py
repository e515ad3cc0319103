"""Finished files, no overwrite, settings that survive the DCU: over the wire
(eiger_server as a process) against a fake DCU that behaves like a real one
(FileWriterProfile presets "dectris" and "dectris-ready")."""
from __future__ import annotations

import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filters)
import numpy as np
import pytest

from helpers import ServerProcess, server_args_for, wait_for
from eiger_server.fakedcu.app import FakeDCUApp
from eiger_server.fakedcu.device.filewriter_profile import profile
from eiger_server.wire.client import WireClient, WireError


def start_dcu(tmp_path: Path, files_profile, api: str = "1.8.0") -> FakeDCUApp:
    app = FakeDCUApp(api=api, model="500K", data_dir=tmp_path / "dcu",
                     files_profile=files_profile)
    return app.start()


@pytest.fixture
def session(tmp_path, request):
    """(fake DCU, eiger_server process, wire client); the profile from the test's
    ``files_profile`` parameter (default "dectris")."""
    chosen = getattr(request, "param", "dectris")
    app = start_dcu(tmp_path, profile(chosen) if isinstance(chosen, str) else chosen)
    server = ServerProcess(server_args_for(app), tmp_path)
    client = WireClient("127.0.0.1", server.port, timeout=30)
    client.hello()
    client.command("config", check=True)
    client.set("data_directory", str(tmp_path / "data"))
    yield app, server, client
    client.close()
    server.stop()
    app.stop()


def wait_job(client: WireClient, timeout: float = 60) -> str:
    wait_for(lambda: client.get("cmd_executing") == "0", timeout, what="the background command")
    return client.get("get_answer")


def writer_series(client: WireClient, app: FakeDCUApp, prefix: str = "scan_$id",
                  nimages: int = 25) -> int:
    """A WRITER series through image_par, ended with disarm; its id (files may still grow)."""
    for name, value in (("prefix", prefix), ("writer_mode", 1), ("nimages_per_file", 10),
                        ("nimages", nimages), ("ntrigger", 1), ("trigger_mode", "ints"),
                        ("count_time", 0.001), ("frame_time", 0.002)):
        client.set(name, value)
    seqid = int(client.set("arm"))
    client.set("trigger")
    wait_for(lambda: app.model.state in ("ready", "idle"), 20, what="the series")
    wait_for(lambda: client.command("get_status").text == "0", 20, what="the count")
    client.set("disarm")
    return seqid


def expected_frames(app: FakeDCUApp, nimages: int, dtype) -> np.ndarray:
    return np.stack([app.model.source.frame(i, 1030, 514, np.dtype(dtype), ["threshold_1"])
                     ["threshold_1"] for i in range(nimages)])


# -- 5. transfers wait for finished files ---------------------------------------------
def test_transfer_right_after_the_series_waits_for_the_filewriter(session, tmp_path):
    app, _, client = session
    seqid = writer_series(client, app)
    base = f"scan_{seqid}"
    # The real FileWriter is still at it: master listed from arm, files growing.
    assert app.model.filestore.status()["state"] == "acquire"
    assert f"{base}_master.h5" in app.model.filestore.list_files()
    client.set("auto_delete", 1)
    assert client.set("transfer") == "started"
    answer = wait_job(client)
    assert answer.startswith("4 files transferred"), answer
    assert "deleted from the DCU" in answer
    assert app.model.filestore.list_files() == []
    data = tmp_path / "data"
    with h5py.File(data / f"{base}_master.h5", "r") as master:
        frames = np.concatenate([master[f"/entry/data/data_{i:06d}"][()] for i in (1, 2, 3)])
    np.testing.assert_array_equal(frames, expected_frames(app, 25, frames.dtype))


@pytest.mark.parametrize("session", [profile("dectris", write_behind=4.0)], indirect=True)
def test_transfer_gives_up_on_files_still_written_and_deletes_nothing(session, tmp_path):
    app, _, client = session
    seqid = writer_series(client, app)
    client.set("auto_delete", 1)
    assert float(client.set("transfer_wait", 0.5)) == 0.5
    t0 = time.monotonic()
    client.set("transfer", f"scan_{seqid}_*")
    answer = wait_job(client)
    assert time.monotonic() - t0 < 3.5
    assert answer.startswith("error: transfer: the files are not finished after 0.5 s"), answer
    assert "'acquire'" in answer and "transfer_wait" in answer
    assert "nothing was transferred or deleted" in answer
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []
    wait_for(lambda: app.model.filestore.status()["state"] != "acquire", 10,
             what="the filewriter to finish")
    assert len(app.model.filestore.list_files()) == 4        # all still on the DCU


# -- 6. no silent overwrite ------------------------------------------------------------
def test_arm_refuses_to_overwrite_files_after_initialize_restarts_the_ids(session):
    app, _, client = session
    assert writer_series(client, app) == 1
    wait_for(lambda: app.model.filestore.status()["state"] != "acquire", 10,
             what="the filewriter to finish")
    before = {n: (app.model.filestore.directory / n).stat().st_mtime_ns
              for n in app.model.filestore.list_files()}
    client.set("initialize")
    assert wait_job(client) == ""
    with pytest.raises(WireError) as refused:
        client.set("arm")
    text = str(refused.value)
    assert "arm refused: the DCU still holds scan_1_master.h5" in text, text
    assert "scan_1_data_000003.h5" in text and "restarts at 1 after initialize" in text
    assert "transfer scan_1_*" in text
    assert app.model.series_id == 0                          # never armed
    assert {n: (app.model.filestore.directory / n).stat().st_mtime_ns
            for n in app.model.filestore.list_files()} == before
    # Once transferred (and deleted) the same names are free again.
    client.set("auto_delete", 1)
    client.set("transfer", "scan_1_*")
    assert wait_job(client).startswith("4 files transferred")
    assert client.set("arm") == "1"


def test_arm_refuses_a_fixed_name_pattern_that_is_still_on_the_dcu(session):
    app, _, client = session
    writer_series(client, app, prefix="sample_a", nimages=3)
    with pytest.raises(WireError, match="still holds sample_a_master.h5.*every series"):
        client.set("arm")


# -- 7. settings survive the DCU ---------------------------------------------------
SET = (("count_time", 0.02), ("frame_time", 0.05), ("nimages", 7), ("photon_energy", 9000),
       ("prefix", "kept_$id"))


def dcu_values(app: FakeDCUApp):
    return (app.model.config_value("detector", "count_time"),
            app.model.config_value("detector", "frame_time"),
            app.model.config_value("detector", "nimages"),
            app.model.config_value("detector", "photon_energy"),
            app.model.config_value("filewriter", "name_pattern"))


def test_settings_are_programmed_again_after_a_dcu_restart(session):
    app, server, client = session
    for name, value in SET:
        client.set(name, value)
    wanted = dcu_values(app)
    assert wanted == (0.02, 0.05, 7, 9000.0, "kept_$id")
    client.set("restart")
    wait_job(client)
    assert app.model.state == "na" and dcu_values(app) != wanted       # back at defaults
    # The next arm finds it so: initialize, program spec's settings, then arm.
    client.set("arm")
    assert dcu_values(app) == wanted
    assert client.get("nimages") == "7"
    assert "programmed 5 settings again" in server.log_text()
    assert "nimages=7" in server.log_text()
    # A reboot behind the server's back, then spec's config: the same.
    app.model.restart()
    client.command("config", check=True)
    assert app.model.state == "idle" and dcu_values(app) == wanted


def test_initialize_through_image_par_restores_what_it_reset(session):
    app, server, client = session
    client.set("count_time", 0.03)
    app.model.force("detector", "config", "count_time", 0.5)   # as a DCU that lost it
    client.set("initialize")
    assert wait_job(client) == ""
    assert app.model.config_value("detector", "count_time") == 0.03
    assert "after initialize: programmed" in server.log_text()


@pytest.mark.parametrize("session", ["dectris-ready"], indirect=True)
def test_a_dcu_that_reports_ready_after_initialize_still_counts(session):
    app, _, client = session
    client.set("initialize")
    assert wait_job(client) == ""
    assert client.get("state") == "ready"
    client.set("nimages", 2)
    client.set("count_time", 0.001)
    client.set("frame_time", 0.002)
    assert client.set("arm") == "1"                     # the sequence restarted
    client.set("trigger")
    wait_for(lambda: client.command("get_status").text == "0", 20, what="the count")
    assert client.command("get_status").ok
