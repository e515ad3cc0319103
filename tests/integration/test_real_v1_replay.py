"""The real Stream V1 session of an EIGER 4M (SIMPLON 1.6.6) replayed to eiger_server.

The recording is ../shared/data/dls-stream1-eiger4m (its README gives the
figures checked here). The two unpublished arrays (flatfield, pixel mask)
are filled with arrays of the announced shape and type, as the README says.
"""
from __future__ import annotations

import glob
import os
import threading

import numpy as np
import pytest
import tifffile

from helpers import SHARED, free_port, require_shared, wait_for
from eiger_server.options import ServerOptions
from eiger_server.fakedcu.sources.replay import push_v1_session, v1_session
from eiger_server.formats import stream_v1
from eiger_server.formats.decode import decode
from eiger_server.formats.stream_events import ImageMessage
from eiger_server.storage import tiff

SESSION = SHARED / "data" / "dls-stream1-eiger4m"
WIDTH, HEIGHT = 2070, 2167
MASKED = 251_297          # pixels at 65535 (gaps and masked) in every image
SUM = 4_609_824           # the other pixels' sum
MAXIMUM = 12_322
TICK = 20e-9
# dconfig (start, stop, real) of frames 0, 1, 2 in 20 ns clock ticks (1.99 ms count time)
TIMES = [(143051295370, 143051394995, 99251), (143051395491, 143051494995, 99130),
         (143051495491, 143051594994, 99129)]


@pytest.fixture(scope="module")
def messages():
    return v1_session(require_shared(SESSION))


def test_session_decodes_to_the_readme_figures(messages):
    assert len(messages) == 5 and [len(m) for m in messages] == [9, 4, 4, 4, 1]
    # the filled arrays have the announced [x, y] shape and type
    assert len(messages[0][3]) == len(messages[0][5]) == WIDTH * HEIGHT * 4
    parse = stream_v1.Parser()
    events = [parse(m) for m in messages]
    images = [e for e in events if isinstance(e, ImageMessage)]
    assert [e.frame for e in images] == [0, 1, 2]
    for event in images:
        enc = event.channels[stream_v1.CHANNEL]
        image = decode(enc.data, enc.encoding, enc.shape, enc.dtype)
        assert image.shape == (HEIGHT, WIDTH) and image.dtype == np.uint16
        assert int(np.count_nonzero(image == 65535)) == MASKED
        assert int(image[image != 65535].sum(dtype=np.uint64)) == SUM
        assert int(image[image != 65535].max()) == MAXIMUM
        # 1.6: clock ticks of 20 ns, not nanoseconds
        start, stop, real = TIMES[event.frame]
        assert event.real_time == pytest.approx(real * TICK)
        assert event.start_time == pytest.approx(start * TICK)
        assert event.stop_time == pytest.approx(stop * TICK)
    # a parser that never saw the header would take them for nanoseconds
    assert stream_v1.parse(messages[1]).real_time == pytest.approx(99_251e-9)


def test_fused_kernels_on_the_real_frames(messages):
    """The fused bitshuffle/LZ4 kernels on the real EIGER 4M frames (V1
    ``bs16-lz4<``): the README's figures from the compressed frame, and the
    accumulation of the 3 frames equal to decode + numpy."""
    from eiger_server.stream import bslz4_kernels, imageproc
    parse = stream_v1.Parser()
    images = [e for e in (parse(m) for m in messages) if isinstance(e, ImageMessage)]
    accumulator = imageproc.Accumulator(len(images))
    want = np.zeros((HEIGHT, WIDTH), np.uint32)
    for event in images:
        enc = event.channels[stream_v1.CHANNEL]
        assert bslz4_kernels.bslz4_stats(enc.data, np.uint16) == (SUM, MAXIMUM, MASKED)
        accumulator.add_encoded({"image": enc}, event.frame, f"frame {event.frame}")
        want += decode(enc.data, enc.encoding, enc.shape, enc.dtype)
    masked = decode(images[0].channels[stream_v1.CHANNEL].data, images[0].channels[
        stream_v1.CHANNEL].encoding, (HEIGHT, WIDTH), np.uint16) == 65535
    want[masked] = np.iinfo(np.uint32).max
    np.testing.assert_array_equal(accumulator.result()["image"], want)


@pytest.mark.parametrize("api", ["1.6.0"])
def test_replay_through_eiger_server(messages, fake_dcu, tmp_path):
    from eiger_server.control.controller import EigerController
    port = free_port()
    # the fake DCU answers REST; the recorded session comes on our own PUSH port
    ctrl = EigerController(ServerOptions(dcu_host="127.0.0.1", dcu_port=fake_dcu.http_port,
                                         stream_port=port, stream2_port=free_port()))
    try:
        data = tmp_path / "data"
        ctrl.set("data_directory", [str(data)])
        ctrl.simplon.command("detector", "initialize")
        ctrl.set("stream_prefix", ["real4m"])
        ctrl.set("stream_autoindex", ["1"])
        ctrl.set("stream_autosave", ["1"])
        ctrl.set("stream_mode", ["1"])
        sent = []
        pusher = threading.Thread(target=lambda: sent.append(
            push_v1_session(messages, f"tcp://127.0.0.1:{port}", timeout=20)))
        pusher.start()
        pusher.join(30)
        assert sent == [5]
        wait_for(lambda: len(glob.glob(os.path.join(data, "real4m*.tif"))) == 3, 30,
                 what="three TIFFs of the replayed session")
        assert ctrl.stream.wait_saved(10)
        files = sorted(glob.glob(os.path.join(data, "real4m*.tif")))
        for frame, path in enumerate(files):
            image = tifffile.imread(path)
            assert image.shape == (HEIGHT, WIDTH) and image.dtype == np.uint16
            assert int(np.count_nonzero(image == 65535)) == MASKED
            assert int(image[image != 65535].sum(dtype=np.uint64)) == SUM
            meta = tiff.read_metadata(path)
            assert meta["series"] == 6 and meta["frame"] == frame
            # TIFF metadata times in seconds, converted from 1.6 clock ticks
            start, stop, real = TIMES[frame]
            assert meta["real_time"] == pytest.approx(real * TICK)     # 1.985 ms, not 99 us
            assert meta["start_time"] == pytest.approx(start * TICK)
            assert meta["stop_time"] == pytest.approx(stop * TICK)
        latest = ctrl.stream.latest()
        assert latest is not None and latest.series == 6 and latest.frame == 2
        # sum and maxval exclude masked pixels (65535)
        assert int(ctrl.get("sum")) == SUM
        assert int(ctrl.get("maxval")) == MAXIMUM
    finally:
        ctrl.close()
