"""The live view's endpoints, /metrics, the PUB socket and listen() against a
real fake DCU: real HTTP, real ZeroMQ, real TIFF files.

An EigerController in this process counts as spec's image_par makes it; the
Observation (what eiger_server builds for --http-port/--publish) watches it.
"""
from __future__ import annotations

import glob
import io
import os
import struct
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import tifffile
from prometheus_client.parser import text_string_to_metric_families

import eiger_server
from eiger_server.observe.service import Observation
from helpers import free_port, wait_for
from test_stream_e2e import count, setup_stream

pytestmark = pytest.mark.parametrize("api", ["1.8.0"])


@pytest.fixture
def observed(controller):
    """(controller, Observation with the HTTP server and a PUB socket, base URL)."""
    opts = SimpleNamespace(http_port=0, bind="127.0.0.1", queue_depth=64,
                           publish=f"tcp://127.0.0.1:{free_port()}", publish_decoded=50.0)
    observation = Observation(controller, opts)
    yield controller, observation, observation.url.rstrip("/")
    observation.close()


class Listener:
    """listen() on its own thread, collecting items."""

    def __init__(self, address: str, **kwargs) -> None:
        self.items = []
        self._thread = threading.Thread(target=self._run, args=(address, kwargs), daemon=True)
        self._thread.start()

    def _run(self, address, kwargs):
        for item in eiger_server.listen(address, timeout=5, **kwargs):
            self.items.append(item)

    def join(self):
        self._thread.join(15)


