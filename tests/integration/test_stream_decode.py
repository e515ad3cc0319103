"""The stream data path without the fake DCU: decoders on the real DECTRIS
captures, stream V1/V2 parsing, the receiver over real ZeroMQ, image
processing against numpy, and TIFF files read back with tifffile."""
from __future__ import annotations

import json
import logging
import os
import queue
import struct
import threading
import time
from pathlib import Path

import bitshuffle
import cbor2
import lz4.block
import numpy as np
import pytest
import tifffile
import zmq
from dectris import compression as dectris_compression

from eiger_server.stream import imageproc
from eiger_server.formats import stream_v1
from eiger_server.formats import stream_v2
from eiger_server.storage import tiff
from eiger_server.formats.cbor import typed_array_dtype
from eiger_server.formats.decode import DecodeError, decode, decode_v2
from eiger_server.errors import DataError
from eiger_server.stream.receiver import StreamReceiver
from eiger_server.formats.stream_events import ImageMessage, SeriesEnd, SeriesHeader, StreamErrorEvent
from helpers import SHARED, StubController, require_shared

CAPTURES = SHARED / "data" / "dectris-stream2"
FOLDERS = {"r500k_bm_bslz4_8bit": np.uint8, "r500k_bm_bslz4_16bit": np.uint16,
           "r500k_bm_bslz4_32bit": np.uint32, "r500k_bm_lz4_8bit": np.uint8}
CHANNELS = ["threshold_1", "threshold_2", "difference"]


def capture(folder: str) -> Path:
    """One capture folder; skips when shared/ is not beside the clone, but a
    present capture directory must hold the folder."""
    require_shared(CAPTURES)
    path = CAPTURES / folder
    assert path.is_dir(), f"{path} is missing from the captures"
    return path


def test_all_capture_folders_are_present():
    require_shared(CAPTURES)
    assert sorted(p.name for p in CAPTURES.iterdir() if p.is_dir()) == sorted(FOLDERS)


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- independent reference: plain cbor2 + dectris.compression ----------------------
def reference_arrays(path: Path, dtype) -> dict:
    """Decode a capture without any project code."""
    message = cbor2.loads(path.read_bytes(), tag_hook=lambda *a: next(
        x for x in a if isinstance(x, cbor2.CBORTag)))
    if isinstance(message, cbor2.CBORTag):
        message = message.value
    out = {}
    for name, tag40 in message["data"].items():
        (height, width), typed = tag40.value
        algorithm, elem_size, blob = typed.value.value
        raw = dectris_compression.decompress(blob, algorithm, elem_size=elem_size) \
            if algorithm == "bslz4" else dectris_compression.decompress(blob, algorithm)
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(height, width)
    return out


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_real_captures_decode_like_dectris_compression(folder):
    dtype = FOLDERS[folder]
    files = sorted(capture(folder).glob("*.cbor"))
    assert len(files) == 11
    for number, path in enumerate(files[:10]):
        event = stream_v2.parse([path.read_bytes()])
        assert isinstance(event, ImageMessage), event
        assert (event.series, event.frame) == (1, number)
        assert list(event.channels) == CHANNELS
        expected = reference_arrays(path, dtype)
        for name, encoded in event.channels.items():
            image = encoded.decode(f"{path.name} {name}")
            assert image.dtype == dtype and image.shape == (514, 1030)
            np.testing.assert_array_equal(image, expected[name])
    end = stream_v2.parse([files[10].read_bytes()])
    assert isinstance(end, SeriesEnd) and end.series == 1


def test_capture_times_and_user_data():
    event = stream_v2.parse([(capture("r500k_bm_bslz4_16bit") / "000002.cbor").read_bytes()])
    assert event.start_time == pytest.approx(0.02)
    assert event.real_time == pytest.approx(999995 / 50000000)
    assert event.unique_id


