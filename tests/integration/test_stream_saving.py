"""The stream side's edge cases: HDF5RAW names and failures, series ends,
receiver life, channel names, durable renames, shared path rules."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cbor2
import h5py
import numpy as np
import pytest
import zmq

from eiger_server.control import transfers
from eiger_server.storage import paths
from eiger_server.formats import stream_v1
from eiger_server.formats import stream_v2
from eiger_server.formats.decode import Encoded
from eiger_server.errors import DataError
from eiger_server.storage.hdf5raw import Hdf5RawWriter, read_frames
from eiger_server.stream.receiver import StreamReceiver
from eiger_server.formats.stream_events import ImageMessage, SeriesEnd, StreamErrorEvent
from eiger_server.storage.tiff import TiffSaver
import helpers
from helpers import acquire, wait_for

ROOT = Path(__file__).resolve().parents[2]


def raw(image):
    return Encoded(memoryview(image.tobytes()), "<", image.shape, image.dtype)


def StubController(data_directory, port=1, config=None, prefix="s$id"):
    """The shared stand-in, with a small queue and one worker."""
    return helpers.StubController(data_directory, port, config, prefix, queue_depth=8,
                                  stream_workers=1)


# -- 1. HDF5RAW without overwrite never touches an earlier series --------------------------
def test_hdf5raw_series_without_overwrite_keep_their_own_pixels(tmp_path):
    writer = Hdf5RawWriter(images_per_file=1000)
    masters = []
    for series in (1, 2, 3):
        masters.append(writer.start(str(tmp_path / "scan"), series, nimages=2, overwrite=False))
        for frame in range(2):
            writer.write(frame, {"threshold_1": raw(np.full((4, 6), 10 * series, np.uint16))})
        assert writer.close() == masters[-1]
    assert len(set(masters)) == 3
    for series, master in enumerate(masters, 1):
        frames = read_frames(master)
        assert frames.shape == (2, 4, 6) and (frames == 10 * series).all(), master
        with h5py.File(master) as handle:
            assert int(handle["/entry/instrument/detector/detectorSpecific/series"][()]) == series

    # A data file left without its master (a series that died) is not reused either.
    (tmp_path / "lone_data_000001.h5").write_bytes(b"keep me")
    master = writer.start(str(tmp_path / "lone"), 9, nimages=1, overwrite=False)
    writer.write(0, {"threshold_1": raw(np.ones((4, 6), np.uint16))})
    writer.close()
    assert os.path.basename(master) == "lone-img001_master.h5"
    assert (tmp_path / "lone_data_000001.h5").read_bytes() == b"keep me"


@pytest.mark.parametrize("api", ["1.8.0"])
def test_hdf5raw_autosave_three_series_same_prefix_end_to_end(controller, fake_dcu):
    ctrl = controller
    ctrl.set("stream_mode", ["1"])
    ctrl.set("stream_version", ["V2"])
    ctrl.set("stream_save_mode", ["HDF5RAW"])
    ctrl.set("overwrite_images", ["0"])
    ctrl.set("stream_prefix", ["raw"])
    ctrl.set("stream_autosave", ["1"])
    directory = Path(ctrl.get("data_directory"))
    masters = []
    for _ in range(3):
        series = acquire(ctrl, 2)
        wait_for(lambda: ctrl.get("stream_latest_file") not in [""] + masters, 10,
                 what="the master of the series")
        masters.append(ctrl.get("stream_latest_file"))
        with h5py.File(masters[-1]) as handle:
            specific = handle["/entry/instrument/detector/detectorSpecific"]
            assert int(specific["series"][()]) == series
            assert int(specific["frames_written"][()]) == 2
    assert [os.path.basename(m) for m in masters] == [
        "raw_master.h5", "raw-img001_master.h5", "raw-img002_master.h5"]
    width = int(ctrl.config_value("x_pixels_in_detector"))
    height = int(ctrl.config_value("y_pixels_in_detector"))
    depth = {8: np.uint8, 16: np.uint16, 32: np.uint32}[int(ctrl.config_value("bit_depth_image"))]
    expected = [fake_dcu.model.source.frame(i, width, height, depth, ["threshold_1"])
                ["threshold_1"] for i in range(2)]
    for master in masters:
        np.testing.assert_array_equal(read_frames(master), np.stack(expected))
    assert sorted(p.name for p in directory.glob("raw*_data_*.h5")) == [
        "raw-img001_data_000001.h5", "raw-img002_data_000001.h5", "raw_data_000001.h5"]
    assert ctrl.get("dropped") == "0"


# -- 2. HDF5RAW disk failures are counted, the master is still written ---------------------
_FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    from types import SimpleNamespace
    import numpy as np
    sys.path[:0] = sys.argv[2:]
    from test_stream_saving import StubController, raw
    from eiger_server.formats.stream_events import ImageMessage, SeriesEnd
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    handler = StubController(sys.argv[1]).stream_handler()
    handler.start_pipeline()
    handler.set_save_mode("HDF5RAW")
    handler.set_autosave("1")
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    image = np.random.default_rng(1).integers(0, 60000, (514, 1030)).astype(np.uint16)
    for frame in range(5):
        handler.feed(ImageMessage(7, frame, {"threshold_1": raw(image)}))
    handler.feed(SeriesEnd(7))
    handler.wait_saved(20)
    print(json.dumps({"unsaved": handler.unsaved, "dropped": handler.get_dropped(),
                      "error": handler.get_error(), "latest": handler.get_latest_file()}))
    handler.close()
""")


