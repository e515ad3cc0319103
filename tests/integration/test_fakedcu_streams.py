"""Fake DCU data streams: encoders, V1/V2 ZeroMQ adapters, replay sources.

The adapters are driven through their FrameSink methods and received on a
real zmq PULL socket; everything received is decoded independently (json,
cbor2, dectris.compression, lz4.block) and compared with what was sent.
"""
from __future__ import annotations

import hashlib
import json
import struct
import threading
from pathlib import Path
from typing import Any, Dict, List

import cbor2
import dectris.compression
import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest
import zmq
from cbor2 import CBORTag

from eiger_server.formats.compression import compress, lz4_hdf5_single_block, v1_encoding
from eiger_server.fakedcu.interfaces import Frame, SeriesEnd, SeriesStart
from eiger_server.fakedcu.sources.replay import (CborReplaySource, Hdf5ReplaySource,
                                         PrecompressedCache, push_capture)
from eiger_server.fakedcu.adapters.streams import StreamV1Adapter, StreamV2Adapter

from helpers import SHARED, require_shared

CAPTURES = SHARED / "data" / "dectris-stream2"
CAPTURE_NAMES = ["r500k_bm_bslz4_16bit", "r500k_bm_bslz4_32bit", "r500k_bm_bslz4_8bit",
                 "r500k_bm_lz4_8bit"]


def capture_dir(name: str) -> Path:
    """One capture folder; skips when shared/ is not beside the clone, but a
    present capture directory must hold the folder."""
    require_shared(CAPTURES)
    directory = CAPTURES / name
    assert directory.is_dir(), f"{directory} is missing from the captures"
    return directory
DTYPES = [np.uint8, np.uint16, np.uint32]
TIMEOUT_MS = 5000


# ------------------------------------------------------------------ helpers
class FakeModel:
    """Just enough of the model: config_value for the stream subsystem."""

    def __init__(self, **stream: Any) -> None:
        self.stream = stream

    def config_value(self, subsystem: str, name: str) -> Any:
        assert subsystem == "stream"
        if name not in self.stream:
            raise KeyError(f"stream/config/{name} does not exist")
        return self.stream[name]


def image(seed: int, dtype: Any, height: int = 37, width: int = 53) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.poisson(3.0, (height, width)).astype(dtype)
    a[0, :5] = np.iinfo(dtype).max        # masked pixels hold the type's maximum
    return a


def series_start(dtype: Any = np.uint16, compression: str = "bslz4", *, series_id: int = 7,
                 channels: List[str] = None, height: int = 37, width: int = 53,
                 nimages: int = 3, ntrigger: int = 1, api: str = "1.8.0") -> SeriesStart:
    channels = channels or ["threshold_1"]
    mask = np.zeros((height, width), np.uint32)
    mask[1, 2] = 1
    mask[3, 4] = 16
    flat = np.linspace(0.9, 1.1, height * width, dtype=np.float32).reshape(height, width)
    table = np.arange(20, dtype=np.float32).reshape(2, 10)
    config = {"count_time": 0.01, "frame_time": 0.0105, "beam_center_x": 20.5,
              "beam_center_y": 18.25, "detector_distance": 0.12, "incident_energy": 12400.0,
              "wavelength": 0.99987, "threshold/1/energy": 6200.0,
              "threshold/2/energy": 9000.0, "nimages": nimages, "ntrigger": ntrigger,
              "description": "Fake EIGER2 X", "pixel_mask": mask, "omega_start": 10.0,
              "omega_increment": 0.1, "bit_depth_image": np.uint8(np.dtype(dtype).itemsize * 8)}
    return SeriesStart(series_id=series_id, series_unique_id=f"unique-{series_id}",
                       config=config, channels=channels, width=width, height=height,
                       dtype=np.dtype(dtype), nimages=nimages, ntrigger=ntrigger,
                       compression=compression, pixel_mask=mask, flatfield=flat,
                       countrate_table=table, api=api)