# -- V1 encodings ---------------------------------------------------------------------
def bslz4_blob(array: np.ndarray) -> bytes:
    body = bitshuffle.compress_lz4(array.reshape(-1), 8192 // array.dtype.itemsize)
    return struct.pack(">QI", array.nbytes, 8192) + body.tobytes()


def test_typed_array_tags():
    assert typed_array_dtype(64) == np.uint8
    assert typed_array_dtype(69) == np.dtype("<u2")
    assert typed_array_dtype(70) == np.dtype("<u4")
    assert typed_array_dtype(65) == np.dtype(">u2")
    assert typed_array_dtype(40) is None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_v1_encodings_round_trip(dtype):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 50, size=(37, 61)).astype(dtype)
    image[5, 7] = np.iinfo(dtype).max
    bits = np.dtype(dtype).itemsize * 8
    blobs = {"<": image.tobytes(),
             "lz4<": lz4.block.compress(image.tobytes(), store_size=False),
             f"bs{bits}-lz4<": bslz4_blob(image)}
    for encoding, blob in blobs.items():
        out = decode(memoryview(blob), encoding, (37, 61), np.dtype(dtype).name)
        np.testing.assert_array_equal(out, image)
        assert out.dtype == dtype


def test_decode_errors_name_frame_and_encoding():
    image = np.arange(64 * 32, dtype=np.uint16).reshape(32, 64)
    good = bslz4_blob(image)
    with pytest.raises(DecodeError, match=r"frame 3.*bs16-lz4<"):
        decode(good[: len(good) // 2], "bs16-lz4<", (32, 64), "uint16", what="frame 3")
    with pytest.raises(DecodeError, match="lz4<"):
        decode(b"\xff" * 40, "lz4<", (32, 64), "uint16")
    with pytest.raises(DecodeError, match="holds"):
        decode(image.tobytes()[:-2], "<", (32, 64), "uint16")
    with pytest.raises(DecodeError, match="unknown stream encoding 'zstd<'"):
        decode(good, "zstd<", (32, 64), "uint16")
    with pytest.raises(DecodeError, match="big-endian"):
        decode(good, "bs16-lz4>", (32, 64), "uint16")
    with pytest.raises(DecodeError, match="unknown compression 'bogus'"):
        decode_v2(good, "bogus", 2, (32, 64), "uint16")
    # lz4 that decompresses to too few bytes is caught by the size check
    short = lz4.block.compress(image.tobytes()[:100], store_size=False)
    with pytest.raises(DecodeError, match="truncated or corrupt"):
        decode(short, "lz4<", (32, 64), "uint16")


def test_v2_plain_and_big_endian_typed_arrays():
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    message = {"type": "image", "series_id": 5, "image_id": 0, "data": {
        "threshold_1": cbor2.CBORTag(40, [[3, 4], cbor2.CBORTag(69, image.tobytes())]),
        "threshold_2": cbor2.CBORTag(40, [[3, 4], cbor2.CBORTag(65, image.byteswap().tobytes())]),
    }}
    event = stream_v2.parse([cbor2.dumps(cbor2.CBORTag(55799, message))])
    assert isinstance(event, ImageMessage)
    for encoded in event.channels.values():
        np.testing.assert_array_equal(encoded.decode(), image)


def test_v2_tag_hook_both_calling_conventions():
    tag = cbor2.CBORTag(56500, ["lz4", 0, b"xyz"])
    new_style = stream_v2.tag_hook(tag, False)
    old_style = stream_v2.tag_hook(object(), tag)
    assert new_style == old_style
    assert new_style.algorithm == "lz4" and new_style.data == b"xyz"


def test_v2_garbage_becomes_error_event():
    for parts in ([b"\xff\x00garbage"], [cbor2.dumps({"type": "image", "series_id": 1,
                                                       "image_id": 2, "data": {"x": 5}})],
                  [cbor2.dumps([1, 2])], [b"a", b"b"]):
        event = stream_v2.parse(parts)
        assert isinstance(event, StreamErrorEvent), parts
    bad = stream_v2.parse([cbor2.dumps({"type": "image", "series_id": 1, "image_id": 2,
                                       "data": {"x": 5}})])
    assert (bad.series, bad.frame) == (1, 2)


# -- V1 messages ------------------------------------------------------------------------
def v1_header(series, detail="basic", config=None, appendix=None):
    parts = [json.dumps({"htype": "dheader-1.0", "series": series,
                         "header_detail": detail}).encode()]
    if detail in ("basic", "all"):
        parts.append(json.dumps(config or {"nimages": 3, "ntrigger": 1,
                                           "count_time": 0.1}).encode())
    if appendix is not None:
        parts.append(appendix.encode())
    return parts


def v1_image(series, frame, image, encoding="bs16-lz4<", appendix=None):
    if encoding == "<":
        blob = image.tobytes()
    elif encoding == "lz4<":
        blob = lz4.block.compress(image.tobytes(), store_size=False)
    else:
        blob = bslz4_blob(image)
    parts = [json.dumps({"htype": "dimage-1.0", "series": series, "frame": frame,
                         "hash": ""}).encode(),
             json.dumps({"htype": "dimage_d-1.0", "shape": [image.shape[1], image.shape[0]],
                         "type": image.dtype.name, "encoding": encoding,
                         "size": len(blob)}).encode(),
             blob,
             json.dumps({"htype": "dconfig-1.0", "start_time": 1000, "stop_time": 2000,
                         "real_time": 1000}).encode()]
    if appendix is not None:
        parts.append(appendix.encode())
    return parts


def v1_end(series):
    return [json.dumps({"htype": "dseries_end-1.0", "series": series}).encode()]


def test_v1_parse_messages():
    header = stream_v1.parse(v1_header(4, appendix='{"user": 1}'))
    assert isinstance(header, SeriesHeader)
    assert header.series == 4 and header.nimages == 3 and header.appendix == {"user": 1}
    assert header.config["count_time"] == 0.1
    image = np.arange(20, dtype=np.uint16).reshape(4, 5)
    event = stream_v1.parse(v1_image(4, 2, image, appendix="hello"))
    assert isinstance(event, ImageMessage)
    assert (event.series, event.frame, event.appendix) == (4, 2, "hello")
    assert event.start_time == pytest.approx(1e-6)
    np.testing.assert_array_equal(event.channels["threshold_1"].decode(), image)
    assert isinstance(stream_v1.parse(v1_end(4)), SeriesEnd)
    for parts in ([b"not json"], [b'{"htype": "dsomething"}'], [],
                  [json.dumps({"htype": "dimage-1.0", "series": 1, "frame": 0}).encode()]):
        assert isinstance(stream_v1.parse(parts), StreamErrorEvent)
    all_detail = stream_v1.parse(v1_header(5, "all") + [b"{}", b"\0" * 8] * 3 + [b"app"])
    assert all_detail.appendix == "app"


# -- the receiver over real ZeroMQ ---------------------------------------------------------
@pytest.fixture
def push():
    context = zmq.Context.instance()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(0)


def start_receiver(endpoint, version):
    events: "queue.Queue" = queue.Queue()
    receiver = StreamReceiver(endpoint, version, events.put, poll_ms=20)
    receiver.start()
    return receiver, events


def drain(events, count, timeout=5.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            out.append(events.get(timeout=0.05))
        except queue.Empty:
            pass
    return out


def test_receiver_v2_real_captures(push):
    sock, endpoint = push
    receiver, events = start_receiver(endpoint, "V2")
    try:
        folder = capture("r500k_bm_bslz4_32bit")
        files = sorted(folder.glob("*.cbor"))
        start = cbor2.dumps(cbor2.CBORTag(55799, {"type": "start", "series_id": 1,
                                                  "channels": CHANNELS,
                                                  "number_of_images": 10}))
        sock.send(start)
        for path in files:
            sock.send(path.read_bytes())          # bytes untouched
        got = drain(events, 12)
        assert isinstance(got[0], SeriesHeader) and got[0].channels == CHANNELS
        images = [e for e in got if isinstance(e, ImageMessage)]
        assert [e.frame for e in images] == list(range(10))
        assert isinstance(got[-1], SeriesEnd)
        for path, event in zip(files, images):
            expected = reference_arrays(path, np.uint32)
            for name in CHANNELS:
                np.testing.assert_array_equal(event.channels[name].decode(), expected[name])
        assert receiver.lost == 0 and receiver.images == 10
    finally:
        receiver.stop()
    assert not receiver.running


def test_receiver_counts_lost_duplicate_stale_and_logs(push, caplog):
    sock, endpoint = push
    receiver, events = start_receiver(endpoint, "V1")
    image = np.ones((8, 16), dtype=np.uint16)
    caplog.set_level(logging.WARNING)
    try:
        for parts in (v1_header(3), v1_image(3, 0, image), v1_end(3), v1_header(4),
                      v1_image(4, 0, image), v1_image(4, 1, image), v1_image(4, 3, image),
                      v1_image(4, 3, image), v1_image(3, 5, image), [b"junk"],
                      v1_image(4, 4, image)):
            sock.send_multipart(parts)
        got = drain(events, 9)
        frames = [(e.series, e.frame) for e in got if isinstance(e, ImageMessage)]
        assert frames == [(3, 0), (4, 0), (4, 1), (4, 3), (4, 4)]
        assert receiver.lost == 1
        assert receiver.duplicates == 1
        assert receiver.stale == 1
        assert receiver.errors == 1 and "not understood" in receiver.last_errors[-1]
        assert "frame 2 of series 4 lost" in caplog.text
    finally:
        receiver.stop()


def test_receiver_follows_restarted_dcu_series_numbers(push):
    """A DCU restart starts counting series from 1 again: a header always wins."""
    sock, endpoint = push
    receiver, events = start_receiver(endpoint, "V1")
    image = np.zeros((4, 4), dtype=np.uint8)
    try:
        for parts in (v1_header(1), v1_image(1, 0, image), v1_end(1),
                      v1_header(1), v1_image(1, 0, image), v1_image(1, 1, image)):
            sock.send_multipart(parts)
        got = drain(events, 6)
        assert sum(isinstance(e, ImageMessage) for e in got) == 3
        assert receiver.lost == receiver.duplicates == receiver.stale == 0
    finally:
        receiver.stop()


def test_receiver_stop_is_prompt_without_a_peer():
    receiver = StreamReceiver("tcp://127.0.0.1:1", "V2", lambda e: None, poll_ms=50)
    before = set(threading.enumerate())
    receiver.start()
    threads = [t for t in threading.enumerate()
               if t not in before and t.name == "stream-v2-receiver"]
    assert threads, "the receiver thread did not start"
    receiver.stop()
    # stop() waits a bounded time: the thread itself must have ended, not been left behind
    assert not any(t.is_alive() for t in threads)


# -- image processing vs numpy ---------------------------------------------------------------
def test_orientation_rotation_then_flips():
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert np.array_equal(imageproc.orient(image, 90), np.rot90(image, -1))
    assert np.array_equal(imageproc.orient(image, 180), image[::-1, ::-1])
    assert np.array_equal(imageproc.orient(image, 270), np.rot90(image, 1))
    assert np.array_equal(imageproc.orient(image, 90, flipv=True), np.rot90(image, -1)[::-1])
    assert np.array_equal(imageproc.orient(image, 0, fliph=True), image[:, ::-1])
    # clockwise: the top-left pixel goes to the top-right corner
    assert imageproc.orient(image, 90)[0, -1] == image[0, 0]
    with pytest.raises(DataError):
        imageproc.orient(image, 45)


def test_filters_keep_masked_pixels():
    image = np.array([[1, 5, 10, 65535]], dtype=np.uint16)
    assert imageproc.apply_filters(image, low=2).tolist() == [[0, 5, 10, 65535]]
    assert imageproc.apply_filters(image, high=6).tolist() == [[1, 5, 0, 65535]]
    assert imageproc.apply_filters(image) is image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_masked_statistics_match_numpy(dtype):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 100, size=(50, 70)).astype(dtype)
    top = np.iinfo(dtype).max
    image[3, 4] = image[10, 20] = top
    valid = image != top
    assert imageproc.masked_sum(image) == int(image[valid].sum(dtype=np.uint64))
    assert imageproc.masked_max(image) == int(image[valid].max())
    sub = image[5:21, 2:41]
    assert imageproc.roi_sum(image, 5, 20, 2, 40) == int(sub[sub != top].sum(dtype=np.uint64))
    # ends past the edge are clipped like the reference server's numpy slices
    assert imageproc.roi_sum(image, 0, 50, 0, 500) == imageproc.roi_sum(image, 0, 49, 0, 69)
    with pytest.raises(DataError, match="outside"):
        imageproc.roi_sum(image, 50, 60, 0, 5)


@pytest.mark.parametrize("dtype,result", [(np.uint8, np.uint32), (np.uint16, np.uint32),
                                          (np.uint32, np.uint64)])
def test_accumulation_sums_and_keeps_masks(dtype, result):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 200, size=(6, 9)).astype(dtype) for _ in range(4)]
    top = np.iinfo(dtype).max
    frames[2][1, 1] = top
    acc = imageproc.Accumulator(4)
    done = [acc.add({"threshold_1": f}, i) for i, f in enumerate(frames)]
    assert done == [False, False, False, True]
    out = acc.result()["threshold_1"]
    expected = np.sum([f.astype(result) for f in frames], axis=0)
    expected[1, 1] = np.iinfo(result).max
    assert out.dtype == result
    np.testing.assert_array_equal(out, expected)