def metrics(base):
    text = requests.get(f"{base}/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_count_seen_everywhere(observed, fake_dcu, version):
    ctrl, observation, base = observed
    raw = Listener(observation.publisher.endpoint)
    decoded = Listener(observation.publisher.endpoint, decoded=True)
    time.sleep(0.5)                               # subscriptions reach the PUB socket
    assert requests.get(f"{base}/latest.png", timeout=5).status_code == 404
    setup_stream(ctrl, fake_dcu, version, 16, "bslz4", nimages=4, prefix="obs_$id")
    ctrl.set("arm")
    series = int(ctrl.get("seqid"))
    ctrl.set("trigger")
    count(ctrl)
    assert ctrl.stream.wait_saved(10)
    files = sorted(glob.glob(os.path.join(ctrl.get("data_directory"), "obs_*.tif")))
    assert len(files) == 4
    saved = [tifffile.imread(f) for f in files]

    # /status: what spec sees
    status = wait_for(lambda: (lambda s: s["last_series"] and s)(
        requests.get(f"{base}/status", timeout=5).json()), 10, what="the series summary")
    assert status["series"] == series
    assert status["images_collected"] == int(ctrl.get("images_collected")) == 4
    assert status["dropped"] == int(ctrl.get("dropped")) == 0
    # the detector's state is read at most once a second: it follows within that
    wait_for(lambda: requests.get(f"{base}/status", timeout=5).json()["state"]
             == ctrl.get("state"), 5, what="the page's state to be the detector's")
    assert status["received"] == 4 and status["decoded"] == 4 and status["saved"] == 4
    assert status["free_disk_bytes"] > 0
    assert status["image"]["frame"] == 3 and status["image"]["series"] == series
    summary = status["last_series"]
    assert summary["series"] == series and summary["received"] == 4
    assert summary["files"] == 4
    assert summary["file_bytes"] == sum(os.path.getsize(f) for f in files)

    # /metrics
    m = metrics(base)
    assert m[("eiger_images_received_total", ())] == 4
    assert m[("eiger_images_decoded_total", ())] == 4
    assert m[("eiger_images_saved_total", ())] == 4
    assert m[("eiger_images_dropped_total", (("cause", "lost"),))] == 0
    assert m[("eiger_images_dropped_total", (("cause", "dcu"),))] == 0
    assert m[("eiger_bytes_received_total", ())] > 0
    assert m[("eiger_queue_fill", ())] == 0
    assert m[("eiger_queue_depth", ())] == 64
    assert m[("eiger_dcu_reachable", ())] == 1

    # /latest.tiff is the last image in full, /latest.png its picture, downscaled
    tiff = requests.get(f"{base}/latest.tiff", timeout=5)
    assert tiff.headers["Content-Type"] == "image/tiff"
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(tiff.content)), saved[-1])
    picture = requests.get(f"{base}/latest.png", timeout=5)
    assert picture.headers["Content-Type"] == "image/png"
    height, width = saved[-1].shape
    factor = int(picture.headers["X-Downscale"])
    assert factor == -(-max(height, width) // 1024)
    assert png_size(picture.content) == (width // factor, height // factor)
    zoom = requests.get(f"{base}/latest.png?region=10,109,20,219&cmap=gray&scale=linear",
                        timeout=5)
    assert png_size(zoom.content) == (200, 100)

    # the PUB socket: every image as received, decoded by listen(), equals the TIFFs
    raw.join()
    assert [item.meta["frame"] for item in raw.items] == [0, 1, 2, 3]
    for item, pixels in zip(raw.items, saved):
        np.testing.assert_array_equal(item.image, pixels)
        assert item.meta["series"] == series
        assert item.meta["count_time"] == pytest.approx(float(ctrl.get("count_time")))
    assert [item.meta["seq"] for item in raw.items] == [0, 1, 2, 3]
    decoded.join()
    assert decoded.items, "no decoded image published"
    np.testing.assert_array_equal(decoded.items[-1].image, saved[-1])
    assert decoded.items[-1].meta["frame"] == 3
    assert m[("eiger_publish_dropped_total", ())] == 0


def test_requests_read_only_and_errors(observed):
    ctrl, observation, base = observed
    assert requests.post(f"{base}/status", timeout=5).status_code == 405
    assert requests.get(f"{base}/nothing", timeout=5).status_code == 404
    assert requests.get(f"{base}/latest.tiff", timeout=5).status_code == 404
    page = requests.get(f"{base}/", timeout=5)
    assert page.headers["Content-Type"].startswith("text/html")
    assert 'id="live"' in page.text and "/status" in page.text
    status = requests.get(f"{base}/status", timeout=5).json()
    for key in ("state", "series", "images_collected", "dropped"):
        assert key in status
    # spec's request latency is in /metrics once a handler is timed
    from eiger_server.control.commands import CommandHandler
    from eiger_server.wire.protocol import Request
    handler = observation.wrap(CommandHandler(ctrl))
    handler.execute(Request(cmdno=1, command="get", args=["state"]))
    m = metrics(base)
    assert m[("eiger_request_latency_seconds_count", (("command", "get"),))] == 1


def test_lost_frame_in_status_metrics_and_summary(observed, fake_dcu, caplog):
    import logging
    ctrl, observation, base = observed
    caplog.set_level(logging.INFO, logger="eiger_server.observe")
    setup_stream(ctrl, fake_dcu, "V2", 16, "bslz4", nimages=4, prefix="lost")
    fake_dcu.stream_v2.faults.drop.add(2)
    ctrl.set("arm")
    series = int(ctrl.get("seqid"))
    ctrl.set("trigger")
    count(ctrl)
    status = wait_for(lambda: (lambda s: s["last_series"] and s)(
        requests.get(f"{base}/status", timeout=5).json()), 10, what="the series summary")
    assert status["dropped"] == int(ctrl.get("dropped")) == 1
    assert status["dropped_by_cause"]["lost"] == 1
    assert status["last_series"]["dropped"]["lost"] == 1
    assert any("frame 2 of series" in e["message"] for e in status["errors"])
    assert metrics(base)[("eiger_images_dropped_total", (("cause", "lost"),))] == 1
    line = wait_for(lambda: [r.getMessage() for r in caplog.records
                             if "summary" in r.getMessage()], 5, what="the summary line")[-1]
    assert f"series {series} summary: received 3, decoded 3, saved 3, dropped 1 " \
           "(lost 1, unreadable 0, unsaved 0)" in line
    assert "3 files written" in line


def test_hdf5raw_files_and_sizes_in_the_summary(observed, fake_dcu):
    ctrl, observation, base = observed
    setup_stream(ctrl, fake_dcu, "V2", 16, "bslz4", nimages=5, prefix="raw_$id")
    ctrl.set("stream_save_mode", ["HDF5RAW"])
    ctrl.set("trigger")
    count(ctrl)
    assert ctrl.stream.wait_saved(10)
    summary = wait_for(lambda: requests.get(f"{base}/status", timeout=5).json()["last_series"],
                       10, what="the series summary")
    files = glob.glob(os.path.join(ctrl.get("data_directory"), "raw_*.h5"))
    assert any(f.endswith("_master.h5") for f in files) and len(files) >= 2
    assert summary["received"] == 5 and summary["saved"] == 5
    assert summary["files"] == len(files)
    assert summary["file_bytes"] == sum(os.path.getsize(f) for f in files)