def make_frame(start: SeriesStart, index: int, **kw: Any) -> Frame:
    data = {ch: image(100 * index + k, start.dtype, start.height, start.width)
            for k, ch in enumerate(start.channels)}
    return Frame(series_id=start.series_id, image_id=index, data=data,
                 start_time_ns=index * 10_500_000, stop_time_ns=index * 10_500_000 + 10_000_000,
                 real_time_ns=10_000_000, **kw)


def run_series(adapter: Any, start: SeriesStart, n: int = None) -> List[Frame]:
    n = start.nimages * start.ntrigger if n is None else n
    adapter.series_start(start)
    frames = [make_frame(start, i) for i in range(n)]
    for f in frames:
        adapter.frame(f)
    adapter.series_end(SeriesEnd(start.series_id, start.series_unique_id, n))
    return frames


def recv(pull: zmq.Socket, timeout_ms: int = TIMEOUT_MS) -> List[bytes]:
    assert pull.poll(timeout_ms), "no message arrived in time"
    return pull.recv_multipart()


def recv_all(pull: zmq.Socket, count: int) -> List[List[bytes]]:
    messages = [recv(pull) for _ in range(count)]
    assert not pull.poll(150), "more messages than expected"
    return messages


def decode_v1_blob(header: Dict[str, Any], blob: bytes) -> np.ndarray:
    width, height = header["shape"]
    dtype = np.dtype(header["type"])
    encoding = header["encoding"]
    nbytes = width * height * dtype.itemsize
    if encoding == "<":
        raw = blob
    elif encoding == "lz4<":
        raw = lz4.block.decompress(blob, uncompressed_size=nbytes)
    elif encoding == f"bs{dtype.itemsize * 8}-lz4<":
        raw = dectris.compression.decompress(blob, "bslz4", elem_size=dtype.itemsize)
    else:
        raise AssertionError(f"unexpected encoding {encoding}")
    assert len(raw) == nbytes
    return np.frombuffer(raw, dtype).reshape(height, width)


V2_DTYPES = {64: "|u1", 69: "<u2", 70: "<u4", 85: "<f4"}


def decode_v2_array(value: CBORTag) -> np.ndarray:
    assert isinstance(value, CBORTag) and value.tag == 40
    (height, width), typed = value.value
    dtype = np.dtype(V2_DTYPES[typed.tag])
    payload = typed.value
    if isinstance(payload, CBORTag):
        assert payload.tag == 56500
        algorithm, elem_size, blob = payload.value
        if algorithm == "bslz4":
            assert elem_size == dtype.itemsize
            raw = dectris.compression.decompress(blob, "bslz4", elem_size=elem_size)
        else:
            assert (algorithm, elem_size) == ("lz4", 0)
            raw = dectris.compression.decompress(blob, "lz4")
    else:
        raw = payload
    return np.frombuffer(raw, dtype).reshape(height, width)


def decode_v2(blob: bytes) -> Dict[str, Any]:
    assert blob[:3] == b"\xd9\xd9\xf7", "V2 messages carry the self-describe tag"
    msg = cbor2.loads(blob)
    assert next(iter(msg)) == "type", "type must be the first key"
    return msg


@pytest.fixture
def pull():
    ctx = zmq.Context.instance()
    sockets = []

    def connect(endpoint: str) -> zmq.Socket:
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        sockets.append(s)
        return s

    yield connect
    for s in sockets:
        s.close(0)


@pytest.fixture
def adapters():
    made = []

    def make(cls: Any, *, model: Any = None, **kw: Any) -> Any:
        a = cls(model if model is not None else FakeModel(), **kw)
        a.start()
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def v1_model(**kw: Any) -> FakeModel:
    cfg = dict(mode="enabled", format="legacy", header_detail="basic",
               header_appendix="", image_appendix="")
    cfg.update(kw)
    return FakeModel(**cfg)


def v2_model(**kw: Any) -> FakeModel:
    return v1_model(format="cbor", **kw)


