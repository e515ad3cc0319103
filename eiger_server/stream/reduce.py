"""The reduce step: what a decoded frame becomes for the count.

Run on a decode thread for each frame of the count: in accumulation the
frame is added into the count's Accumulator (one pass, kernels.py) and the
sum becomes the count's one image when the last frame is in (or the missing
ones are known to be lost); otherwise the frame is offered as the latest
image. ROI-only counts and HDF5RAW keep the frame encoded and decode just
the ROI rows (roi_stage.py). Whatever happens is reported to the count's
books by the count's number, never to a later count.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from eiger_server.formats.decode import DecodeError
from eiger_server.formats.stream_events import ImageMessage
from eiger_server.observe.hooks import StreamObserver
from eiger_server.stream import roi_stage
from eiger_server.stream.count import CountBook
from eiger_server.stream.counters import Counters
from eiger_server.stream.decode_stage import FrameJob
from eiger_server.stream.imageproc import Accumulator, ImageResult
from eiger_server.stream.latest import LatestImage

__all__ = ["Reducer"]

log = logging.getLogger(__name__)


def frame_name(event: ImageMessage) -> str:
    return f"frame {event.frame} of series {event.series}"


class Reducer:
    """Frames into the count's result.

    ``filters()`` gives the (low, high) filters ROI-only sums apply;
    ``on_accumulated(gen, result)`` hears of a finished accumulation as it
    becomes the latest image (under the count's lock) and returns what saves
    it, run after the lock is released (or None).
    """

    def __init__(self, book: CountBook, latest: LatestImage, loss: Counters,
                 errors: Deque[str], observer: Callable[[], StreamObserver],
                 filters: Callable[[], Tuple[float, float]],
                 on_accumulated: Callable[[int, ImageResult],
                                          Optional[Callable[[], None]]]) -> None:
        self.book = book
        self.latest = latest
        self._loss = loss
        self._errors = errors
        self._observer = observer
        self._filters = filters
        self._on_accumulated = on_accumulated

    # -- a decode thread's three outcomes (DecodeStage) -----------------------------
    def run(self, job: FrameJob) -> None:
        event = job.event
        assert event is not None
        if job.rois is not None:
            self._partial(job, event)
            return
        accumulator = self._accumulator(job.gen)
        if accumulator is not None:
            self._accumulate(job, event, accumulator)
            return
        try:
            arrays = {name: encoded.decode(f"{frame_name(event)}, channel {name}")
                      for name, encoded in event.channels.items()}
        except DecodeError as exc:
            self._unreadable(job, event, exc)
            return
        first = next(iter(arrays.values()))
        result = ImageResult(data=first, raw=first, channels=arrays, series=event.series,
                             frame=event.frame, nframes=1, metadata=job.meta)
        job.result = result
        self._observer().on_image(first, job.meta)
        self._offer(job, result)

    def skip(self, job: FrameJob) -> None:
        """Count an image whose pixels nobody needs (newer ones are queued)."""
        self.book.collected_one(job.gen)

    def failed(self, job: FrameJob, exc: Exception) -> None:
        self._errors.append(f"processing an image failed: {exc}")
        self._loss.add("decode_failures")
        self.count_failure(job.gen, job.event.frame if job.event else None)

    # -- reporting ---------------------------------------------------------------------
    def count_failure(self, gen: int, frame: Optional[int] = None, *,
                      lost: bool = False) -> None:
        """An image (``frame``) of count ``gen`` arrived and cannot be read
        (``lost``: it never arrived, e.g. a worker died with it)."""
        if self.book.failure(gen, frame, lost=lost):
            # finish with the images that did arrive; the rest are in dropped
            self.maybe_finish(gen)

    def maybe_finish(self, gen: int) -> None:
        """Finish an accumulation whose missing images are known to be lost."""
        accumulator = self.book.accumulation_due(gen)
        if accumulator is not None:
            with self.book.cond:
                # the latest image's metadata (series, times) over the count's own
                meta = dict(self.book.meta, **self.book.last_meta)
            self.finish_accumulation(gen, accumulator, meta)

    def finish_accumulation(self, gen: int, accumulator: Accumulator,
                            meta: Dict[str, Any]) -> None:
        """The count's sum becomes its one image (once)."""
        channels = accumulator.result()
        first = next(iter(channels.values()))
        meta = dict(meta, nframes=accumulator.added, accumulated=True,
                    first_frame=accumulator.first_frame, frame=accumulator.last_frame)
        result = ImageResult(data=first, raw=first, channels=channels,
                             series=int(meta.get("series", 0)),
                             frame=int(accumulator.last_frame or 0),
                             nframes=accumulator.added, metadata=meta)
        with self.book.cond:
            if gen == self.book.gen and \
                    accumulator.added + self.book.failed < accumulator.nimages:
                # an image counted when it was reserved failed since and is not
                # reported yet: its report finishes the count (with its outcome)
                return
            if not self.book.take_accumulator(gen, accumulator):
                return                    # finished already (or a new count began)
            self.latest.set(result, self.book.next_seq())
            save = self._on_accumulated(gen, result)   # planned with the result
        self._observer().on_image(first, meta)
        if save is not None:
            save()

    # -- the steps ---------------------------------------------------------------------
    def _accumulator(self, gen: int) -> Optional[Accumulator]:
        with self.book.cond:
            return self.book.accumulator if gen == self.book.gen else None

    def _accumulate(self, job: FrameJob, event: ImageMessage,
                    accumulator: Accumulator) -> None:
        try:
            finished = accumulator.add_encoded(event.channels, event.frame, frame_name(event))
        except DecodeError as exc:
            self._unreadable(job, event, exc)
            return
        book = self.book
        with book.cond:
            if book.collected_one(job.gen):
                # images lost earlier in the count will not come: finish without them
                finished = finished or (accumulator.added + book.failed >= accumulator.nimages)
        if finished:
            self.finish_accumulation(job.gen, accumulator, job.meta)

    def _partial(self, job: FrameJob, event: ImageMessage) -> None:
        """ROI-only count or HDF5RAW: only the ROI rows (if any) are decoded."""
        low, high = self._filters()
        try:
            result = roi_stage.partial_image(event, job.rois or [], job.meta, low, high)
        except DecodeError as exc:
            self._unreadable(job, event, exc)
            return
        self._offer(job, result)

    def _offer(self, job: FrameJob, result: ImageResult) -> None:
        with self.book.cond:
            self.book.collected_one(job.gen)
            # an image that is not the count's (a stale series) is never its result
            if job.gen == self.book.gen:
                self.latest.offer(result, job.seq)

    def _unreadable(self, job: FrameJob, event: ImageMessage, exc: DecodeError) -> None:
        job.failed = True
        self._loss.add("decode_failures")
        self._errors.append(str(exc))
        log.warning("%s", exc)
        self.count_failure(job.gen, event.frame)
