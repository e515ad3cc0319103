"""The fake DCU's REST side, exercised over real HTTP on free local ports."""
from __future__ import annotations

import base64
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, List

import numpy as np
import pytest
import requests

from eiger_server.fakedcu import FakeDCUApp
from eiger_server.fakedcu.sources.synthetic import default_pixel_mask, frame_counter
from eiger_server.fakedcu.device.definitions import MODELS

APIS = ["1.6.0", "1.8.0"]
HC = 12398.4198
ROOT = Path(__file__).resolve().parents[2]


class Rest:
    """Tiny SIMPLON client for the tests."""

    def __init__(self, app: FakeDCUApp):
        self.app = app
        self.base = app.url
        self.api = app.model.api
        self.session = requests.Session()

    def url(self, subsystem: str, task: str, name: str) -> str:
        return f"{self.base}/{subsystem}/api/{self.api}/{task}/{name}"

    def get(self, name: str, task: str = "config", subsystem: str = "detector") -> Any:
        r = self.session.get(self.url(subsystem, task, name), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["value"]

    def raw_get(self, name: str, task: str = "config", subsystem: str = "detector"):
        return self.session.get(self.url(subsystem, task, name), timeout=10)

    def put(self, name: str, value: Any = None, task: str = "config",
            subsystem: str = "detector", expect: int = 200):
        body = None if value is None else {"value": value}
        r = self.session.put(self.url(subsystem, task, name), json=body, timeout=30)
        assert r.status_code == expect, f"{name}: {r.status_code} {r.text}"
        return r

    def set(self, name: str, value: Any) -> List[str]:
        return self.put(name, value).json()

    def cmd(self, name: str, value: Any = None, expect: int = 200, subsystem: str = "detector"):
        return self.put(name, value, task="command", subsystem=subsystem, expect=expect)

    def fake(self, what: str, body: Any = None, expect: int = 200):
        r = self.session.put(f"{self.base}/fake/{what}", json=body, timeout=10)
        assert r.status_code == expect, r.text
        return r

    def state(self) -> str:
        return self.get("state", "status")


class Sink:
    """A FrameSink that records what the engine sends."""

    def __init__(self):
        self.starts: list = []
        self.frames: list = []
        self.ends: list = []
        self.ended = threading.Event()

    def series_start(self, start):
        self.starts.append(start)

    def frame(self, frame):
        self.frames.append(frame)

    def series_end(self, end):
        self.ends.append(end)
        self.ended.set()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture(params=APIS)
def dcu(request):
    with FakeDCUApp(api=request.param, model="500K") as app:
        rest = Rest(app)
        rest.sink = Sink()
        app.model.add_sink(rest.sink)
        yield rest


@pytest.fixture
def dcu18():
    with FakeDCUApp(api="1.8.0", model="500K") as app:
        rest = Rest(app)
        rest.sink = Sink()
        app.model.add_sink(rest.sink)
        yield rest


def ready_for_fast_frames(dcu: Rest, nimages: int, ntrigger: int = 1,
                          frame_time: float = 0.001) -> None:
    dcu.cmd("initialize")
    dcu.set("frame_time", frame_time)
    dcu.set("count_time", frame_time / 2)
    dcu.set("nimages", nimages)
    dcu.set("ntrigger", ntrigger)


# ------------------------------------------------------------------ values

def test_version_endpoint_and_its_switch(dcu):
    r = requests.get(f"{dcu.base}/detector/api/version/", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"value": dcu.api, "value_type": "string"}
    other = "1.6.0" if dcu.api == "1.8.0" else "1.8.0"
    r = requests.get(f"{dcu.base}/detector/api/{other}/config/count_time", timeout=5)
    assert r.status_code == 404 and dcu.api in r.text
    dcu.fake("faults", {"serve_version": False})
    assert requests.get(f"{dcu.base}/detector/api/version/", timeout=5).status_code == 404
    # the probing fallback still works
    assert dcu.raw_get("description").status_code == 200


def test_value_json_shape(dcu):
    r = dcu.raw_get("count_time")
    assert r.headers["Content-Type"].startswith("application/json")
    v = r.json()
    assert v["value_type"] == "float" and v["access_mode"] == "rw" and v["unit"] == "s"
    assert isinstance(v["value"], float) and v["min"] < v["value"] < v["max"]
    tm = dcu.raw_get("trigger_mode").json()
    assert tm["value"] == "ints" and tm["allowed_values"] == ["ints", "inte", "exts", "exte"]
    width = dcu.raw_get("x_pixels_in_detector").json()
    assert width == {"value": 1030, "value_type": "uint", "access_mode": "r"}
    st = dcu.raw_get("state", "status").json()
    assert st["value"] == "na" and "time" in st and "state" in st
    assert dcu.get("description").endswith("500K")
    assert dcu.get("compression") in ("lz4", "bslz4")


def test_keys(dcu):
    keys = requests.get(f"{dcu.base}/detector/api/{dcu.api}/config/keys", timeout=5).json()
    for name in ("beam_center_x", "bit_depth_image", "count_time", "frame_time", "nimages",
                 "ntrigger", "photon_energy", "threshold_energy", "trigger_mode", "wavelength",
                 "pixel_mask", "flatfield", "omega_start", "two_theta_increment",
                 "x_pixels_in_detector", "roi_mode", "nframes_sum"):
        assert name in keys
    v18_only = {"threshold/1/energy", "threshold/2/mode", "threshold/difference/mode",
                "counting_mode", "trigger_start_delay"}
    assert (v18_only <= set(keys)) == (dcu.api == "1.8.0")
    assert not (v18_only & set(keys)) or dcu.api == "1.8.0"
    status = requests.get(f"{dcu.base}/detector/api/{dcu.api}/status/keys", timeout=5).json()
    assert {"state", "error", "time"} <= set(status)
    fw = requests.get(f"{dcu.base}/filewriter/api/{dcu.api}/config/keys", timeout=5).json()
    assert set(fw) == {"mode", "nimages_per_file", "image_nr_start", "name_pattern",
                       "compression_enabled"}
    stream = requests.get(f"{dcu.base}/stream/api/{dcu.api}/config/keys", timeout=5).json()
    assert ("format" in stream) == (dcu.api == "1.8.0")


def test_count_time_and_frame_time_follow_each_other(dcu):
    ro = dcu.get("detector_readout_time")
    dcu.set("frame_time", 0.01)
    changed = dcu.set("count_time", 0.2)
    assert "count_time" in changed and "frame_time" in changed
    assert dcu.get("frame_time") == pytest.approx(0.2 + ro)
    changed = dcu.set("frame_time", 0.1)
    assert "count_time" in changed and "frame_time" in changed
    assert dcu.get("count_time") == pytest.approx(0.1 - ro)
    # a longer frame time leaves the count time alone
    changed = dcu.set("frame_time", 0.5)
    assert changed == ["frame_time"]
    assert dcu.get("count_time") == pytest.approx(0.1 - ro)


def test_photon_energy_sets_wavelength_and_thresholds(dcu):
    changed = dcu.set("photon_energy", 12000.0)
    expected = {"photon_energy", "wavelength", "threshold_energy"}
    if dcu.api == "1.8.0":
        expected.add("threshold/1/energy")
    assert expected <= set(changed)
    assert dcu.get("wavelength") == pytest.approx(HC / 12000.0)
    assert dcu.get("threshold_energy") == pytest.approx(6000.0)
    if dcu.api == "1.8.0":
        assert dcu.get("threshold/1/energy") == pytest.approx(6000.0)
    changed = dcu.set("wavelength", 1.0)
    assert "photon_energy" in changed and "threshold_energy" in changed
    assert dcu.get("photon_energy") == pytest.approx(HC)


def test_refused_values(dcu):
    r = dcu.put("nimages", 0, expect=400)
    assert "minimum" in r.text
    ft_min = dcu.raw_get("frame_time").json()["min"]
    dcu.put("frame_time", ft_min / 2, expect=400)
    r = dcu.put("trigger_mode", "sometimes", expect=400)
    assert "allowed" in r.text and "exts" in r.text
    dcu.put("compression", "zip", expect=400)
    r = dcu.put("x_pixels_in_detector", 10, expect=400)
    assert "read-only" in r.text
    dcu.put("bit_depth_image", 32, expect=400)
    r = dcu.put("nimages", "ten", expect=400)
    assert "type" in r.text
    dcu.put("countrate_correction_applied", 1, expect=400)
    dcu.put("state", "idle", task="status", expect=400)
    # no body at all
    r = requests.put(dcu.url("detector", "config", "nimages"), timeout=5)
    assert r.status_code == 400
    r = requests.put(dcu.url("detector", "config", "nimages"), data=b"{not json",
                     headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400 and "JSON" in r.text
    # nothing was changed by the refused requests
    assert dcu.get("nimages") == 1 and dcu.get("trigger_mode") == "ints"


def test_names_the_version_lacks_are_404(dcu):
    if dcu.api == "1.6.0":
        assert dcu.raw_get("threshold/1/energy").status_code == 404
        assert dcu.raw_get("temperature", "status").status_code == 404
        assert isinstance(dcu.get("board_000/th0_temp", "status"), float)
        assert isinstance(dcu.get("board_000/th0_humidity", "status"), float)
        assert isinstance(dcu.get("builder/dcu_buffer_free", "status"), float)
        # 1.6 has the monitor too, with its own status keys
        assert dcu.get("mode", subsystem="monitor") == "disabled"
        assert dcu.raw_get("buffer_free", "status", "monitor").status_code == 404
        assert dcu.get("next_image_number", "status", "monitor") == -1
    else:
        assert dcu.raw_get("board_000/th0_temp", "status").status_code == 404
        assert isinstance(dcu.get("temperature", "status"), float)
        assert isinstance(dcu.get("humidity", "status"), float)
        assert [dcu.get(f"link_{i}", "status") for i in range(4)] == ["up"] * 4
        assert dcu.get("mode", subsystem="monitor") in ("enabled", "disabled")
        assert dcu.raw_get("next_image_number", "status", "monitor").status_code == 404
    assert dcu.raw_get("no_such_name").status_code == 404


# ----------------------------------------------------------- state machine

def test_ints_state_machine(dcu):
    sink = dcu.sink
    assert dcu.state() == "na"
    r = dcu.cmd("arm", expect=409)
    assert "initialize" in r.text
    ready_for_fast_frames(dcu, nimages=3, ntrigger=2)
    assert dcu.state() == "idle"
    dcu.cmd("trigger", expect=409)
    assert dcu.cmd("arm").json() == {"sequence id": 1}
    assert dcu.state() == "ready"
    assert len(sink.starts) == 1
    start = sink.starts[0]
    assert (start.width, start.height, start.series_id) == (1030, 514, 1)
    assert start.channels == ["threshold_1"]
    assert start.dtype == np.uint16 and start.nimages == 3 and start.ntrigger == 2
    assert start.config["nimages"] == 3
    if dcu.api == "1.8.0":
        assert dcu.get("series_unique_id", "status") == start.series_unique_id != ""

    dcu.cmd("trigger")
    # the trigger answer comes after the frames: nothing to wait for
    assert [f.image_id for f in sink.frames] == [0, 1, 2]
    assert dcu.state() == "ready" and not sink.ends
    dcu.cmd("trigger")
    assert [f.image_id for f in sink.frames] == [0, 1, 2, 3, 4, 5]
    assert dcu.state() == "idle"
    assert len(sink.ends) == 1 and sink.ends[0].nframes == 6
    img = sink.frames[4].data["threshold_1"]
    assert img.shape == (514, 1030) and img.dtype == np.uint16
    assert frame_counter(img) == 4
    times = [(f.start_time_ns, f.stop_time_ns, f.real_time_ns) for f in sink.frames]
    assert all(stop - start == real > 0 for start, stop, real in times)
    assert all(b[0] > a[0] for a, b in zip(times, times[1:]))
    assert dcu.cmd("arm").json() == {"sequence id": 2}


def test_disarm_ends_the_series(dcu):
    ready_for_fast_frames(dcu, nimages=2, ntrigger=5)
    dcu.cmd("arm")
    dcu.cmd("trigger")
    dcu.cmd("disarm")
    assert dcu.state() == "idle"
    assert len(dcu.sink.ends) == 1 and dcu.sink.ends[0].nframes == 2
    dcu.cmd("trigger", expect=409)


@pytest.mark.parametrize("how", ["abort", "cancel"])
def test_stop_during_a_long_trigger(dcu18, how):
    dcu = dcu18
    ready_for_fast_frames(dcu, nimages=1000, frame_time=0.01)
    dcu.cmd("arm")
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=dcu.cmd("trigger")))
    t.start()
    assert wait_for(lambda: len(dcu.sink.frames) >= 3)
    assert dcu.state() == "acquire"
    dcu.cmd(how)
    t.join(10)                      # the series alone would last 1000 x 0.01 s
    assert not t.is_alive() and answer["r"].status_code == 200
    assert dcu.state() == "idle"
    assert dcu.sink.ended.is_set()
    n = len(dcu.sink.frames)
    assert 3 <= n < 500 and dcu.sink.ends[0].nframes == n     # cut well short of 1000
    time.sleep(0.05)
    assert len(dcu.sink.frames) == n


