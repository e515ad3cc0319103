"""The fake DCU's state machine as a table (fakedcu/device/states.py), and the
device model that follows it, without sockets."""
from __future__ import annotations

import numpy as np
import pytest

from eiger_server.fakedcu.device.definitions import parameter_table
from eiger_server.fakedcu.device.model import FakeDCU, FakeDCUError
from eiger_server.fakedcu.device.states import (TRANSITIONS, Event, IllegalCommand, State,
                                                allows, next_state, refusal)

COMMANDS = [e for e, t in TRANSITIONS.items() if t.refusal is not None]
REPORTS = [e for e, t in TRANSITIONS.items() if t.refusal is None]


def test_states_are_the_simplon_state_values():
    state = parameter_table("1.8.0", "1M")[("detector", "status")]["state"]
    assert list(state.allowed_values) == [s.value for s in State]
    assert str(State.ACQUIRE) == "acquire" and State.ACQUIRE == "acquire"


def test_every_event_has_a_transition():
    assert set(TRANSITIONS) == set(Event)
    assert {e.value for e in COMMANDS} == {"arm", "trigger", "external trigger"}


def test_one_series_through_the_table():
    path = [(Event.INITIALIZE, State.INITIALIZE), (Event.INITIALIZED, State.IDLE),
            (Event.ARM, State.CONFIGURE), (Event.ARMED, State.READY),
            (Event.TRIGGER, State.ACQUIRE), (Event.FRAMES_DONE, State.READY),
            (Event.TRIGGER, State.ACQUIRE), (Event.SERIES_END, State.IDLE)]
    state = State.NA
    for event, expected in path:
        state = next_state(state, event)
        assert state is expected, event


@pytest.mark.parametrize("state", list(State))
def test_arm_only_from_idle_or_ready(state):
    if state in (State.IDLE, State.READY):
        assert next_state(state, Event.ARM) is State.CONFIGURE
        return
    with pytest.raises(IllegalCommand) as info:
        next_state(state, Event.ARM)
    assert info.value.text == (f"arm refused: the detector is in state '{state.value}'; "
                               "initialize it (or disarm) first")


@pytest.mark.parametrize("state", list(State))
def test_trigger_only_when_ready(state):
    if state is State.READY:
        assert next_state(state, Event.TRIGGER) is State.ACQUIRE
        return
    with pytest.raises(IllegalCommand, match=f"state '{state.value}', not 'ready'; arm it"):
        next_state(state, Event.TRIGGER)


@pytest.mark.parametrize("state", list(State))
def test_external_trigger_while_ready_or_acquiring(state):
    assert allows(state, Event.EXTERNAL_TRIGGER) == (state in (State.READY, State.ACQUIRE))
    if not allows(state, Event.EXTERNAL_TRIGGER):
        assert refusal(Event.EXTERNAL_TRIGGER, state) == (
            f"external trigger ignored: the detector is in state '{state.value}'; arm it first")


@pytest.mark.parametrize("state", list(State))
def test_reports_elsewhere_leave_the_state(state):
    # arm ends the previous series while in configure: that must not make it idle
    assert next_state(state, Event.SERIES_END) is (
        State.IDLE if state in (State.READY, State.ACQUIRE) else state)
    assert next_state(state, Event.FRAMES_DONE) is (
        State.READY if state is State.ACQUIRE else state)
    assert next_state(state, Event.ARMED) is (
        State.READY if state is State.CONFIGURE else state)


@pytest.mark.parametrize("state", list(State))
def test_initialize_restart_and_failure_from_anywhere(state):
    assert next_state(state, Event.INITIALIZE) is State.INITIALIZE
    assert next_state(state, Event.INITIALIZED) is State.IDLE
    assert next_state(state, Event.RESTART) is State.NA
    assert next_state(state, Event.ARM_FAILED) is State.ERROR


def test_a_report_has_no_refusal():
    for event in REPORTS:
        with pytest.raises(ValueError, match="report"):
            refusal(event, State.NA)


# ------------------------------------------------- the model asks the table

@pytest.fixture
def model():
    m = FakeDCU("1.8.0", "500K")
    yield m
    m.close()


def _cmd(model: FakeDCU, name: str):
    return model.put("detector", "command", name, None)


def test_model_refuses_as_the_table_says(model):
    assert model.state == "na"
    with pytest.raises(FakeDCUError) as info:
        _cmd(model, "arm")
    assert (info.value.status, info.value.text) == (409, refusal(Event.ARM, State.NA))
    _cmd(model, "initialize")
    with pytest.raises(FakeDCUError) as info:
        _cmd(model, "trigger")
    assert (info.value.status, info.value.text) == (409, refusal(Event.TRIGGER, State.IDLE))
    with pytest.raises(FakeDCUError) as info:
        model.external_trigger()
    assert info.value.status == 409
    assert info.value.text == refusal(Event.EXTERNAL_TRIGGER, State.IDLE)


def test_model_series_follows_the_table(model):
    _cmd(model, "initialize")
    assert model.state is State.IDLE
    model.put("detector", "config", "nimages", {"value": 1})
    model.put("detector", "config", "ntrigger", {"value": 2})
    assert _cmd(model, "arm") == {"sequence id": 1}
    assert model.state is State.READY
    _cmd(model, "trigger")          # returns when the trigger's frames are made
    assert model.state is State.READY
    _cmd(model, "trigger")
    assert model.state is State.IDLE
    assert model.get("detector", "status", "state")["value"] == "idle"


def test_forced_state_goes_past_the_table(model):
    model.force("detector", "status", "state", "error")
    assert model.state is State.ERROR
    with pytest.raises(FakeDCUError, match="'error'; initialize it"):
        _cmd(model, "arm")
    model.put("system", "command", "restart", None)
    assert model.state is State.NA


def test_model_gives_and_takes_arrays_not_darray(model):
    mask = model.get("detector", "config", "pixel_mask")["value"]
    assert isinstance(mask, np.ndarray) and mask.dtype == np.dtype("<u4")
    new = np.zeros_like(mask)
    new[0, :3] = 1
    assert "number_of_excluded_pixels" in model.put("detector", "config", "pixel_mask",
                                                    {"value": new})
    back = model.get("detector", "config", "pixel_mask")["value"]
    assert np.array_equal(back, new) and back is not mask
    assert model.config_value("detector", "number_of_excluded_pixels") == 3
    with pytest.raises(FakeDCUError) as info:
        model.put("detector", "config", "pixel_mask", {"value": {"__darray__": [1, 0, 0]}})
    assert info.value.status == 400 and "must be an array" in info.value.text


def test_model_without_stores_serves_their_defaults(model):
    assert model.get("filewriter", "status", "state")["value"] == "ready"
    assert model.get("monitor", "status", "state")["value"] == "ready"
    assert model.put("filewriter", "command", "clear", None) is None


def test_model_without_stores_has_an_empty_buffer():
    m = FakeDCU("1.6.0", "500K")
    try:
        assert m.get("detector", "status", "builder/dcu_buffer_free")["value"] == 100.0
    finally:
        m.close()
