"""The stream data path end to end against the fake DCU: real HTTP, real
ZeroMQ, real TIFF files.

Most cases drive an EigerController in this process (get/set exactly as
spec's image_par reaches it); one case runs eiger_server as a process and
speaks the wire protocol. The expected pixels are regenerated with the fake
DCU's own frame source, which makes frame ``i`` the same every time.
"""
from __future__ import annotations

import glob
import logging
import os

import numpy as np
import pytest
import requests
import tifffile

from eiger_server.storage import tiff
from helpers import wait_for

DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}
CHANNELS3 = ["threshold_1", "threshold_2", "difference"]


def force(app, name, value, subsystem="detector"):
    """Change a value the DCU does not let clients write (PUT /fake/set)."""
    answer = requests.put(f"{app.url}/fake/set", json={"subsystem": subsystem,
                                                       "task": "config", "name": name,
                                                       "value": value}, timeout=5)
    answer.raise_for_status()


def expected_frames(app, ctrl, indices, channels=("threshold_1",)):
    width = int(ctrl.config_value("x_pixels_in_detector"))
    height = int(ctrl.config_value("y_pixels_in_detector"))
    depth = int(ctrl.config_value("bit_depth_image"))
    return [app.model.source.frame(i, width, height, DTYPES[depth], list(channels))
            for i in indices]


def masked_sum(image):
    top = np.iinfo(image.dtype).max
    return int(image[image != top].sum(dtype=np.uint64))


def masked_max(image):
    top = np.iinfo(image.dtype).max
    return int(image[image != top].max())


def count(ctrl, timeout=20.0):
    """Wait for the background count/trigger to end; raise its error."""
    wait_for(lambda: not ctrl.acq.counting(), timeout, what="the count to end")
    error = ctrl.acq.take_error()
    if error is not None:
        raise error


def setup_stream(ctrl, app, version, depth=16, compression="bslz4", nimages=3,
                 prefix="e2e_$id"):
    force(app, "bit_depth_image", depth)
    ctrl.forget_detector()
    ctrl.set("compression", [compression])
    ctrl.set("trigger_mode", ["ints"])
    ctrl.set("ntrigger", ["1"])
    ctrl.set("nimages", [str(nimages)])
    ctrl.set("count_time", ["0.005"])
    ctrl.set("frame_time", ["0.005"])
    if version == "V2" or ctrl.version_at_least(1, 8):
        ctrl.set("stream_version", [version])
    assert ctrl.get("stream_mode", []) in ("0", "1")
    ctrl.set("stream_mode", ["1"])
    assert ctrl.get("stream_mode") == "1"
    ctrl.set("stream_prefix", [prefix])
    ctrl.set("stream_autoindex", ["1"])
    ctrl.set("stream_autosave", ["1"])


def saved_files(directory, pattern):
    return sorted(glob.glob(os.path.join(directory, pattern)))


@pytest.mark.parametrize("api", ["1.8.0"])
@pytest.mark.parametrize("version", ["V1", "V2"])
@pytest.mark.parametrize("depth", [8, 16, 32])
@pytest.mark.parametrize("compression", ["lz4", "bslz4"])
def test_trigger_n_images_saved_and_summed(controller, fake_dcu, version, depth, compression):
    ctrl, app = controller, fake_dcu
    n = 3
    setup_stream(ctrl, app, version, depth, compression, nimages=n)
    ctrl.set("arm")
    series = int(ctrl.get("seqid"))
    ctrl.set("trigger")
    count(ctrl)
    assert ctrl.get("images_collected") == str(n)
    assert ctrl.get("is_waiting_data") == "0"
    assert ctrl.get("dropped") == "0"
    assert ctrl.stream.wait_saved(10)
    expected = expected_frames(app, ctrl, range(n))
    directory = ctrl.get("data_directory")
    files = saved_files(directory, "e2e_*.tif")
    assert [os.path.basename(f) for f in files] == [f"e2e_{series}_{i:04d}.tif"
                                                    for i in range(n)]
    for path, frames in zip(files, expected):
        pixels = tifffile.imread(path)
        assert pixels.dtype == DTYPES[depth]
        np.testing.assert_array_equal(pixels, frames["threshold_1"])
    meta = tiff.read_metadata(files[-1])
    assert meta["series"] == series and meta["frame"] == n - 1
    assert meta["count_time"] == pytest.approx(float(ctrl.get("count_time")))
    assert meta["energy"] == pytest.approx(float(ctrl.get("photon_energy")))
    assert "threshold_1" in meta["thresholds"]
    assert ctrl.get("stream_latest_file") == files[-1]
    last = expected[-1]["threshold_1"]
    assert int(ctrl.get("sum")) == masked_sum(last)
    assert int(ctrl.get("maxval")) == masked_max(last)
    sub = last[20:121, 30:331]
    assert int(ctrl.get("roisum", ["20", "30", "120", "330"])) == masked_sum(sub)
    typename, npoints, data = ctrl.stream.read(0, last.shape[0] - 1, 0, last.shape[1] - 1)
    assert npoints == last.size
    assert typename == {8: "ubyte", 16: "ushort", 32: "ulong"}[depth]
    np.testing.assert_array_equal(np.frombuffer(data, last.dtype.newbyteorder("<"))
                                  .reshape(last.shape), last)