# ----------------------------------------------------------------- encoders
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 53), (514, 1030), (1, 3)])
def test_encoders_round_trip(dtype: Any, shape: Any) -> None:
    a = image(1, dtype, *shape)
    noise = np.random.default_rng(2).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    for arr in (a, noise):
        for method in ("bslz4", "lz4"):
            blob = compress(arr, method)
            raw = dectris.compression.decompress(blob, method, elem_size=arr.itemsize)
            assert np.array_equal(np.frombuffer(raw, dtype).reshape(shape), arr), method
        raw = lz4.block.decompress(compress(arr, "lz4-raw"), uncompressed_size=arr.nbytes)
        assert np.array_equal(np.frombuffer(raw, dtype).reshape(shape), arr)
        assert compress(arr, "none") == arr.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_bslz4_header_is_hdf5_filter_framing(dtype: Any) -> None:
    a = image(3, dtype, 514, 1030)
    blob = compress(a, "bslz4")
    total, block = struct.unpack(">QI", blob[:12])
    assert (total, block) == (a.nbytes, 8192)
    (first,) = struct.unpack(">I", blob[12:16])
    assert 0 < first < len(blob)


def test_lz4_hdf5_framing_and_single_block_view() -> None:
    a = image(4, np.uint16, 100, 100)
    blob = compress(a, "lz4")
    total, block, length = struct.unpack(">QII", blob[:16])
    assert total == block == a.nbytes and length == len(blob) - 16
    raw_block = lz4_hdf5_single_block(blob)
    assert bytes(raw_block) == blob[16:]
    assert lz4.block.decompress(raw_block, uncompressed_size=a.nbytes) == a.tobytes()


def test_v1_encoding_names() -> None:
    assert v1_encoding("none", np.uint16) == "<"
    assert v1_encoding("lz4", np.uint32) == "lz4<"
    assert v1_encoding("lz4-raw", np.uint8) == "lz4<"
    assert [v1_encoding("bslz4", d) for d in DTYPES] == ["bs8-lz4<", "bs16-lz4<", "bs32-lz4<"]
    with pytest.raises(ValueError, match="unknown compression"):
        compress(np.zeros(4, np.uint8), "zstd")


# ---------------------------------------------------------------- stream V1
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
def test_v1_series_images_equal_what_was_sent(adapters, pull, dtype, compression) -> None:
    ad = adapters(StreamV1Adapter, model=v1_model(header_detail="none"))
    rx = pull(ad.endpoint)
    start = series_start(dtype, compression, channels=["threshold_1", "threshold_2"])
    frames = run_series(ad, start)
    msgs = recv_all(rx, 1 + len(frames) + 1)

    assert [json.loads(p) for p in msgs[0]] == [
        {"htype": "dheader-1.0", "series": 7, "header_detail": "none"}]
    for frame, parts in zip(frames, msgs[1:-1]):
        assert len(parts) == 4
        head, dhead, blob, dconf = parts
        head, dhead, dconf = json.loads(head), json.loads(dhead), json.loads(dconf)
        assert head == {"htype": "dimage-1.0", "series": 7, "frame": frame.image_id,
                        "hash": hashlib.md5(blob).hexdigest()}
        assert dhead["htype"] == "dimage_d-1.0"
        assert dhead["shape"] == [start.width, start.height]
        assert dhead["type"] == np.dtype(dtype).name
        assert dhead["encoding"] == v1_encoding(compression, dtype)
        assert dhead["size"] == len(blob)
        # V1 carries the first channel only
        assert np.array_equal(decode_v1_blob(dhead, blob), frame.data["threshold_1"])
        assert dconf == {"htype": "dconfig-1.0", "start_time": frame.start_time_ns,
                         "stop_time": frame.stop_time_ns, "real_time": frame.real_time_ns}
    assert [json.loads(p) for p in msgs[-1]] == [{"htype": "dseries_end-1.0", "series": 7}]
    assert ad.status() == {"state": "ready", "error": "", "dropped": 0}


