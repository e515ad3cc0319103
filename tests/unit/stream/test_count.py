"""The count's books (stream/count.py), without threads or sockets."""
from __future__ import annotations

import threading
import time

import numpy as np

from eiger_server.stream.count import NOT_COUNTED, CountBook, frames_text


def _begun(nimages: int = 4, series: "int | None" = 7, accumulate: bool = False) -> CountBook:
    book = CountBook()
    book.begin(0, nimages, accumulate, series, 0, False, {"count_time": 0.1})
    return book


def test_frames_of_the_bound_series_count_and_gaps_are_lost() -> None:
    book = _begun()
    assert book.belongs(7, 0) == book.gen
    assert book.belongs(6, 1) == NOT_COUNTED            # another series
    assert book.belongs(7, 3) == book.gen               # frames 1 and 2 were skipped over
    assert book.lost_frames == [1, 2] and book.failed == 2
    assert book.belongs(7, 4) == NOT_COUNTED            # past the count's 4 frames
    for _ in range(2):
        book.collected_one(book.gen)
    assert book.complete()
    assert book.outcome() == ("2 of 4 images were lost in transit (frames 1, 2); "
                              "this count has no valid result")


def test_series_end_marks_the_missing_frames_lost() -> None:
    book = _begun(nimages=3)
    book.belongs(7, 0)
    book.collected_one(book.gen)
    assert not book.complete()
    assert book.series_ended(8) is None                 # not the count's series
    assert book.series_ended(7) == book.gen
    assert book.complete()
    assert "2 of 3 images were lost in transit (frames 1, 2)" in (book.outcome() or "")


def test_a_report_about_an_earlier_count_changes_nothing() -> None:
    book = _begun()
    old = book.gen
    book.begin(0, 2, False, 8, 0, False, {})
    assert not book.collected_one(old)
    assert not book.failure(old, 3)
    assert book.collected == 0 and book.failed == 0
    assert book.outcome() is None


def test_unreadable_and_lost_are_told_apart() -> None:
    book = _begun(nimages=3)
    for frame in range(3):
        book.belongs(7, frame)
    book.collected_one(book.gen)
    assert book.failure(book.gen, 1)
    assert book.failure(book.gen, 2, lost=True)
    text = book.outcome() or ""
    assert "1 of 3 images were lost in transit (frame 2)" in text
    assert "1 of 3 images arrived unreadable (frame 1)" in text


def test_a_new_series_leaves_out_the_series_seen_before() -> None:
    book = CountBook()
    book.note_series(3)
    book.note_series(4)
    book.begin(0, 2, False, None, 0, True, {})
    assert book.belongs(4, 0) == NOT_COUNTED
    assert book.belongs(5, 0) == book.gen


def test_receiver_losses_belong_to_a_count_not_yet_bound() -> None:
    book = CountBook()
    book.begin(10, 4, False, None, 0, False, {})
    book.receiver_lost(10)                        # nothing new
    assert book.failed == 0
    book.receiver_lost(12)
    assert book.failed == 2 and book.lost == 2


def test_opened_count_is_never_complete_until_begun() -> None:
    book = CountBook()
    book.open(0)
    assert not book.complete()
    book.fail("halted")
    assert book.complete() and book.outcome() == "halted"


def test_accumulation_is_due_when_the_rest_is_lost_and_taken_once() -> None:
    book = _begun(nimages=3, accumulate=True)
    accumulator = book.accumulator
    assert accumulator is not None
    accumulator.add({"t": np.ones((2, 2), np.uint16)}, 0)
    assert book.accumulation_due(book.gen) is None
    book.mark_lost(range(1, 3))
    assert book.accumulation_due(book.gen) is accumulator
    assert book.take_accumulator(book.gen, accumulator)
    assert not book.take_accumulator(book.gen, accumulator)


def test_wait_wakes_when_the_last_image_is_in() -> None:
    book = _begun(nimages=1)
    gen = book.gen
    threading.Timer(0.05, lambda: book.collected_one(gen)).start()
    assert book.wait(5, time.monotonic)
    assert not _begun(nimages=1).wait(0.01, time.monotonic)


def test_frames_text() -> None:
    assert frames_text([]) == "" and frames_text([-1]) == ""
    assert frames_text([5]) == " (frame 5)"
    assert frames_text(list(range(25))).endswith("19 and 5 more)")
