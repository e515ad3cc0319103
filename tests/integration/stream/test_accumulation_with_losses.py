"""An accumulation that lost images: what did arrive keeps its series (for the
TIFF name and metadata), the observer sees the result once, and spec gets an
error naming the lost frames instead of the partial sum."""
from __future__ import annotations

import numpy as np
import tifffile
import pytest

from eiger_server.errors import DataError
from eiger_server.formats.compression import compress, v1_encoding
from eiger_server.formats.decode import Encoded
from eiger_server.formats.stream_events import ImageMessage, SeriesEnd

from helpers import StubController, wait_for


def _encoded(image: np.ndarray) -> Encoded:
    return Encoded(compress(image, "bslz4"), v1_encoding("bslz4", image.dtype), image.shape,
                   image.dtype)


class _Recorder:
    """An observer that records the images it is shown."""

    def __init__(self) -> None:
        self.images: list = []

    def on_image(self, image, meta) -> None:
        self.images.append((meta.get("series"), meta.get("nframes")))

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_lost_frames_leave_the_series_and_one_observed_result(tmp_path):
    handler = StubController(tmp_path, stream_workers=1).stream_handler()
    handler.start_pipeline()
    recorder = _Recorder()
    handler.observer = recorder
    try:
        image = np.ones((20, 30), np.uint16)
        handler.begin_count(3, accumulate=True, series=7)
        for frame in (0, 1):
            handler.feed(ImageMessage(7, frame, {"threshold_1": _encoded(image)}))
        wait_for(lambda: handler.images_collected() == 2, 5)
        handler.feed(SeriesEnd(7))             # frame 2 will not come
        assert handler.wait_count(5)
        assert recorder.images == [(7, 2)]
        with pytest.raises(DataError, match=r"1 of 3 images were lost in transit \(frame"):
            handler.get_sum()
    finally:
        handler.close()


def test_the_partial_result_is_saved_under_its_series(tmp_path):
    """The images that arrived are still saved, named for their own series."""
    handler = StubController(tmp_path, stream_workers=1).stream_handler()
    handler.start_pipeline()
    try:
        handler.set_autosave("1")
        image = np.ones((20, 30), np.uint16)
        handler.begin_count(3, accumulate=True, series=7)
        for frame in (0, 1):
            handler.feed(ImageMessage(7, frame, {"threshold_1": _encoded(image)}))
        wait_for(lambda: handler.images_collected() == 2, 5)
        handler.feed(SeriesEnd(7))
        assert handler.wait_count(5) and handler.wait_saved(5)
        latest = handler.latest()
        assert latest is not None and latest.series == 7
        assert latest.metadata["series"] == 7
        saved = handler.get_latest_file()
        assert saved == str(tmp_path / "s7.tif")     # prefix "s$id" of series 7
        assert tifffile.imread(saved).sum() == 2 * image.sum()
    finally:
        handler.close()


def test_an_unreadable_frame_outside_the_count_is_not_the_counts(tmp_path):
    """A garbled frame outside the count (past its last frame) does not spoil it."""
    from eiger_server.formats.stream_events import StreamErrorEvent
    handler = StubController(tmp_path, stream_workers=1).stream_handler()
    handler.start_pipeline()
    try:
        image = np.full((20, 30), 3, np.uint16)
        handler.begin_count(1, accumulate=False, series=7)
        handler.feed(StreamErrorEvent("garbled", series=7, frame=5))
        handler.feed(ImageMessage(7, 0, {"threshold_1": _encoded(image)}))
        assert handler.wait_count(5)
        assert handler.count_outcome() is None
        assert int(handler.get_sum()) == int(image.sum())
    finally:
        handler.close()
