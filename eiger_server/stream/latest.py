"""The latest image of the count, as spec reads it: latest wins.

The reduce stage offers each finished image; only a newer one (by arrival
number) of the running count replaces the one held. What spec reads is
derived on request: the image oriented and filtered (cached until the image
or the settings change), its sum, maximum and ROI sums (cached per image and
settings). An image known only by its ROI sums (roi_stage) is decoded whole
the first time spec asks for more.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Optional, Tuple

from eiger_server.stream import imageproc, roi_stage
from eiger_server.stream.imageproc import ImageResult

__all__ = ["LatestImage"]

#: Statistics cached per image before the cache is emptied.
_STATS_KEPT = 64


class LatestImage:
    """The image ``read``, ``sum``, ``maxval`` and the ROIs look at.

    ``cond`` is the count's condition (CountBook.cond): the latest image and
    the count change together.
    """

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self._result: Optional[ImageResult] = None
        self._seq = -1
        self._delivered: Optional[Tuple[tuple, ImageResult]] = None
        self._stats: Dict[tuple, Any] = {}

    def clear(self) -> None:
        """No image: the previous count's is never presented as a new one's."""
        with self.cond:
            self._result = None
            self._delivered = None
            self._stats = {}

    def set(self, result: ImageResult, seq: int) -> None:
        with self.cond:
            self._result = result
            self._seq = seq
            self._delivered = None
            self._stats = {}

    def offer(self, result: ImageResult, seq: int) -> bool:
        """Hold ``result`` if it arrived after the image held; True if it did."""
        with self.cond:
            if seq <= self._seq:
                return False
            self.set(result, seq)
            return True

    @property
    def held(self) -> Optional[ImageResult]:
        """The image held, as it is (possibly known by its ROI sums only)."""
        return self._result

    def complete(self, result: ImageResult) -> ImageResult:
        """``result`` decoded whole (a ROI-only image is decoded now, once)."""
        if not isinstance(result, roi_stage.PartialImage):
            return result
        full = result.complete()
        with self.cond:
            if self._result is result:
                self._result = full
        return full

    def delivered(self, settings: tuple) -> Tuple[tuple, Optional[ImageResult]]:
        """(cache key, the image as spec reads it under ``settings``:
        (rotation, flipv, fliph, low filter, high filter)); the key changes
        with the image and with the settings."""
        with self.cond:
            result = self._result
            key = (self._seq,) + tuple(settings)
            cached = self._delivered
        if result is None:
            return key, None
        result = self.complete(result)
        if cached is not None and cached[0] == key:
            return key, cached[1]
        rotation, flipv, fliph, low, high = settings
        data = imageproc.deliver(result.raw, rotation, flipv, fliph, low, high)
        delivered = ImageResult(data=data, raw=result.raw, channels=result.channels,
                                series=result.series, frame=result.frame,
                                nframes=result.nframes, metadata=result.metadata)
        with self.cond:
            if self._result is result:
                self._delivered = (key, delivered)
        return key, delivered

    def cached(self, key: tuple) -> Tuple[bool, Any]:
        """(found, value) of a statistic computed before for ``key``."""
        with self.cond:
            if key in self._stats:
                return True, self._stats[key]
            return False, None

    def remember(self, key: tuple, value: Any) -> None:
        with self.cond:
            if len(self._stats) > _STATS_KEPT:
                self._stats.clear()
            self._stats[key] = value