@pytest.mark.timeout(300)          # its subprocess alone may take 120 s
def test_hdf5raw_full_disk_counts_every_lost_frame_and_writes_the_master(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    answer = subprocess.run([sys.executable, "-c", _FULL_DISK, str(data), str(Path(__file__).parent),
                             str(Path(helpers.__file__).parent)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    result = __import__("json").loads(answer.stdout.strip().splitlines()[-1])
    # Each 1 MB frame exceeds the 200 kB file limit: all five are lost, and said so.
    assert result["unsaved"] == 5 and result["dropped"] == 5
    assert "HDF5RAW" in result["error"] and "failed" in result["error"]
    assert not result["latest"] or result["latest"].endswith("s7_master.h5")
    assert (data / "s7_master.h5").exists()        # the master survives the data file
    with h5py.File(data / "s7_master.h5") as handle:
        assert "data_000001" in handle["/entry/data"]


def test_hdf5raw_unwritable_directory_counts_frames_from_the_series_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    handler = StubController(blocker / "data").stream_handler()
    handler.start_pipeline()
    try:
        handler.set_save_mode("HDF5RAW")
        handler.set_autosave("1")
        for frame in range(3):
            handler.feed(ImageMessage(1, frame, {"threshold_1": raw(np.ones((4, 6),
                                                                                np.uint16))}))
        handler.feed(SeriesEnd(1))
        assert handler.wait_saved(10)
        assert handler.unsaved == 3 and handler.get_dropped() == 3
        assert "creating the directory" in handler.get_error()
        assert handler.get_latest_file() == ""
    finally:
        handler.close()


# -- 3. the series is finished at its end whatever autosave and the mode are now -------------
def test_hdf5raw_series_closed_at_end_after_autosave_off(tmp_path):
    handler = StubController(tmp_path).stream_handler()
    handler.start_pipeline()
    try:
        handler.set_save_mode("HDF5RAW")
        handler.set_autosave("1")
        image = np.arange(24, dtype=np.uint16).reshape(4, 6)
        for frame in range(2):
            handler.feed(ImageMessage(3, frame, {"threshold_1": raw(image)}))
        assert handler.wait_saved(10)
        assert handler.get_latest_file() == ""          # no master yet: nothing to name
        assert not (tmp_path / "s3_master.h5").exists()
        handler.set_autosave("0")
        handler.set_save_mode("TIFF")
        handler.feed(SeriesEnd(3))
        assert handler.wait_saved(10)
        assert handler.get_latest_file() == str(tmp_path / "s3_master.h5")
        np.testing.assert_array_equal(read_frames(str(tmp_path / "s3_master.h5")),
                                      np.stack([image, image]))
        assert handler.unsaved == 0
    finally:
        handler.close()


# -- 4. a stopped receiver never starts ------------------------------------------------------
def test_receiver_stopped_before_start_never_runs():
    receiver = StreamReceiver("tcp://127.0.0.1:1", "V2", lambda e: None, poll_ms=20)
    receiver.stop()                 # retired by another thread before it started
    receiver.start()
    assert not receiver.running
    receiver = StreamReceiver("tcp://127.0.0.1:1", "V2", lambda e: None, poll_ms=20)
    receiver.start()
    assert receiver.running
    receiver.stop()
    receiver.start()
    assert not receiver.running


# -- 5. channel names from the stream cannot name files outside ----------------------------
def _image_message(series, frame, names, image):
    data = {name: cbor2.CBORTag(40, [list(image.shape), cbor2.CBORTag(69, image.tobytes())])
            for name in names}
    return cbor2.dumps(cbor2.CBORTag(55799, {"type": "image", "series_id": series,
                                             "image_id": frame, "data": data}))


def test_bad_channel_names_are_stream_errors():
    image = np.ones((3, 4), np.uint16)
    for name in ("x/../../..", "../x", "a b", "", "th\x00", "ü"):
        event = stream_v2.parse([_image_message(1, 0, [name, "threshold_1"], image)])
        assert isinstance(event, StreamErrorEvent) and event.frame == 0, name
        assert "channel name" in event.message
    start = cbor2.dumps({"type": "start", "series_id": 1, "channels": ["ok", "../no"]})
    assert isinstance(stream_v2.parse([start]), StreamErrorEvent)
    good = stream_v2.parse([_image_message(1, 0, ["threshold_1", "difference"], image)])
    assert isinstance(good, ImageMessage) and list(good.channels) == ["threshold_1", "difference"]


@pytest.mark.parametrize("mode", ["TIFF", "HDF5RAW"])
def test_crafted_channel_name_over_zmq_stays_inside(tmp_path, mode):
    context = zmq.Context.instance()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    data = tmp_path / "a" / "b" / "data"
    data.mkdir(parents=True)
    ctrl = StubController(data, port, {("stream", "mode"): "enabled",
                                       ("stream", "format"): "cbor"}, prefix="p$id")
    handler = ctrl.stream_handler()
    try:
        handler.set_save_mode(mode)
        handler.set_autosave("1")
        handler.prepare_series()
        image = np.arange(12, dtype=np.uint16).reshape(3, 4)
        sock.send(cbor2.dumps(cbor2.CBORTag(55799, {"type": "start", "series_id": 5,
                                                    "channels": ["threshold_1", "difference"]})))
        sock.send(_image_message(5, 0, ["x/../../../evil", "threshold_1"], image))
        sock.send(_image_message(5, 1, ["threshold_1", "difference"], image))
        sock.send(cbor2.dumps({"type": "end", "series_id": 5}))
        wait_for(lambda: handler.decode_failures == 1 and handler.receiver.images == 1, 10,
                 what="the two images")
        wait_for(lambda: handler.get_latest_file(), 10, what="the saved image")
        assert handler.wait_saved(10)
        assert "channel name" in handler.get_error()
        assert handler.get_dropped() == 1
        assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == (
            ["p5_difference.tif", "p5_threshold_1.tif"] if mode == "TIFF" else
            ["p5_difference_data_000001.h5", "p5_master.h5", "p5_threshold_1_data_000001.h5"])
        assert all(p.parent == data for p in tmp_path.rglob("*") if p.is_file())
    finally:
        handler.close()
        sock.close(0)


# -- 6. renames are made durable before the DCU forgets its copy -----------------------------
def test_atomic_file_and_transfer_sync_the_directory(tmp_path, monkeypatch):
    synced = []
    real = paths.fsync_dir
    monkeypatch.setattr(paths, "fsync_dir", lambda path: (synced.append(path), real(path)))
    target = tmp_path / "f.bin"
    with paths.atomic_file(str(target)) as out:
        out.write(b"x")
    assert target.read_bytes() == b"x" and synced == [str(tmp_path)]
    paths.fsync_dir(str(tmp_path))          # a real directory syncs without error
    with pytest.raises(OSError):
        real(str(tmp_path / "missing"))


@pytest.mark.parametrize("api", ["1.8.0"])
def test_transfer_syncs_the_directory_before_deleting_on_the_dcu(controller, monkeypatch):
    ctrl = controller
    ctrl.set("prefix", ["sync_$id"])
    ctrl.set("writer_mode", ["1"])
    ctrl.set("nimages_per_file", ["10"])
    seqid = acquire(ctrl, 2)
    names = [f"sync_{seqid}_master.h5", f"sync_{seqid}_data_000001.h5"]
    wait_for(lambda: set(names) <= set(ctrl.files.get_files()), 20, what="the DCU's files")
    ctrl.set("auto_delete", ["1"])
    directory = ctrl.get("data_directory")
    events = []
    real_sync, real_delete = paths.fsync_dir, ctrl.simplon.delete_data

    def broken(path):
        events.append(("sync", path))
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(transfers.paths, "fsync_dir", broken)
    monkeypatch.setattr(ctrl.simplon, "delete_data",
                        lambda name: (events.append(("delete", name)), real_delete(name)))
    with pytest.raises(DataError, match="nothing was deleted from the DCU"):
        ctrl.files.do_transfer()
    assert ("sync", directory) in events and not [e for e in events if e[0] == "delete"]
    assert set(names) <= set(ctrl.files.get_files())

    events.clear()
    monkeypatch.setattr(transfers.paths, "fsync_dir",
                        lambda path: (events.append(("sync", path)), real_sync(path)))
    assert "deleted from the DCU" in ctrl.files.do_transfer()
    first_delete = next(i for i, e in enumerate(events) if e[0] == "delete")
    assert ("sync", directory) in events[:first_delete]
    assert not set(names) & set(ctrl.files.get_files())


# -- 7. one rule for names from spec, one $id expansion, one set of stream helpers -----------
def test_resolve_user_path_and_expand_id(tmp_path):
    data = tmp_path / "data"
    assert paths.resolve_user_path(str(data), "a/b.tif") == str(data / "a" / "b.tif")
    assert paths.resolve_user_path(str(data), str(data / "x")) == str(data / "x")
    assert paths.resolve_user_path(str(data), "/tmp/x.npy") == os.path.realpath("/tmp/x.npy")
    for name in ("../x", "/etc/x", "/tmp/../etc/x"):
        with pytest.raises(DataError, match="save: .*outside"):
            paths.resolve_user_path(str(data), name, "save")
    with pytest.raises(DataError, match="outside"):
        paths.resolve_user_path(str(data), "/tmp/x", allowed_extra=())
    assert paths.expand_id("s_$id", 12) == "s_12"
    assert paths.expand_id("s_$id", None) == "s_0"
    assert paths.expand_id("s_$id", None, "latest") == "s_latest"
    assert paths.expand_id("s_$id", "*") == "s_*"


def test_stream_time_and_buffer_helpers_are_shared():
    from eiger_server.formats import stream_events
    assert stream_v1.seconds is stream_v2.seconds is stream_events.seconds
    assert stream_events.seconds([1, 4]) == 0.25
    assert stream_events.seconds(3) == 3.0
    assert stream_events.seconds(2_000_000_000, 1e-9) == pytest.approx(2.0)
    assert stream_events.seconds("x") is None and stream_events.seconds([1, 0]) is None
    assert bytes(stream_events.buffer(b"ab")) == b"ab"


# -- 8. shutdown: the writer stays the saver thread's; dropped saves are counted ------------
def test_saver_close_counts_dropped_jobs_and_reports_a_stuck_thread():
    import threading
    gate = threading.Event()
    saver = TiffSaver(depth=8)
    saver.submit(lambda: gate.wait(10))
    wait_for(lambda: not saver.queued(), what="the first job running")
    for _ in range(3):
        assert saver.submit(lambda: None, nbytes=100)
    assert saver.submit(lambda: None, always=True)        # a file-closing job: no data
    assert saver.close(timeout=0.1) is False              # still in the first job
    assert saver.dropped == 3
    gate.set()
    assert saver.join(5)


def test_handler_close_leaves_the_writer_to_a_stuck_saver(tmp_path, monkeypatch):
    import threading
    handler = StubController(tmp_path).stream_handler()
    handler.start_pipeline()
    handler.set_save_mode("HDF5RAW")
    handler.set_autosave("1")
    image = np.ones((4, 6), np.uint16)
    handler.feed(ImageMessage(2, 0, {"threshold_1": raw(image)}))
    assert handler.wait_saved(10)
    gate = threading.Event()
    handler.saver.submit(lambda: gate.wait(30))         # a stuck disk
    wait_for(lambda: not handler.saver.queued(), what="the stuck job running")
    saver = handler.saver
    handler.feed(ImageMessage(2, 1, {"threshold_1": raw(image)}))
    closed = []
    monkeypatch.setattr(handler.raw_writer, "close", lambda: closed.append(1))
    monkeypatch.setattr(saver, "close", lambda timeout=10.0: TiffSaver.close(saver, 0.1))
    handler.close()
    assert closed == []                      # not closed under the saver's feet
    assert handler.unsaved == 1              # the queued frame was dropped
    gate.set()
    saver.join(5)
    monkeypatch.undo()
    handler.raw_writer.close()
