"""Arming, triggering and counting: spec's ``run``/``halt``/``get_status``.

The detector is armed once and then triggered for each count, as long as
nothing that shapes the series changed (a config PUT marks it dirty) and the
series still has triggers left. Counts run on their own thread so the command
thread answers ``get_status`` while the detector exposes.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Optional, Sequence

from eiger_server.control.bindings import component
from eiger_server.control.interfaces import CountingStream, DetectorConfig
from eiger_server.values import format_value, one_arg, parse_number
from eiger_server.errors import DetectorError, EigerError, ParameterError
from eiger_server.simplon.rest import SimplonClient

log = logging.getLogger(__name__)

# Config names that do not change the shape of a series: setting them never
# forces a re-arm. Everything else does.
_NO_REARM = {"pixel_mask", "flatfield"}

MODES = ("SINGLE", "ACCUM")


@component
class Acquisition:
    """State of the series on the DCU and of spec's current count.

    ``detector`` is the cached configuration, ``simplon`` sends the detector
    commands (arm, trigger, ...), ``stream`` counts the images.
    """

    def __init__(self, detector: DetectorConfig, simplon: SimplonClient,
                 stream: CountingStream) -> None:
        self.detector = detector
        self.simplon = simplon
        self.stream = stream
        self._lock = threading.RLock()
        self.seqid: Optional[int] = None
        self.armed = False
        self.dirty = True
        self.triggers_left = 0
        self.acq_mode = "SINGLE"
        self.acc_maxtime = 0.0
        self.acc_nimages = 0
        self.last_acc_n = 1
        self.preset: Optional[float] = None
        self._single_nimages: Optional[int] = None
        self._count: Optional[threading.Thread] = None
        self._count_error: Optional[BaseException] = None
        self._halt = threading.Event()

    def close(self) -> None:
        self._halt.set()
        count = self._count
        if count is not None:
            count.join(timeout=2.0)

    # -- table rows -----------------------------------------------------------
    def get_seqid(self) -> Any:
        return self.seqid if self.seqid is not None else ""

    def get_max_trigger(self) -> Any:
        return self.detector.describe("detector", "ntrigger").get("max", "")

    def get_acq_mode(self) -> str:
        return self.acq_mode

    def set_acq_mode(self, *args: str) -> str:
        mode = one_arg(args, "acq_mode").strip().upper()
        if mode in ("ACC", "ACCUMULATE", "ACCUMULATION"):
            mode = "ACCUM"
        if mode not in MODES:
            raise ParameterError(f"acq_mode: '{mode}' is not SINGLE or ACCUM")
        self.acq_mode = mode
        return mode

    def get_acc_maxtime(self) -> float:
        return self.acc_maxtime

    def set_acc_maxtime(self, *args: str) -> float:
        value = parse_number(one_arg(args, "acc_maxtime"), "acc_maxtime")
        if value < 0:
            raise ParameterError("acc_maxtime: must be 0 (no limit) or a positive time in s")
        self.acc_maxtime = value
        return value

    def get_acc_nimages(self) -> int:
        return self.acc_nimages if self.acc_nimages > 0 else self.last_acc_n

    def set_acc_nimages(self, *args: str) -> int:
        value = int(parse_number(one_arg(args, "acc_nimages"), "acc_nimages", integer=True))
        if value < 0 or value > 100000:
            raise ParameterError("acc_nimages: must be between 0 (use acc_maxtime) and 100000")
        self.acc_nimages = value
        return value

    def config_changed(self, subsystem: str, keys: Sequence[str]) -> None:
        if any(key not in _NO_REARM for key in keys):
            self.dirty = True

    # -- commands -----------------------------------------------------------
    def do_arm(self, *args: str) -> Any:
        with self._lock:
            return self._arm()

    def _arm(self) -> Any:
        if self.armed:
            self._disarm_quietly()
        self.stream.prepare_series()
        answer = self.simplon.command("detector", "arm")
        if isinstance(answer, dict):
            # "sequence id" as documented; some firmware says "series id"
            self.seqid = next((answer[k] for k in ("sequence id", "sequence_id", "series id")
                               if k in answer), self.seqid)
        self.armed = True
        self.dirty = False
        try:
            self.triggers_left = int(self.detector.config_value("ntrigger"))
        except (TypeError, ValueError):
            self.triggers_left = 1
        log.log(15, "armed, sequence id %s, %d trigger(s)", self.seqid, self.triggers_left)
        return self.seqid

    def _disarm_quietly(self) -> None:
        try:
            self.simplon.command("detector", "disarm")
        except DetectorError as exc:
            log.warning("disarm before re-arm failed: %s", exc)
        self.armed = False

    def do_disarm(self, *args: str) -> str:
        with self._lock:
            self.simplon.command("detector", "disarm")
            self.armed = False
            self.triggers_left = 0
        return ""

    def do_cancel(self, *args: str) -> str:
        self._halt.set()
        self.simplon.command("detector", "cancel")
        self.armed = False
        return ""

    def do_abort(self, *args: str) -> str:
        self._halt.set()
        try:
            self.simplon.command("detector", "abort")
        finally:
            self.armed = False
        return ""

    def do_trigger(self, *args: str) -> str:
        """A software trigger with the detector's current settings, in the background."""
        exposure = parse_number(args[0], "trigger") if args else None
        self._start(lambda: self._trigger_once(exposure, self._images_per_trigger(), False))
        return ""

    # -- counting -----------------------------------------------------------
    def counting(self) -> bool:
        count = self._count
        return count is not None and count.is_alive()

    def take_error(self) -> Optional[BaseException]:
        """The error of the last count, once."""
        error, self._count_error = self._count_error, None
        return error

    def start_count(self, preset: float) -> None:
        """spec's ``run <preset>``: a count of ``preset`` seconds."""
        if not (preset > 0) or math.isinf(preset):
            raise ParameterError(f"run: the preset {preset} must be a positive time in seconds")
        self._start(lambda: self._count_once(preset))

    def halt(self) -> None:
        """spec's ``halt``: abort the running count, if any."""
        if self.counting():
            self.do_abort()

    def _start(self, work) -> None:
        if self.counting():
            raise EigerError("a count is already running; wait for get_status 0 or halt it")
        self._halt.clear()
        self._count_error = None

        def run() -> None:
            try:
                work()
            except BaseException as exc:       # reported through get_status
                self._count_error = exc
                log.error("count failed: %s", exc)

        self._count = threading.Thread(target=run, name="count", daemon=True)
        self._count.start()

    def plan(self, preset: float) -> tuple:
        """(images per count, exposure per image) for the acquisition mode."""
        if self.acq_mode != "ACCUM":
            return 1, preset
        if self.acc_nimages > 0:
            n = self.acc_nimages
        elif self.acc_maxtime > 0:
            n = max(1, math.ceil(preset / self.acc_maxtime - 1e-9))
        else:
            n = 1
        return n, preset / n

    def program_exposure(self, exposure: float) -> None:
        """count_time = frame_time = exposure, as far as the DCU allows.

        The DCU keeps frame_time >= count_time + readout time and adjusts one
        when the other is set; a frame_time within one readout time of the
        exposure is what it makes of "both equal", so it is left alone (else
        every count would write it again and force a re-arm).
        """
        self.detector.write_config("detector", "count_time", exposure)
        readout = float(self.detector.config_value("detector_readout_time") or 0.0)
        frame_time = float(self.detector.config_value("frame_time"))
        if abs(frame_time - exposure) > readout + 1e-9 * max(1.0, exposure):
            self.detector.write_config("detector", "frame_time", exposure + readout)

    def _images_per_trigger(self) -> int:
        try:
            return int(self.detector.config_value("nimages"))
        except (TypeError, ValueError):
            return 1

    def get_preset(self) -> Any:
        return self.preset if self.preset is not None else ""

    def set_preset(self, *args: str) -> float:
        """Program the detector for counts of ``preset`` seconds without counting,
        so that a scan can arm once before its first point."""
        preset = parse_number(one_arg(args, "preset"), "preset")
        if preset <= 0:
            raise ParameterError(f"preset: {preset} must be a positive time in seconds")
        self._program(preset)
        return preset

    def _program(self, preset: float) -> tuple:
        """count_time/frame_time (and nimages in ACCUM) for a count of ``preset``;
        returns (images per count, exposure per image, accumulate)."""
        n, exposure = self.plan(preset)
        accumulate = self.acq_mode == "ACCUM"
        with self._lock:
            # Program only what changed; the cache answers without a round trip.
            self.program_exposure(exposure)
            if accumulate:
                # ACCUM borrows nimages; the user's value comes back in SINGLE.
                if self._single_nimages is None:
                    self._single_nimages = self._images_per_trigger()
                self.detector.write_config("detector", "nimages", n)
                self.last_acc_n = n
            elif self._single_nimages is not None:
                self.detector.write_config("detector", "nimages", self._single_nimages)
                self._single_nimages = None
            self.preset = preset
        return (n if accumulate else self._images_per_trigger()), exposure, accumulate

    def _count_once(self, preset: float) -> None:
        nimages, exposure, accumulate = self._program(preset)
        self._trigger_once(exposure, nimages, accumulate)

    def _count_broke(self, exc: DetectorError, nimages: int) -> DetectorError:
        """``exc`` saying how much of the count the stream had delivered: the
        DCU went away mid-series, so spec learns how many images are lost."""
        if not self.stream.enabled():
            return exc
        got = int(self.stream.images_collected())
        return DetectorError(f"{exc}; {got} of the count's {nimages} images had arrived, "
                             f"the other {max(0, nimages - got)} are lost",
                             url=exc.url, status=exc.status, text=exc.text)

    def _trigger_once(self, exposure: Optional[float], nimages: int, accumulate: bool) -> None:
        with self._lock:
            if not self.armed or self.dirty or self.triggers_left <= 0:
                self._arm()
            if self._halt.is_set():
                # halted while arming (seconds on real hardware): no exposure
                self.armed = False
                log.info("count halted before its trigger")
                return
            mode = str(self.detector.config_value("trigger_mode"))
            self.stream.begin_count(nimages, accumulate)
            started = time.monotonic()
            if mode in ("ints", "inte"):
                frame_time = float(self.detector.config_value("frame_time"))
                timeout = nimages * max(frame_time, exposure or 0.0) + 30.0
                value = exposure if mode == "inte" else None
                try:
                    self.simplon.command("detector", "trigger", value, timeout=timeout)
                except DetectorError as exc:
                    if exc.status is None or self._halt.is_set():
                        raise self._count_broke(exc, nimages) from None
                    # The DCU may have ended the series on its own (restart,
                    # another client): arm again and retry once.
                    log.warning("trigger refused (%s); arming again", exc)
                    self._arm()
                    self.stream.begin_count(nimages, accumulate)
                    self.simplon.command("detector", "trigger", value, timeout=timeout)
                self.triggers_left -= 1
                if self.triggers_left <= 0:
                    self.armed = False
            else:
                timeout = 3600.0           # external trigger: waits for the hardware
        if self.stream.enabled():
            wait = max(5.0, 2.0 * nimages * (exposure or 0.0)) if mode in ("ints", "inte") else timeout
            deadline = time.monotonic() + wait
            while not self._halt.is_set():
                if self.stream.wait_count(min(0.2, max(0.0, deadline - time.monotonic()))):
                    break
                if time.monotonic() >= deadline:
                    raise EigerError(f"count: the stream delivered "
                                     f"{format_value(self.stream.images_collected())} of "
                                     f"{nimages} images within {wait:g} s; check stream_state "
                                     "and dropped")
        log.log(15, "count done in %.3f s", time.monotonic() - started)
