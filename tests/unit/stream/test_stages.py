"""The pipeline's stages on their own: the decode stage's queue and threads,
the reduce step, the latest image, the series metadata."""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, List

import numpy as np
import pytest

from eiger_server.formats.compression import compress, v1_encoding
from eiger_server.formats.decode import Encoded
from eiger_server.formats.stream_events import ImageMessage, SeriesHeader
from eiger_server.observe.hooks import NO_OBSERVER
from eiger_server.stream.count import CountBook
from eiger_server.stream.counters import Counters
from eiger_server.stream.decode_stage import DecodeStage, FrameJob
from eiger_server.stream.imageproc import ImageResult
from eiger_server.stream.latest import LatestImage
from eiger_server.stream.reduce import Reducer
from eiger_server.stream.series_meta import SeriesCatalog, frame_meta


def _encoded(image: np.ndarray) -> Encoded:
    return Encoded(compress(image, "bslz4"), v1_encoding("bslz4", image.dtype), image.shape,
                   image.dtype)


def _event(series: int, frame: int, image: np.ndarray) -> ImageMessage:
    return ImageMessage(series, frame, {"threshold_1": _encoded(image)})


class _Stages:
    def __init__(self, nimages: int, accumulate: bool) -> None:
        self.book = CountBook()
        self.book.begin(0, nimages, accumulate, 1, 0, False, {"count_time": 1.0})
        self.latest = LatestImage(self.book.cond)
        self.loss = Counters("decode_failures", "unsaved")
        self.errors: "collections.deque[str]" = collections.deque(maxlen=5)
        self.accumulated: List[ImageResult] = []
        self.reducer = Reducer(self.book, self.latest, self.loss, self.errors,
                               lambda: NO_OBSERVER, lambda: (0.0, 0.0),
                               lambda gen, result: self.accumulated.append(result))

    def job(self, frame: int, image: np.ndarray) -> FrameJob:
        event = _event(1, frame, image)
        return FrameJob(event, self.book.next_seq(), self.book.belongs(1, frame),
                        {"series": 1, "frame": frame})


def test_accumulation_sums_every_frame_and_finishes_once() -> None:
    stages = _Stages(3, accumulate=True)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 1000, (6, 5), dtype=np.uint16) for _ in range(3)]
    frames[1][2, 3] = 65535                    # a masked pixel
    for n, image in enumerate(frames):
        stages.reducer.run(stages.job(n, image))
    assert len(stages.accumulated) == 1
    result = stages.latest.held
    assert result is not None and result.nframes == 3
    expected = sum(f.astype(np.uint32) for f in frames)
    expected[2, 3] = np.iinfo(np.uint32).max
    np.testing.assert_array_equal(result.raw, expected)
    assert stages.book.complete() and stages.book.outcome() is None


def test_an_unreadable_frame_finishes_the_accumulation_without_it() -> None:
    stages = _Stages(2, accumulate=True)
    good = np.full((4, 4), 3, np.uint16)
    stages.reducer.run(stages.job(0, good))
    bad = stages.job(1, good)
    assert bad.event is not None
    bad.event = ImageMessage(1, 1, {"threshold_1": Encoded(b"garbage", "bs16-lz4<", (4, 4),
                                                           np.dtype(np.uint16))})
    stages.reducer.run(bad)
    assert bad.failed and stages.loss["decode_failures"] == 1
    assert len(stages.accumulated) == 1        # finished with the frame that arrived
    assert "1 of 2 images arrived unreadable (frame 1)" in (stages.book.outcome() or "")


def test_latest_wins_by_arrival_not_by_finishing_order() -> None:
    stages = _Stages(2, accumulate=False)
    newer_first = [stages.job(0, np.zeros((3, 3), np.uint16)),
                   stages.job(1, np.ones((3, 3), np.uint16))]
    stages.reducer.run(newer_first[1])
    stages.reducer.run(newer_first[0])         # finished later, arrived earlier
    held = stages.latest.held
    assert held is not None and held.frame == 1
    assert stages.book.collected == 2


