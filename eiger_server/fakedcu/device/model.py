"""The fake DCU's device logic: values, state machine and acquisition engine.

No network I/O and no wire encoding here: the HTTP adapter (http.py) calls
:meth:`FakeDCU.get`, :meth:`FakeDCU.put` and :meth:`FakeDCU.keys`, which take
and give Python values and numpy arrays (the adapter does JSON and darray);
stream adapters, the file writer and the monitor receive the frames as
:class:`FrameSink` objects. The state follows the table of states.py. The
app (app.py) makes the file writer and the monitor and hands them over with
:meth:`FakeDCU.attach_stores`.

Threads: HTTP requests arrive on many threads and share one lock for the
values and the state. Acquisition runs on a single engine thread (a
one-worker executor) so that series start, frames and series end reach the
sinks in order, and so that ``cancel``/``abort`` from another request can
stop a running ``trigger``. The lock is never held while waiting for the
engine or while calling sinks.
"""
from __future__ import annotations

import datetime as _dt
import inspect
import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from eiger_server.fakedcu.sources.synthetic import SyntheticSource, default_pixel_mask
from eiger_server.fakedcu.interfaces import (FileStore, Frame, FrameSink, FrameSource,
                                             MonitorImages, SeriesEnd, SeriesStart)
from eiger_server.fakedcu.device.filewriter_profile import FileWriterProfile
from eiger_server.fakedcu.device.states import (Event, IllegalCommand, State, allows,
                                                next_state, refusal)
from eiger_server.fakedcu.device.profiles import Profile, profile_named
from eiger_server.fakedcu.device.definitions import (ELEMENT_ENERGY, HC_EV_ANGSTROM, MODELS, PHOTON_ENERGY_RANGE,
                     READOUT_TIME, BIT_DEPTH_BY_COUNT_TIME, SUBSYSTEM_VERSIONS, API_VERSIONS, ParamDef,
                     all_definitions, parameter_table)

log = logging.getLogger(__name__)

__all__ = ["FakeDCU", "FakeDCUError"]

_DTYPES: Dict[int, np.dtype] = {8: np.dtype(np.uint8), 16: np.dtype(np.uint16), 32: np.dtype(np.uint32)}
_TASKS = ("config", "status", "command")


def _countrate_table() -> np.ndarray:
    # non-paralysable dead time: measured = true / (1 + true * tau); rows measured, true
    tau = 2.0e-7
    true_rate = np.linspace(0.0, 2.0e6, 512, dtype=np.float64)
    measured = true_rate / (1.0 + true_rate * tau)
    table = np.stack([measured, true_rate]).astype(np.float32)
    table.flags.writeable = False
    return table


_COUNTRATE_TABLE = _countrate_table()


class FakeDCUError(Exception):
    """A request the fake DCU refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


# ---------------------------------------------------------------- helpers

def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _unique_id() -> str:
    """A ULID-style identifier (time-ordered, 26 characters) like the DCU's."""
    n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))


def _infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "uint" if value >= 0 else "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "float[]" if any(isinstance(v, float) for v in value) else "int[]"
        return "string[]"
    return "string"


class _Series:
    """One armed series, as the engine sees it."""

    __slots__ = ("series_id", "unique_id", "start", "trigger_mode", "nimages", "ntrigger",
                 "total", "count_time", "frame_time", "start_delay", "width", "height",
                 "dtype", "channels", "t_arm", "next_image", "requested", "triggers",
                 "pending", "cancel", "abort", "ended", "per_trigger", "ends_itself", "held",
                 "masked")
    series_id: int
    unique_id: str
    start: SeriesStart
    trigger_mode: str
    nimages: int
    ntrigger: int
    total: int
    count_time: float
    frame_time: float
    start_delay: float
    width: int
    height: int
    dtype: np.dtype
    channels: List[str]
    t_arm: float
    next_image: int
    requested: int
    triggers: int
    pending: int
    cancel: bool
    abort: threading.Event
    ended: bool
    per_trigger: int
    ends_itself: bool
    held: Optional[Frame]
    masked: Dict[str, np.ndarray]   # channel -> flat indices its mask adds to the source's

    def __init__(self, **kw: Any):
        for k, v in kw.items():
            setattr(self, k, v)
        self.next_image = 0        # frames produced
        self.requested = 0         # frames asked for by triggers so far
        self.triggers = 0          # triggers accepted
        self.pending = 0           # acquisition jobs queued or running
        self.cancel = False
        self.abort = threading.Event()
        self.ended = False
        self.held = None           # the last frame, kept back until disarm


# ------------------------------------------------------------------ model

