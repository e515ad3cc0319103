"""The PUB socket never waits for a slow subscriber (drops and counts); the log
gives rates while a series streams and a summary after it."""
from __future__ import annotations

import time
from types import SimpleNamespace

import zmq

from eiger_server.logsetup import PROGRESS
from eiger_server.observe.observer import Observer
from eiger_server.observe.publish import Publisher
from helpers import free_port, wait_for


def test_slow_subscriber_costs_nothing_and_drops_are_counted():
    address = f"tcp://127.0.0.1:{free_port()}"
    publisher = Publisher(address, hwm=4)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 4)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    try:
        time.sleep(0.3)
        blob = bytes(1 << 20)                      # 1 MB frames nobody reads
        start = time.perf_counter()
        for frame in range(300):
            publisher.send_frame([b"{}", b"{}", blob], 1, frame, "V1")
        elapsed = time.perf_counter() - start
        assert publisher.sent + publisher.dropped == 300
        assert publisher.dropped > 200, "the subscriber's queue should have filled"
        assert elapsed < 2.0, f"sending 300 frames to a stalled subscriber took {elapsed:.1f} s"
        # what was sent arrives in order, numbered: gaps show the drops
        seqs = []
        while sub.poll(200):
            parts = sub.recv_multipart()
            if parts[0] == b"image":
                seqs.append(int(parts[1].split(b'"seq":')[1].rstrip(b"}")))
        assert seqs == sorted(seqs) and len(seqs) <= publisher.sent
    finally:
        sub.close(0)
        publisher.close()


def test_rate_lines_while_streaming_and_a_summary_after(caplog):
    caplog.set_level(PROGRESS, logger="eiger_server.observe")
    counters = {"lost": 0, "unreadable": 0, "unsaved": 0, "queue": 3, "queue_depth": 64,
                "save_queue": 0}
    observer = Observer(lambda: dict(counters), interval=0.5)
    observer.start()
    try:
        observer.on_series_start(SimpleNamespace(series=7, config={"count_time": 0.01},
                                                 channels=["threshold_1"], nimages=None), "V2")
        end = time.monotonic() + 1.8
        frame = 0
        while time.monotonic() < end:
            observer.on_frame([b""], 7, frame, 1000, "V2")
            observer.on_image(None, {"series": 7, "frame": frame})
            frame += 1
            time.sleep(0.005)
        counters.update(lost=2, queue=0)
        observer.on_series_end(7)
        summary = wait_for(lambda: [r.getMessage() for r in caplog.records
                                    if "summary" in r.getMessage()], 5, what="the summary")
    finally:
        observer.close()
    rates = [r for r in caplog.records if "streaming" in r.getMessage()]
    assert len(rates) >= 2 and all(r.levelno == PROGRESS for r in rates)
    assert "frames/s" in rates[0].getMessage() and "MB/s" in rates[0].getMessage()
    assert "queue 3/64 (5 %)" in rates[0].getMessage()
    assert summary[0].startswith(f"series 7 summary: received {frame}, decoded {frame}, "
                                 "saved 0, dropped 2 (lost 2, unreadable 0, unsaved 0)")
    assert observer.summaries[-1]["dropped"] == {"lost": 2, "unreadable": 0, "unsaved": 0}