# -- TIFF files --------------------------------------------------------------------------------
def test_save_tiff_metadata_unique_names_and_suffix(tmp_path):
    image = np.arange(30, dtype=np.uint32).reshape(5, 6)
    meta = {"series": 3, "frame": 7, "count_time": 0.5, "energy": 8041.0,
            "thresholds": {"threshold_1": 4020.5}}
    first = tiff.save_tiff(str(tmp_path / "img"), image, meta)
    assert first == str(tmp_path / "img.tif")
    np.testing.assert_array_equal(tifffile.imread(first), image)
    assert tiff.read_metadata(first) == meta
    second = tiff.save_tiff(str(tmp_path / "img.tif"), image + 1, meta, overwrite=False)
    third = tiff.save_tiff(str(tmp_path / "img.tif"), image + 2, meta, overwrite=False)
    assert (os.path.basename(second), os.path.basename(third)) == ("img-img001.tif",
                                                                   "img-img002.tif")
    np.testing.assert_array_equal(tifffile.imread(first), image)
    tiff.save_tiff(first, image + 5, meta, overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(first), image + 5)


def test_failed_save_leaves_no_file(tmp_path):
    bad = np.array([[object()]], dtype=object)
    with pytest.raises(Exception):
        tiff.save_tiff(str(tmp_path / "broken.tif"), bad, {})
    assert os.listdir(tmp_path) == []


