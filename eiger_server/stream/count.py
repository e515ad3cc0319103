"""The count's books: which images belong to it, how many are in, lost or
unreadable, and whether it is over. No I/O and no threads of its own.

A count (``begin``) is numbered (``gen``); an image belongs to it when its
series and frame fall inside the count's range (``belongs``), and every stage
reports what became of it by that number, so a late report about a previous
count changes nothing. The books hold the one condition the stream path
shares: the latest image and the accumulation sit under the same lock, so a
waiter sees the count complete and its result in the same instant.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Deque, Dict, List, Optional

from eiger_server.stream.imageproc import Accumulator

__all__ = ["CountBook", "NOT_COUNTED", "frames_text"]

#: The ``gen`` of an image that belongs to no count.
NOT_COUNTED = -1
#: Frame numbers kept per count for the error text (the counts are complete).
_FRAMES_KEPT = 1000


def frames_text(frames: List[int]) -> str:
    """`` (frames 2, 4, 6)`` for the known frame numbers, at most 20 of them
    (``-1`` stands for a frame without a number)."""
    known = [f for f in frames if f >= 0]
    if not known:
        return ""
    shown = ", ".join(str(f) for f in known[:20])
    more = f" and {len(known) - 20} more" if len(known) > 20 else ""
    return f" (frame{'s' if len(known) > 1 else ''} {shown}{more})"


class CountBook:
    """The running (or last) count of the stream path.

    ``cond`` is the condition every stage uses for the count's state; the
    methods take it themselves (it is re-entrant), the callers take it only to
    make several steps one.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.gen = 0
        self.counting = False
        self.expected = 0
        self.collected = 0
        self.arrived = 0                  # images of the count received (maybe not yet reduced)
        self.failed = 0                   # images of the count that will not be added
        self.lost = 0                     # ... of which lost in transit (not unreadable)
        self.accumulate = False           # of the current/last count
        self.accumulator: Optional[Accumulator] = None
        self.meta: Dict[str, Any] = {}    # the detector's values at the count's start
        self.last_meta: Dict[str, Any] = {}   # the metadata of the count's latest image
        # which images are the count's: those of series `series` (None: any,
        # but not one of `stale`) with frames in [lo, hi)
        self.series: Optional[int] = None
        self.lo = 0
        self.hi: Optional[int] = None
        self.next = 0                     # the next frame of the count due
        self.stale: frozenset = frozenset()
        self.recent: Deque[int] = collections.deque(maxlen=16)
        self.lost_frames: List[int] = []
        self.bad_frames: List[int] = []
        self.outcome_text: Optional[str] = None
        self.receiver_lost_seen = 0
        self.seq = 0                      # images numbered in arrival order

    def next_seq(self) -> int:
        """The next arrival number (a later image, or result, has a larger one)."""
        with self.cond:
            self.seq += 1
            return self.seq

    # -- the count's life ---------------------------------------------------------
    def reset(self, receiver_lost: int) -> None:
        """A new count: nothing counted, no outcome (``receiver_lost``: the
        receiver's loss count now, so earlier losses are not this count's)."""
        with self.cond:
            self.gen += 1
            self.counting = True
            self.collected = 0
            self.arrived = 0
            self.failed = 0
            self.lost = 0
            self.receiver_lost_seen = receiver_lost
            self.series = None
            self.lo = self.next = 0
            self.hi = None
            self.stale = frozenset()
            self.lost_frames = []
            self.bad_frames = []
            self.last_meta = {}
            self.outcome_text = None
            self.accumulator = None
            self.cond.notify_all()

    def open(self, receiver_lost: int) -> None:
        """A count is starting whose size is not known yet: never complete."""
        with self.cond:
            self.reset(receiver_lost)
            self.expected = 0

    def begin(self, receiver_lost: int, nimages: int, accumulate: bool,
              series: Optional[int], first_frame: int, new_series: bool,
              meta: Dict[str, Any]) -> None:
        """Count ``nimages`` images (see StreamHandler.begin_count)."""
        with self.cond:
            self.reset(receiver_lost)
            self.expected = max(1, int(nimages))
            if series is not None:
                self.series = int(series)
                self.lo = self.next = int(first_frame)
                self.hi = self.lo + self.expected
            elif new_series:
                self.stale = frozenset(self.recent)
            self.accumulate = bool(accumulate)
            self.accumulator = Accumulator(self.expected) if accumulate else None
            self.meta = meta
            self.cond.notify_all()

    def bind(self, series: int, first_frame: int = 0) -> None:
        """The running count is series ``series`` (known once arm answered)."""
        with self.cond:
            self.series = int(series)
            self.lo = int(first_frame)
            self.next = max(self.next, self.lo)
            self.hi = self.lo + self.expected

    def fail(self, reason: str) -> None:
        """The count ends without a valid result (halted, timed out, ...)."""
        with self.cond:
            if self.outcome_text is None:
                self.outcome_text = reason
            self.counting = False
            self.accumulator = None
            self.cond.notify_all()

    # -- which images are the count's (receiver thread, stream order) ---------------
    def note_series(self, series: int) -> None:
        """Remember a series the stream carried (``new_series`` leaves them out)."""
        with self.cond:
            if not self.recent or self.recent[-1] != series:
                self.recent.append(series)

    def of_count(self, series: int, frame: int) -> bool:
        """Is frame ``frame`` of ``series`` one of the running count's?"""
        with self.cond:
            if series in self.stale:
                return False
            if self.series is None:
                return True
            return series == self.series and frame >= self.lo and (
                self.hi is None or frame < self.hi)

    def belongs(self, series: int, frame: int) -> int:
        """The count's ``gen`` when the image is the count's, else NOT_COUNTED;
        frames of the count skipped over are lost (call in stream order)."""
        with self.cond:
            if not self.of_count(series, frame):
                return NOT_COUNTED
            if self.series is not None:
                if frame > self.next:
                    self.mark_lost(range(self.next, frame))
                self.next = max(self.next, frame + 1)
            self.arrived += 1
            return self.gen

    def receiver_lost(self, lost_now: int) -> None:
        """The receiver's loss count is ``lost_now``: frames it found missing
        belong to a count not yet bound to its series."""
        with self.cond:
            if lost_now > self.receiver_lost_seen:
                if self.series is None:
                    self.failed += lost_now - self.receiver_lost_seen
                    self.lost += lost_now - self.receiver_lost_seen
                    self._wake_if_complete()
                self.receiver_lost_seen = lost_now

    def mark_lost(self, frames: range) -> None:
        """Frames of the count that will not come."""
        if not frames:
            return
        with self.cond:
            self.failed += len(frames)
            self.lost += len(frames)
            if len(self.lost_frames) < _FRAMES_KEPT:
                self.lost_frames.extend(frames[:_FRAMES_KEPT])
            self._wake_if_complete()

    def series_ended(self, series: int) -> Optional[int]:
        """The end of ``series``: the count's frames not in by now are lost.
        The count's ``gen`` when that concerned the running count, else None."""
        with self.cond:
            if series != self.series or self.hi is None:
                return None
            self.mark_lost(range(self.next, self.hi))
            self.next = self.hi
            return self.gen

    def unreadable(self, series: Optional[int], frame: int) -> int:
        """An image that came but cannot be read: the ``gen`` to charge it to."""
        with self.cond:
            mine = self.series is None if series is None else self.of_count(series, frame)
            if mine and series == self.series:
                self.next = max(self.next, frame + 1)
            return self.gen if mine else NOT_COUNTED

    # -- what became of the images -------------------------------------------------
    def collected_one(self, gen: int, n: int = 1) -> bool:
        """``n`` images of count ``gen`` are in; False when ``gen`` is over."""
        with self.cond:
            if gen != self.gen:
                return False
            self.collected += n
            self._wake_if_complete()
            return True

    def failure(self, gen: int, frame: Optional[int] = None, *, lost: bool = False) -> bool:
        """An image of count ``gen`` arrived unreadable (``lost``: never
        arrived); False when ``gen`` is over."""
        with self.cond:
            if gen != self.gen:
                return False
            self.failed += 1
            if lost:
                self.lost += 1
                if len(self.lost_frames) < _FRAMES_KEPT and frame is not None:
                    self.lost_frames.append(int(frame))
            elif len(self.bad_frames) < _FRAMES_KEPT:
                self.bad_frames.append(-1 if frame is None else int(frame))
            self._wake_if_complete()
            return True

    def accumulation_due(self, gen: int) -> Optional[Accumulator]:
        """The accumulator of count ``gen`` when every image it still awaits
        is known to be lost (finish it with those that arrived), else None."""
        with self.cond:
            accumulator = self.accumulator if gen == self.gen else None
            if accumulator is not None and accumulator.added > 0 and \
                    accumulator.added + self.failed >= accumulator.nimages:
                return accumulator
            return None

    def take_accumulator(self, gen: int, accumulator: Accumulator) -> bool:
        """Claim ``accumulator``'s result for count ``gen``: True once."""
        with self.cond:
            if gen != self.gen or self.accumulator is not accumulator:
                return False
            self.accumulator = None
            self.cond.notify_all()
            return True

    def _wake_if_complete(self) -> None:
        """(under cond) Wake the waiters once the count is complete: they wait
        for nothing else, and a wake-up per image costs each image tens of
        microseconds of CPU."""
        if self.complete():
            self.cond.notify_all()

    # -- questions -----------------------------------------------------------------
    def complete(self) -> bool:
        """True when no image of the count is still expected."""
        with self.cond:
            if not self.counting:
                return True
            if self.expected <= 0:
                return False              # opened, not yet begun
            if self.accumulate:
                return self.accumulator is None or (
                    self.collected + self.failed >= self.expected
                    and self.accumulator.added == 0)
            return self.collected + self.failed >= self.expected

    def wait(self, timeout: float, monotonic: Any) -> bool:
        """True once the count is complete; False after ``timeout`` seconds."""
        deadline = monotonic() + max(0.0, float(timeout))
        with self.cond:
            while not self.complete():
                remaining = deadline - monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    def outcome(self) -> Optional[str]:
        """Why the last count has no valid result; None when it has one (or runs)."""
        with self.cond:
            if self.outcome_text is not None:
                return self.outcome_text
            if not self.failed or not self.complete():
                return None
            parts = []
            total = max(self.expected, self.collected + self.failed)
            bad = self.failed - self.lost
            if self.lost > 0:
                parts.append(f"{self.lost} of {total} images were lost in transit"
                             + frames_text(self.lost_frames))
            if bad > 0:
                parts.append(f"{bad} of {total} images arrived unreadable"
                             + frames_text(self.bad_frames))
            return "; ".join(parts) + "; this count has no valid result"
