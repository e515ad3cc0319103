"""The fast paths of the stream: partial ROI decoding, HDF5RAW files, bounded saving."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from eiger_server.formats import compression
from eiger_server.stream import imageproc
from eiger_server.formats.decode import DecodeError, Encoded, decode_rows
from eiger_server.formats.compression import compress
from eiger_server.storage.hdf5raw import Hdf5RawWriter, read_frames
from eiger_server.formats.stream_v2 import parse as parse_v2
from eiger_server.storage.tiff import TiffSaver

from helpers import SHARED

CAPTURES = SHARED / "data" / "dectris-stream2"
BSLZ4_CAPTURES = ["r500k_bm_bslz4_16bit", "r500k_bm_bslz4_32bit", "r500k_bm_bslz4_8bit"]


def _encodings(array: np.ndarray):
    blob = compress(array, "bslz4")
    size = array.dtype.itemsize
    yield Encoded(blob, "bslz4", array.shape, array.dtype, size, v2=True)
    yield Encoded(blob, f"bs{8 * size}-lz4<", array.shape, array.dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 13), (101, 333), (514, 1030), (97, 4099)])
def test_partial_roi_decode_equals_full_decode_then_slice(dtype, shape):
    rng = np.random.default_rng(shape[0] * shape[1])
    image = rng.integers(0, 300, shape).astype(dtype)
    image.flat[rng.integers(0, image.size, 4)] = np.iinfo(dtype).max
    for encoded in _encodings(image):
        assert np.array_equal(encoded.decode(), image)
        ranges = [(0, 0), (0, shape[0] - 1), (shape[0] - 1, shape[0] - 1)]
        ranges += [tuple(sorted(rng.integers(0, shape[0], 2))) for _ in range(20)]
        for r0, r1 in ranges:
            part = decode_rows(encoded, r0, r1)
            assert part.shape == (r1 - r0 + 1, shape[1])
            assert np.array_equal(part, image[r0:r1 + 1]), (encoded.encoding, r0, r1)


def test_partial_decode_reads_only_the_blocks_it_needs():
    image = np.arange(64 * 1024, dtype=np.uint16).reshape(64, 1024)
    blob = compress(image, "bslz4")
    sub, first, n = compression.bslz4_block_range(blob, 10 * 1024, 11 * 1024, 2)
    # 4096 elements per 8192-byte block: rows 10 are in block 2 alone
    assert (first, n) == (8192, 4096)
    assert len(sub) < len(blob) / 4


def test_partial_decode_of_a_corrupt_frame_is_an_error():
    image = np.ones((200, 300), dtype=np.uint16)
    blob = bytearray(compress(image, "bslz4"))
    truncated = Encoded(bytes(blob[:40]), "bslz4", image.shape, image.dtype, 2, v2=True)
    with pytest.raises(DecodeError):
        decode_rows(truncated, 150, 160)
    wrong_shape = Encoded(bytes(blob), "bslz4", (100, 300), image.dtype, 2, v2=True)
    with pytest.raises(DecodeError):
        decode_rows(wrong_shape, 10, 20)


def _capture_images():
    folders = sorted(d for d in CAPTURES.glob("*bslz4*") if d.is_dir())
    assert [d.name for d in folders] == BSLZ4_CAPTURES
    files = sorted(p for d in folders for p in sorted(d.glob("*.cbor")))
    images = []
    for path in files:
        event = parse_v2([path.read_bytes()])
        if hasattr(event, "channels"):
            images.extend(event.channels.values())
        if len(images) >= 9:
            break
    return images


@pytest.mark.needs_shared(CAPTURES)
def test_partial_decode_on_real_detector_captures():
    images = _capture_images()
    assert len(images) >= 9, "too few bslz4 image messages in the captures"
    for encoded in images:
        full = encoded.decode()
        height = full.shape[0]
        for r0, r1 in ((0, 9), (250, 263), (height - 3, height - 1), (100, 400)):
            assert np.array_equal(decode_rows(encoded, r0, r1), full[r0:r1 + 1])
        bounds = (200, 300, 10, 500)
        part = decode_rows(encoded, bounds[0], bounds[1])[:, bounds[2]:bounds[3] + 1]
        assert imageproc.masked_sum(part) == imageproc.roi_sum(full, *bounds)


def test_masked_stats_match_the_separate_statistics():
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.uint16, np.uint32, np.float32):
        image = rng.integers(0, 1000, (60, 70)).astype(dtype)
        if dtype != np.float32:
            image[5, :] = np.iinfo(dtype).max
        assert imageproc.masked_stats(image) == (imageproc.masked_sum(image),
                                                 imageproc.masked_max(image))
    everything_masked = np.full((4, 4), 65535, dtype=np.uint16)
    assert imageproc.masked_stats(everything_masked) == (0, 0)


@pytest.mark.parametrize("kind", ["bslz4", "lz4", "raw", "v1-bslz4", "v1-lz4"])
def test_hdf5raw_files_hold_the_frames_sent(tmp_path, kind):
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 500, (37, 51)).astype(np.uint32) for _ in range(7)]
    writer = Hdf5RawWriter(3)
    master = writer.start(str(tmp_path / "scan_1"), 1, nimages=7)
    for number, frame in enumerate(frames):
        if kind == "bslz4":
            enc = Encoded(compress(frame, "bslz4"), "bslz4", frame.shape, frame.dtype, 4, v2=True)
        elif kind == "lz4":
            enc = Encoded(compress(frame, "lz4"), "lz4", frame.shape, frame.dtype, 0, v2=True)
        elif kind == "raw":
            enc = Encoded(frame.tobytes(), "raw", frame.shape, frame.dtype, v2=True)
        elif kind == "v1-bslz4":
            enc = Encoded(compress(frame, "bslz4"), "bs32-lz4<", frame.shape, frame.dtype)
        else:
            enc = Encoded(compress(frame, "lz4-raw"), "lz4<", frame.shape, frame.dtype)
        writer.write(number, {"threshold_1": enc})
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scan_1_data_000001.h5", "scan_1_data_000002.h5", "scan_1_data_000003.h5",
        "scan_1_master.h5"]
    assert np.array_equal(read_frames(master), np.stack(frames))
    import h5py
    with h5py.File(tmp_path / "scan_1_data_000003.h5", "r") as handle:
        data = handle["/entry/data/data"]
        assert data.shape == (1, 37, 51)
        assert (data.attrs["image_nr_low"], data.attrs["image_nr_high"]) == (7, 7)


def test_hdf5raw_keeps_channels_apart_and_leaves_lost_frames_empty(tmp_path):
    a = np.full((8, 9), 3, dtype=np.uint16)
    b = np.full((8, 9), 5, dtype=np.uint16)
    writer = Hdf5RawWriter(10)
    master = writer.start(str(tmp_path / "multi"), 2)
    for number in (0, 2):            # frame 1 lost
        writer.write(number, {
            "threshold_1": Encoded(compress(a, "bslz4"), "bslz4", a.shape, a.dtype, 2, v2=True),
            "threshold_2": Encoded(compress(b, "bslz4"), "bslz4", b.shape, b.dtype, 2, v2=True)})
    writer.close()
    one, two = read_frames(master, "threshold_1"), read_frames(master, "threshold_2")
    assert one.shape == (3, 8, 9) and np.all(one[0] == 3) and np.all(one[1] == 0)
    assert np.all(two[2] == 5)


def test_bounded_saving_queue_refuses_and_counts_under_a_slow_disk():
    release = threading.Event()
    saver = TiffSaver(depth=4, max_bytes=1 << 30)
    refused = 0
    try:
        for _ in range(50):
            if not saver.submit(lambda: release.wait(5), nbytes=1 << 20):
                refused += 1
        # one job running, four queued, the rest refused: memory stays bounded
        assert saver.pending() <= 5
        assert refused >= 45
    finally:
        release.set()
        assert saver.wait_idle(10)
        saver.close()
    assert saver.saved == 50 - refused


def test_bounded_saving_queue_refuses_by_bytes():
    release = threading.Event()
    saver = TiffSaver(depth=100, max_bytes=3 << 20)
    try:
        accepted = sum(saver.submit(lambda: release.wait(5), nbytes=1 << 20) for _ in range(20))
        assert accepted <= 4
    finally:
        release.set()
        saver.close()


def test_stream_handler_hdf5raw_save_mode_drops_and_counts_when_saving_is_behind(tmp_path):
    """The handler's HDF5RAW autosave goes through the bounded queue."""
    from types import SimpleNamespace

    from eiger_server.stream.handler import StreamHandler
    from eiger_server.formats.stream_events import ImageMessage

    from eiger_server.options import ServerOptions
    detector = SimpleNamespace(config_value=lambda *a, **k: 5)
    settings = SimpleNamespace(data_directory=str(tmp_path), prefix="s$id")
    handler = StreamHandler(detector, SimpleNamespace(host="127.0.0.1"), settings,
                            ServerOptions(queue_depth=2, stream_workers=1),
                            acq_mode=lambda: "SINGLE")
    handler.start_pipeline()
    try:
        assert handler.set_save_mode("hdf5raw") == "HDF5RAW"
        assert handler.images_per_file == 5
        handler.set_autosave("1")
        gate = threading.Event()
        handler.saver.submit(lambda: gate.wait(5))      # a stalled disk
        image = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
        blob = compress(image, "bslz4")
        for frame in range(6):
            event = ImageMessage(4, frame, {"threshold_1": Encoded(
                blob, "bslz4", image.shape, image.dtype, 2, v2=True)})
            handler.feed(event)
        assert handler.unsaved >= 3
        gate.set()
        deadline = time.monotonic() + 10
        while handler.saver.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        handler.raw_writer.close()
        master = tmp_path / "s4_master.h5"
        saved = read_frames(str(master))
        kept = [i for i in range(saved.shape[0]) if saved[i].any()]
        assert len(kept) == 6 - handler.unsaved
        for i in kept:
            assert np.array_equal(saved[i], image)
        with pytest.raises(Exception):
            handler.set_save_mode("JPEG")
    finally:
        handler.close()
