"""stream_latest_file names the file of the count just ended, even when the
disk is slower than the count (a count ends when its images are in; they are
saved after)."""
from __future__ import annotations

import os
import threading
import time

import pytest

from eiger_server.storage.tiff import TiffSaver
from eiger_server.stream import handler as handler_module

from test_stream_e2e import count, setup_stream


def test_saver_waits_for_what_was_queued_before_the_call_only():
    saver = TiffSaver(depth=8)
    done = []
    try:
        saver.submit(lambda: (time.sleep(0.3), done.append(1)))
        assert saver.wait_submitted(5) and done == [1]
        gate = threading.Event()
        saver.submit(gate.wait)                  # a job that never ends by itself
        started = time.monotonic()
        assert not saver.wait_submitted(0.2)     # it was queued before: waited for, in vain
        assert time.monotonic() - started >= 0.2
        gate.set()
        assert saver.wait_submitted(5)
    finally:
        saver.close()


@pytest.mark.parametrize("api", ["1.8.0"])
def test_latest_file_is_this_counts_with_a_slow_disk(controller, fake_dcu, monkeypatch):
    ctrl, app = controller, fake_dcu
    real_save = handler_module.save_tiff

    def slow_save(*args, **kwargs):
        time.sleep(0.3)                          # the disk is slower than a count
        return real_save(*args, **kwargs)

    monkeypatch.setattr(handler_module, "save_tiff", slow_save)
    setup_stream(ctrl, app, "V1", nimages=1, prefix="slow_$id")
    for point in range(3):
        ctrl.set("arm")
        series = ctrl.get("seqid")
        ctrl.set("trigger")
        count(ctrl)
        assert os.path.basename(ctrl.get("stream_latest_file")) == f"slow_{series}_{point:04d}.tif"
        assert os.path.exists(ctrl.get("stream_latest_file"))