def test_decode_stage_skips_older_frames_when_newer_wait_and_counts_them() -> None:
    closing = threading.Event()
    gate = threading.Event()
    ran: List[int] = []
    skipped: List[int] = []

    def run(job: FrameJob) -> None:
        gate.wait(5)
        ran.append(job.seq)

    stage = DecodeStage(1, 8, run=run, skip=lambda job: skipped.append(job.seq),
                        failed=lambda job, exc: None, closing=closing)
    stage.start()
    jobs = []
    for seq in range(4):
        job = FrameJob(None, seq, 1, {})
        job.skippable = True
        jobs.append(job)
        stage.put(job)
    gate.set()
    for job in jobs:
        assert job.done.wait(5)
    closing.set()
    stage.close()
    assert ran[-1] == 3                        # the newest is always decoded
    assert sorted(ran + skipped) == [0, 1, 2, 3] and skipped


def test_decode_stage_survives_a_failing_frame() -> None:
    closing = threading.Event()
    failures: List[Any] = []

    def run(job: FrameJob) -> None:
        if job.seq == 0:
            raise RuntimeError("boom")

    stage = DecodeStage(2, 4, run=run, skip=lambda job: None,
                        failed=lambda job, exc: failures.append((job.seq, str(exc))),
                        closing=closing)
    stage.start()
    jobs = [FrameJob(None, seq, 1, {}) for seq in range(3)]
    for job in jobs:
        stage.put(job)
    for job in jobs:
        assert job.done.wait(5)
    closing.set()
    stage.close()
    assert failures == [(0, "boom")] and jobs[0].failed and not jobs[1].failed


def test_series_catalog_keeps_the_last_series_and_frame_meta_layers() -> None:
    catalog = SeriesCatalog()
    for series in range(12):
        catalog.record(SeriesHeader(series, {"count_time": 0.5, "photon_energy": 8000.0},
                                    ["threshold_1"]))
    assert catalog.meta(0) == {} and catalog.header(11) is not None
    meta = catalog.meta(11)
    assert meta["energy"] == 8000.0 and meta["channels"] == ["threshold_1"]
    event = ImageMessage(11, 4, {}, start_time=5)
    out = frame_meta(meta, {"count_time": 0.25}, event)
    assert out["count_time"] == 0.25 and out["frame"] == 4 and out["start_time"] == 5


@pytest.mark.parametrize("settings", [(0, False, False, 0.0, 0.0), (90, True, False, 2.0, 0.0)])
def test_latest_delivers_oriented_and_filtered_and_caches(settings: tuple) -> None:
    latest = LatestImage(threading.Condition(threading.RLock()))
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    latest.set(ImageResult(data=image, raw=image, channels={"t": image}, series=1, frame=0), 1)
    key, first = latest.delivered(settings)
    again_key, again = latest.delivered(settings)
    assert first is not None and again is first and again_key == key
    if settings[0] == 90:
        assert first.data.shape == (4, 3)
        assert int(first.data.min()) == 0       # below the low filter reads 0
    latest.clear()
    assert latest.delivered(settings)[1] is None


def test_frame_queue_is_fifo_bounded_and_wakes_a_waiting_producer_at_half() -> None:
    from eiger_server.stream.decode_stage import FrameQueue
    frames = FrameQueue(4)
    jobs = [FrameJob(None, seq, 1, {}) for seq in range(6)]
    for job in jobs[:4]:
        assert frames.put(job, timeout=0)
    assert not frames.put(jobs[4], timeout=0.01)          # full: refused after the wait
    done = threading.Event()

    def producer() -> None:
        assert frames.put(jobs[4], timeout=5)
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert frames.get(timeout=0) == (True, jobs[0])
    assert not done.wait(0.2)                              # 3 left: above half, still waiting
    assert frames.get(timeout=0) == (True, jobs[1])
    assert done.wait(5)                                    # 2 left: woken, its frame is in
    thread.join()
    assert [frames.get(timeout=0)[1] for _ in range(3)] == [jobs[2], jobs[3], jobs[4]]
    assert frames.get(timeout=0.01) == (False, None) and frames.empty()