def test_save_disk_error_says_what_failed(tmp_path):
    blocker = tmp_path / "plainfile"
    blocker.write_text("x")
    with pytest.raises(DataError, match="failed"):
        tiff.save_tiff(str(blocker / "x.tif"), np.zeros((2, 2), np.uint8), {})


def test_tiff_names():
    assert tiff.tiff_name("/d", "scan_$id", 12) == "/d/scan_12.tif"
    assert tiff.tiff_name("/d", "p", 1, 7, "threshold_2") == "/d/p_0007_threshold_2.tif"
    assert tiff.tiff_name("/d", "/tmp/x.tif", 1) == "/tmp/x.tif"


def test_saver_refuses_when_full_and_runs_in_order():
    saver = tiff.TiffSaver(depth=2)
    gate = __import__("threading").Event()
    order = []
    try:
        assert saver.submit(lambda: (gate.wait(5), order.append(1)))
        wait_for(lambda: saver.pending() == 1 and not saver.queued(), what="first job running")
        assert saver.submit(lambda: order.append(2))
        assert saver.submit(lambda: order.append(3))
        assert not saver.submit(lambda: order.append(4))      # queue full: refused
        gate.set()
        assert saver.wait_idle(5)
        assert order == [1, 2, 3]
    finally:
        saver.close()


