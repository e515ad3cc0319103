"""Counters that the receiver, the decode workers and the saver add to at once."""
from __future__ import annotations

import sys
import threading

from eiger_server.options import ServerOptions
from eiger_server.formats.stream_events import StreamErrorEvent
from eiger_server.stream.counters import Counters
from eiger_server.stream.handler import StreamHandler


def hammer(add, threads: int = 8, each: int = 20000) -> None:
    """``add`` from many threads at once, switching threads as often as possible."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(each):
            add()
    try:
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval)


def test_no_addition_is_lost():
    counters = Counters("a", "b")
    hammer(lambda: counters.add("a"))
    hammer(lambda: counters.add("b", 2), threads=4)
    assert counters["a"] == 8 * 20000 and counters["b"] == 4 * 2 * 20000
    assert counters.total() == 8 * 20000 + 8 * 20000


def test_unreadable_images_from_many_threads_are_all_counted():
    """The path an unreadable image takes (receiver and workers call it at once)."""
    handler = StreamHandler(detector=None, simplon=None, settings=None,   # no DCU needed
                            options=ServerOptions(), acq_mode=lambda: "SINGLE")
    bad = StreamErrorEvent("garbled", series=1, frame=3)
    hammer(lambda: handler.feed(bad), threads=8, each=5000)
    assert handler.decode_failures == 40000
