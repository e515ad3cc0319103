"""Arming, triggering and counting: spec's ``run``/``halt``/``get_status``.

The detector is armed once and then triggered for each count, as long as
nothing that shapes the series changed (a config PUT marks it dirty) and the
series still has triggers left. Counts run on their own thread so the command
thread answers ``get_status`` while the detector exposes.

A count is over when its images are in, counted by the stream's own series
and frame numbers, never when a command returned (a DCU may answer
``trigger`` before the exposure ends, and images reach the receiver later):

* ``ints``/``exts``: each trigger makes ``nimages`` images; ``inte``/``exte``:
  one image per trigger (or enable gate), whatever ``nimages`` says.
* A count in ``exts``/``exte`` is one whole series: armed, then the images of
  all its triggers awaited.
* ACCUM sums the count's images: ``nimages`` of them in ``ints``/``exts``,
  in ``inte`` that many triggers of one image each (``ntrigger`` is borrowed
  like ``nimages``), in ``exte`` the series' ``ntrigger`` images.
* Every series ends with ``disarm`` once its last image is in (the last image,
  on some DCUs, only leaves at disarm: when all but one image are in and the
  exposure is long over, disarm comes first). ``halt`` sends ``cancel`` (the
  image being taken is finished; if that takes more than 2 s, ``abort``) and
  then ``disarm``, so what was taken is written out; the halted count has no
  valid result.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Optional, Sequence

from eiger_server.components.binding import component
from eiger_server.components.protocols import CountingStream, DetectorConfig
from eiger_server.values import one_arg, parse_number
from eiger_server.errors import DetectorError, EigerError, ParameterError
from eiger_server.simplon.rest import SimplonClient

log = logging.getLogger(__name__)

# Config names that do not change the shape of a series: setting them never
# forces a re-arm. Everything else does.
_NO_REARM = {"pixel_mask", "flatfield"}

MODES = ("SINGLE", "ACCUM")
# After the exposure, how long images may take to reach the receiver before a
# DCU that keeps the last image until disarm is disarmed.
_SETTLE = 0.5
# How long a count whose images have all arrived may take to reduce them
# (decode, accumulate) before it fails: a machine far behind, or the kernels
# compiled for the first time (numba, tens of seconds once after install).
_REDUCE_GRACE = 120.0
# How long halt lets cancel finish the image being exposed before it aborts.
_CANCEL_WAIT = 2.0


@component
class Acquisition:
    """State of the series on the DCU and of spec's current count.

    ``detector`` is the cached configuration, ``simplon`` sends the detector
    commands (arm, trigger, ...), ``stream`` counts the images.
    """

    def __init__(self, detector: DetectorConfig, simplon: SimplonClient,
                 stream: CountingStream,
                 before_arm: Callable[[], None] = lambda: None) -> None:
        self.detector = detector
        self.before_arm = before_arm      # checks before each arm (the controller's)
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
        self._single_ntrigger: Optional[int] = None
        # the armed series: images each trigger makes, images triggered so far
        self._per_trigger = 1
        self._frames_triggered = 0
        self._series_images = 0
        self._count_expected = 0
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
        self.before_arm()
        if self.armed:
            self._disarm_quietly()
        self.stream.prepare_series()
        mode = self._trigger_mode()
        try:
            ntrigger = int(self.detector.config_value("ntrigger"))
        except (TypeError, ValueError):
            ntrigger = 1
        self._per_trigger = self._images_per_trigger(mode)
        answer = self.simplon.command("detector", "arm")
        if isinstance(answer, dict):
            # "sequence id" as documented; some firmware says "series id"
            self.seqid = next((answer[k] for k in ("sequence id", "sequence_id", "series id")
                               if k in answer), self.seqid)
        self.armed = True
        self.dirty = False
        self.triggers_left = ntrigger
        self._frames_triggered = 0
        self._series_images = ntrigger * self._per_trigger
        log.log(15, "armed, sequence id %s, %d trigger(s) of %d image(s)", self.seqid,
                self.triggers_left, self._per_trigger)
        return self.seqid

    def _disarm_quietly(self) -> None:
        try:
            self.simplon.command("detector", "disarm")
        except DetectorError as exc:
            log.warning("disarm before re-arm failed: %s", exc)
        self.armed = False

    def _end_series(self) -> None:
        """``disarm``: the series is over (the DCU writes out its last image and files)."""
        self.armed = False
        self.triggers_left = 0
        self.simplon.command("detector", "disarm")
        log.log(15, "series %s ended with disarm", self.seqid)

    def do_disarm(self, *args: str) -> str:
        with self._lock:
            self.simplon.command("detector", "disarm")
            self.armed = False
            self.triggers_left = 0
        return ""

    def _stop_count(self, how: str) -> None:
        """A running count is stopped by ``how``: it has no valid result."""
        if self.counting():
            self._halt.set()
            got = int(self.stream.images_collected())
            self.stream.fail_count(f"the count was {how} after {got} of its "
                                   f"{self._count_expected} images; this count has no "
                                   "valid result")

    def do_cancel(self, *args: str) -> str:
        self._stop_count("cancelled")
        self._halt.set()
        self.simplon.command("detector", "cancel")
        self.armed = False
        return ""

    def do_abort(self, *args: str) -> str:
        self._stop_count("aborted")
        self._halt.set()
        try:
            self.simplon.command("detector", "abort")
        finally:
            self.armed = False
        return ""

    def do_trigger(self, *args: str) -> str:
        """A software trigger with the detector's current settings, in the background."""
        exposure = parse_number(args[0], "trigger") if args else None
        self._start(lambda: self._trigger_once(exposure, False))
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
        """spec's ``halt``: ``cancel`` the running count (the image being taken is
        finished; ``abort`` when that takes longer than a few seconds), then
        ``disarm`` so that what was taken is written out."""
        if not self.counting():
            return
        self._stop_count("halted")
        try:
            try:
                self.simplon.command("detector", "cancel", timeout=_CANCEL_WAIT)
            except DetectorError as exc:
                if exc.status is not None:
                    raise
                # cancel waits for the image being exposed: a long one is cut short
                log.info("cancel did not return within %g s; aborting", _CANCEL_WAIT)
                self.simplon.command("detector", "abort")
        finally:
            self.armed = False
            self.triggers_left = 0
            self.simplon.command("detector", "disarm")

    def _start(self, work) -> None:
        if self.counting():
            raise EigerError("a count is already running; wait for get_status 0 or halt it")
        self._halt.clear()
        self._count_error = None
        # before answering: is_waiting_data is 1 and the old result is gone
        self.stream.open_count()

        def run() -> None:
            try:
                work()
            except BaseException as exc:       # reported through get_status
                self._count_error = exc
                self.stream.fail_count(f"the count failed: {exc}")
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

    def _trigger_mode(self) -> str:
        try:
            return str(self.detector.config_value("trigger_mode"))
        except (EigerError, KeyError):
            return "ints"

    def _config_int(self, name: str) -> int:
        try:
            return int(self.detector.config_value(name))
        except (TypeError, ValueError):
            return 1

    def _images_per_trigger(self, mode: Optional[str] = None) -> int:
        """Images one trigger makes: ``nimages`` in ints/exts, 1 in inte/exte."""
        if (mode or self._trigger_mode()) in ("inte", "exte"):
            return 1
        return self._config_int("nimages")

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

    def _borrow(self, name: str, saved: Optional[int], value: Optional[int]) -> Optional[int]:
        """ACCUM borrows ``name`` (value) and gives the user's back (value None);
        returns what is saved for SINGLE."""
        if value is not None:
            if saved is None:
                saved = self._config_int(name)
            self.detector.write_config("detector", name, value)
            return saved
        if saved is not None:
            self.detector.write_config("detector", name, saved)
        return None

    def _program(self, preset: float) -> tuple:
        """count_time/frame_time (and, in ACCUM, nimages or in inte ntrigger) for a
        count of ``preset``; returns (triggers of the count, exposure per image,
        accumulate)."""
        n, exposure = self.plan(preset)
        accumulate = self.acq_mode == "ACCUM"
        with self._lock:
            mode = self._trigger_mode()
            # Program only what changed; the cache answers without a round trip.
            self.program_exposure(exposure)
            # ACCUM borrows nimages (ints, exts) or ntrigger (inte: one image per
            # trigger); the user's values come back in SINGLE.
            self._single_nimages = self._borrow(
                "nimages", self._single_nimages,
                n if accumulate and mode in ("ints", "exts") else None)
            self._single_ntrigger = self._borrow(
                "ntrigger", self._single_ntrigger,
                n if accumulate and mode == "inte" else None)
            if accumulate:
                self.last_acc_n = n
            self.preset = preset
        return (n if accumulate and mode == "inte" else 1), exposure, accumulate

    def _count_once(self, preset: float) -> None:
        ntrig, exposure, accumulate = self._program(preset)
        self._trigger_once(exposure, accumulate, ntrig)

    def _count_broke(self, exc: DetectorError, nimages: int) -> DetectorError:
        """``exc`` saying how much of the count the stream had delivered: the
        DCU went away mid-series, so spec learns how many images are lost."""
        if not self.stream.enabled():
            return exc
        got = int(self.stream.images_collected())
        return DetectorError(f"{exc}; {got} of the count's {nimages} images had arrived, "
                             f"the other {max(0, nimages - got)} are lost",
                             url=exc.url, status=exc.status, text=exc.text)

    def _trigger_once(self, exposure: Optional[float], accumulate: bool, ntrig: int = 1) -> None:
        """One count: arm when needed; trigger ``ntrig`` times (internal modes)
        or await the whole series (external); wait for the images; disarm
        when the series is over."""
        with self._lock:
            mode = self._trigger_mode()
            external = mode in ("exts", "exte")
            if external:
                # one series per count; images may come before arm answers
                self.stream.begin_count(self._config_int("ntrigger") * self._images_per_trigger(mode),
                                        accumulate, new_series=True)
                self._arm()
            elif not self.armed or self.dirty or self.triggers_left < ntrig:
                self._arm()
            if self._halt.is_set():
                # halted while arming (seconds on real hardware): no exposure
                self.armed = False
                log.info("count halted before its trigger")
                return
            frame_time = float(self.detector.config_value("frame_time"))
            delay = float(self._config_value_or("trigger_start_delay", 0.0))
            started = time.monotonic()
            if external:
                nimages = self._series_images
                self._count_expected = nimages
                self.stream.bind_series(self.seqid, 0)
                self.triggers_left = 0
                wait = 3600.0              # external trigger: waits for the hardware
                exposure_end = started
            else:
                nimages = ntrig * self._per_trigger
                self._count_expected = nimages
                self.stream.begin_count(nimages, accumulate, series=self.seqid,
                                        first_frame=self._frames_triggered)
                each = max(frame_time, exposure or 0.0)
                timeout = delay + self._per_trigger * each + 30.0
                value = exposure if mode == "inte" else None
                for k in range(ntrig):
                    if self._halt.is_set():
                        break
                    self._send_trigger(value, timeout, nimages, accumulate, first=k == 0)
                exposure_end = started + delay + nimages * each
                wait = max(5.0, 2.0 * nimages * (exposure or 0.0))
            last = self.triggers_left <= 0
        self._await_images(nimages, exposure_end, wait, last)
        log.log(15, "count done in %.3f s", time.monotonic() - started)

    def _config_value_or(self, name: str, default: Any) -> Any:
        try:
            value = self.detector.config_value(name)
        except (EigerError, KeyError):
            return default
        return default if value in (None, "") else value

    def _send_trigger(self, value: Optional[float], timeout: float, nimages: int,
                      accumulate: bool, first: bool) -> None:
        """(lock held) One software trigger of the armed series (``first``: the
        count's first)."""
        try:
            self.simplon.command("detector", "trigger", value, timeout=timeout)
        except DetectorError as exc:
            if exc.status is None or self._halt.is_set() or not first:
                raise self._count_broke(exc, nimages) from None
            # The DCU may have ended the series on its own (restart, another
            # client) before this count's first trigger: arm again, retry once.
            log.warning("trigger refused (%s); arming again", exc)
            self._arm()
            self.stream.begin_count(nimages, accumulate, series=self.seqid, first_frame=0)
            self.simplon.command("detector", "trigger", value, timeout=timeout)
        self.triggers_left -= 1
        self._frames_triggered += self._per_trigger

    def _await_images(self, nimages: int, exposure_end: float, wait: float, last: bool) -> None:
        """Until the count's images are in (or, stream off, the DCU is done);
        ``last``: the series is over then, and ends with disarm."""
        if not self.stream.enabled():
            self._await_dcu(exposure_end, wait)
            if last and not self._halt.is_set():
                self._end_series()
            return
        deadline = exposure_end + wait
        disarmed = False
        while not self._halt.is_set():
            if self.stream.wait_count(0.2):
                break
            now = time.monotonic()
            got = int(self.stream.images_collected())
            # Some DCUs send the last image of a series only at disarm.
            held = got >= nimages - 1 and now >= exposure_end + _SETTLE
            if last and not disarmed and (held or now >= deadline):
                self._end_series()
                disarmed = True
                deadline = max(deadline, now + _SETTLE + 1.5)
                continue
            if now >= deadline and now < deadline + _REDUCE_GRACE and \
                    int(self.stream.images_arrived()) >= nimages:
                continue          # every image is in, the last are still being reduced
            if now >= deadline:
                self.stream.fail_count(
                    f"the stream delivered {got} of {nimages} images within {wait:g} s "
                    "after the exposure; this count has no valid result (check "
                    "stream_state and dropped)")
                log.error("count: %d of %d images within %g s", got, nimages, wait)
                return
        if last and not disarmed and not self._halt.is_set():
            self._end_series()

    def _await_dcu(self, exposure_end: float, wait: float) -> None:
        """Stream off: the exposure has elapsed and the DCU left ``acquire``."""
        while not self._halt.is_set() and time.monotonic() < exposure_end:
            self._halt.wait(min(0.2, max(0.0, exposure_end - time.monotonic())))
        deadline = exposure_end + wait
        while not self._halt.is_set():
            try:
                state = str(self.simplon.get("detector", "status", "state").get("value"))
            except (EigerError, AttributeError) as exc:
                log.debug("detector state unknown: %s", exc)
                state = "acquire"
            if state != "acquire":
                return
            if time.monotonic() >= deadline:
                self.stream.fail_count(f"the detector was still acquiring {wait:g} s after "
                                       "the exposure; this count has no valid result")
                return
            self._halt.wait(0.05)