# -- the handler in-process, with the real captures pushed over ZeroMQ --------------------------
def test_handler_v2_three_channels_autosave_and_accumulation(push, tmp_path):
    sock, endpoint = push
    port = int(endpoint.rsplit(":", 1)[1])
    ctrl = StubController(tmp_path, port, prefix="eiger_$id",
                          config={("stream", "mode"): "enabled",
                                  ("stream", "format"): "cbor",
                                  ("detector", "bit_depth_image"): 16,
                                  ("detector", "count_time"): 0.02})
    handler = ctrl.stream_handler()
    try:
        handler.set_autosave("1")
        handler.set_prefix("cap_$id")
        handler.set_autoindex("1")
        handler.prepare_series()
        folder = capture("r500k_bm_bslz4_16bit")
        files = sorted(folder.glob("*.cbor"))
        expected = [reference_arrays(p, np.uint16) for p in files[:10]]
        handler.begin_count(4)
        for path in files[:4]:
            sock.send(path.read_bytes())
        assert handler.wait_count(5)
        assert handler.get_images_collected() == 4 and handler.get_is_waiting_data() == 0
        assert handler.wait_saved(10)
        for index in range(4):
            for name in CHANNELS:
                path = tmp_path / f"cap_1_{index:04d}_{name}.tif"
                np.testing.assert_array_equal(tifffile.imread(path), expected[index][name])
        meta = tiff.read_metadata(str(tmp_path / "cap_1_0003_difference.tif"))
        assert meta["series"] == 1 and meta["frame"] == 3 and meta["channel"] == "difference"
        assert meta["count_time"] == 0.02
        assert handler.get_latest_file().endswith("cap_1_0003_threshold_1.tif")
        first = expected[3]["threshold_1"]
        valid = first != 65535
        assert handler.get_sum() == int(first[valid].sum(dtype=np.uint64))
        assert handler.get_maxval() == int(first[valid].max())
        assert handler.get_roisum("10", "20", "100", "200") == int(
            first[10:101, 20:201][valid[10:101, 20:201]].sum(dtype=np.uint64))
        typename, npoints, data = handler.read(0, 513, 0, 1029)
        assert (typename, npoints) == ("ushort", 514 * 1030)
        np.testing.assert_array_equal(np.frombuffer(data, "<u2").reshape(514, 1030), first)

        # accumulation of the next four images: one result image, their sum
        handler.set_autosave("0")
        handler.begin_count(4, accumulate=True)
        assert handler.result_dtype() == np.uint32
        for path in files[4:8]:
            sock.send(path.read_bytes())
        assert handler.wait_count(5)
        result = handler.latest()
        assert result.nframes == 4
        for name in CHANNELS:
            stack = np.array([expected[i][name] for i in range(4, 8)])
            total = stack.astype(np.uint32).sum(axis=0, dtype=np.uint32)
            total[(stack == 65535).any(axis=0)] = np.iinfo(np.uint32).max
            np.testing.assert_array_equal(result.channels[name], total)
        assert handler.get_dropped() == 0
    finally:
        handler.close()


