"""Fake DCU file writer and monitor, driven through their FrameSink methods."""
from __future__ import annotations

import io
import struct
import threading

import bitshuffle
import dectris.compression
import h5py
import hdf5plugin  # noqa: F401  (registers the HDF5 filters for reading)
import lz4.block
import numpy as np
import pytest
import tifffile

from eiger_server.fakedcu.stores.filewriter import FileWriterStore
from eiger_server.fakedcu.interfaces import Frame, SeriesEnd, SeriesStart
from eiger_server.fakedcu.stores.monitor_store import MonitorStore

WIDTH, HEIGHT = 40, 30


class StubModel:
    """The few things of the fake DCU model the stores use."""

    def __init__(self, data_dir=None, api="1.8.0", **settings):
        self.api = api
        self.data_dir = data_dir
        self.config = {
            ("filewriter", "mode"): "enabled",
            ("filewriter", "nimages_per_file"): 10,
            ("filewriter", "image_nr_start"): 1,
            ("filewriter", "name_pattern"): "series_$id",
            ("filewriter", "compression_enabled"): True,
            ("monitor", "mode"): "enabled",
            ("monitor", "buffer_size"): 10,
            ("monitor", "discard_new"): False,
        }
        for key, value in settings.items():
            subsystem, name = key.split("__")
            self.config[(subsystem, name)] = value

    def config_value(self, subsystem, name):
        return self.config[(subsystem, name)]


def make_start(series_id=1, nimages=25, dtype=np.uint16, compression="bslz4",
               channels=("threshold_1",), ntrigger=1):
    rng = np.random.default_rng(series_id)
    return SeriesStart(
        series_id=series_id, series_unique_id=f"uid-{series_id}",
        config={"beam_center_x": 20.5, "beam_center_y": 15.25, "count_time": 0.1,
                "frame_time": 0.1, "x_pixel_size": 7.5e-5, "y_pixel_size": 7.5e-5,
                "sensor_material": "Si", "sensor_thickness": 4.5e-4,
                "bit_depth_image": np.dtype(dtype).itemsize * 8,
                "detector_distance": 0.12, "description": "Dectris EIGER2 fake",
                "threshold/1/energy": 4020.5, "wavelength": 1.0332,
                "omega_start": 10.0, "omega_increment": 0.5},
        channels=list(channels), width=WIDTH, height=HEIGHT, dtype=np.dtype(dtype),
        nimages=nimages, ntrigger=ntrigger, compression=compression,
        pixel_mask=(rng.random((HEIGHT, WIDTH)) < 0.05).astype(np.uint32),
        flatfield=rng.random((HEIGHT, WIDTH), dtype=np.float32) + 0.5,
        countrate_table=np.arange(20, dtype=np.float32).reshape(2, 10))


