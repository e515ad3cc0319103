"""Formats as real DCUs send them (SIMPLON.md, "How real DCUs behave")."""
from __future__ import annotations

import json

import bitshuffle
import numpy as np
import pytest

from eiger_server.control.transfers import is_data, is_master
from eiger_server.formats import stream_v1
from eiger_server.formats.darray import (NUMPY_ORDER, REVERSED_ORDER, darray_order,
                                         decode_darray, encode_darray)
from eiger_server.formats.decode import DecodeError, Encoded, decode
from eiger_server.formats.stream_events import ImageMessage, StreamErrorEvent

PIXELS = (514, 1030)          # (height, width) of an EIGER 500K


def _mask() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 2 ** 32, PIXELS, dtype=np.uint64).astype(np.uint32)


def test_darray_height_width_as_a_real_500k_sends_it():
    mask = _mask()
    real = encode_darray(mask)                    # what a 1.6.6 DCU answers
    assert real["shape"] == [514, 1030]
    assert darray_order(real, PIXELS) == NUMPY_ORDER
    np.testing.assert_array_equal(decode_darray(real, PIXELS), mask)


def test_darray_width_height_accepted_and_recognised():
    mask = _mask()
    text_order = encode_darray(mask, REVERSED_ORDER)   # DECTRIS' reference text
    assert text_order["shape"] == [1030, 514]
    assert darray_order(text_order, PIXELS) == REVERSED_ORDER
    np.testing.assert_array_equal(decode_darray(text_order, PIXELS), mask)
    # and written back in that same order
    again = encode_darray(decode_darray(text_order, PIXELS), darray_order(text_order, PIXELS))
    assert again == text_order


def _image_parts(shape, times=(100, 200, 99251)):
    blob = np.zeros((2, 3), np.uint16).tobytes()
    return [json.dumps({"htype": "dimage-1.0", "series": 1, "frame": 0}).encode(),
            json.dumps({"htype": "dimage_d-1.0", "shape": shape, "type": "uint16",
                        "encoding": "<", "size": len(blob)}).encode(), blob,
            json.dumps({"htype": "dconfig-1.0", "start_time": times[0],
                        "stop_time": times[1], "real_time": times[2]}).encode()]


def test_v1_times_are_clock_ticks_after_a_1_6_header():
    parser = stream_v1.Parser()
    header = stream_v1.encode_header(1, "basic", {"software_version": "1.6.6"})
    parser(header)
    event = parser(_image_parts([3, 2]))
    assert isinstance(event, ImageMessage)
    assert event.real_time == pytest.approx(99251 * 20e-9)       # 1.985 ms
    parser(stream_v1.encode_header(2, "basic", {"software_version": "1.8.0"}))
    assert parser(_image_parts([3, 2])).real_time == pytest.approx(99251e-9)


def test_v1_fake_encoder_sends_ticks_on_request():
    image = Encoded(np.zeros((2, 3), np.uint16).tobytes(), "<", (2, 3), np.dtype(np.uint16))
    parts = stream_v1.encode_image(1, 0, image, times_ns=(2000, 4000, 1985020),
                                   clock_ticks=True)
    assert json.loads(parts[3]) == {"htype": "dconfig-1.0", "start_time": 100,
                                    "stop_time": 200, "real_time": 99251}


def test_v1_shape_with_a_third_element():
    event = stream_v1.parse(_image_parts([3, 2, 1]))
    assert isinstance(event, ImageMessage)
    assert event.channels[stream_v1.CHANNEL].shape == (2, 3)
    assert isinstance(stream_v1.parse(_image_parts([3, 2, 4])), StreamErrorEvent)


def test_headerless_bs16_lz4_is_decoded_and_garbage_named():
    image = (np.arange(514 * 1030) % 1000).astype(np.uint16).reshape(PIXELS)
    headerless = bitshuffle.compress_lz4(image.reshape(-1)).tobytes()   # what simulators send
    np.testing.assert_array_equal(decode(headerless, "bs16-lz4<", PIXELS, "uint16"), image)
    with pytest.raises(DecodeError, match="no header-less bitshuffle/LZ4 either"):
        decode(b"\x07" * 200, "bs16-lz4<", PIXELS, "uint16")


@pytest.mark.parametrize("name, master, data", [
    ("scan_data_7_master.h5", True, False),
    ("scan_data_7_data_000001.h5", False, True),
    ("series_3_data_000012.h5", False, True),
    ("my_data_notes.h5", False, False),
])
def test_file_kinds_by_the_filewriter_suffix(name, master, data):
    assert (is_master(name), is_data(name)) == (master, data)