def test_frames_keep_their_schedule(dcu18):
    dcu = dcu18
    ready_for_fast_frames(dcu, nimages=40, frame_time=0.01)
    dcu.cmd("arm")
    t0 = time.monotonic()
    dcu.cmd("trigger")
    elapsed = time.monotonic() - t0
    assert 0.39 <= elapsed < 10       # paced, not run flat out; the upper bound only catches a hang
    starts = [f.start_time_ns for f in dcu.sink.frames]
    assert (starts[-1] - starts[0]) / 1e9 == pytest.approx(0.39, abs=1e-6)


def test_inte_trigger_takes_the_exposure_from_the_trigger(dcu):
    ready_for_fast_frames(dcu, nimages=2)
    dcu.set("trigger_mode", "inte")
    dcu.cmd("arm")
    t0 = time.monotonic()
    dcu.cmd("trigger", 0.05)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.1
    assert [f.real_time_ns for f in dcu.sink.frames] == [50_000_000, 50_000_000]
    assert dcu.state() == "idle"


def test_exts_frames_come_from_the_fake_trigger_input(dcu):
    ready_for_fast_frames(dcu, nimages=2, ntrigger=2)
    dcu.set("trigger_mode", "exts")
    dcu.fake("trigger", expect=409)             # not armed yet
    dcu.cmd("arm")
    dcu.cmd("trigger", expect=409)              # software trigger is for ints/inte
    dcu.fake("trigger")
    assert wait_for(lambda: len(dcu.sink.frames) == 2)
    assert wait_for(lambda: dcu.state() == "ready")
    dcu.fake("trigger")
    assert dcu.sink.ended.wait(5)
    assert [f.image_id for f in dcu.sink.frames] == [0, 1, 2, 3]
    assert wait_for(lambda: dcu.state() == "idle")
    dcu.fake("trigger", expect=409)