def test_v1_header_all_with_appendices(adapters, pull) -> None:
    ad = adapters(StreamV1Adapter, model=v1_model(header_detail="all",
                                                  header_appendix='{"user": "x"}',
                                                  image_appendix="img-app"))
    rx = pull(ad.endpoint)
    start = series_start(np.uint32, "bslz4", nimages=2)
    frames = run_series(ad, start)
    header, *images, end = recv_all(rx, 4)

    assert len(header) == 9
    assert json.loads(header[0]) == {"htype": "dheader-1.0", "series": 7, "header_detail": "all"}
    config = json.loads(header[1])
    assert config["count_time"] == 0.01 and config["description"] == "Fake EIGER2 X"
    assert config["bit_depth_image"] == 32 and "pixel_mask" not in config
    expected = [("dflatfield-1.0", start.flatfield), ("dpixelmask-1.0", start.pixel_mask),
                ("dcountrate_table-1.0", start.countrate_table)]
    for k, (htype, array) in enumerate(expected):
        h = json.loads(header[2 + 2 * k])
        assert h == {"htype": htype, "shape": list(array.shape[::-1]), "type": array.dtype.name}
        got = np.frombuffer(header[3 + 2 * k], np.dtype(h["type"])).reshape(h["shape"][::-1])
        assert np.array_equal(got, array)
    assert header[8] == b'{"user": "x"}'
    for frame, parts in zip(frames, images):
        assert len(parts) == 5 and parts[4] == b"img-app"
        assert np.array_equal(decode_v1_blob(json.loads(parts[1]), parts[2]),
                              frame.data["threshold_1"])


def test_v1_header_basic_has_config_only(adapters, pull) -> None:
    ad = adapters(StreamV1Adapter, model=v1_model(header_detail="basic"))
    rx = pull(ad.endpoint)
    run_series(ad, series_start(nimages=1))
    header, image_msg, end = recv_all(rx, 3)
    assert len(header) == 2
    assert json.loads(header[1])["beam_center_x"] == 20.5
    assert len(image_msg) == 4


def test_v1_on_api_16_without_format_and_mode_selection(adapters, pull) -> None:
    model = FakeModel(mode="enabled", header_detail="none", header_appendix="",
                      image_appendix="")   # 1.6: no stream/config/format
    v1 = adapters(StreamV1Adapter, model=model)
    v2 = adapters(StreamV2Adapter, model=model)
    rx1, rx2 = pull(v1.endpoint), pull(v2.endpoint)
    start = series_start(nimages=2, api="1.6.0")
    for ad in (v1, v2):
        run_series(ad, start)
    assert len(recv_all(rx1, 4)) == 4
    assert not rx2.poll(100)
    assert v1.status()["state"] == "ready" and v2.status()["state"] == "disabled"

    model.stream["mode"] = "disabled"
    run_series(v1, series_start(series_id=8, nimages=2, api="1.6.0"))
    assert not rx1.poll(200)
    assert v1.status()["state"] == "disabled"


def test_format_selects_the_stream_version(adapters, pull) -> None:
    model = v2_model(header_detail="none")
    v1 = adapters(StreamV1Adapter, model=model)
    v2 = adapters(StreamV2Adapter, model=model)
    rx1, rx2 = pull(v1.endpoint), pull(v2.endpoint)
    for ad in (v1, v2):
        run_series(ad, series_start(nimages=1))
    assert len(recv_all(rx2, 3)) == 3
    assert not rx1.poll(100)

    model.stream["format"] = "legacy"
    for ad in (v1, v2):
        run_series(ad, series_start(series_id=8, nimages=1))
    assert len(recv_all(rx1, 3)) == 3
    assert not rx2.poll(100)