def make_images(n, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    high = min(np.iinfo(dtype).max, 1000)
    return [rng.integers(0, high, size=(HEIGHT, WIDTH), dtype=dtype) for _ in range(n)]


def run_series(sink, start, images, encoded=None, end=True):
    sink.series_start(start)
    for i, image in enumerate(images):
        blobs = None if encoded is None else {start.channels[0]: encoded[i]}
        sink.frame(Frame(series_id=start.series_id, image_id=i,
                         data={start.channels[0]: image}, encoded=blobs))
    if end:
        sink.series_end(SeriesEnd(start.series_id, start.series_unique_id, len(images)))


def bslz4_blob(array):
    """Bitshuffle/LZ4 in the HDF5 filter framing (12-byte header, 8192-byte blocks)."""
    body = bitshuffle.compress_lz4(array, 8192 // array.itemsize)
    return struct.pack(">QI", array.nbytes, 8192) + body.tobytes()


def lz4_blob(array):
    """LZ4 in the HDF5 filter framing: one block holding the whole image."""
    raw = array.tobytes()
    block = lz4.block.compress(raw, store_size=False)
    return struct.pack(">QII", len(raw), len(raw), len(block)) + block


@pytest.fixture
def stores():
    made = []
    yield made
    for store in made:
        store.close()


def writer(stores, tmp_path, capacity=1 << 30, queue_bytes=64 << 20, **settings):
    model = StubModel(tmp_path / "dcu", **settings)
    store = FileWriterStore(model, capacity_bytes=capacity, queue_bytes=queue_bytes)
    stores.append(store)
    return model, store


def file_filters(dset):
    plist = dset.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


# ---------------------------------------------------------------------- file writer

def test_25_frames_ten_per_file_read_through_master(stores, tmp_path, monkeypatch):
    model, store = writer(stores, tmp_path, filewriter__image_nr_start=5)
    start = make_start(series_id=7)
    images = make_images(25)
    run_series(store, start, images)
    assert store.flush(10)

    assert sorted(store.list_files()) == ["series_7_data_000001.h5", "series_7_data_000002.h5",
                                          "series_7_data_000003.h5", "series_7_master.h5"]
    assert store.status()["files"] == store.list_files()
    assert store.status()["state"] == "ready"
    assert store.status()["error"] == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)   # links must resolve next to the master, not the cwd
    with h5py.File(store.file_path("series_7_master.h5"), "r") as master:
        data = master["entry/data"]
        assert sorted(data) == ["data_000001", "data_000002", "data_000003"]
        link = data.get("data_000002", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert (link.filename, link.path) == ("series_7_data_000002.h5", "/entry/data/data")
        read = np.concatenate([data[name][...] for name in sorted(data)])
        assert read.dtype == np.uint16
        np.testing.assert_array_equal(read, np.stack(images))

        det = master["entry/instrument/detector"]
        assert master["entry"].attrs["NX_class"] == "NXentry"
        assert det.attrs["NX_class"] == "NXdetector"
        assert det["beam_center_x"][()] == 20.5
        assert det["x_pixel_size"].attrs["units"] == "m"
        assert det["threshold_energy"][()] == 4020.5
        assert det["sensor_material"][()] == b"Si"
        spec = det["detectorSpecific"]
        assert spec["nimages"][()] == 25 and spec["ntrigger"][()] == 1
        assert (spec["x_pixels_in_detector"][()], spec["y_pixels_in_detector"][()]) == (40, 30)
        assert spec["pixel_mask"].dtype == np.uint32
        np.testing.assert_array_equal(spec["pixel_mask"][...], start.pixel_mask)
        assert spec["flatfield"].dtype == np.float32
        np.testing.assert_array_equal(spec["flatfield"][...], start.flatfield)
        np.testing.assert_array_equal(spec["countrate_correction_table"][...],
                                      start.countrate_table)
        assert "data_collection_date" in spec and "software_version" in spec
        assert master["entry/instrument/beam/incident_wavelength"][()] == pytest.approx(1.0332)
        omega = master["entry/sample/goniometer/omega"][...]
        np.testing.assert_allclose(omega, 10.0 + 0.5 * np.arange(25))

    ranges = []
    for number in (1, 2, 3):
        with h5py.File(store.file_path(f"series_7_data_{number:06d}.h5"), "r") as f:
            dset = f["entry/data/data"]
            assert dset.chunks == (1, HEIGHT, WIDTH)
            assert file_filters(dset) == [32008]
            lo, hi = int(dset.attrs["image_nr_low"]), int(dset.attrs["image_nr_high"])
            ranges.append((lo, hi))
            np.testing.assert_array_equal(dset[...], np.stack(images[lo - 5:hi - 5 + 1]))
    assert ranges == [(5, 14), (15, 24), (25, 29)]


def test_nimages_per_file_zero_puts_data_in_master(stores, tmp_path):
    model, store = writer(stores, tmp_path, filewriter__nimages_per_file=0,
                          filewriter__name_pattern="scan_$id_x")
    images = make_images(12, dtype=np.uint32)
    run_series(store, make_start(series_id=3, nimages=12, dtype=np.uint32), images)
    assert store.flush(10)
    assert store.list_files() == ["scan_3_x_master.h5"]
    with h5py.File(store.file_path("scan_3_x_master.h5"), "r") as master:
        dset = master["entry/data/data"]
        assert isinstance(master["entry/data"].get("data", getlink=True), h5py.HardLink)
        assert dset.dtype == np.uint32
        np.testing.assert_array_equal(dset[...], np.stack(images))
        assert (dset.attrs["image_nr_low"], dset.attrs["image_nr_high"]) == (1, 12)
        assert [k for k in master["entry/data"] if k.startswith("data_")] == []


def test_framing_of_the_test_blobs_is_the_dectris_one():
    image = make_images(1)[0]
    raw = dectris.compression.decompress(bslz4_blob(image), "bslz4", elem_size=2)
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint16).reshape(image.shape), image)
    raw = dectris.compression.decompress(lz4_blob(image), "lz4")
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint16).reshape(image.shape), image)


@pytest.mark.parametrize("compression,filter_id,dtype", [
    ("bslz4", 32008, np.uint16), ("bslz4", 32008, np.uint8), ("bslz4", 32008, np.uint32),
    ("lz4", 32004, np.uint16), ("none", None, np.uint16)])