class FakeDCU:
    """A simulated EIGER DCU: SIMPLON values, state machine and frame engine."""

    def __init__(self, api: str = "1.8.0", model: str = "1M", *,
                 source: Optional[FrameSource] = None, arm_delay: float = 0.0,
                 profile: "Profile | str | None" = None):
        self.api = api
        self.profile: Profile = profile_named(profile)
        self.detector_model = model
        self.table = parameter_table(api, model)    # raises ValueError on bad api/model
        self._union = all_definitions()
        self.source: FrameSource = source if source is not None else SyntheticSource()
        self.arm_delay = float(arm_delay)
        self.filestore: Optional[FileStore] = None       # set by attach_stores()
        self.monitorstore: Optional[MonitorImages] = None
        self.stream_adapters: List[Any] = []

        self._lock = threading.RLock()
        self._values: Dict[str, Dict[str, Any]] = {}
        self._status_overrides: Dict[Tuple[str, str], Any] = {}
        self._state = State.NA
        self._errors: List[str] = []
        self._series: Optional[_Series] = None
        self._series_counter = 0
        self._series_unique_id = ""
        self._sinks: Tuple[FrameSink, ...] = ()
        self._engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fakedcu-engine")
        self._closed = False
        # EIGER2 / 1.8 behaviour (bit depth from the count time); off unless
        # asked, as most tests compare 16-bit frames at sub-10 ms count times
        self.bit_depth_follows_count_time = self.profile.bit_depth_follows_count_time
        self._bit_depth_pinned = False
        self._reset_values()

    def attach_stores(self, filestore: FileStore, monitorstore: MonitorImages) -> None:
        """Take the file writer and the monitor: their status and commands are
        served here, and they receive the frames. They read their settings
        back through :meth:`config_value`."""
        self.filestore = filestore
        self.monitorstore = monitorstore
        self.add_sink(filestore)
        self.add_sink(monitorstore)

    # ------------------------------------------------------------ values
    def _reset_values(self) -> None:
        with self._lock:
            self._values = {sub: {name: d.default for name, d in defs.items()}
                            for (sub, task), defs in self.table.items() if task == "config"}
            self._status_overrides.clear()
            det = self._values["detector"]
            det["data_collection_date"] = _now_iso()
            self._set_geometry(self.detector_model)
            det["nframes_sum"] = self._nframes_sum(det["count_time"])
            self._bit_depth_pinned = False

    def _set_geometry(self, model: str) -> None:
        """Image size, factory mask, flatfield and count-rate table of ``model``."""
        width, height, _ = MODELS[model]
        det = self._values["detector"]
        det["x_pixels_in_detector"] = width
        det["y_pixels_in_detector"] = height
        det["pixel_mask"] = default_pixel_mask(width, height)
        # 1.8: each threshold has its own mask; pixel_mask is threshold 1's
        for n in (1, 2):
            if f"threshold/{n}/pixel_mask" in det:
                det[f"threshold/{n}/pixel_mask"] = det["pixel_mask"].copy()
        det["flatfield"] = np.ones((height, width), dtype=np.float32)
        det["countrate_correction_table"] = _COUNTRATE_TABLE
        det["number_of_excluded_pixels"] = int(np.count_nonzero(det["pixel_mask"]))

    def pixels(self) -> Tuple[int, int]:
        """The detector's (height, width) now (roi_mode may change it)."""
        with self._lock:
            det = self._values["detector"]
            return int(det["y_pixels_in_detector"]), int(det["x_pixels_in_detector"])

    def _nframes_sum(self, count_time: float) -> int:
        rate = MODELS[self.detector_model][2]
        return max(1, int(math.ceil(count_time * rate - 1e-6)))

    def _defs(self, subsystem: str, task: str) -> Dict[str, ParamDef]:
        if task not in _TASKS:
            raise FakeDCUError(404, f"task {task!r} does not exist; use config, status or command")
        if subsystem not in ("detector", "filewriter", "stream", "monitor", "system"):
            raise FakeDCUError(404, f"subsystem {subsystem!r} does not exist; use detector, "
                                    "filewriter, stream, monitor or system")
        if self.api not in SUBSYSTEM_VERSIONS.get(subsystem, API_VERSIONS):
            raise FakeDCUError(404, f"subsystem {subsystem!r} is not part of SIMPLON API "
                                    f"{self.api}")
        return self.table.get((subsystem, task), {})

    def _def(self, subsystem: str, task: str, name: str) -> ParamDef:
        defs = self._defs(subsystem, task)
        d = defs.get(name)
        if d is None:
            other = [v for v in API_VERSIONS if v != self.api
                     and name in {p.name for p in self._union.get((subsystem, task), {}).values()
                                  if v in p.versions}]
            hint = f" (it exists in API {other[0]})" if other else ""
            raise FakeDCUError(404, f"{subsystem}/{task}/{name} does not exist in SIMPLON API "
                                    f"{self.api}{hint}; GET {subsystem}/api/{self.api}/{task}/keys "
                                    "lists the names")
        return d

    def keys(self, subsystem: str, task: str) -> List[str]:
        """The names of ``subsystem``'s ``task`` (config, status or command)."""
        return list(self._defs(subsystem, task))

    def config_value(self, subsystem: str, name: str) -> Any:
        """A config value for the stores and adapters (arrays as numpy arrays).

        Names this API version lacks give the default of the version that has
        them; a missing subsystem reports ``mode`` as ``disabled``.
        """
        with self._lock:
            values = self._values.get(subsystem)
            if values is not None and name in values:
                return values[name]
        if name == "mode":
            return "disabled"
        d = self._union.get((subsystem, "config"), {}).get(name)
        if d is None:
            raise KeyError(f"{subsystem}/config/{name} is not a SIMPLON name")
        return d.default

    @staticmethod
    def _describe(d: ParamDef, value: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {"value": value, "value_type": d.value_type,
                               "access_mode": d.access_mode}
        if d.min is not None:
            out["min"] = d.min
        if d.max is not None:
            out["max"] = d.max
        if d.unit is not None:
            out["unit"] = d.unit
        if d.allowed_values is not None:
            out["allowed_values"] = list(d.allowed_values)
        return out

    def definition(self, subsystem: str, task: str, name: str) -> ParamDef:
        """What ``name`` is (type, access, limits, darray type); FakeDCUError 404 if unknown."""
        return self._def(subsystem, task, name)

    def get(self, subsystem: str, task: str, name: str) -> Dict[str, Any]:
        """The value description of one name (value, value_type, access_mode, limits).

        Array values (darray names) are numpy arrays of the name's darray type;
        a new value is a new array, so an encoder may cache by identity.
        """
        d = self._def(subsystem, task, name)
        if task == "command":
            raise FakeDCUError(405, f"{subsystem}/command/{name} is a command: send it with PUT")
        if task == "config":
            with self._lock:
                value = self._values[subsystem][name]
            if d.darray is not None:
                value = value.astype(np.dtype(d.darray), copy=False)
            return self._describe(d, value)
        value = self._status_values(subsystem, [name])[name]
        out = self._describe(d, value)
        if isinstance(value, (list, tuple)) != d.value_type.endswith("[]"):
            out["value_type"] = _infer_type(value)   # a store serves another shape
        out["time"] = _now_iso()
        out["state"] = "normal"
        return out

    def _status_values(self, subsystem: str, names: List[str]) -> Dict[str, Any]:
        defs = self.table[(subsystem, "status")]
        if subsystem == "detector":
            raw = self._detector_status()
        elif subsystem == "filewriter" and self.filestore is not None:
            raw = self.filestore.status()
        elif subsystem == "monitor" and self.monitorstore is not None:
            raw = self.monitorstore.status()
        elif subsystem == "stream":
            raw = self.stream_status()
        else:
            raw = {}
        out = {}
        with self._lock:
            for n in names:
                value = self._status_overrides.get((subsystem, n), raw.get(n, defs[n].default))
                if defs[n].value_type == "string[]" and isinstance(value, str):
                    value = [value] if value else []
                out[n] = value
        return out

    def _detector_status(self) -> Dict[str, Any]:
        with self._lock:
            status: Dict[str, Any] = {"state": self._state.value, "error": list(self._errors),
                                      "time": _now_iso(),
                                      "series_unique_id": self._series_unique_id}
        # slow, small drift so that a poller sees live values
        wobble = 0.2 * math.sin(time.time() / 60.0)
        status["temperature"] = round(31.5 + wobble, 2)
        status["humidity"] = round(7.5 - wobble, 2)
        status["board_000/th0_temp"] = round(34.5 + wobble, 2)
        status["board_000/th0_humidity"] = round(8.2 - wobble, 2)
        for i in range(4):
            status[f"link_{i}"] = "up"
        status["builder/dcu_buffer_free"] = 100.0
        if self.filestore is not None:
            try:
                cap = self.filestore.capacity_bytes
                free = self.filestore.buffer_free()
                if cap:
                    status["builder/dcu_buffer_free"] = round(100.0 * free / cap, 2)
            except Exception:  # a store problem must not break detector status
                log.debug("file writer buffer level unavailable", exc_info=True)
        return status

    def stream_status(self) -> Dict[str, Any]:
        """Stream status merged over the stream adapters (state, error, dropped)."""
        adapters = list(self.stream_adapters)
        if not adapters:
            return {"state": "ready", "error": [], "dropped": 0}
        states, errors, dropped = [], [], 0
        for a in adapters:
            try:
                s = a.status()
            except Exception as exc:  # report rather than fail the GET
                s = {"state": "error", "error": f"stream adapter status failed: {exc}"}
            states.append(s.get("state", "ready"))
            err = s.get("error") or []
            errors.extend([err] if isinstance(err, str) else list(err))
            dropped += int(s.get("dropped", 0) or 0)
        for candidate in ("error", "acquire", "ready"):
            if candidate in states:
                state = candidate
                break
        else:
            state = states[0]
        return {"state": state, "error": errors, "dropped": dropped}

    # -------------------------------------------------------------- PUT
    def put(self, subsystem: str, task: str, name: str, body: Optional[dict]) -> Any:
        """Set a config value (answer: changed names) or run a command."""
        d = self._def(subsystem, task, name)
        if task == "status":
            raise FakeDCUError(400, f"{subsystem}/status/{name} is read-only (status values "
                                    "cannot be set)")
        if task == "command":
            return self._command(subsystem, name, body)
        if d.access_mode == "r":
            raise FakeDCUError(400, f"{subsystem}/config/{name} is read-only")
        if not isinstance(body, dict) or "value" not in body:
            raise FakeDCUError(400, f"PUT {subsystem}/config/{name} needs a JSON body "
                                    '{"value": ...}')
        value = self._coerce(subsystem, d, body["value"], check_limits=True)
        return self._set_config(subsystem, name, value)

    def _coerce(self, subsystem: str, d: ParamDef, value: Any, check_limits: bool) -> Any:
        where = f"{subsystem}/config/{d.name}"
        if d.darray is not None:
            # the HTTP adapter has decoded the darray JSON
            if not isinstance(value, np.ndarray):
                raise FakeDCUError(400, f"{where}: the value must be an array "
                                        f"(darray of {d.darray})")
            arr = value
            with self._lock:
                shape = (self._values["detector"]["y_pixels_in_detector"],
                         self._values["detector"]["x_pixels_in_detector"])
            if d.name != "countrate_correction_table" and arr.shape != shape:
                raise FakeDCUError(400, f"{where}: shape {list(reversed(arr.shape))} does not "
                                        f"match the detector ({shape[1]} x {shape[0]})")
            return arr.astype(np.dtype(d.darray))
        t = d.value_type
        bad = FakeDCUError(400, f"{where}: value {value!r} is not of type {t}")
        if t == "bool":
            if not isinstance(value, bool):
                raise bad
        elif t == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            value = float(value)
            if not math.isfinite(value):
                raise bad
        elif t in ("int", "uint"):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            if t == "uint" and value < 0:
                raise FakeDCUError(400, f"{where}: value {value} must not be negative")
        elif t in ("string", "date"):
            if not isinstance(value, str):
                raise bad
        elif t.endswith("[]"):
            if not isinstance(value, list):
                raise bad
        if d.allowed_values is not None and value not in d.allowed_values:
            raise FakeDCUError(400, f"{where}: {value!r} is not allowed; allowed values: "
                                    f"{list(d.allowed_values)}")
        if check_limits:
            # a relative tolerance so that 1/rate typed back in is accepted
            if d.min is not None and value < d.min - 1e-12 * max(1.0, abs(d.min)):
                raise FakeDCUError(400, f"{where}: {value} is below the minimum {d.min}")
            if d.max is not None and value > d.max + 1e-12 * max(1.0, abs(d.max)):
                raise FakeDCUError(400, f"{where}: {value} is above the maximum {d.max}")
        return value

    def _set_config(self, subsystem: str, name: str, value: Any) -> List[str]:
        """Store a value and its consequences; the names whose values changed."""
        with self._lock:
            values = self._values[subsystem]
            before = dict(values)
            values[name] = value
            if subsystem == "detector":
                self._detector_dependencies(name, value)
            return [name] + [n for n, v in values.items()
                             if n != name and not _same(before.get(n), v)]

    def _detector_dependencies(self, name: str, value: Any) -> None:
        det = self._values["detector"]
        ro = det["detector_readout_time"]
        if name == "count_time":
            if det["frame_time"] < value + ro:
                det["frame_time"] = value + ro
            det["nframes_sum"] = self._nframes_sum(value)
            self._bit_depth_follows(value)
        elif name == "frame_time":
            if det["count_time"] > value - ro:
                det["count_time"] = value - ro
                det["nframes_sum"] = self._nframes_sum(det["count_time"])
                self._bit_depth_follows(det["count_time"])
        elif name == "photon_energy":
            det["element"] = ""
            self._energy_follows(value)
        elif name == "wavelength":
            energy = min(max(HC_EV_ANGSTROM / value, PHOTON_ENERGY_RANGE[0]),
                         PHOTON_ENERGY_RANGE[1])
            det["photon_energy"] = energy
            det["element"] = ""
            self._energy_follows(energy, wavelength=value)
        elif name == "element":
            if value:
                energy = ELEMENT_ENERGY[value]
                det["photon_energy"] = energy
                self._energy_follows(energy)
        elif name == "threshold_energy" and "threshold/1/energy" in det:
            det["threshold/1/energy"] = value
        elif name == "threshold/1/energy":
            det["threshold_energy"] = value
        elif name == "roi_mode":
            self._set_geometry("4M" if value == "4M" else self.detector_model)
        elif name in ("pixel_mask", "threshold/1/pixel_mask"):
            if "threshold/1/pixel_mask" in det:
                det["pixel_mask"] = det["threshold/1/pixel_mask"] = value
            det["number_of_excluded_pixels"] = int(np.count_nonzero(value))

    def _bit_depth_follows(self, count_time: float) -> None:
        """EIGER2 / 1.8: the image bit depth follows the count time (on a PUT;
        the values after a reset stay the DCU's own defaults). A bit depth set
        through ``force`` (``/fake/set``) stays until the next reset: a test
        that chooses the depth gets it whatever the count time."""
        if not self.bit_depth_follows_count_time or self.api.startswith("1.6") \
                or self._bit_depth_pinned:
            return
        depth = 32
        for below, bits in BIT_DEPTH_BY_COUNT_TIME:
            if count_time < below:
                depth = bits
                break
        self._values["detector"]["bit_depth_image"] = depth

    def _energy_follows(self, energy: float, wavelength: Optional[float] = None) -> None:
        """Wavelength and threshold(s) after a photon energy change."""
        det = self._values["detector"]
        det["wavelength"] = wavelength if wavelength is not None else HC_EV_ANGSTROM / energy
        det["threshold_energy"] = energy / 2.0
        if "threshold/1/energy" in det:
            det["threshold/1/energy"] = energy / 2.0

    def force(self, subsystem: str, task: str, name: str, value: Any) -> List[str]:
        """Set any value, read-only ones included (fake-only control ``/fake/set``).

        Config values keep their type check but skip access mode and limits;
        ``bit_depth_image``/``bit_depth_readout`` take 8, 16 or 32. Status
        values are overridden until the next restart (``state`` and ``error``
        set the detector's own).
        """
        d = self._def(subsystem, task, name)
        if task == "command":
            raise FakeDCUError(400, f"{subsystem}/command/{name} is a command, not a value")
        if task == "config":
            value = self._coerce(subsystem, d, value, check_limits=False)
            if subsystem == "detector" and name == "bit_depth_image":
                self._bit_depth_pinned = True
            return self._set_config(subsystem, name, value)
        with self._lock:
            if subsystem == "detector" and name == "state":
                assert d.allowed_values is not None     # the state's definition lists them
                if value not in d.allowed_values:
                    raise FakeDCUError(400, f"state {value!r} is not one of "
                                            f"{list(d.allowed_values)}")
                self._state = State(value)   # on purpose, past the table
            elif subsystem == "detector" and name == "error":
                self._errors = [value] if isinstance(value, str) else list(value or [])
            else:
                self._status_overrides[(subsystem, name)] = value
        return [name]

    # ---------------------------------------------------------- commands
    def _command(self, subsystem: str, name: str, body: Optional[dict]) -> Any:
        if subsystem == "detector":
            handler: Optional[Callable[[Optional[dict]], Any]] = {
                "initialize": self._cmd_initialize, "arm": self._cmd_arm,
                "trigger": self._cmd_trigger, "disarm": self._cmd_disarm,
                "cancel": self._cmd_cancel, "abort": self._cmd_abort,
            }.get(name)
            return handler(body) if handler else None   # status_update, check_connections
        if subsystem == "system":
            if name == "reboot":
                self.restart()
            elif name in ("restart", "shutdown"):
                self._end_current(abort=True)
                with self._lock:
                    self._step(Event.RESTART)
                    if name == "restart" and self.files_profile.restart_resets_settings:
                        # A real DCU's service restart forgets every setting
                        # (its files stay: only a reboot empties the buffer).
                        self._errors = []
                        self._series_unique_id = ""
                        self._reset_values()
            return None
        try:
            if subsystem == "filewriter" and self.filestore is not None:
                self.filestore.command(name)
            elif subsystem == "monitor" and self.monitorstore is not None:
                self.monitorstore.command(name)
            elif subsystem == "stream":
                if name == "initialize" and not self.api.startswith("1.6"):
                    with self._lock:        # as 1.8 does: the stream is disabled afterwards
                        self._values["stream"]["mode"] = "disabled"
                for a in list(self.stream_adapters):
                    if hasattr(a, "command"):
                        a.command(name)
                    elif hasattr(a, name):
                        getattr(a, name)()
        except ValueError as exc:
            raise FakeDCUError(400, str(exc)) from None
        return None

    def _wait(self, future: "Future[Any]") -> Any:
        return future.result()

    def _step(self, event: Event) -> None:
        """Move the state as the table says (lock held); a refused command
        answers HTTP 409 with the table's text."""
        try:
            self._state = next_state(self._state, event)
        except IllegalCommand as exc:
            raise FakeDCUError(409, exc.text) from None

    def _cmd_initialize(self, body: Optional[dict]) -> None:
        self._end_current(abort=True)
        with self._lock:
            self._step(Event.INITIALIZE)
        if self.arm_delay:
            time.sleep(self.arm_delay)
        with self._lock:
            self._step(Event.INITIALIZED)
            self._errors = []
            if self.files_profile.initialize_restarts_sequence:
                self._series_counter = 0     # the next arm is series 1 again
            if self.files_profile.ready_after_initialize:
                # Some DCUs report "ready" after initialize: a quirk of the
                # profile, past the state table (like /fake/set of the state).
                self._state = State.READY
        return None

    def _cmd_arm(self, body: Optional[dict]) -> Dict[str, int]:
        with self._lock:
            det = self._values["detector"]
            if self.profile.one_image_per_trigger and det["trigger_mode"] in ("inte", "exte") \
                    and det["nimages"] != 1:
                raise FakeDCUError(400, f"arm refused: nimages is {det['nimages']}; in trigger "
                                        f"mode {det['trigger_mode']} each trigger makes one "
                                        "image, set nimages to 1")
            self._step(Event.ARM)
            old = self._series
        if old is not None:
            self._end_series(old, abort=True)
        if self.arm_delay:
            time.sleep(self.arm_delay)
        with self._lock:
            series = self._new_series()
            self._series = series
            self._series_unique_id = series.unique_id
        try:
            self._wait(self._engine.submit(self._start_job, series))
        except Exception as exc:
            log.exception("arm failed")
            with self._lock:
                self._series = None
                self._step(Event.ARM_FAILED)
                self._errors = [f"arm failed: {exc}"]
            raise FakeDCUError(500, f"arm failed: {exc}") from None
        with self._lock:
            if self._series is series and not series.ended:
                self._step(Event.ARMED)
        return {"sequence id": series.series_id}

    def _new_series(self) -> _Series:
        """Snapshot the configuration into a new series (lock held)."""
        det = self._values["detector"]
        self._series_counter += 1
        sid = self._series_counter
        width, height = det["x_pixels_in_detector"], det["y_pixels_in_detector"]
        dtype = _DTYPES.get(det["bit_depth_image"], _DTYPES[16])
        if self.api == "1.6.0":
            channels = ["threshold_1"]
        else:
            channels = [c for c, key in (("threshold_1", "threshold/1/mode"),
                                         ("threshold_2", "threshold/2/mode"),
                                         ("difference", "threshold/difference/mode"))
                        if det.get(key) == "enabled"]
        det["data_collection_date"] = _now_iso()
        config = {n: v for n, v in det.items() if not isinstance(v, np.ndarray)}
        uid = _unique_id()
        start = SeriesStart(
            series_id=sid, series_unique_id=uid, config=config, channels=channels,
            width=width, height=height, dtype=dtype, nimages=det["nimages"],
            ntrigger=det["ntrigger"], compression=det["compression"],
            pixel_mask=det["pixel_mask"], flatfield=det["flatfield"],
            countrate_table=det["countrate_correction_table"],
            stream=dict(self._values["stream"]), filewriter=dict(self._values["filewriter"]),
            api=self.api)
        mode = det["trigger_mode"]
        per_trigger = self.profile.images_per_trigger(mode, det["nimages"])
        return _Series(series_id=sid, unique_id=uid, start=start,
                       trigger_mode=mode, nimages=det["nimages"], per_trigger=per_trigger,
                       ends_itself=self.profile.ends_by_itself(mode),
                       ntrigger=det["ntrigger"], total=per_trigger * det["ntrigger"],
                       count_time=det["count_time"], frame_time=det["frame_time"],
                       start_delay=det.get("trigger_start_delay", 0.0) or 0.0,
                       width=width, height=height, dtype=dtype, channels=channels,
                       t_arm=time.perf_counter(),
                       masked=_channel_masks(det, channels, width, height))

    def _cmd_trigger(self, body: Optional[dict]) -> None:
        with self._lock:
            s = self._series
            # a DCU whose trigger answers before the images are out takes the
            # next trigger while the last one's frames are still being made
            queued = (s is not None and self._state is State.ACQUIRE
                      and self.profile.trigger_returns != "images_out")
            if s is None or not (queued or allows(self._state, Event.TRIGGER)):
                raise FakeDCUError(409, refusal(Event.TRIGGER, self._state))
            if s.trigger_mode not in ("ints", "inte"):
                raise FakeDCUError(409, f"trigger refused: trigger_mode is '{s.trigger_mode}'"
                                        "; the external input triggers this series "
                                        "(PUT /fake/trigger on the fake DCU)")
            if s.requested >= s.total:
                raise FakeDCUError(409, f"trigger refused: all {s.ntrigger} trigger(s) of "
                                        f"series {s.series_id} were used; disarm and arm again")
            count_time, frame_time = s.count_time, s.frame_time
            if s.trigger_mode == "inte":
                value = (body or {}).get("value") if isinstance(body, dict) else None
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, (int, float)) \
                            or not value > 0 or not math.isfinite(value):
                        raise FakeDCUError(400, f"trigger in inte mode: exposure {value!r} "
                                                "must be a positive number of seconds")
                    count_time = float(value)
                    frame_time = count_time + READOUT_TIME
            n = s.per_trigger
            s.triggers += 1
            s.requested += n
            s.pending += 1
            if not queued:
                self._step(Event.TRIGGER)
        started = time.monotonic()
        future = self._engine.submit(self._acquire_job, s, n, count_time, frame_time)
        returns = self.profile.trigger_returns
        if returns == "images_out":
            self._wait(future)
        elif returns == "after_exposure":
            # the exposure is over; the frames may still be on their way
            rest = started + s.start_delay + n * frame_time - time.monotonic()
            if rest > 0:
                time.sleep(rest)
        return None

    def external_trigger(self, value: Optional[float] = None) -> None:
        """A pulse on the external trigger input (exts: nimages frames; exte: one frame).

        ``value`` is the exposure of an exte frame (default: count_time).
        Returns at once; the frames come from the engine thread.
        """
        with self._lock:
            s = self._series
            if s is None or not allows(self._state, Event.EXTERNAL_TRIGGER):
                raise FakeDCUError(409, refusal(Event.EXTERNAL_TRIGGER, self._state))
            if s.trigger_mode not in ("exts", "exte"):
                raise FakeDCUError(409, f"external trigger ignored: trigger_mode is "
                                        f"'{s.trigger_mode}'; set exts or exte before arm")
            if s.requested >= s.total:
                raise FakeDCUError(409, f"external trigger ignored: all {s.total} frames of "
                                        f"series {s.series_id} were already triggered")
            count_time, frame_time = s.count_time, s.frame_time
            if s.trigger_mode == "exte":
                n = 1 if self.profile.one_image_per_trigger else s.nimages
                if value is not None:
                    try:
                        count_time = float(value)
                    except (TypeError, ValueError):
                        raise FakeDCUError(400, "external trigger value must be the "
                                                "exposure in seconds") from None
                    if not count_time > 0 or not math.isfinite(count_time):
                        raise FakeDCUError(400, "external trigger exposure must be positive")
                frame_time = count_time + READOUT_TIME
            else:
                n = s.per_trigger
            s.triggers += 1
            s.requested += n
            s.pending += 1
            self._step(Event.EXTERNAL_TRIGGER)
        self._engine.submit(self._acquire_job, s, n, count_time, frame_time)

    def _cmd_disarm(self, body: Optional[dict]) -> Dict[str, int]:
        # harmless in any state, as on the real DCU
        with self._lock:
            sid = self._series.series_id if self._series else self._series_counter
        self._end_current(abort=True, flush=True)
        return {"sequence id": sid}

    def _cmd_cancel(self, body: Optional[dict]) -> None:
        self._end_current(abort=False, flush=True)
        return None

    def _cmd_abort(self, body: Optional[dict]) -> None:
        self._end_current(abort=True)
        return None

    def _end_current(self, abort: bool, flush: bool = False) -> None:
        with self._lock:
            s = self._series
        if s is not None:
            self._end_series(s, abort, flush)

    def _end_series(self, s: _Series, abort: bool, flush: bool = False) -> None:
        """Stop series ``s`` (abort: at once; else after the current frame) and end it;
        ``flush`` sends a frame held back for disarm first (abort drops it)."""
        s.cancel = True
        if abort:
            s.abort.set()
        if not flush:
            s.held = None
        self._wait(self._engine.submit(self._end_job, s))

    # ------------------------------------------------------------ engine
    def _start_job(self, s: _Series) -> None:
        prepare = getattr(self.source, "prepare", None)
        if prepare is not None:
            prepare(s.width, s.height, s.dtype, s.channels)
        for sink in self._sinks:
            try:
                sink.series_start(s.start)
            except Exception:
                log.exception("sink %r failed at series start", sink)

    def _acquire_job(self, s: _Series, n: int, count_time: float, frame_time: float) -> None:
        try:
            if not (s.ended or s.cancel or s.abort.is_set()):
                self._produce(s, n, count_time, frame_time)
        except Exception as exc:
            log.exception("acquisition of series %d failed", s.series_id)
            with self._lock:
                self._errors.append(f"acquisition failed: {exc}")
            s.abort.set()
        finally:
            with self._lock:
                s.pending -= 1
            if s.cancel or s.abort.is_set() or (s.next_image >= s.total and s.ends_itself):
                self._end_job(s)
            else:
                with self._lock:
                    if self._series is s and s.pending == 0:
                        self._step(Event.FRAMES_DONE)

    def _produce(self, s: _Series, n: int, count_time: float, frame_time: float) -> None:
        """Make ``n`` frames at ``frame_time`` spacing (absolute schedule, no drift)."""
        sinks = self._sinks
        source = self.source
        abort = s.abort
        width, height, dtype, channels = s.width, s.height, s.dtype, s.channels
        ct_ns = int(round(count_time * 1e9))
        clock = time.perf_counter
        t0 = clock() + s.start_delay
        n = min(n, s.total - s.next_image)
        debug = log.isEnabledFor(logging.DEBUG)
        masked = s.masked
        top = np.iinfo(dtype).max
        # pre-compressed blobs would not carry the masks loaded into the DCU
        encoded = None if masked else _encoder_for(source, s)
        for k in range(n):
            if abort.is_set():
                break
            begin = t0 + k * frame_time
            wait = begin + count_time - clock()
            if wait > 0 and abort.wait(wait):
                break
            image_id = s.next_image
            data = source.frame(image_id, width, height, dtype, channels)
            for channel, flat in masked.items():
                if channel in data:
                    image = data[channel].copy()   # sources may hand out shared arrays
                    image.reshape(-1)[flat] = top
                    data[channel] = image
            start_ns = int((begin - s.t_arm) * 1e9)
            frame = Frame(s.series_id, image_id, data, start_ns, start_ns + ct_ns, ct_ns,
                          encoded(image_id) if encoded else None)
            if image_id == s.total - 1 and not s.ends_itself and self.profile.last_image_at_disarm:
                s.held = frame             # leaves at disarm (see _end_job)
            else:
                self._to_sinks(sinks, frame)
            s.next_image = image_id + 1
            if debug:
                log.debug("series %d frame %d", s.series_id, image_id)
            if s.cancel:
                break

    def _end_job(self, s: _Series) -> None:
        """Send series end to the sinks once, and go idle if ``s`` is current."""
        if not s.ended:
            s.ended = True
            held, s.held = s.held, None
            if held is not None:
                self._to_sinks(self._sinks, held)
            end = SeriesEnd(s.series_id, s.unique_id, s.next_image)
            for sink in self._sinks:
                try:
                    sink.series_end(end)
                except Exception:
                    log.exception("sink %r failed at series end", sink)
            log.debug("series %d ended after %d frames", s.series_id, s.next_image)
        with self._lock:
            if self._series is s:
                self._series = None
                self._step(Event.SERIES_END)

    # ------------------------------------------------------------- sinks
    @staticmethod
    def _to_sinks(sinks: Tuple[FrameSink, ...], frame: Frame) -> None:
        for sink in sinks:
            try:
                sink.frame(frame)
            except Exception:
                log.exception("sink %r failed at frame %d", sink, frame.image_id)

    def add_sink(self, sink: FrameSink) -> None:
        """Register a consumer of series start, frames and series end."""
        with self._lock:
            if sink not in self._sinks:
                self._sinks = self._sinks + (sink,)

    def remove_sink(self, sink: FrameSink) -> None:
        with self._lock:
            self._sinks = tuple(x for x in self._sinks if x is not sink)

    # --------------------------------------------------------- lifecycle
    #: How restart and initialize behave (filewriter_profile.py); the app sets it.
    files_profile: FileWriterProfile = FileWriterProfile()

    @property
    def state(self) -> State:
        """The detector state (a str: na, idle, ready, acquire, configure, initialize, error)."""
        with self._lock:
            return self._state

    @property
    def series_id(self) -> int:
        """The id of the last series armed (0 before the first arm)."""
        with self._lock:
            return self._series_counter

    def restart(self) -> None:
        """A DCU reboot: end any series, state ``na``, defaults, buffers emptied."""
        self._end_current(abort=True)
        with self._lock:
            self._step(Event.RESTART)
            self._errors = []
            self._series_unique_id = ""
            self._reset_values()
        for store in (self.filestore, self.monitorstore):
            if store is None:
                continue
            try:
                store.command("clear")
            except Exception:
                log.exception("clearing %r at restart failed", store)
        for a in list(self.stream_adapters):
            try:
                if hasattr(a, "initialize"):
                    a.initialize()
            except Exception:
                log.exception("resetting stream adapter %r failed", a)

    def close(self) -> None:
        """End any series and stop the engine (the stores are their owner's to close)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._end_current(abort=True)
        except Exception:
            log.exception("ending the series at close failed")
        self._engine.shutdown(wait=True)


def _channel_masks(det: Dict[str, Any], channels: List[str], width: int,
                   height: int) -> Dict[str, np.ndarray]:
    """channel -> flat indices of the pixels its threshold's mask flags beyond
    the factory mask (which the synthetic frames already hold at the maximum).

    On 1.8 threshold_1 and threshold_2 follow their own ``threshold/<n>/pixel_mask``
    and ``difference`` the union of both; on 1.6 every channel follows
    ``pixel_mask``. Empty when ``pixel_mask_applied`` is off or no mask flags
    more than the factory one, so such a series costs nothing per frame.
    """
    if not det.get("pixel_mask_applied", True):
        return {}
    own = {c: det.get(f"threshold/{c[-1]}/pixel_mask", det["pixel_mask"])
           for c in ("threshold_1", "threshold_2")}
    factory = default_pixel_mask(width, height) != 0
    out: Dict[str, np.ndarray] = {}
    for channel in channels:
        if channel == "difference":
            mask = own["threshold_1"] | own["threshold_2"]
        else:
            mask = own.get(channel, det["pixel_mask"])
        if mask.shape != (height, width):
            continue                     # a geometry change resets the masks
        flat = np.flatnonzero((mask != 0) & ~factory)
        if flat.size:
            out[channel] = flat
    return out


def _encoder_for(source: Any, s: _Series) -> Optional[Callable[[int], Any]]:
    """image_id -> pre-compressed blobs, when ``source`` has them for this series.

    Sources holding compressed data (the replay sources, replay's
    PrecompressedCache) let the sinks skip compressing, provided the blobs
    are in the series compression and of the series geometry and type.
    """
    encoded = getattr(source, "encoded", None)
    if encoded is None or getattr(source, "compression", None) != s.start.compression:
        return None
    channels, width, height, dtype = s.channels, s.width, s.height, s.dtype
    try:
        nparams = len(inspect.signature(encoded).parameters)
    except (TypeError, ValueError):
        return None
    if nparams >= 5:    # encoded(index, width, height, dtype, channels): fits any geometry
        return lambda i: encoded(i, width, height, dtype, channels)
    # recorded blobs are only valid when the recording matches the series
    if (getattr(source, "width", None), getattr(source, "height", None)) != (width, height) \
            or np.dtype(getattr(source, "dtype", None) or "V1") != dtype:
        return None
    if nparams == 2:    # encoded(index, channels) -> {channel: blob}
        return lambda i: encoded(i, channels)
    if nparams == 1 and len(channels) == 1:    # encoded(index) -> blob or None
        only = channels[0]

        def single(i: int) -> Optional[Dict[str, bytes]]:
            blob = encoded(i)
            return {only: blob} if blob is not None else None
        return single
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b
    return a == b