# ---------------------------------------------------------------- stream V2
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
def test_v2_multichannel_images_equal_what_was_sent(adapters, pull, dtype, compression) -> None:
    ad = adapters(StreamV2Adapter, model=v2_model(header_detail="basic"))
    rx = pull(ad.endpoint)
    channels = ["threshold_1", "threshold_2", "difference"]
    start = series_start(dtype, compression, channels=channels, nimages=2, ntrigger=2)
    frames = run_series(ad, start)
    msgs = recv_all(rx, 1 + 4 + 1)
    assert all(len(m) == 1 for m in msgs)

    first = decode_v2(msgs[0][0])
    assert first["type"] == "start"
    assert first["series_id"] == 7 and first["series_unique_id"] == "unique-7"
    assert first["number_of_images"] == 4
    assert (first["image_size_x"], first["image_size_y"]) == (start.width, start.height)
    assert first["image_dtype"] == np.dtype(dtype).name
    assert list(first["channels"]) == channels
    assert first["threshold_energy"] == {"threshold_1": 6200.0, "threshold_2": 9000.0}
    assert first["count_time"] == 0.01 and first["frame_time"] == 0.0105
    assert first["beam_center_x"] == 20.5 and first["incident_wavelength"] == 0.99987
    assert first["goniometer"] == {"omega": {"start": 10.0, "increment": 0.1}}
    assert "pixel_mask" not in first and "user_data" not in first

    for frame, (blob,) in zip(frames, msgs[1:-1]):
        msg = decode_v2(blob)
        assert msg["type"] == "image" and msg["series_id"] == 7
        assert msg["series_unique_id"] == "unique-7" and msg["image_id"] == frame.image_id
        assert list(msg["start_time"]) == [frame.start_time_ns, 1_000_000_000]
        assert list(msg["stop_time"]) == [frame.stop_time_ns, 1_000_000_000]
        assert list(msg["real_time"]) == [frame.real_time_ns, 1_000_000_000]
        assert list(msg["data"]) == channels
        for ch in channels:
            assert np.array_equal(decode_v2_array(msg["data"][ch]), frame.data[ch]), ch
    end = decode_v2(msgs[-1][0])
    assert dict(end) == {"type": "end", "series_id": 7, "series_unique_id": "unique-7"}


def test_v2_header_all_and_user_data(adapters, pull) -> None:
    ad = adapters(StreamV2Adapter, model=v2_model(header_detail="all", header_appendix="hdr",
                                                  image_appendix="img"))
    rx = pull(ad.endpoint)
    channels = ["threshold_1", "threshold_2"]
    start = series_start(np.uint16, "bslz4", channels=channels, nimages=1)
    run_series(ad, start)
    first, img, _ = [decode_v2(m[0]) for m in recv_all(rx, 3)]
    assert first["user_data"] == "hdr"
    assert set(first["pixel_mask"]) == set(channels) == set(first["flatfield"])
    for ch in channels:
        assert np.array_equal(decode_v2_array(first["pixel_mask"][ch]), start.pixel_mask)
        assert np.array_equal(decode_v2_array(first["flatfield"][ch]), start.flatfield)
    table = first["countrate_correction_lookup_table"]
    assert table.tag == 85
    assert np.array_equal(np.frombuffer(table.value, "<f4"), start.countrate_table.ravel())
    assert img["user_data"] == "img"


def test_v2_image_fields_match_real_captures(adapters, pull) -> None:
    directory = capture_dir(CAPTURE_NAMES[0])
    real = cbor2.loads((directory / "000001.cbor").read_bytes())
    real_end = cbor2.loads((directory / "000011.cbor").read_bytes())
    ad = adapters(StreamV2Adapter, model=v2_model(image_appendix="x"))
    rx = pull(ad.endpoint)
    run_series(ad, series_start(nimages=1))
    _, img, end = [decode_v2(m[0]) for m in recv_all(rx, 3)]
    assert list(img) == list(real)
    assert list(end) == list(real_end)
    assert type(img["series_date"]) is type(real["series_date"])


# ------------------------------------------------------------------- faults
def test_v1_faults(adapters, pull) -> None:
    ad = adapters(StreamV1Adapter, model=v1_model(header_detail="none"))
    ad.faults.drop.add(1)
    ad.faults.duplicate.add(2)
    ad.faults.corrupt.add(3)
    ad.faults.bad_encoding.add(4)
    ad.faults.stale_series.add(5)
    rx = pull(ad.endpoint)
    start = series_start(np.uint16, "bslz4", nimages=7)
    frames = run_series(ad, start)
    msgs = recv_all(rx, 1 + 7 - 1 + 1 + 1)
    images = msgs[1:-1]
    heads = [json.loads(m[0]) for m in images]
    assert [h["frame"] for h in heads] == [0, 2, 2, 3, 4, 5, 6]
    assert [h["series"] for h in heads] == [7, 7, 7, 7, 7, 6, 7]
    by_frame = {h["frame"]: m for h, m in zip(heads, images)}
    corrupt = by_frame[3]
    dhead = json.loads(corrupt[1])
    assert len(corrupt[2]) != dhead["size"]
    assert hashlib.md5(corrupt[2]).hexdigest() != json.loads(corrupt[0])["hash"]
    assert json.loads(by_frame[4][1])["encoding"] not in ("<", "lz4<", "bs16-lz4<")
    for i in (0, 2, 5, 6):
        m = by_frame[i]
        assert np.array_equal(decode_v1_blob(json.loads(m[1]), m[2]), frames[i].data["threshold_1"])