def test_compression_filters(stores, tmp_path, compression, filter_id, dtype):
    model, store = writer(stores, tmp_path, filewriter__nimages_per_file=4)
    images = make_images(6, dtype=dtype, seed=4)
    run_series(store, make_start(nimages=6, dtype=dtype, compression=compression), images)
    assert store.flush(10)
    with h5py.File(store.file_path("series_1_master.h5"), "r") as master:
        first = master["entry/data/data_000001"]
        assert file_filters(first) == ([filter_id] if filter_id else [])
        assert first.dtype == np.dtype(dtype)
        read = np.concatenate([first[...], master["entry/data/data_000002"][...]])
    np.testing.assert_array_equal(read, np.stack(images))


@pytest.mark.parametrize("compression,encode", [("bslz4", bslz4_blob), ("lz4", lz4_blob)])
def test_precompressed_blobs_go_straight_into_the_chunks(stores, tmp_path, compression,
                                                         encode):
    model, store = writer(stores, tmp_path, filewriter__nimages_per_file=3)
    images = make_images(5, seed=9)
    # The blobs encode different pixels than Frame.data, so the file shows which was used.
    shifted = [image + 1 for image in images]
    blobs = [encode(image) for image in shifted]
    run_series(store, make_start(nimages=5, compression=compression), images, encoded=blobs)
    assert store.flush(10)
    with h5py.File(store.file_path("series_1_data_000002.h5"), "r") as f:
        dset = f["entry/data/data"]
        filter_mask, chunk = dset.id.read_direct_chunk((1, 0, 0))
        assert chunk == blobs[4]
        np.testing.assert_array_equal(dset[...], np.stack(shifted[3:5]))
    with h5py.File(store.file_path("series_1_master.h5"), "r") as master:
        np.testing.assert_array_equal(master["entry/data/data_000001"][...],
                                      np.stack(shifted[:3]))


def test_compression_disabled_ignores_blobs_and_writes_plain(stores, tmp_path):
    model, store = writer(stores, tmp_path, filewriter__compression_enabled=False)
    images = make_images(3)
    blobs = [bslz4_blob(image + 1) for image in images]
    run_series(store, make_start(nimages=3), images, encoded=blobs)
    assert store.flush(10)
    with h5py.File(store.file_path("series_1_data_000001.h5"), "r") as f:
        assert file_filters(f["entry/data/data"]) == []
        np.testing.assert_array_equal(f["entry/data/data"][...], np.stack(images))


def test_files_are_listed_only_when_complete(stores, tmp_path):
    model, store = writer(stores, tmp_path)
    start = make_start(nimages=25)
    run_series(store, start, make_images(15), end=False)
    assert store.flush(10)
    assert store.list_files() == ["series_1_data_000001.h5"]
    assert store.status()["state"] == "acquire"
    with pytest.raises(KeyError):
        store.file_path("series_1_data_000002.h5")
    on_disk = {p.name for p in store.directory.iterdir()}
    assert {"series_1_data_000002.h5", "series_1_master.h5"}.isdisjoint(on_disk)
    store.series_end(SeriesEnd(1, "uid-1", 15))
    assert store.flush(10)
    assert store.list_files() == ["series_1_data_000001.h5", "series_1_data_000002.h5",
                                  "series_1_master.h5"]
    assert sorted(p.name for p in store.directory.iterdir()) == store.list_files()
    with h5py.File(store.file_path("series_1_data_000002.h5"), "r") as f:
        assert f["entry/data/data"].shape == (5, HEIGHT, WIDTH)   # trimmed to what came
        assert f["entry/data/data"].attrs["image_nr_high"] == 15


def test_buffer_free_delete_and_clear(stores, tmp_path):
    capacity = 50 << 20
    model, store = writer(stores, tmp_path, capacity=capacity)
    assert store.buffer_free() == capacity
    run_series(store, make_start(series_id=1, compression="none"), make_images(25))
    assert store.flush(10)
    sizes = sum(store.file_path(n).stat().st_size for n in store.list_files())
    assert store.buffer_free() == capacity - sizes
    assert store.status()["buffer_free"] == capacity - sizes
    after_one = store.buffer_free()
    run_series(store, make_start(series_id=2, compression="none"), make_images(25))
    assert store.flush(10)
    assert store.buffer_free() < after_one
    assert len(store.list_files()) == 8

    store.delete_file("series_1_master.h5")
    assert "series_1_master.h5" not in store.list_files()
    assert not (store.directory / "series_1_master.h5").exists()
    for bad in ("series_1_master.h5", "../series_2_master.h5", "x/series_2_master.h5", ""):
        with pytest.raises(KeyError):
            store.delete_file(bad)
        with pytest.raises(KeyError):
            store.file_path(bad)

    store.command("clear")
    assert store.list_files() == []
    assert list(store.directory.iterdir()) == []
    assert store.buffer_free() == capacity


