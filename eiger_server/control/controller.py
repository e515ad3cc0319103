"""EigerController: what spec's image_par reaches.

``get``/``set`` look a name up in the image_par table (table.py). SIMPLON rows
go to the DCU through the REST client, with a cache so values are programmed
only when they change; local rows call the methods their binding names
(components/binding.py) on this controller's instance of the binding's component:

* access R/RW: ``read`` on get and ``write`` on set, with spec's words
* access ``--`` (command): ``run`` on get and on set
* ``background=True``: the call runs on the job runner (jobs.py)

Components get narrow interfaces (components/protocols.py), wired here; ``self.config``
(config.py), the cached SIMPLON configuration, is their DetectorConfig.

Settings survive the DCU: every SIMPLON value spec sets is remembered, in
the order it was set, and programmed again (in that order, so values that
follow from others come out as before) when the DCU is found back at its
defaults: state ``na`` before an arm or at ``config``, and after ``restart``,
``reboot`` or ``initialize`` sent through image_par. Before each arm with the
filewriter on, the files the new series would write are looked for on the
DCU: a series never overwrites files that are still there.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from eiger_server.options import ServerOptions
from eiger_server.control import table
from eiger_server.control.acquisition import Acquisition
from eiger_server.control.config import CachedConfig, ValueCache
from eiger_server.control.jobs import JobRunner
from eiger_server.control.monitor_images import MonitorImages
from eiger_server.control.pixel_masks import PixelMasks
from eiger_server.control.settings import ServerInfo, Settings
from eiger_server.control.transfers import FileTransfers
from eiger_server.errors import (DataError, DetectorError, EigerError, NotSupported, ParameterError,
                                 UnknownParameter)
from eiger_server.control.table import Param
from eiger_server.simplon.rest import SimplonClient
from eiger_server.storage import paths
from eiger_server.values import format_value, one_arg, parse_bool, parse_number
from eiger_server.stream.handler import StreamHandler
from eiger_server.stream.imageproc import accumulated_dtype
from eiger_server.wire.protocol import wire_type_for

log = logging.getLogger(__name__)
_BIT_DEPTHS = {8: np.uint8, 16: np.uint16, 32: np.uint32}


# -- the controller -------------------------------------------------------
class EigerController:
    """The detector as spec sees it; owns every component."""

    def __init__(self, options: ServerOptions, simplon: Optional[SimplonClient] = None) -> None:
        self.options = options
        self.simplon = simplon or SimplonClient(
            options.dcu_host or "", options.dcu_port, version=options.simplon_version,
            timeout=options.http_timeout)
        self.shutdown_requested = False
        self.config = CachedConfig(self.simplon, on_changed=self.on_config_changed)
        # What spec set, (subsystem, key) -> value in the order set (see the docstring).
        self._memory_lock = threading.Lock()
        self._remembered: Dict[Tuple[str, str], Any] = {}
        self._restore_pending = False
        self._sequence_restarted = False      # initialize: the next series is number 1
        # Components, each given what it needs and no more. Callables that
        # name a component late (lambda: self.acq...) are there because the
        # stream and the acquisition need each other.
        self.settings = Settings(self._write_remembered)
        self.server = ServerInfo(lambda: self.simplon.version, self._request_shutdown)
        self.jobs = JobRunner()
        self.stream = StreamHandler(self.config, self.simplon, self.settings, options,
                                    acq_mode=lambda: self.acq.acq_mode)
        self.acq = Acquisition(self.config, self.simplon, self.stream,
                               before_arm=self.before_arm)
        self.files = FileTransfers(self.config, self.simplon, self.settings,
                                   stopping=lambda: self.jobs.stopping)
        self.monitor = MonitorImages(self.simplon, self.settings,
                                     seqid=lambda: self.acq.seqid)
        self.masks = PixelMasks(self.config, self.simplon, self.settings,
                                latest=lambda: self.stream.latest())
        # The instance that serves each binding's component (components/binding.py).
        self._components: Dict[type, Any] = {
            type(c): c for c in (self.settings, self.server, self.jobs, self.stream,
                                 self.acq, self.files, self.monitor, self.masks)}
        missing = {row.local.component for row in table.TABLE if row.local} - set(self._components)
        if missing:
            raise TypeError("no component serves the rows of "
                            + ", ".join(sorted(c.__qualname__ for c in missing)))

    def _request_shutdown(self) -> None:
        self.shutdown_requested = True

    def component(self, cls: type) -> Any:
        """This controller's instance of component class ``cls``."""
        return self._components[cls]

    def close(self) -> None:
        for component in (self.stream, self.jobs, self.acq):
            try:
                component.close()
            except Exception:                       # closing must not raise
                log.exception("closing %s", type(component).__name__)

    # -- the DCU's configuration (config.py), for commands.py and tests --
    @property
    def cache(self) -> ValueCache:
        return self.config.cache

    @property
    def version(self) -> str:
        return self.config.version

    def version_at_least(self, major: int, minor: int) -> bool:
        return self.config.version_at_least(major, minor)

    def describe(self, subsystem: str, key: str, fresh: bool = False) -> Dict[str, Any]:
        return self.config.describe(subsystem, key, fresh)

    def config_value(self, key: str, subsystem: str = "detector") -> Any:
        return self.config.config_value(key, subsystem)

    def write_config(self, subsystem: str, key: str, value: Any, force: bool = False) -> bool:
        return self.config.write_config(subsystem, key, value, force)

    def keys(self, subsystem: str, task: str) -> List[str]:
        return self.config.keys(subsystem, task)

    def forget_detector(self) -> None:
        """After a restart/reboot/initialize: cached values may all be stale."""
        self.config.forget()

    def on_config_changed(self, subsystem: str, keys: Sequence[str]) -> None:
        """Anything that changes the series makes the next count arm again."""
        self.acq.config_changed(subsystem, keys)

    # -- image_par --------------------------------------------------------
    def get(self, name: str, args: Sequence[str] = ()) -> str:
        """``get name [args]``: read a value or run a command."""
        return self._dispatch(name, list(args), write=False)

    def set(self, name: str, args: Sequence[str] = ()) -> str:
        """``set name value [args]``: write a value or run a command."""
        return self._dispatch(name, list(args), write=True)

    def _dispatch(self, name: str, args: List[str], write: bool) -> str:
        row = table.lookup(name)
        if row is None:
            return self._passthrough(name, args, write)
        if row.unsupported:
            raise NotSupported(f"'{name}': {row.unsupported}")
        # Rows of every version need no version (the DCU may not be reachable).
        if row.versions != "ALL" and not row.available_in(self.version):
            raise ParameterError(
                f"'{name}' needs {row.version_text()}, but the detector runs SIMPLON "
                f"{self.version}")
        if write and not row.writable and row.set_reads and args:
            write = False           # image_par(unit, "filelist", pattern) is a read
        if write and not row.writable:
            raise ParameterError(f"'{name}' is read-only; use image_par(unit, \"{name}\") "
                                 "to read it")
        if not write and not row.readable:
            raise ParameterError(f"'{name}' is write-only")
        if row.background:
            self.jobs.start(name, lambda: self._run_row(row, name, args, write))
            return "started"
        return format_value(self._run_row(row, name, args, write))

    def _run_row(self, row: Param, name: str, args: List[str], write: bool) -> Any:
        if row.local:
            return self._call_local(row, args, write)
        if row.is_command:
            subsystem, _ = row.simplon_place
            command = row.simplon_key(self.version) or row.name
            value = None
            if args:
                value = parse_number(args[0], name) if len(args) == 1 else " ".join(args)
            answer = self.simplon.command(subsystem, command, value)
            if subsystem == "system" or command == "initialize":
                self.forget_detector()
            if subsystem == "system":
                # The DCU comes back at its defaults, maybe not yet reachable:
                # the next arm or config programs spec's settings again.
                self._restore_pending = True
            elif subsystem == "detector" and command == "initialize":
                self._sequence_restarted = True
                self.restore_settings("after initialize")
            return answer
        number = table.pattern_number(row, name)
        key = row.simplon_key(self.version, number)
        if key is None:
            raise ParameterError(f"'{name}' is not available with SIMPLON {self.version}")
        if write:
            return self._write_simplon(row, name, key, args)
        return self._read_simplon(row, key)

    def _call_local(self, row: Param, args: List[str], write: bool) -> Any:
        binding = row.local
        assert binding is not None
        role = "run" if row.is_command else ("write" if write else "read")
        if not binding.accepts(role, len(args)):
            raise ParameterError(f"'{row.name}' does not take {len(args)} argument(s) "
                                 f"({' '.join(args) or 'none given'}); see 'help eiger'")
        return binding.method(role)(self._components[binding.component], *args)

    def _read_simplon(self, row: Param, key: str) -> Any:
        subsystem, task = row.simplon_place
        if task == "config":
            description = self.describe(subsystem, key, fresh=True)
        else:
            try:
                description = self.simplon.get(subsystem, task, key)
            except DetectorError as exc:
                fallback = table.STATUS_FALLBACK.get(key)
                if exc.status != 404 or fallback is None:
                    raise
                description = self.simplon.get(subsystem, task, fallback)
        return self.from_dcu(row, description.get("value"))

    def from_dcu(self, row: Param, value: Any) -> Any:
        if row.conv == "enabled":
            return 1 if str(value).lower() == "enabled" else 0
        if row.conv == "bool":
            return bool(value)
        return value

    def _write_simplon(self, row: Param, name: str, key: str, args: List[str]) -> Any:
        # spec's own set compares with the DCU's value now, not the cache: a DCU
        # that restarted is back at its defaults and the cache would skip the PUT.
        subsystem, _ = row.simplon_place
        description = self.describe(subsystem, key, fresh=True)
        if str(description.get("access_mode", "rw")).strip().lower() == "r":
            # the DCU's own access mode decides, whatever the requirements' table says
            raise ParameterError(f"'{name}' cannot be set: the detector does not allow writing "
                                 f"{subsystem} '{key}' (its access mode is read-only); read "
                                 f"it with image_par(unit, \"{name}\")")
        value = self.to_dcu(row, name, args, description)
        self._write_remembered(subsystem, key, value)
        return self._read_simplon(row, key)

    def to_dcu(self, row: Param, name: str, args: List[str],
               description: Dict[str, Any]) -> Any:
        """Convert spec's text to the value the DCU takes, checking it first."""
        text = one_arg(args, f"set {name}")
        if row.conv == "enabled":
            return "enabled" if parse_bool(text, name) else "disabled"
        value_type = description.get("value_type", "string")
        if row.conv == "bool" or value_type == "bool":
            return parse_bool(text, name)
        if row.conv == "str" or value_type in ("string", "date"):
            value: Any = text
        elif value_type in ("int", "uint"):
            value = parse_number(text, name, integer=True)
            if value_type == "uint" and value < 0:
                raise ParameterError(f"{name}: {text} is negative; it must be 0 or more")
        elif value_type == "float":
            value = parse_number(text, name)
        elif value_type.endswith("[]"):
            # an array goes as a JSON array of its element type, never as strings
            element = value_type[:-2]
            words = text.replace(",", " ").replace("[", " ").replace("]", " ").split()
            if element in ("int", "uint"):
                value = [parse_number(w, name, integer=True) for w in words]
            elif element == "float":
                value = [parse_number(w, name) for w in words]
            else:
                value = words
        else:
            raise ParameterError(f"'{name}' ({value_type}) cannot be set from spec")
        allowed = description.get("allowed_values")
        if isinstance(allowed, str):
            allowed = [allowed]        # a real 1.6.6 DCU answers roi_mode's as a bare string
        if allowed and value not in allowed:
            raise ParameterError(f"{name}: '{text}' is not allowed; choose one of "
                                 f"{', '.join(str(a) for a in allowed)}")
        low, high = description.get("min"), description.get("max")
        if isinstance(value, (int, float)):
            if low is not None and value < low:
                raise ParameterError(f"{name}: {text} is below the minimum {format_value(low)}")
            if high is not None and value > high:
                raise ParameterError(f"{name}: {text} is above the maximum {format_value(high)}")
        return value

    def _passthrough(self, name: str, args: List[str], write: bool) -> str:
        """A SIMPLON detector name the table does not list (e.g. threshold/1/energy)."""
        task = self._detector_task_of(name) if table.VALID_NAME.match(name) else None
        if task is not None:
            # Only the look-up may fail quietly: the DCU's own refusal of a
            # value must reach spec as it is.
            row = Param(name, "passthrough", "RW" if task == "config" else "R",
                        "ALL", "", subsystem="detector", task=task)
            if write and task != "config":
                raise ParameterError(f"'{name}' is a detector status value and read-only")
            if write:
                return format_value(self._write_simplon(row, name, name, args))
            return format_value(self._read_simplon(row, name))
        hint = table.closest(name)
        raise UnknownParameter(f"unknown parameter '{name}'"
                               + (f"; did you mean '{hint}'?" if hint else
                                  "; see the parameter table in 'help eiger'"))

    def _detector_task_of(self, name: str) -> Optional[str]:
        """"config" or "status" if the DCU lists ``name`` there, else None."""
        try:
            for task in ("config", "status"):
                if name in self.keys("detector", task):
                    return task
        except DetectorError:
            pass                          # no DCU to ask: the name is unknown
        return None

    # -- settings that survive the DCU, and no overwritten files ----------
    def _write_remembered(self, subsystem: str, key: str, value: Any,
                          force: bool = False) -> bool:
        """Write a value spec set, and remember it (last set goes last)."""
        sent = self.config.write_config(subsystem, key, value, force)
        with self._memory_lock:
            self._remembered.pop((subsystem, key), None)
            self._remembered[(subsystem, key)] = value
        return sent

    def remembered(self) -> List[Tuple[str, str, Any]]:
        """(subsystem, key, value) of what spec set, in the order set."""
        with self._memory_lock:
            return [(sub, key, value) for (sub, key), value in self._remembered.items()]

    def restore_settings(self, why: str) -> List[str]:
        """Program every remembered value again; the ``key=value`` texts sent.

        Every value is sent (not only those that differ): in the order spec
        set them, values that follow from others (threshold from photon
        energy, frame_time from count_time) end as they were. A value the DCU
        refuses is reported after all others were tried.
        """
        self.forget_detector()
        done, refused = [], []
        for subsystem, key, value in self.remembered():
            try:
                self.write_config(subsystem, key, value, force=True)
                done.append(f"{key}={format_value(value)}")
            except DetectorError as exc:
                refused.append(f"{key}={format_value(value)} ({exc})")
        self._restore_pending = False
        if done:
            log.warning("%s: programmed %d settings again: %s", why, len(done), ", ".join(done))
        if refused:
            raise DetectorError(f"{why}: the DCU refused settings spec had set: "
                                + "; ".join(refused) + "; set them again (the DCU keeps "
                                "its default for each)")
        return done

    def recover_dcu(self) -> None:
        """A DCU found in state ``na`` (restarted, rebooted, powered on) is
        initialized and given spec's settings again; so is one that was sent
        ``restart`` or ``reboot``."""
        if self.simplon.get_value("detector", "status", "state") == "na":
            log.warning("the DCU is in state 'na' (it restarted): initializing it")
            self.simplon.command("detector", "initialize")
            self._sequence_restarted = True
            self._restore_pending = True
        if self._restore_pending:
            self.restore_settings("the DCU was back at its defaults")

    def before_arm(self) -> None:
        """What every arm checks first: the DCU has spec's settings, and the
        series will overwrite no file still on the DCU."""
        self.recover_dcu()
        self._check_no_overwrite()
        self._sequence_restarted = False      # this arm takes series 1

    def _check_no_overwrite(self) -> None:
        if str(self.config_value("mode", "filewriter")).lower() != "enabled":
            return
        pattern = str(self.config_value("name_pattern", "filewriter"))
        if "$id" in pattern:
            if self._sequence_restarted:
                series = 1
            elif isinstance(self.acq.seqid, int):
                series = self.acq.seqid + 1
            else:
                # Never armed here and no initialize seen: the DCU's counter runs
                # on from series this server never saw, so no name repeats.
                return
            prefix, which = paths.expand_id(pattern, str(series)), f"series {series}"
        else:
            prefix, which = pattern, "every series"
        clashes = self.files.clashes([prefix])
        if clashes:
            shown = ", ".join(clashes[:5]) + (f" and {len(clashes) - 5} more"
                                              if len(clashes) > 5 else "")
            raise DataError(
                f"arm refused: the DCU still holds {shown}, which the new series would "
                f"overwrite (name_pattern '{pattern}' names the files of {which} "
                f"{prefix}_*"
                + ("; the series id restarts at 1 after initialize" if "$id" in pattern
                   else "") + f"). Transfer them ('transfer {prefix}_*') or delete them "
                f"('delete {prefix}_*'), or set another prefix, then count again")

    # -- used by commands.py ---------------------------------------------
    def image_geometry(self) -> Tuple[str, int, int]:
        """(type name, rows, columns) of the image ``read`` will send next: the
        DCU's bit depth now (re-read after a PUT that lists it), the
        acquisition mode now (not the last count's), the rotation."""
        try:
            depth = int(self.config_value("bit_depth_image"))
            dtype = np.dtype(_BIT_DEPTHS.get(depth, np.uint32))
            if str(self.acq.acq_mode).upper() == "ACCUM":
                dtype = accumulated_dtype(dtype)
        except (EigerError, TypeError, ValueError):
            dtype = self.stream.result_dtype()      # from the latest image, or the error
        width = int(self.config_value("x_pixels_in_detector"))
        height = int(self.config_value("y_pixels_in_detector"))
        if self.options.rotation in (90, 270):
            width, height = height, width
        return wire_type_for(dtype).name, height, width

