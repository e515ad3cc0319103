"""Accumulation by worker processes (``--workers N``, workers.py), as a stage.

On the receiver thread: each image of an accumulating count goes to one
worker in turn; when the count's last image has been handed out (or the
series ended), the workers' partial sums are merged by frame number into the
count's Accumulator, and a worker that died takes its images with it: they
are counted as lost and named.
"""
from __future__ import annotations

import logging
from typing import Any, Deque, Dict, Optional

from eiger_server.formats.stream_events import ImageMessage
from eiger_server.stream.count import CountBook
from eiger_server.stream.counters import Counters
from eiger_server.stream.decode_stage import FrameJob
from eiger_server.stream.imageproc import Accumulator
from eiger_server.stream.reduce import Reducer
from eiger_server.stream.workers import WorkerPool

__all__ = ["PoolBridge"]

log = logging.getLogger(__name__)


class PoolBridge:
    """The count being accumulated by ``pool`` (one at a time)."""

    def __init__(self, pool: WorkerPool, book: CountBook, reducer: Reducer,
                 loss: Counters, errors: Deque[str]) -> None:
        self.pool = pool
        self._book = book
        self._reducer = reducer
        self._loss = loss
        self._errors = errors
        self._gen: Optional[int] = None
        self._sent = 0
        self._meta: Dict[str, Any] = {}

    @property
    def open(self) -> bool:
        """True while a count is being handed to the workers."""
        return self._gen is not None

    def accumulate(self, job: FrameJob, event: ImageMessage,
                   accumulator: Accumulator) -> None:
        """Hand one image of an accumulating count to the worker processes."""
        pool = self.pool
        if self._gen != job.gen:
            if self._gen is not None:
                self.finish()
            pool.begin(job.gen, "accum")
            self._gen, self._sent = job.gen, 0
        self._meta = job.meta
        if not pool.submit(job.gen, event):
            self._errors.append(f"frame {event.frame} of series {event.series}: no stream "
                                "worker took it; counted as lost")
            self._loss.add("decode_failures")
            self._reducer.count_failure(job.gen, event.frame)
        else:
            self._sent += 1
        with self._book.cond:
            due = self._sent + self._book.failed >= accumulator.nimages
        if due:
            self.finish()

    def finish(self) -> None:
        """Merge the workers' partial sums of the open count and finish it."""
        gen, self._gen = self._gen, None
        if gen is None:
            return
        merged = self.pool.finish(gen)
        book = self._book
        with book.cond:
            accumulator = book.accumulator if gen == book.gen else None
        for message in merged.errors + [reason for _, reason in merged.failed]:
            self._errors.append(message)
            log.warning("%s", message)
        if accumulator is None:
            return
        accumulator.add_partial(merged.sums, merged.masks, merged.frames)
        # counted when merged: until then the count is not complete
        book.collected_one(gen, len(merged.frames))
        for frame in merged.lost:                # a worker died with them
            self._loss.add("decode_failures")
            self._reducer.count_failure(gen, frame, lost=True)
        for frame, _ in merged.failed:
            self._loss.add("decode_failures")
            self._reducer.count_failure(gen, frame)
        if accumulator.added:
            self._reducer.finish_accumulation(gen, accumulator, dict(self._meta))