def test_exte_makes_one_frame_per_pulse(dcu18):
    dcu = dcu18
    ready_for_fast_frames(dcu, nimages=1, ntrigger=3)
    dcu.set("trigger_mode", "exte")
    dcu.cmd("arm")
    for exposure in (0.01, 0.02, 0.03):
        dcu.fake("trigger", {"value": exposure})
    assert dcu.sink.ended.wait(5)
    assert [f.real_time_ns for f in dcu.sink.frames] == [10_000_000, 20_000_000, 30_000_000]


def test_thresholds_make_channels(dcu18):
    dcu = dcu18
    ready_for_fast_frames(dcu, nimages=1)
    dcu.set("threshold/2/mode", "enabled")
    dcu.set("threshold/difference/mode", "enabled")
    dcu.cmd("arm")
    assert dcu.sink.starts[0].channels == ["threshold_1", "threshold_2", "difference"]
    dcu.cmd("trigger")
    data = dcu.sink.frames[0].data
    assert set(data) == {"threshold_1", "threshold_2", "difference"}
    live = default_pixel_mask(1030, 514) == 0
    live[:4, :8] = False                         # the frame counter
    t1, t2, diff = (data[c][live].astype(np.int64) for c in ("threshold_1", "threshold_2",
                                                               "difference"))
    assert t2.sum() < t1.sum()
    assert np.array_equal(diff, np.clip(t1 - t2, 0, None))


