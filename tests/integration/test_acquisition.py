"""Counting as spec does it: arm once, trigger per point, ACCUM, halt, errors.

Runs the controller in-process against the fake DCU over real HTTP and
ZeroMQ; requests the controller sends are recorded by wrapping its REST
client methods (the calls still go to the DCU).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from eiger_server.control.commands import CommandHandler
from eiger_server.errors import EigerError, ParameterError
from eiger_server.wire.protocol import Request

from helpers import wait_for


@pytest.fixture
def spy(controller, monkeypatch):
    """Record the config PUTs and commands the controller sends."""
    sent = {"config": [], "command": []}
    put, command = controller.simplon.set_config, controller.simplon.command
    monkeypatch.setattr(controller.simplon, "set_config",
                        lambda sub, key, value: sent["config"].append(key) or put(sub, key, value))
    monkeypatch.setattr(controller.simplon, "command",
                        lambda sub, name, *a, **k: sent["command"].append(name)
                        or command(sub, name, *a, **k))
    return sent


def count(ctrl, preset: float) -> None:
    ctrl.acq.start_count(preset)
    wait_for(lambda: not ctrl.acq.counting(), 20, what="the count")
    error = ctrl.acq.take_error()
    assert error is None, error


def test_identical_counts_arm_once_and_program_nothing(controller, spy):
    controller.set("ntrigger", ["4"])
    controller.set("stream_mode", ["1"])
    count(controller, 0.05)
    assert spy["command"] == ["arm", "trigger"]
    seq = controller.get("seqid")
    spy["config"].clear(), spy["command"].clear()
    for _ in range(3):
        count(controller, 0.05)
    # the fourth trigger used the series up: it ends with disarm
    assert spy["config"] == [] and spy["command"] == ["trigger"] * 3 + ["disarm"]
    assert controller.get("seqid") == seq
    assert float(controller.get("count_time")) == pytest.approx(0.05)
    assert float(controller.get("frame_time")) == pytest.approx(0.05, abs=1e-6)


def test_a_new_preset_or_used_up_triggers_arm_again(controller, spy):
    controller.set("ntrigger", ["2"])
    count(controller, 0.05)
    count(controller, 0.05)
    assert spy["command"].count("arm") == 1
    count(controller, 0.05)          # the series had 2 triggers: a new one is armed
    assert spy["command"].count("arm") == 2
    count(controller, 0.08)          # new count time: programmed, then armed again
    assert spy["command"].count("arm") == 3
    assert "count_time" in spy["config"]


def test_accumulation_plan():
    from eiger_server.control.acquisition import Acquisition
    acq = Acquisition(detector=None, simplon=None, stream=None)   # a plan needs none
    assert acq.plan(1.0) == (1, 1.0)
    acq.set_acq_mode("accum")
    acq.set_acc_maxtime("0.3")
    n, each = acq.plan(1.0)
    assert n == 4 and each == pytest.approx(0.25)
    acq.set_acc_nimages("5")           # takes precedence over acc_maxtime
    assert acq.plan(1.0) == (5, pytest.approx(0.2))
    with pytest.raises(ParameterError):
        acq.set_acq_mode("sometimes")
    with pytest.raises(ParameterError):
        acq.set_acc_nimages("-2")


def test_accum_count_programs_n_images_and_sums_them(controller):
    controller.set("stream_mode", ["1"])
    controller.set("acq_mode", ["ACCUM"])
    controller.set("acc_nimages", ["4"])
    count(controller, 0.08)
    assert controller.get("nimages") == "4"
    assert float(controller.get("count_time")) == pytest.approx(0.02)
    assert controller.get("images_collected") == "4"
    result = controller.stream.latest()
    assert result is not None and result.nframes == 4


def test_halt_stops_a_long_count(controller):
    controller.set("nimages", ["1"])
    controller.acq.start_count(30.0)
    wait_for(lambda: controller.get("state") == "acquire", 5, what="acquisition")
    started = time.monotonic()
    controller.acq.halt()
    wait_for(lambda: not controller.acq.counting(), 10, what="the halted count to end")
    assert time.monotonic() - started < 5
    assert controller.get("state") in ("idle", "ready")


def test_a_failed_count_is_reported_once_by_get_status(controller, fake_dcu):
    handler = CommandHandler(controller)
    fake_dcu.faults.update({"error500": {"trigger": "high voltage fault"}})
    reply = handler.execute(Request(1, "run", ["0.05", "0"]))
    assert reply.ok
    deadline = time.monotonic() + 10
    while controller.acq.counting() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(EigerError, match="high voltage fault"):
        handler.execute(Request(3, "get_status", []))
    assert handler.execute(Request(4, "get_status", [])).text == "0"


def test_inte_trigger_passes_the_exposure(controller, fake_dcu):
    controller.set("trigger_mode", ["inte"])
    controller.set("stream_mode", ["1"])
    count(controller, 0.07)
    assert controller.get("images_collected") == "1"
    # In inte mode the exposure travels with the trigger; the DCU reports it.
    real_time = controller.stream.latest().metadata["real_time"]
    assert float(real_time) == pytest.approx(0.07, rel=0.2)


def test_external_trigger_count_ends_when_the_images_arrive(controller, fake_dcu):
    controller.set("trigger_mode", ["exts"])
    controller.set("stream_mode", ["1"])
    controller.set("nimages", ["2"])
    controller.acq.start_count(0.02)
    wait_for(lambda: controller.get("state") == "ready", 5, what="arm")
    assert controller.acq.counting()
    requests.put(f"{fake_dcu.url}/fake/trigger", json={}, timeout=5).raise_for_status()
    wait_for(lambda: not controller.acq.counting(), 10, what="the externally triggered count")
    assert controller.acq.take_error() is None
    assert controller.get("images_collected") == "2"
    frame = controller.stream.latest().raw
    assert frame.shape == (514, 1030) and frame.dtype == np.uint16


def test_halt_while_arming_takes_no_image(controller, fake_dcu):
    controller.set("stream_mode", ["1"])
    fake_dcu.model.arm_delay = 1.0            # arming takes seconds on real hardware
    started = time.monotonic()
    controller.acq.start_count(5.0)
    wait_for(lambda: controller.acq.counting(), 5, what="the count to start")
    time.sleep(0.3)                           # inside the arm
    controller.acq.halt()
    wait_for(lambda: not controller.acq.counting(), 10, what="the halted count to end")
    # Had it triggered, the count would have exposed for 5 s after arming.
    assert time.monotonic() - started < 5.0
    assert controller.get("images_collected") == "0"


def test_single_after_accum_gets_its_nimages_back(controller):
    controller.set("stream_mode", ["1"])
    controller.set("nimages", ["1"])
    controller.set("acq_mode", ["ACCUM"])
    controller.set("acc_nimages", ["4"])
    count(controller, 0.04)
    assert controller.get("nimages") == "4"
    controller.set("acq_mode", ["SINGLE"])
    count(controller, 0.04)
    assert controller.get("nimages") == "1"
    assert controller.get("images_collected") == "1"


def test_preset_programs_the_series_a_scan_arms(controller, spy):
    controller.set("ntrigger", ["3"])
    assert controller.set("preset", ["0.03"]) == "0.03"
    assert controller.get("preset") == "0.03"
    assert float(controller.get("count_time")) == pytest.approx(0.03)
    controller.get("arm")
    spy["command"].clear()
    for _ in range(3):
        count(controller, 0.03)
    # the armed series fitted every point, and ended with disarm after the last
    assert spy["command"] == ["trigger"] * 3 + ["disarm"]
    with pytest.raises(ParameterError):
        controller.set("preset", ["0"])


def test_server_names_answer_without_a_detector(tmp_path):
    from eiger_server.options import ServerOptions
    from eiger_server.control.controller import EigerController
    from eiger_server.errors import DetectorError
    from helpers import free_port
    options = ServerOptions(dcu_host="127.0.0.1", dcu_port=free_port(), http_timeout=2.0)
    ctrl = EigerController(options)
    try:
        assert ctrl.get("server_version").startswith("eiger_server ")
        assert ctrl.set("data_directory", [str(tmp_path)]) == str(tmp_path)
        assert ctrl.get("cmd_executing") == "0"
        with pytest.raises(DetectorError, match="cannot reach the detector"):
            ctrl.get("state")
        with pytest.raises(ParameterError, match="absolute"):
            ctrl.set("data_directory", ["relative/dir"])
    finally:
        ctrl.close()


@pytest.mark.parametrize("address", ["a/b", "x@y", "host?q=1", "10.0.0.1:80", "h#x"])
def test_a_detector_address_cannot_change_the_url(address):
    from eiger_server.errors import DetectorError
    from eiger_server.simplon.rest import SimplonClient, check_host
    with pytest.raises(DetectorError, match="not a host name or IP address"):
        check_host(address)
    with pytest.raises(DetectorError):
        SimplonClient(address, 80)
    assert check_host("::1") == "[::1]" and check_host("dcu-1.example.org") == "dcu-1.example.org"