@pytest.mark.parametrize("api", ["1.6.0"])
def test_stream_v1_on_simplon_16(controller, fake_dcu):
    ctrl, app = controller, fake_dcu
    setup_stream(ctrl, app, "V1", 16, "bslz4", nimages=2)
    with pytest.raises(Exception, match="1.8"):
        ctrl.set("stream_version", ["V2"])
    ctrl.set("trigger")
    count(ctrl)
    assert ctrl.get("images_collected") == "2"
    expected = expected_frames(app, ctrl, range(2))
    np.testing.assert_array_equal(ctrl.stream.latest().raw, expected[-1]["threshold_1"])


@pytest.mark.parametrize("api", ["1.8.0"])
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_accumulation_of_four_images_is_their_sum(controller, fake_dcu, version):
    ctrl, app = controller, fake_dcu
    setup_stream(ctrl, app, version, 16, "bslz4", nimages=1, prefix="acc")
    ctrl.set("stream_autoindex", ["0"])
    ctrl.set("acq_mode", ["ACCUM"])
    ctrl.set("acc_nimages", ["4"])
    ctrl.acq.start_count(0.02)              # what `run 0.02` does
    count(ctrl)
    assert ctrl.get("images_collected") == "4"
    assert ctrl.get("is_waiting_data") == "0"
    stack = np.array([f["threshold_1"] for f in expected_frames(app, ctrl, range(4))])
    total = stack.astype(np.uint32).sum(axis=0, dtype=np.uint32)
    total[(stack == 65535).any(axis=0)] = np.iinfo(np.uint32).max
    result = ctrl.stream.latest()
    assert result.nframes == 4 and result.raw.dtype == np.uint32
    np.testing.assert_array_equal(result.raw, total)
    assert int(ctrl.get("sum")) == masked_sum(total)
    assert ctrl.stream.wait_saved(10)
    files = saved_files(ctrl.get("data_directory"), "acc*.tif")
    assert len(files) == 1
    np.testing.assert_array_equal(tifffile.imread(files[0]), total)
    assert tiff.read_metadata(files[0])["nframes"] == 4


@pytest.mark.parametrize("api", ["1.8.0"])
def test_v2_all_thresholds_one_tiff_per_channel(controller, fake_dcu):
    ctrl, app = controller, fake_dcu
    ctrl.set("threshold/1/mode", ["1"])
    ctrl.set("threshold/2/mode", ["1"])
    ctrl.set("threshold/difference/mode", ["1"])
    setup_stream(ctrl, app, "V2", 16, "bslz4", nimages=2, prefix="multi")
    ctrl.set("trigger")
    count(ctrl)
    assert ctrl.get("images_collected") == "2"
    assert ctrl.stream.wait_saved(10)
    expected = expected_frames(app, ctrl, range(2), CHANNELS3)
    directory = ctrl.get("data_directory")
    for index, frames in enumerate(expected):
        for channel in CHANNELS3:
            path = os.path.join(directory, f"multi_{index:04d}_{channel}.tif")
            np.testing.assert_array_equal(tifffile.imread(path), frames[channel])
            assert tiff.read_metadata(path)["channel"] == channel
    assert len(saved_files(directory, "multi*.tif")) == 6


@pytest.mark.parametrize("api", ["1.8.0"])
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_frame_lost_in_transit_is_counted_and_named(controller, fake_dcu, version, caplog):
    ctrl, app = controller, fake_dcu
    setup_stream(ctrl, app, version, 16, "bslz4", nimages=4, prefix="lost")
    adapter = app.stream_v1 if version == "V1" else app.stream_v2
    adapter.faults.drop.add(1)
    caplog.set_level(logging.WARNING, logger="eiger_server.stream.receiver")
    ctrl.set("arm")
    series = ctrl.get("seqid")
    ctrl.set("trigger")
    count(ctrl)
    assert ctrl.get("images_collected") == "3"
    assert ctrl.get("is_waiting_data") == "0"
    assert int(ctrl.get("dropped")) == 1
    assert f"frame 1 of series {series} lost" in caplog.text