def test_v2_faults(adapters, pull) -> None:
    ad = adapters(StreamV2Adapter, model=v2_model())
    rx = pull(ad.endpoint)
    run_series(ad, series_start(series_id=2, nimages=1))   # the previous series
    recv_all(rx, 3)
    ad.faults.drop.update({0, 4})
    ad.faults.duplicate.add(1)
    ad.faults.corrupt.add(2)
    ad.faults.bad_encoding.add(3)
    ad.faults.stale_series.add(5)
    start = series_start(np.uint8, "lz4", series_id=3, nimages=6)
    frames = run_series(ad, start)
    msgs = [decode_v2(m[0]) for m in recv_all(rx, 1 + 4 + 1 + 1)]
    images = msgs[1:-1]
    assert [m["image_id"] for m in images] == [1, 1, 2, 3, 5]
    assert [m["series_id"] for m in images] == [3, 3, 3, 3, 2]   # 5: the previous series
    with pytest.raises(Exception):
        decode_v2_array(images[2]["data"]["threshold_1"])          # garbled blob
    assert images[3]["data"]["threshold_1"].value[1].value.value[0] not in ("bslz4", "lz4")
    assert np.array_equal(decode_v2_array(images[4]["data"]["threshold_1"]),
                          frames[5].data["threshold_1"])


def test_full_queue_drops_frames_without_blocking(adapters, pull) -> None:
    ad = adapters(StreamV2Adapter, model=v2_model(), queue_frames=4)
    start = series_start(np.uint16, "none", nimages=50)
    result: List[List[Frame]] = []
    # nobody is connected: the sender cannot send, and the engine must not wait for it
    sender = threading.Thread(target=lambda: result.append(run_series(ad, start)), daemon=True)
    sender.start()
    sender.join(10)
    assert not sender.is_alive(), "feeding frames blocked while no receiver was connected"
    frames = result[0]
    dropped = ad.status()["dropped"]
    assert 45 <= dropped <= 46
    rx = pull(ad.endpoint)
    msgs = [decode_v2(m[0]) for m in recv_all(rx, 2 + len(frames) - dropped)]
    assert msgs[0]["type"] == "start" and msgs[-1]["type"] == "end"
    ids = [m["image_id"] for m in msgs[1:-1]]
    assert ids == sorted(ids) and ids[0] == 0
    ad.initialize()
    assert ad.status()["dropped"] == 0


# ----------------------------------------------------- pre-encoded fast path
@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
def test_encoded_blobs_are_sent_instead_of_compressing(adapters, pull, compression) -> None:
    v1 = adapters(StreamV1Adapter, model=v1_model())
    v2 = adapters(StreamV2Adapter, model=v2_model())
    rx1, rx2 = pull(v1.endpoint), pull(v2.endpoint)
    start = series_start(np.uint32, compression, nimages=2)
    other = image(999, np.uint32, start.height, start.width)   # what the blob really holds
    for ad in (v1, v2):
        ad.series_start(start)
        for i in range(2):
            f = make_frame(start, i, encoded={"threshold_1": compress(other, compression)})
            ad.frame(f)
        ad.series_end(SeriesEnd(7, "unique-7", 2))
    for m in recv_all(rx1, 4)[1:3]:
        assert np.array_equal(decode_v1_blob(json.loads(m[1]), m[2]), other)
        assert json.loads(m[0])["hash"] == hashlib.md5(m[2]).hexdigest()
    for m in recv_all(rx2, 4)[1:3]:
        assert np.array_equal(decode_v2_array(decode_v2(m[0])["data"]["threshold_1"]), other)


