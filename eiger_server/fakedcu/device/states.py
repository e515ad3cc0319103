"""The fake DCU's detector state machine, as data.

:class:`State` holds the values of ``detector/status/state``; :data:`TRANSITIONS`
says which :class:`Event` moves the detector from which state to which. The
model (model.py) asks :func:`next_state` and never writes a state of its own
choosing, except for the fake-only ``PUT /fake/set`` of the state, which sets
any state on purpose.

Two kinds of event: a *command* (arm, trigger, an external trigger pulse) is
refused in a state the table does not list, with the text of its
:attr:`Transition.refusal`; a *report* from the engine (series end, a
trigger's frames done, ...) leaves a state the table does not list as it is.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional

__all__ = ["State", "Event", "Transition", "TRANSITIONS", "IllegalCommand", "allows", "next_state",
           "refusal"]


class State(str, enum.Enum):
    """``detector/status/state`` of SIMPLON (the string is the value served)."""

    NA = "na"
    IDLE = "idle"
    READY = "ready"
    ACQUIRE = "acquire"
    CONFIGURE = "configure"
    INITIALIZE = "initialize"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


class Event(enum.Enum):
    """What happens to the detector: a command from a client or a report of the engine."""

    INITIALIZE = "initialize"              # detector/command/initialize begins
    INITIALIZED = "initialized"            # ... and is done
    ARM = "arm"                            # detector/command/arm begins
    ARMED = "armed"                        # the series is set up (sinks told)
    ARM_FAILED = "arm failed"              # setting the series up raised
    TRIGGER = "trigger"                    # detector/command/trigger (ints, inte)
    EXTERNAL_TRIGGER = "external trigger"  # a pulse on the trigger input (exts, exte)
    FRAMES_DONE = "frames done"            # a trigger's frames are made, more are due
    SERIES_END = "series end"              # all frames made, or disarm/cancel/abort
    RESTART = "restart"                    # system restart, reboot or shutdown


ANY: FrozenSet[State] = frozenset(State)


@dataclass(frozen=True)
class Transition:
    """``event`` moves a state of ``sources`` to ``target``.

    ``refusal`` (commands only) is the HTTP 409 text when the detector is in
    another state; ``{state}`` stands for the current state. Without it the
    event is a report and another state stays as it is.
    """

    sources: FrozenSet[State]
    target: State
    refusal: Optional[str] = None


TRANSITIONS: Dict[Event, Transition] = {
    Event.INITIALIZE: Transition(ANY, State.INITIALIZE),
    Event.INITIALIZED: Transition(ANY, State.IDLE),
    Event.ARM: Transition(frozenset({State.IDLE, State.READY}), State.CONFIGURE,
                          refusal="arm refused: the detector is in state '{state}'; "
                                  "initialize it (or disarm) first"),
    Event.ARMED: Transition(frozenset({State.CONFIGURE}), State.READY),
    Event.ARM_FAILED: Transition(ANY, State.ERROR),
    Event.TRIGGER: Transition(frozenset({State.READY}), State.ACQUIRE,
                              refusal="trigger refused: the detector is in state "
                                      "'{state}', not 'ready'; arm it first"),
    Event.EXTERNAL_TRIGGER: Transition(frozenset({State.READY, State.ACQUIRE}), State.ACQUIRE,
                                       refusal="external trigger ignored: the detector is "
                                               "in state '{state}'; arm it first"),
    Event.FRAMES_DONE: Transition(frozenset({State.ACQUIRE}), State.READY),
    Event.SERIES_END: Transition(frozenset({State.READY, State.ACQUIRE}), State.IDLE),
    Event.RESTART: Transition(ANY, State.NA),
}


class IllegalCommand(Exception):
    """A command the detector refuses in its current state; ``text`` says why."""

    def __init__(self, event: Event, state: State, text: str):
        super().__init__(text)
        self.event = event
        self.state = state
        self.text = text


def allows(state: State, event: Event) -> bool:
    """Does the table move ``state`` on ``event`` (for a command: is it accepted)?"""
    return state in TRANSITIONS[event].sources


def refusal(event: Event, state: State) -> str:
    """The text of refusing command ``event`` in ``state``."""
    template = TRANSITIONS[event].refusal
    if template is None:
        raise ValueError(f"{event.value} is a report of the engine, not a command")
    return template.format(state=state.value)


def next_state(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``.

    Raises :class:`IllegalCommand` for a command the table does not allow in
    ``state``; a report not listed for ``state`` leaves it unchanged.
    """
    t = TRANSITIONS[event]
    if state in t.sources:
        return t.target
    if t.refusal is not None:
        raise IllegalCommand(event, state, refusal(event, state))
    return state