@pytest.mark.parametrize("api", ["1.8.0"])
def test_corrupt_frame_is_counted_and_reported(controller, fake_dcu):
    ctrl, app = controller, fake_dcu
    setup_stream(ctrl, app, "V1", 16, "bslz4", nimages=3, prefix="bad")
    app.stream_v1.faults.corrupt.add(0)
    ctrl.set("trigger")
    count(ctrl)
    assert ctrl.get("images_collected") == "2"
    assert int(ctrl.get("dropped")) == 1
    assert "frame 0 of series" in ctrl.get("stream_error")


@pytest.mark.parametrize("api", ["1.8.0"])
def test_stream_survives_dcu_restart(controller, fake_dcu):
    ctrl, app = controller, fake_dcu
    setup_stream(ctrl, app, "V2", 16, "bslz4", nimages=2, prefix="restart")
    ctrl.set("trigger")
    count(ctrl)
    requests.put(f"{app.url}/fake/restart", timeout=5).raise_for_status()
    ctrl.forget_detector()
    ctrl.simplon.command("detector", "initialize")
    setup_stream(ctrl, app, "V2", 16, "bslz4", nimages=2, prefix="restart")
    ctrl.set("trigger")
    count(ctrl)
    assert ctrl.get("images_collected") == "2"
    assert ctrl.get("dropped") == "0"


@pytest.mark.parametrize("api", ["1.8.0"])
def test_save_command_and_overwrite_rule(controller, fake_dcu):
    ctrl, app = controller, fake_dcu
    setup_stream(ctrl, app, "V1", 16, "bslz4", nimages=1, prefix="s")
    ctrl.set("stream_autosave", ["0"])
    ctrl.set("trigger")
    count(ctrl)
    directory = ctrl.get("data_directory")
    first = ctrl.set("save", ["manual"])
    assert first == os.path.join(directory, "manual.tif")
    second = ctrl.set("save", ["manual.tif"])
    assert second == os.path.join(directory, "manual-img001.tif")
    ctrl.set("overwrite_images", ["1"])
    assert ctrl.set("save", ["manual"]) == first
    np.testing.assert_array_equal(tifffile.imread(first), ctrl.stream.latest().raw)
    with pytest.raises(Exception, match="outside the data directory"):
        ctrl.set("save", ["/etc/eiger.tif"])


# -- over the wire: eiger_server as spec runs it ---------------------------------------------
def _server_has_stream_options() -> bool:
    from eiger_server.options import build_parser
    try:
        build_parser().parse_args(["--stream-port", "1", "--stream2-port", "2"])
    except SystemExit:
        return False
    return True


@pytest.mark.skipif(not _server_has_stream_options(),
                    reason="eiger_server has no --stream-port/--stream2-port options yet")
@pytest.mark.parametrize("api", ["1.8.0"])
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_over_the_wire(server, fake_dcu, tmp_path, version):
    from eiger_server.wire.client import WireClient
    app = fake_dcu
    data = tmp_path / "wire"
    with WireClient("127.0.0.1", server.port) as client:
        client.set("initialize")
        wait_for(lambda: client.get("cmd_executing") == "0", 20, what="initialize")
        client.set("data_directory", str(data))
        client.set("stream_version", version)
        client.set("stream_mode", 1)
        client.set("compression", "bslz4")
        client.set("trigger_mode", "ints")
        client.set("nimages", 3)
        client.set("stream_autosave", 1)
        client.set("stream_autoindex", 1)
        client.set("stream_prefix", "wire")
        client.set("count_time", 0.005)
        client.set("frame_time", 0.005)
        client.set("trigger")
        wait_for(lambda: client.command("get_status").text == "0", 20, what="count end")
        assert client.get("images_collected") == "3"
        assert client.get("is_waiting_data") == "0"
        width = int(client.get("x_pixels_in_detector"))
        height = int(client.get("y_pixels_in_detector"))
        frames = [app.model.source.frame(i, width, height, np.uint16, ["threshold_1"])
                  ["threshold_1"] for i in range(3)]
        image = client.read(0, height - 1, 0, width - 1)
        np.testing.assert_array_equal(image, frames[-1])
        assert int(client.get("sum")) == masked_sum(frames[-1])
        assert int(client.get("maxval")) == masked_max(frames[-1])
        client.command("set_roi", "r1", 10, 50, 20, 60, check=True)
        assert int(client.command("get_roi", "r1", check=True).text) == masked_sum(
            frames[-1][10:51, 20:61])
        files = wait_for(lambda: len(saved_files(str(data), "wire_*.tif")) == 3
                         and saved_files(str(data), "wire_*.tif"), 10, what="3 TIFF files")
        for path, frame in zip(files, frames):
            np.testing.assert_array_equal(tifffile.imread(path), frame)