def test_bit_depth_is_read_only_but_forcible(dcu):
    assert dcu.get("bit_depth_image") == 16
    changed = dcu.fake("set", {"subsystem": "detector", "task": "config",
                               "name": "bit_depth_image", "value": 32}).json()
    assert "bit_depth_image" in changed
    assert dcu.get("bit_depth_image") == 32
    dcu.fake("set", {"subsystem": "detector", "name": "bit_depth_image", "value": 12},
             expect=400)
    ready_for_fast_frames(dcu, nimages=1)
    dcu.cmd("arm")
    dcu.cmd("trigger")
    img = dcu.sink.frames[0].data["threshold_1"]
    assert img.dtype == np.uint32
    assert img.max() == 0xFFFFFFFF               # masked pixels at the maximum


def test_bit_depth_follows_count_time_on_1_8(dcu):
    dcu.app.model.bit_depth_follows_count_time = True
    dcu.cmd("initialize")
    depths = []
    for count_time in (0.01, 0.02, 0.1, 0.01):
        dcu.set("frame_time", 0.2)
        changed = dcu.set("count_time", count_time)
        depths.append(dcu.get("bit_depth_image"))
        if dcu.api == "1.8.0" and len(depths) > 1 and depths[-1] != depths[-2]:
            assert "bit_depth_image" in changed       # a client re-reads it
    # EIGER2: 8 bits at 10 ms, 16 at 20 ms, 32 at 100 ms; EIGER1 / 1.6 keeps 16
    assert depths == ([8, 16, 32, 8] if dcu.api == "1.8.0" else [16, 16, 16, 16])


