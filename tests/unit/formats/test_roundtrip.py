"""Stream encoders and parsers are one format: encode -> parse gives back what was sent.

No sockets: the message parts the fake DCU would send are handed to the
server's parser as they are.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from eiger_server.formats import stream_v1, stream_v2
from eiger_server.formats.cbor import TYPED_ARRAY_DTYPES, TYPED_ARRAY_TAGS, typed_array_dtype
from eiger_server.formats.compression import compress, v1_encoding
from eiger_server.formats.decode import Encoded
from eiger_server.formats.stream_events import ImageMessage, SeriesEnd, SeriesHeader

DTYPES = [np.uint8, np.uint16, np.uint32]
HEIGHT, WIDTH = 37, 61


def image(seed: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 40, size=(HEIGHT, WIDTH)).astype(dtype)
    array[3, 5] = np.iinfo(dtype).max
    return array


def test_typed_array_tables_agree():
    for name, tag in TYPED_ARRAY_TAGS.items():
        assert typed_array_dtype(tag) == np.dtype(name)
        assert TYPED_ARRAY_DTYPES[tag].lstrip("<|") == np.dtype(name).str.lstrip("<|")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["none", "lz4-raw", "bslz4"])
def test_v1_round_trip(dtype, method):
    config = {"count_time": 0.1, "nimages": 3, "ntrigger": 2, "description": "EIGER2 test"}
    header = stream_v1.parse(stream_v1.encode_header(12, "basic", config, appendix="hello"))
    assert isinstance(header, SeriesHeader)
    assert (header.series, header.config, header.nimages) == (12, config, 6)
    assert header.appendix == "hello"

    array = image(1, dtype)
    sent = Encoded(compress(array, method), v1_encoding(method, dtype), (HEIGHT, WIDTH),
                   np.dtype(dtype))
    parts = stream_v1.encode_image(12, 4, sent, hash="abc",
                                   times_ns=(2_000_000, 3_000_000, 1_000_000),
                                   appendix={"user": 1})
    event = stream_v1.parse(parts)
    assert isinstance(event, ImageMessage)
    assert (event.series, event.frame) == (12, 4)
    assert event.start_time == pytest.approx(0.002)
    assert event.stop_time == pytest.approx(0.003)
    assert event.real_time == pytest.approx(0.001)
    assert event.appendix == {"user": 1}
    (got,) = event.channels.values()
    assert (got.encoding, tuple(got.shape), got.dtype) == (sent.encoding, (HEIGHT, WIDTH),
                                                           np.dtype(dtype))
    decoded = got.decode()
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, array)

    end = stream_v1.parse(stream_v1.encode_end(12))
    assert isinstance(end, SeriesEnd) and end.series == 12


def test_v1_header_all_carries_the_arrays():
    mask = np.zeros((HEIGHT, WIDTH), np.uint32)
    mask[1, 2] = 1
    flat = np.ones((HEIGHT, WIDTH), np.float32)
    table = np.arange(10, dtype=np.uint32)
    parts = stream_v1.encode_header(3, "all", {"nimages": 1}, flatfield=flat,
                                    pixel_mask=mask, countrate_table=table,
                                    appendix="after")
    assert len(parts) == 2 + 6 + 1
    header = stream_v1.parse(parts)
    assert isinstance(header, SeriesHeader) and header.appendix == "after"
    assert bytes(parts[5]) == mask.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["none", "lz4", "bslz4"])
def test_v2_round_trip_several_channels(dtype, method):
    config = {"beam_center_x": 20.5, "count_time": 0.1, "frame_time": 0.11,
              "wavelength": 1.0332, "x_pixel_size": 7.5e-5, "threshold/1/energy": 4000,
              "threshold/2/energy": 9000, "omega_start": 10.0, "omega_increment": 0.5}
    channels = ["threshold_1", "threshold_2", "difference"]
    arm = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    start = stream_v2.start_message(8, "uid-8", arm, config, nimages=5, width=WIDTH,
                                    height=HEIGHT, dtype=dtype, channels=channels,
                                    user_data={"who": "me"})
    header = stream_v2.parse([stream_v2.encode_start(start)])
    assert isinstance(header, SeriesHeader)
    assert (header.series, header.unique_id, header.nimages) == (8, "uid-8", 5)
    assert header.channels == channels and header.appendix == {"who": "me"}
    assert header.config["beam_center_x"] == 20.5
    assert header.config["incident_wavelength"] == pytest.approx(1.0332)
    assert header.config["pixel_size_x"] == pytest.approx(7.5e-5)
    assert header.config["threshold_energy"] == {"threshold_1": 4000.0, "threshold_2": 9000.0}
    assert header.config["goniometer"] == {"omega": {"start": 10.0, "increment": 0.5}}
    assert header.config["arm_date"] == arm

    arrays = {ch: image(k, dtype) for k, ch in enumerate(channels)}
    algorithm = "raw" if method == "none" else method
    elem_size = np.dtype(dtype).itemsize if method == "bslz4" else 0
    sent = {ch: Encoded(compress(a, method), algorithm, (HEIGHT, WIDTH), np.dtype(dtype),
                        elem_size, v2=True) for ch, a in arrays.items()}
    blob = stream_v2.encode_image(8, "uid-8", 2, sent, series_date=arm,
                                  times_ns=(200_000_000, 300_000_000, 99_000_000),
                                  user_data="img")
    event = stream_v2.parse([blob])
    assert isinstance(event, ImageMessage)
    assert (event.series, event.frame, event.unique_id) == (8, 2, "uid-8")
    assert event.start_time == pytest.approx(0.2)
    assert event.stop_time == pytest.approx(0.3)
    assert event.real_time == pytest.approx(0.099)
    assert event.appendix == "img"
    assert list(event.channels) == channels
    for ch, got in event.channels.items():
        assert (got.encoding, got.elem_size, tuple(got.shape)) == (algorithm, elem_size,
                                                                   (HEIGHT, WIDTH))
        np.testing.assert_array_equal(got.decode(), arrays[ch])

    end = stream_v2.parse([stream_v2.encode_end(8, "uid-8")])
    assert isinstance(end, SeriesEnd) and (end.series, end.unique_id) == (8, "uid-8")