def test_series_that_does_not_fit_is_refused(stores, tmp_path):
    frame_bytes = WIDTH * HEIGHT * 2
    model, store = writer(stores, tmp_path, capacity=10 * frame_bytes)
    run_series(store, make_start(compression="none"), make_images(25))
    assert store.flush(10)
    status = store.status()
    assert status["state"] == "error"
    assert "buffer" in status["error"][0] and "series 1" in status["error"][0]
    assert store.list_files() == [] and list(store.directory.iterdir()) == []
    store.command("initialize")
    assert store.status()["state"] == "ready"


def test_buffer_filling_during_a_series_stops_writing(stores, tmp_path):
    # Random 16-bit data hardly compresses: 25 frames need ~60 kB, the buffer has 30 kB.
    model, store = writer(stores, tmp_path, capacity=30_000, filewriter__nimages_per_file=5)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 65535, size=(HEIGHT, WIDTH), dtype=np.uint16)
              for _ in range(25)]
    run_series(store, make_start(), images)
    assert store.flush(10)
    status = store.status()
    assert status["state"] == "error" and "full" in " ".join(status["error"])
    assert "series_1_master.h5" not in store.list_files()
    used = sum(store.file_path(n).stat().st_size for n in store.list_files())
    assert used <= 30_000
    assert [p.name for p in store.directory.iterdir() if p.name.startswith(".")] == []


def test_disabled_file_writer_writes_nothing(stores, tmp_path):
    model, store = writer(stores, tmp_path, filewriter__mode="disabled")
    run_series(store, make_start(), make_images(5))
    assert store.flush(10)
    assert store.list_files() == []
    assert list(store.directory.iterdir()) == []
    assert store.status()["state"] == "disabled"


def test_own_directory_when_model_has_none(stores):
    store = FileWriterStore(StubModel(None))
    stores.append(store)
    run_series(store, make_start(nimages=2), make_images(2))
    assert store.flush(10)
    assert store.file_path("series_1_master.h5").is_file()
    store.command("clear")


def test_frames_dropped_when_writer_falls_behind(stores, tmp_path):
    frame_bytes = WIDTH * HEIGHT * 2
    model, store = writer(stores, tmp_path, queue_bytes=3 * frame_bytes)
    entered, release = threading.Event(), threading.Event()
    real_write = store.write_frame

    def slow_write(frame):
        if frame.image_id == 0:
            entered.set()
            release.wait(10)
        real_write(frame)

    store.write_frame = slow_write
    start = make_start(nimages=10)
    images = make_images(10)
    store.series_start(start)
    store.frame(Frame(1, 0, {"threshold_1": images[0]}))
    assert entered.wait(10)
    for i in range(1, 10):   # 3 fit in the queue, 6 are dropped
        store.frame(Frame(1, i, {"threshold_1": images[i]}))
    store.series_end(SeriesEnd(1, "uid-1", 10))
    release.set()
    assert store.flush(10)
    status = store.status()
    assert status["state"] == "error"
    assert "dropped 6 of 10" in status["error"][0]
    with h5py.File(store.file_path("series_1_master.h5"), "r") as master:
        read = master["entry/data/data_000001"][...]
    np.testing.assert_array_equal(read[:4], np.stack(images[:4]))
    assert not read[4:].any()