@pytest.mark.parametrize("model", list(MODELS))
def test_model_geometry_and_rate(model):
    width, height, rate = MODELS[model]
    with FakeDCUApp(api="1.8.0", model=model, streams=False) as app:
        dcu = Rest(app)
        assert dcu.get("x_pixels_in_detector") == width
        assert dcu.get("y_pixels_in_detector") == height
        assert dcu.raw_get("frame_time").json()["min"] == pytest.approx(1.0 / rate)
        dcu.put("frame_time", 0.98 / rate, expect=400)
        dcu.set("frame_time", 1.0 / rate)
        assert model in dcu.get("description")


# ------------------------------------------------------------------ faults

def test_fault_delay_and_error500(dcu):
    dcu.fake("faults", {"delay": 0.3})
    t0 = time.monotonic()
    dcu.get("nimages")
    assert time.monotonic() - t0 >= 0.3
    dcu.fake("faults", {"delay": 0, "error500": {"count_time": "DCU exploded"}})
    r = dcu.raw_get("count_time")
    assert r.status_code == 500 and "DCU exploded" in r.text
    assert dcu.get("nimages") == 1
    dcu.fake("faults", {"error500": {"*": "everything broken"}})
    assert dcu.raw_get("nimages").status_code == 500
    assert requests.get(f"{dcu.base}/fake/faults", timeout=5).json()["error500"] == \
        {"*": "everything broken"}
    dcu.fake("faults", {"clear": True})
    assert dcu.get("nimages") == 1


def test_fault_drop_connection(dcu):
    dcu.fake("faults", {"drop_connection": ["arm"]})
    dcu.cmd("initialize")
    with pytest.raises(requests.ConnectionError):
        requests.put(dcu.url("detector", "command", "arm"), timeout=5)
    dcu.fake("faults", {"drop_connection": False})
    dcu.cmd("arm")


def test_fault_restart_is_a_reboot(dcu):
    ready_for_fast_frames(dcu, nimages=1, ntrigger=3)
    dcu.set("photon_energy", 15000.0)
    dcu.cmd("arm")
    dcu.fake("restart")
    assert dcu.state() == "na"
    assert dcu.get("photon_energy") == pytest.approx(8047.8)
    assert dcu.get("nimages") == 1
    assert dcu.sink.ended.is_set()
    dcu.cmd("arm", expect=409)


# ------------------------------------------------------------------ arrays

def _decode(obj: dict) -> np.ndarray:
    # as a real DCU: shape in numpy order [height, width]
    assert obj["__darray__"] == [1, 0, 0] and obj["filters"] == ["base64"]
    h, w = obj["shape"]
    return np.frombuffer(base64.b64decode(obj["data"]), dtype=obj["type"]).reshape(h, w)


