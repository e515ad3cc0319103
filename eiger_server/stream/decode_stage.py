"""The decode stage: a bounded queue of frames and the threads that take them.

The receiver thread puts each frame of interest in (blocking when the queue
is full, so back-pressure reaches ZeroMQ and the DCU); each decode thread
takes one and runs the reduce step on it (reduce.py). A frame whose pixels
nobody needs unless it is the newest (``skippable``) is counted without
decoding when newer frames wait: latest wins.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from eiger_server.formats.stream_events import ImageMessage
from eiger_server.stream.imageproc import ImageResult

__all__ = ["DecodeStage", "FrameJob"]

log = logging.getLogger(__name__)


class FrameJob:
    """One image on its way through the pipeline."""

    __slots__ = ("event", "seq", "gen", "meta", "result", "failed", "done", "skippable",
                 "rois")

    def __init__(self, event: Optional[ImageMessage], seq: int, gen: int,
                 meta: Dict[str, Any]) -> None:
        self.event = event
        self.seq = seq
        self.gen = gen
        self.meta = meta
        self.result: Optional[ImageResult] = None
        self.failed = False
        self.done = threading.Event()
        # True when nothing needs this image's pixels unless it is the newest:
        # a decode thread finding newer images queued counts it without decoding.
        self.skippable = False
        # Not None: decode only the rows of these ROIs (an ROI-only count), or
        # nothing ([]: HDF5RAW saves the compressed frame); roi_stage keeps the
        # image encoded until spec asks for more
        self.rois: Optional[List[Tuple[int, int, int, int]]] = None


class FrameQueue:
    """A bounded FIFO of frames between the receiver and the decode threads.

    Like ``queue.Queue``, but a producer that had to wait for room is woken
    once the queue has drained to half its depth, not at every frame taken:
    a thread's wake-up costs tens of microseconds of CPU, which at every
    frame is a large part of a frame's whole cost."""

    def __init__(self, depth: int) -> None:
        self.depth = max(1, int(depth))
        self._low = self.depth // 2
        self._items: Deque[Optional[FrameJob]] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._producers_waiting = 0

    def put(self, item: Optional[FrameJob], timeout: float) -> bool:
        """Append ``item``, waiting up to ``timeout`` s for room; False if none came."""
        with self._lock:
            if len(self._items) >= self.depth:
                self._producers_waiting += 1
                try:
                    if not self._not_full.wait_for(lambda: len(self._items) < self.depth,
                                                   timeout):
                        return False
                finally:
                    self._producers_waiting -= 1
            self._items.append(item)
            self._not_empty.notify()
            return True

    def get(self, timeout: float) -> Tuple[bool, Optional[FrameJob]]:
        """(True, the oldest item), or (False, None) after ``timeout`` s without one."""
        with self._lock:
            if not self._items and not self._not_empty.wait_for(lambda: bool(self._items),
                                                                timeout):
                return False, None
            item = self._items.popleft()
            if self._producers_waiting and len(self._items) <= self._low:
                self._not_full.notify_all()
            return True, item

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class DecodeStage:
    """``threads`` decode threads over one queue of ``depth`` frames.

    ``run(job)`` decodes and reduces a frame, ``skip(job)`` counts one
    without decoding, ``failed(job, exc)`` reports one that raised; every
    job's ``done`` is set afterwards, whatever happened.
    """

    def __init__(self, threads: int, depth: int, *, run: Callable[[FrameJob], None],
                 skip: Callable[[FrameJob], None],
                 failed: Callable[[FrameJob, Exception], None],
                 closing: threading.Event) -> None:
        self.nthreads = max(1, int(threads))
        self.depth = max(1, int(depth))
        self._run = run
        self._skip = skip
        self._failed = failed
        self._closing = closing
        self._queue = FrameQueue(self.depth)
        self._threads: List[threading.Thread] = []

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def start(self) -> None:
        if self._threads:
            return
        for number in range(self.nthreads):
            thread = threading.Thread(target=self._work, name=f"stream-decode-{number}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def put(self, job: FrameJob) -> None:
        """(receiver thread) Queue ``job``, waiting while the queue is full."""
        while not self._closing.is_set():
            if self._queue.put(job, timeout=0.2):
                return

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Stop the threads (``closing`` is set by the owner first)."""
        for _ in self._threads:
            self._queue.put(None, timeout=0)
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads = []

    def run_here(self, job: FrameJob) -> None:
        """Run ``job`` on the calling thread: for a frame with nothing to
        decode, a hand-off (a thread's wake-up) would cost more than the work."""
        self._handle(job, skip=False)

    def _work(self) -> None:
        while not self._closing.is_set():
            got, job = self._queue.get(timeout=0.5)
            if not got:
                continue
            if job is None:
                return
            self._handle(job, skip=job.skippable and not self._queue.empty())

    def _handle(self, job: FrameJob, skip: bool) -> None:
        try:
            if skip:
                self._skip(job)
            else:
                self._run(job)
        except Exception as exc:          # nothing may kill a decode thread
            log.exception("processing an image failed")
            job.failed = True
            self._failed(job, exc)
        finally:
            job.event = None
            job.done.set()