def test_handler_roi_errors_and_read_not_ready(tmp_path):
    ctrl = StubController(tmp_path, 1, {("stream", "mode"): "disabled"}, prefix="eiger_$id")
    handler = ctrl.stream_handler()
    try:
        with pytest.raises(DataError, match="not ready"):
            handler.read(0, 1, 0, 1)
        handler.set_roi("a", 0, 1, 0, 1)
        with pytest.raises(DataError, match="No acquisition done"):
            handler.get_roi("a")
        with pytest.raises(DataError, match="No acquisition done"):
            handler.get_sum()
        with pytest.raises(DataError, match="outside the data directory"):
            handler.do_save("/etc/passwd")
    finally:
        handler.close()


@pytest.mark.parametrize("folder", ["r500k_bm_bslz4_8bit", "r500k_bm_bslz4_16bit",
                                    "r500k_bm_bslz4_32bit"])
def test_real_captures_fused_kernels_equal_decode_then_numpy(folder):
    """The fused bitshuffle/LZ4 kernels on a real EIGER2 500K's frames: the sum
    of 10 frames per channel, their statistics and their decode equal
    dectris.compression + numpy (masked pixels: the type's maximum)."""
    from eiger_server.stream import bslz4_kernels, imageproc, kernels
    dtype = np.dtype(FOLDERS[folder])
    top = np.iinfo(dtype).max
    files = sorted(capture(folder).glob("*.cbor"))[:10]
    accumulators = {name: imageproc.Accumulator(len(files)) for name in CHANNELS}
    expected = {name: np.zeros((514, 1030), imageproc.accumulated_dtype(dtype))
                for name in CHANNELS}
    masked = {name: np.zeros((514, 1030), bool) for name in CHANNELS}
    for number, path in enumerate(files):
        event = stream_v2.parse([path.read_bytes()])
        reference = reference_arrays(path, dtype)
        for name, encoded in event.channels.items():
            image = reference[name]
            assert bslz4_kernels.bslz4_stats(encoded.data, dtype) == kernels.stats(image)
            out = np.empty_like(image)
            np.testing.assert_array_equal(bslz4_kernels.bslz4_decode_into(encoded.data, out),
                                          image)
            accumulators[name].add_encoded({name: encoded}, number, path.name)
            expected[name] += image
            masked[name] |= image == top
    for name in CHANNELS:
        want = expected[name]
        want[masked[name]] = np.iinfo(want.dtype).max
        np.testing.assert_array_equal(accumulators[name].result()[name], want)
        assert want.sum(dtype=np.float64) > 0