def test_pixel_mask_darray_round_trip(dcu):
    v = dcu.raw_get("pixel_mask").json()["value"]
    assert v["type"] == "<u4" and v["shape"] == [514, 1030]     # a real 500K's answer
    mask = _decode(v)
    assert np.array_equal(mask, default_pixel_mask(1030, 514))
    assert mask[100, 256] & 1                      # chip gap flagged with bit 0
    assert dcu.get("number_of_excluded_pixels") == np.count_nonzero(mask)

    new = mask.copy()
    new[10:20, 30:40] |= 2
    body = {"__darray__": [1, 0, 0], "type": "<u4", "shape": [1030, 514],
            "filters": ["base64"], "data": base64.b64encode(new.tobytes()).decode()}
    changed = dcu.set("pixel_mask", body)
    assert "number_of_excluded_pixels" in changed
    assert np.array_equal(_decode(dcu.get("pixel_mask")), new)
    assert dcu.get("number_of_excluded_pixels") == np.count_nonzero(new)
    ready_for_fast_frames(dcu, nimages=1)
    dcu.cmd("arm")
    assert np.array_equal(dcu.sink.starts[0].pixel_mask, new)
    # A DCU takes the shape in either order when it matches the detector.
    dcu.cmd("disarm")
    other = new.copy()
    other[0, :7] |= 4
    changed = dcu.set("pixel_mask", dict(body, shape=[514, 1030],
                                         data=base64.b64encode(other.tobytes()).decode()))
    assert np.array_equal(_decode(dcu.get("pixel_mask")), other)

    wrong = dict(body, shape=[514, 1030 // 2], data=base64.b64encode(new[:, :515].tobytes()).decode())
    r = dcu.put("pixel_mask", wrong, expect=400)
    assert "shape" in r.text
    flat = _decode(dcu.get("flatfield"))
    assert flat.dtype == np.float32 and flat.shape == (514, 1030) and np.all(flat == 1.0)


# ------------------------------------------------------ files and monitor

def test_data_files_are_served_and_deleted(dcu):
    assert requests.get(f"{dcu.base}/data/nothing_here.h5", timeout=5).status_code == 404
    dcu.put("mode", "enabled", subsystem="filewriter")
    dcu.put("name_pattern", "scan_$id", subsystem="filewriter")
    ready_for_fast_frames(dcu, nimages=3)
    dcu.cmd("arm")
    dcu.cmd("trigger")
    store = dcu.app.model.filestore
    assert wait_for(lambda: any(n.endswith("_master.h5") for n in store.list_files()), 10)
    names = store.list_files()
    # both versions document GET /filewriter/api/<v>/files/
    listed = requests.get(f"{dcu.base}/filewriter/api/{dcu.api}/files/", timeout=5)
    assert listed.status_code == 200 and listed.json() == names
    for name in names:
        r = requests.get(f"{dcu.base}/data/{name}", timeout=10)
        assert r.status_code == 200
        assert r.content == store.file_path(name).read_bytes()
        assert int(r.headers["Content-Length"]) == len(r.content)
        assert r.content[:8] == b"\x89HDF\r\n\x1a\n"
    assert requests.delete(f"{dcu.base}/data/{names[0]}", timeout=5).status_code == 204
    assert requests.get(f"{dcu.base}/data/{names[0]}", timeout=5).status_code == 404
    assert names[0] not in store.list_files()


def test_monitor_images(dcu):
    base = f"{dcu.base}/monitor/api/{dcu.api}/images"
    # real 1.8 defaults (the fake's 1.6 too): disabled, 100 images, a full
    # buffer keeps its first ones
    assert dcu.get("mode", subsystem="monitor") == "disabled"
    assert dcu.get("buffer_size", subsystem="monitor") == 100
    assert dcu.get("discard_new", subsystem="monitor") is True
    keys = requests.get(f"{dcu.base}/monitor/api/{dcu.api}/status/keys", timeout=5).json()
    on_1_6 = dcu.api == "1.6.0"
    assert ("buffer_free" in keys) != on_1_6
    assert ("next_image_number" in keys) == ("monitor_image_number" in keys) == on_1_6
    dcu.put("mode", "enabled", subsystem="monitor")
    # no image: the DCU waits 500 ms (or ?timeout= ms) and answers 408
    began = time.monotonic()
    assert requests.get(f"{base}/monitor", timeout=5).status_code == 408
    assert time.monotonic() - began >= 0.45
    assert requests.get(f"{base}/next?timeout=50", timeout=5).status_code == 408
    ready_for_fast_frames(dcu, nimages=3)
    dcu.cmd("arm")
    dcu.cmd("trigger")
    assert requests.get(base, timeout=5).json() == [[1, [0, 1, 2]]]
    for path in ("monitor", "1/2", "next"):
        r = requests.get(f"{base}/{path}", timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/tiff"
        assert r.content[:4] == b"II*\x00"
    assert requests.get(base, timeout=5).json() == [[1, [1, 2]]]
    assert requests.get(f"{base}/7/7", timeout=5).status_code == 404
    assert requests.get(f"{base}/1/2/1", timeout=5).status_code == 200
    assert requests.get(f"{base}/monitor/1", timeout=5).status_code == 404   # no such path
    if on_1_6:
        # images/next hands out image 1 next; images/monitor is image 2
        assert dcu.get("next_image_number", "status", "monitor") == 1
        assert dcu.get("monitor_image_number", "status", "monitor") == 2
    else:
        assert dcu.get("buffer_free", "status", "monitor") == 100 - 2


# -------------------------------------------------------------- command line

def test_command_line_runs_until_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "eiger_server.fakedcu", "--http-port", "0", "--stream-port",
         "0", "--stream2-port", "0", "--api", "1.6.0", "--model", "4M"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        fields = line.split()
        port = int(fields[fields.index("http_port") + 1])
        r = requests.get(f"http://127.0.0.1:{port}/detector/api/version/", timeout=5)
        assert r.json()["value"] == "1.6.0"
        r = requests.get(f"http://127.0.0.1:{port}/detector/api/1.6.0/config/"
                         "x_pixels_in_detector", timeout=5)
        assert r.json()["value"] == 2068
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------ frame sources

def test_synthetic_frames_are_reproducible_and_distinct():
    from eiger_server.fakedcu.sources.synthetic import make_source
    src = make_source("synthetic")
    a = src.frame(5, 1028, 1062, np.dtype(np.uint16), ["threshold_1"])["threshold_1"]
    b = src.frame(5, 1028, 1062, np.dtype(np.uint16), ["threshold_1"])["threshold_1"]
    c = src.frame(6, 1028, 1062, np.dtype(np.uint16), ["threshold_1"])["threshold_1"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert frame_counter(a) == 5 and frame_counter(c) == 6
    mask = default_pixel_mask(1028, 1062)
    assert np.all(mask[512:550, :] & 1)             # the gap between the two modules
    assert np.all(a[mask != 0] == 65535)
    assert a[mask == 0].max() < 65535 and a[mask == 0].sum() > 0
    with pytest.raises(ValueError):
        make_source("bogus:thing")


def test_precompressed_source_fills_frame_encoded(tmp_path):
    from eiger_server.fakedcu.sources.synthetic import SyntheticSource
    from eiger_server.fakedcu.sources.replay import PrecompressedCache
    source = PrecompressedCache(SyntheticSource(), "bslz4", n=2)
    with FakeDCUApp(api="1.8.0", model="500K", source=source, streams=False) as app:
        dcu = Rest(app)
        dcu.sink = Sink()
        app.model.add_sink(dcu.sink)
        ready_for_fast_frames(dcu, nimages=2)
        dcu.cmd("arm")
        dcu.cmd("trigger")
        assert all(f.encoded and set(f.encoded) == {"threshold_1"} for f in dcu.sink.frames)
        dcu.set("compression", "lz4")
        dcu.cmd("arm")
        dcu.cmd("trigger")
        assert dcu.sink.frames[-1].encoded is None


def test_commands_of_the_other_subsystems(dcu, tmp_path):
    assert dcu.cmd("disarm").json() == {"sequence id": 0}     # harmless before anything
    dcu.cmd("status_update")
    dcu.cmd("initialize", subsystem="stream")
    dcu.cmd("initialize", subsystem="filewriter")
    dcu.cmd("clear", subsystem="filewriter")
    if dcu.api == "1.8.0":
        assert dcu.get("files", "status", "filewriter") == []
    assert dcu.get("state", "status", "stream") in ("ready", "disabled")
    assert dcu.get("dropped", "status", "stream") == 0
    dcu.cmd("initialize")
    dcu.set("nimages", 5)
    dcu.cmd("restart", subsystem="system")
    assert dcu.state() == "na" and dcu.get("nimages") == 5      # values kept
    dcu.cmd("initialize")
    dcu.cmd("reboot", subsystem="system")
    assert dcu.state() == "na" and dcu.get("nimages") == 1      # a reboot forgets them
    r = requests.get(dcu.url("detector", "command", "arm"), timeout=5)
    assert r.status_code == 405
    assert dcu.put("fly", task="command", expect=404).status_code == 404
