"""The fake DCU's behaviour profiles, seen over its REST API and its stream sinks."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from eiger_server.fakedcu.app import FakeDCUApp
from eiger_server.fakedcu.device.profiles import PROFILES, Profile, profile_named
from eiger_server.fakedcu.__main__ import _parser
from eiger_server.options import parse_args


class Frames:
    """A sink that notes the frames the engine hands out, with their time."""

    def __init__(self) -> None:
        self.frames = []
        self.ended = threading.Event()

    def series_start(self, start) -> None:
        pass

    def frame(self, frame) -> None:
        self.frames.append((frame.image_id, time.monotonic()))

    def series_end(self, end) -> None:
        self.ended.set()


@pytest.fixture
def make(tmp_path):
    apps = []

    def start(profile, api="1.8.0"):
        app = FakeDCUApp(api=api, model="500K", data_dir=tmp_path / f"dcu{len(apps)}",
                         profile=profile).start()
        apps.append(app)
        put(app, "command", "initialize").raise_for_status()
        sink = Frames()
        app.model.add_sink(sink)
        return app, sink
    yield start
    for app in apps:
        app.stop()


def url(app, task, name):
    return f"{app.url}/detector/api/{app.model.api}/{task}/{name}"


def put(app, task, name, value=None):
    body = {} if value is None else {"value": value}
    return requests.put(url(app, task, name), json=body, timeout=10)


def state(app):
    return requests.get(url(app, "status", "state"), timeout=5).json()["value"]


def series(app, mode, nimages=1, ntrigger=1, frame_time=0.05):
    for name, value in (("trigger_mode", mode), ("nimages", nimages), ("ntrigger", ntrigger),
                        ("count_time", frame_time - 0.001), ("frame_time", frame_time)):
        put(app, "config", name, value).raise_for_status()
    return put(app, "command", "arm")


@pytest.mark.parametrize("profile, lo, hi", [("ideal", 0.25, 5.0),
                                             ("simplon-1.8-real", 0.2, 5.0),
                                             ("eager-simulator", 0.0, 0.1)])
def test_when_trigger_answers(make, profile, lo, hi):
    app, sink = make(profile)
    series(app, "ints", nimages=5).raise_for_status()
    started = time.monotonic()
    put(app, "command", "trigger").raise_for_status()
    took = time.monotonic() - started
    assert lo <= took <= hi
    if profile == "eager-simulator":
        assert len(sink.frames) < 5          # the images are still to come
    sink.ended.wait(5)
    assert len(sink.frames) == 5


def test_stream_latency_delays_what_the_receiver_gets(make):
    import zmq
    app, sink = make(Profile("slow-stream", stream_latency=0.4))
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.connect(f"tcp://127.0.0.1:{app.stream_port}")
    try:
        requests.put(f"{app.url}/stream/api/1.8.0/config/mode", json={"value": "enabled"},
                     timeout=5).raise_for_status()
        requests.put(f"{app.url}/stream/api/1.8.0/config/format", json={"value": "legacy"},
                     timeout=5).raise_for_status()
        series(app, "ints").raise_for_status()
        sock.recv_multipart()                # the header, 0.4 s after arm
        started = time.monotonic()
        put(app, "command", "trigger").raise_for_status()
        assert sock.poll(5000)
        sock.recv_multipart()
        assert time.monotonic() - started >= 0.35
    finally:
        sock.close(0)


@pytest.mark.parametrize("profile", ["simplon-1.8-real", "simplon-1.6-real", "eager-simulator"])
@pytest.mark.parametrize("mode", ["inte", "exte"])
def test_one_image_per_trigger_and_other_nimages_refused(make, profile, mode):
    app, sink = make(profile, PROFILES[profile].api or "1.8.0")
    refused = series(app, mode, nimages=3)
    assert refused.status_code == 400 and "nimages" in refused.text
    series(app, mode, nimages=1, ntrigger=2).raise_for_status()
    for _ in range(2):
        if mode == "inte":
            put(app, "command", "trigger", 0.02).raise_for_status()
        else:
            requests.put(f"{app.url}/fake/trigger", json={}, timeout=5).raise_for_status()
        time.sleep(0.3)
    put(app, "command", "disarm").raise_for_status()
    assert [f for f, _ in sink.frames] == [0, 1]


@pytest.mark.parametrize("profile, mode, ends", [
    ("simplon-1.8-real", "ints", True), ("simplon-1.8-real", "exts", True),
    ("simplon-1.6-real", "ints", True), ("simplon-1.6-real", "exts", False),
    ("simplon-1.6-real", "inte", False)])
def test_auto_disarm_per_version(make, profile, mode, ends):
    app, sink = make(profile, PROFILES[profile].api)
    series(app, mode, nimages=1).raise_for_status()
    if mode == "exts":
        requests.put(f"{app.url}/fake/trigger", json={}, timeout=5).raise_for_status()
    else:
        put(app, "command", "trigger", 0.02 if mode == "inte" else None).raise_for_status()
    time.sleep(0.5)
    assert state(app) == ("idle" if ends else "ready")
    assert put(app, "command", "trigger").status_code == 409   # nothing left to trigger
    if not ends:
        # the last image leaves only at disarm
        assert sink.frames == []
        put(app, "command", "disarm").raise_for_status()
        assert [f for f, _ in sink.frames] == [0] and state(app) == "idle"


def test_abort_drops_the_image_kept_for_disarm(make):
    app, sink = make("simplon-1.6-real", "1.6.0")
    series(app, "inte").raise_for_status()
    put(app, "command", "trigger", 0.02).raise_for_status()
    time.sleep(0.3)
    put(app, "command", "abort").raise_for_status()
    assert sink.frames == [] and sink.ended.is_set()


def test_profiles_by_name_and_on_the_command_lines():
    assert profile_named(None).name == "ideal"
    with pytest.raises(ValueError, match="presets"):
        profile_named("nonsense")
    with pytest.raises(ValueError):
        Profile("bad", trigger_returns="sometimes")
    assert _parser().parse_args(["--fake-profile", "simplon-1.6-real"]).fake_profile == \
        "simplon-1.6-real"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--fake-profile", "nonsense"])
    assert parse_args(["--fake-dcu", "--fake-profile", "eager-simulator"]).fake_profile == \
        "eager-simulator"
