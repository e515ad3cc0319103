"""Worker processes over ZeroMQ: 2 local workers, the merge by frame number,
a worker killed mid-series."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from eiger_server.formats.compression import compress, v1_encoding
from eiger_server.formats.decode import Encoded
from eiger_server.formats.stream_events import ImageMessage
from eiger_server.stream import imageproc
from eiger_server.stream.workers import WorkerPool

pytestmark = pytest.mark.timeout(120)


def images(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = rng.integers(0, 4000, (64, 80)).astype(np.uint16)
        image[rng.random(image.shape) < 0.01] = 65535
        out.append(image)
    return out


def event(series: int, frame: int, image: np.ndarray) -> ImageMessage:
    enc = Encoded(compress(image, "bslz4"), v1_encoding("bslz4", image.dtype), image.shape,
                  image.dtype)
    return ImageMessage(series, frame, {"threshold_1": enc})


def expected_sum(frames: list) -> np.ndarray:
    acc = imageproc.Accumulator(len(frames))
    for n, image in enumerate(frames):
        acc.add({"t": image}, n)
    return acc.result()["t"]


@pytest.fixture
def pool():
    pool = WorkerPool(2, queue_depth=8)
    pool.start(timeout=60)
    yield pool
    pool.close()


def test_two_workers_share_the_images_and_the_merge_is_exact(pool):
    frames = images(10)
    pool.begin(1, "accum")
    for n, image in enumerate(frames):
        assert pool.submit(1, event(1, n, image))
    merged = pool.finish(1)
    assert merged.frames == list(range(10)) and merged.lost == []
    assert np.array_equal(merged.filled()["threshold_1"], expected_sum(frames))
    # statistics per frame, merged by frame number, ROIs included
    pool.begin(2, "stats", rois=[(0, 9, 0, 9)])
    for n, image in enumerate(frames):
        pool.submit(2, event(2, n, image))
    merged = pool.finish(2)
    assert sorted(merged.stats) == list(range(10))
    for n, image in enumerate(frames):
        total, top, rois = merged.stats[n]
        assert (total, top) == imageproc.masked_stats(image)
        assert rois == [imageproc.roi_sum(image, 0, 9, 0, 9)]


def test_a_worker_killed_mid_series_loses_its_images_and_the_next_series_works(pool):
    frames = images(12, seed=3)
    pool.begin(1, "accum")
    for n, image in enumerate(frames[:6]):
        pool.submit(1, event(1, n, image))
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pool._procs[0].poll() is None:
        time.sleep(0.05)
    for n, image in enumerate(frames[6:], 6):
        pool.submit(1, event(1, n, image))
    merged = pool.finish(1, timeout=10)
    # every image is either in the sum or counted lost, and the sum is of those in it
    assert sorted(merged.frames + merged.lost) == list(range(12))
    assert merged.lost and merged.frames
    assert "lost with a stream worker" in merged.errors[0]
    got = expected_sum([frames[n] for n in merged.frames])
    assert np.array_equal(merged.filled()["threshold_1"], got)
    # the next series: the dead worker is replaced, nothing is lost
    pool.begin(2, "accum")
    assert pool.alive_count() == 2
    for n, image in enumerate(frames):
        assert pool.submit(2, event(2, n, image))
    merged = pool.finish(2)
    assert merged.frames == list(range(12)) and merged.lost == []
    assert np.array_equal(merged.filled()["threshold_1"], expected_sum(frames))


def test_an_accumulating_count_through_the_handler_with_two_worker_processes(tmp_path):
    import helpers
    handler = helpers.StubController(tmp_path, workers=2).stream_handler()
    handler.start_pipeline()
    try:
        frames = images(9, seed=7)
        for series in (1, 2):
            handler.begin_count(len(frames), accumulate=True)
            for n, image in enumerate(frames):
                handler.feed(event(series, n, image))
            assert handler.wait_count(30)
            result = handler.latest()
            assert result.nframes == 9
            assert np.array_equal(result.raw, expected_sum(frames))
        assert handler.get_dropped() == 0
    finally:
        handler.close()