def test_a_frame_failing_after_the_last_was_reserved_is_never_a_silent_gap(monkeypatch) -> None:
    """Frame 0 is slow and turns out unreadable while frame 1, the last one
    needed, is already added: the count is not complete (no result) until
    frame 0's failure is reported, and then it ends with the outcome saying so."""
    from eiger_server.formats.decode import DecodeError
    from eiger_server.stream import imageproc
    real = imageproc.accumulate_encoded
    go, settled, report = threading.Event(), threading.Event(), threading.Event()

    def fake(total, masked, encoded, what=""):  # type: ignore[no-untyped-def]
        if "frame 0" in what:
            go.wait(5)
            raise DecodeError(f"{what}: corrupt")
        return real(total, masked, encoded, what)

    monkeypatch.setattr(imageproc, "accumulate_encoded", fake)
    stages = _Stages(2, accumulate=True)
    unreadable = stages.reducer._unreadable

    def late_report(job, event, exc):  # type: ignore[no-untyped-def]
        settled.set()
        report.wait(5)                 # between the sum's settling and the count's books
        unreadable(job, event, exc)

    monkeypatch.setattr(stages.reducer, "_unreadable", late_report)
    image = np.full((4, 4), 3, np.uint16)
    first = threading.Thread(target=stages.reducer.run, args=(stages.job(0, image),))
    first.start()
    time.sleep(0.1)
    last = threading.Thread(target=stages.reducer.run, args=(stages.job(1, image),))
    last.start()
    time.sleep(0.1)
    go.set()
    assert settled.wait(5)
    last.join(5)
    assert not stages.book.wait(0.1, time.monotonic)      # no result handed out yet
    assert stages.latest.held is None and not stages.accumulated
    report.set()
    first.join(5)
    assert stages.book.complete()
    assert "1 of 2 images arrived unreadable (frame 0)" in (stages.book.outcome() or "")
    assert len(stages.accumulated) == 1 and stages.accumulated[0].nframes == 1


def test_a_multi_channel_frame_with_one_bad_channel_adds_nothing() -> None:
    from eiger_server.formats.decode import DecodeError
    from eiger_server.stream.imageproc import Accumulator
    image = np.full((64, 64), 3, np.uint16)
    good = _encoded(image)
    damaged = bytearray(good.data)
    damaged[-20:] = b"\xff" * 20
    bad = Encoded(bytes(damaged), good.encoding, good.shape, good.dtype)
    accumulator = Accumulator(2)
    accumulator.add_encoded({"t1": good, "t2": good}, 0)
    with pytest.raises(DecodeError):
        accumulator.add_encoded({"t1": good, "t2": bad}, 1)
    result = accumulator.result()
    assert accumulator.added == 1
    assert int(result["t1"][0, 0]) == int(result["t2"][0, 0]) == 3


def test_frames_refused_by_a_full_save_queue_are_all_counted_but_logged_sparingly(
        caplog: pytest.LogCaptureFixture) -> None:
    from eiger_server.stream.save_stage import SaveStage
    loss = Counters("decode_failures", "unsaved")
    stage = SaveStage(1, 1 << 30, loss, lambda: NO_OBSERVER)
    stage.start()
    gate = threading.Event()
    assert stage.saver is not None
    stage.saver.submit(lambda: gate.wait(10))          # a stuck disk
    time.sleep(0.2)
    stage.submit(lambda: None, 10, "frame 0")           # fills the queue of 1
    with caplog.at_level("WARNING", logger="eiger_server.stream.save_stage"):
        for frame in range(1, 61):
            stage.submit(lambda: None, 10, f"frame {frame}")
    gate.set()
    stage.close()
    assert loss["unsaved"] == 60
    lines = [r.getMessage() for r in caplog.records if "not saved" in r.getMessage()]
    assert 1 <= len(lines) <= 20 and "(20 refused so far)" in lines[-1]