def test_unknown_command_is_refused(stores, tmp_path):
    model, store = writer(stores, tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        store.command("format_disk")


# ---------------------------------------------------------------------- monitor

def monitor_series(monitor, series_id, n, channels=("threshold_1",), dtype=np.uint16):
    start = make_start(series_id=series_id, nimages=n, channels=channels, dtype=dtype)
    monitor.series_start(start)
    sent = []
    for i in range(n):
        data = {ch: images for ch, images in
                zip(channels, make_images(len(channels), dtype=dtype, seed=100 * series_id + i))}
        sent.append(data)
        monitor.frame(Frame(series_id, i, data))
    monitor.series_end(SeriesEnd(series_id, start.series_unique_id, n))
    return sent


def read_tiff(blob):
    with tifffile.TiffFile(io.BytesIO(blob)) as tif:
        page = tif.pages[0]
        return tif.asarray(), page.description, page.compression


def test_monitor_keeps_last_images_and_pops_oldest_first():
    monitor = MonitorStore(StubModel(monitor__buffer_size=3))
    sent = monitor_series(monitor, 4, 5)
    assert monitor.image_list() == [[4, [2, 3, 4]]]
    status = monitor.status()
    assert status["state"] == "ready"
    assert status["buffer_fill_level"] == [3, 3]
    assert status["dropped"] == 0
    assert status["buffer_free"] == 0 and "next_image_number" not in status   # 1.8 keys
    latest, description, compression = read_tiff(monitor.latest_tiff())
    np.testing.assert_array_equal(latest, sent[4]["threshold_1"])
    assert latest.dtype == np.uint16 and compression == 1
    assert "series 4" in description and "image 4" in description
    popped = [read_tiff(monitor.pop_tiff())[0] for _ in range(3)]
    for array, i in zip(popped, (2, 3, 4)):
        np.testing.assert_array_equal(array, sent[i]["threshold_1"])
    with pytest.raises(KeyError):
        monitor.pop_tiff()
    assert monitor.status()["buffer_fill_level"] == [0, 3]


def test_monitor_on_1_6_keeps_images_with_the_1_6_status_keys():
    monitor = MonitorStore(StubModel(api="1.6.0", monitor__buffer_size=3))
    assert monitor.status()["next_image_number"] == monitor.status()["monitor_image_number"] == -1
    sent = monitor_series(monitor, 4, 5)
    assert monitor.image_list() == [[4, [2, 3, 4]]]
    status = monitor.status()
    assert "buffer_free" not in status
    # images/next hands out image 2 next, images/monitor is image 4
    assert (status["next_image_number"], status["monitor_image_number"]) == (2, 4)
    assert read_tiff(monitor.pop_tiff())[1].startswith("series 4 image 2")
    assert monitor.status()["next_image_number"] == 3
    np.testing.assert_array_equal(read_tiff(monitor.latest_tiff())[0], sent[4]["threshold_1"])


def test_monitor_discard_new_keeps_first_images_and_counts_drops():
    monitor = MonitorStore(StubModel(monitor__buffer_size=3, monitor__discard_new=True))
    sent = monitor_series(monitor, 1, 5)
    monitor_series(monitor, 2, 2)
    assert monitor.image_list() == [[1, [0, 1, 2]]]
    assert monitor.status()["dropped"] == 4
    np.testing.assert_array_equal(read_tiff(monitor.get_tiff(1, 0))[0], sent[0]["threshold_1"])
    assert read_tiff(monitor.pop_tiff())[1].startswith("series 1 image 0")
    monitor.command("initialize")
    assert monitor.status()["dropped"] == 0 and monitor.image_list() == []


def test_monitor_images_across_series_and_clear():
    monitor = MonitorStore(StubModel(monitor__buffer_size=4))
    monitor_series(monitor, 1, 3)
    monitor_series(monitor, 2, 2)
    assert monitor.image_list() == [[1, [1, 2]], [2, [0, 1]]]
    monitor.command("clear")
    assert monitor.image_list() == []
    assert monitor.status()["buffer_fill_level"] == [0, 4]
    with pytest.raises(KeyError):
        monitor.latest_tiff()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_monitor_tiff_per_threshold(dtype):
    channels = ("threshold_1", "threshold_2", "difference")
    monitor = MonitorStore(StubModel())
    sent = monitor_series(monitor, 6, 3, channels=channels, dtype=dtype)
    for threshold, channel in ((None, "threshold_1"), (1, "threshold_1"),
                               (2, "threshold_2"), (3, "difference")):
        array, description, _ = read_tiff(monitor.get_tiff(6, 1, threshold))
        assert array.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(array, sent[1][channel])
        assert description == f"series 6 image 1 channel {channel}"
    np.testing.assert_array_equal(read_tiff(monitor.latest_tiff(2))[0], sent[2]["threshold_2"])
    for bad in ((6, 1, 4), (6, 1, 0), (6, 9, None), (5, 1, None)):
        with pytest.raises(KeyError):
            monitor.get_tiff(*bad)


@pytest.mark.parametrize("api", ["1.6.0", "1.8.0"])
def test_monitor_disabled_keeps_nothing(api):
    monitor = MonitorStore(StubModel(api=api, monitor__mode="disabled"))
    monitor_series(monitor, 1, 3)
    assert monitor.image_list() == []
    assert monitor.status()["state"] == "disabled"
    with pytest.raises(KeyError):
        monitor.latest_tiff()