def test_precompressed_cache_feeds_the_stream(adapters, pull) -> None:
    src = CborReplaySource(capture_dir(CAPTURE_NAMES[1]))
    cache = PrecompressedCache(src, "bslz4", n=3)
    args = (src.width, src.height, src.dtype, ["threshold_1", "threshold_2"])
    assert cache.encoded(4, *args) is cache.encoded(1, *args)
    ad = adapters(StreamV2Adapter, model=v2_model())
    rx = pull(ad.endpoint)
    start = series_start(src.dtype, "bslz4", channels=args[3], height=src.height,
                         width=src.width, nimages=5)
    ad.series_start(start)
    for i in range(5):
        ad.frame(Frame(7, i, cache.frame(i, *args), encoded=cache.encoded(i, *args)))
    ad.series_end(SeriesEnd(7, "unique-7", 5))
    msgs = [decode_v2(m[0]) for m in recv_all(rx, 7)]
    for i, msg in enumerate(msgs[1:-1]):
        for ch in args[3]:
            assert np.array_equal(decode_v2_array(msg["data"][ch]), src.image(i % 3, ch))


# ------------------------------------------------------------------- replay
def write_nxmx(tmp_path: Path, frames: np.ndarray, per_file: int) -> Path:
    master = tmp_path / "series_7_master.h5"
    with h5py.File(master, "w") as m:
        entry = m.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        det = entry.create_group("instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        det["count_time"] = 0.01
        for k, first in enumerate(range(0, len(frames), per_file), start=1):
            name = f"series_7_data_{k:06d}.h5"
            block = frames[first:first + per_file]
            with h5py.File(tmp_path / name, "w") as d:
                ds = d.create_dataset("entry/data/data", data=block,
                                      chunks=(1,) + block.shape[1:],
                                      **hdf5plugin.Bitshuffle(cname="lz4"))
                ds.attrs["image_nr_low"] = first + 1
                ds.attrs["image_nr_high"] = first + len(block)
            data[f"data_{k:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    return master


def test_hdf5_replay_source(tmp_path: Path) -> None:
    frames = np.stack([image(i, np.uint16, 40, 30) for i in range(5)])
    master = write_nxmx(tmp_path, frames, per_file=3)
    with Hdf5ReplaySource(master) as src:
        assert (src.width, src.height, src.dtype, src.nframes) == (30, 40, np.uint16, 5)
        for index in (0, 2, 3, 4, 7, 13):
            got = src.frame(index, 30, 40, np.dtype(np.uint16), ["threshold_1", "threshold_2"])
            assert set(got) == {"threshold_1", "threshold_2"}
            for arr in got.values():
                assert np.array_equal(arr, frames[index % 5])
        blob = src.encoded(4)
        raw = dectris.compression.decompress(blob, "bslz4", elem_size=2)
        assert np.array_equal(np.frombuffer(raw, np.uint16).reshape(40, 30), frames[4])
        # another detector geometry/type: cropped, padded, clipped
        fitted = src.frame(1, 20, 50, np.dtype(np.uint8), ["threshold_1"])["threshold_1"]
        assert fitted.shape == (50, 20) and fitted.dtype == np.uint8
        assert np.array_equal(fitted[:40], np.minimum(frames[1][:, :20], 255))
        assert not fitted[40:].any()


def test_hdf5_replay_source_explains_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "empty_master.h5"
    with h5py.File(bad, "w") as f:
        f.create_group("entry/data")
    with pytest.raises(ValueError, match="no image data"):
        Hdf5ReplaySource(bad)
    with pytest.raises(OSError, match="cannot open"):
        Hdf5ReplaySource(tmp_path / "missing_master.h5")


def test_all_capture_folders_are_present() -> None:
    require_shared(CAPTURES)
    assert sorted(p.name for p in CAPTURES.iterdir() if p.is_dir()) == CAPTURE_NAMES


@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_cbor_replay_equals_dectris_decoding(name: str) -> None:
    directory = capture_dir(name)
    src = CborReplaySource(directory)
    assert src.nframes == 10 and (src.width, src.height) == (1030, 514)
    assert src.channels == ["threshold_1", "threshold_2", "difference"]
    for k, path in enumerate(sorted(directory.glob("*.cbor"))[:10]):
        msg = cbor2.loads(path.read_bytes())
        got = src.frame(k + 10, 1030, 514, src.dtype, src.channels)   # cycles
        for ch in src.channels:
            (h, w), typed = msg["data"][ch].value
            algorithm, elem_size, blob = typed.value.value
            raw = dectris.compression.decompress(blob, algorithm, elem_size=elem_size)
            expected = np.frombuffer(raw, np.dtype(V2_DTYPES[typed.tag])).reshape(h, w)
            assert np.array_equal(got[ch], expected)
            assert src.encoded(k, [ch])[ch] == blob


def test_push_capture_delivers_files_byte_identical() -> None:
    directory = capture_dir(CAPTURE_NAMES[0])
    files = [p.read_bytes() for p in sorted(directory.glob("*.cbor"))]
    assert len(files) == 11
    rx = zmq.Context.instance().socket(zmq.PULL)
    rx.setsockopt(zmq.LINGER, 0)
    port = rx.bind_to_random_port("tcp://127.0.0.1")
    try:
        sent = push_capture(directory, f"tcp://127.0.0.1:{port}", bind=False)
        assert sent == 11
        got = [recv(rx)[0] for _ in range(11)]
        assert got == files
        assert not rx.poll(100)
    finally:
        rx.close(0)


def test_push_capture_binds_and_synthesizes_a_start_message() -> None:
    directory = capture_dir(CAPTURE_NAMES[0])
    files = [p.read_bytes() for p in sorted(directory.glob("*.cbor"))]
    probe = zmq.Context.instance().socket(zmq.PUSH)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)
    endpoint = f"tcp://127.0.0.1:{port}"
    result: List[Any] = []
    t = threading.Thread(target=lambda: result.append(
        push_capture(directory, endpoint, bind=True, start_message=True)))
    t.start()
    rx = zmq.Context.instance().socket(zmq.PULL)
    rx.setsockopt(zmq.LINGER, 0)
    try:
        rx.connect(endpoint)
        got = [recv(rx)[0] for _ in range(12)]
    finally:
        t.join(15)
        rx.close(0)
    assert result == [12]
    assert got[1:] == files
    start = decode_v2(got[0])
    image0 = cbor2.loads(files[0])
    assert start["type"] == "start" and start["series_id"] == image0["series_id"]
    assert start["series_unique_id"] == image0["series_unique_id"]
    assert list(start["channels"]) == ["threshold_1", "threshold_2", "difference"]
    assert (start["image_size_x"], start["image_size_y"]) == (1030, 514)
    assert start["number_of_images"] == 10


def test_push_capture_times_out_without_receiver() -> None:
    directory = capture_dir(CAPTURE_NAMES[0])
    with pytest.raises(TimeoutError, match="no receiver"):
        push_capture(directory, "tcp://127.0.0.1:*", bind=True, timeout=0.3)


def test_v2_spliced_encoding_is_plain_cbor(adapters, pull) -> None:
    ad = adapters(StreamV2Adapter, model=v2_model(image_appendix="a"))
    rx = pull(ad.endpoint)
    run_series(ad, series_start(np.uint16, "bslz4", channels=["threshold_1", "difference"],
                                nimages=1))
    _, (blob,), _ = recv_all(rx, 3)
    # re-encoding the decoded message with cbor2 alone gives the same bytes
    assert cbor2.dumps(CBORTag(55799, cbor2.loads(blob))) == blob


def test_close_returns_while_no_receiver_is_connected(adapters) -> None:
    before = set(threading.enumerate())
    ad = adapters(StreamV1Adapter, model=v1_model())
    sender = [t for t in threading.enumerate() if t not in before]
    assert sender, "the adapter started no sender thread"
    run_series(ad, series_start(nimages=5))
    assert not ad.wait_idle(0.2)          # stuck waiting for a peer
    ad.close()
    # close() waits a bounded time: the sender must have ended, not been left behind
    assert not any(t.is_alive() for t in sender)
    assert ad.status()["state"] == "disabled"
