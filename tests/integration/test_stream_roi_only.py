"""ROI-only counts: the decode stage decodes only the ROI rows, answers stay exact."""
from __future__ import annotations

import numpy as np

from eiger_server.formats.compression import compress, v1_encoding
from eiger_server.formats.decode import Encoded
from eiger_server.formats.stream_events import ImageMessage
from eiger_server.stream import imageproc, roi_stage
import helpers
from helpers import wait_for


def bslz4(image: np.ndarray) -> Encoded:
    return Encoded(compress(image, "bslz4"), v1_encoding("bslz4", image.dtype), image.shape,
                   image.dtype)


def frames(n: int) -> list:
    rng = np.random.default_rng(5)
    out = []
    for _ in range(n):
        image = rng.integers(0, 1000, (300, 260)).astype(np.uint16)
        image[::17, ::5] = 65535
        out.append(image)
    return out


def count(handler, images, series):
    handler.begin_count(len(images))
    for frame, image in enumerate(images):
        handler.feed(ImageMessage(series, frame, {"threshold_1": bslz4(image)}))
    assert handler.wait_count(10)
    wait_for(lambda: handler.images_collected() == len(images), 5)


def test_roi_only_count_decodes_only_rows_and_stays_exact(tmp_path):
    handler = helpers.StubController(tmp_path, stream_workers=1).stream_handler()
    handler.start_pipeline()
    try:
        handler.set_roi("a", 10, 40, 5, 100)
        handler.set_roi("b", 250, 400, 0, 259)          # clipped at the bottom edge
        images = frames(3)
        count(handler, images, 1)
        # spec asked for the sum in this count: the next one still decodes whole images
        handler.get_sum()
        count(handler, images, 2)
        assert not isinstance(handler.held_image(), roi_stage.PartialImage)
        handler.get_roival()
        # only ROI sums since the last count began: this count is ROI-only
        count(handler, images, 3)
        assert isinstance(handler.held_image(), roi_stage.PartialImage)
        last = images[-1]
        assert handler.get_roival() == [imageproc.roi_sum(last, 10, 40, 5, 100),
                                        imageproc.roi_sum(last, 250, 400, 0, 259)]
        assert isinstance(handler.held_image(), roi_stage.PartialImage)   # still not decoded
        # asking for more decodes the image then: the answer is the whole image's
        assert handler.get_sum() == imageproc.masked_sum(last)
        assert handler.get_maxval() == imageproc.masked_max(last)
        assert handler.get_roisum("0", "0", "299", "259") == imageproc.masked_sum(last)
        # filters apply to the ROI rows as to the whole image
        count(handler, images, 4)            # sum was asked: whole images
        handler.get_roival()
        handler.set_low_filter("500")
        count(handler, images, 5)
        assert isinstance(handler.held_image(), roi_stage.PartialImage)
        filtered = imageproc.apply_filters(last, low=500)
        assert handler.get_roival() == [imageproc.roi_sum(filtered, 10, 40, 5, 100),
                                        imageproc.roi_sum(filtered, 250, 400, 0, 259)]
        assert handler.get_dropped() == 0
    finally:
        handler.close()


def test_roi_only_is_off_when_images_are_rotated():
    assert roi_stage.applies([(0, 1, 0, 1)], 0, False, False)
    assert not roi_stage.applies([(0, 1, 0, 1)], 90, False, False)
    assert not roi_stage.applies([(0, 1, 0, 1)], 0, True, False)
    assert not roi_stage.applies([], 0, False, False)
