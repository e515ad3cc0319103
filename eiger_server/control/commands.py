"""server_hdw's standard commands, mapped onto the controller.

``CommandHandler.execute`` runs on one of the server's two executor threads
(see :meth:`CommandHandler.is_memory_only`); an exception becomes an error
reply ``<command>. error: <message>``.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, FrozenSet, List

from eiger_server.control.controller import EigerController
from eiger_server.values import format_value, parse_number, unquote
from eiger_server.errors import DataError, EigerError, ParameterError
from eiger_server.wire.protocol import Reply, Request
from eiger_server.simplon.rest import check_host

log = logging.getLogger(__name__)

#: Commands answered from the server's memory alone (never the DCU).
MEMORY_ONLY_COMMANDS: FrozenSet[str] = frozenset({"get_status", "clear", "goodbye", "xfer_done"})

#: ``get`` names answered from the server's memory alone: counters of the
#: stream handler and the background-command state, each behind its own lock.
#: (``dropped`` is not one: it adds the DCU's own count, read over HTTP.)
MEMORY_ONLY_GETS: FrozenSet[str] = frozenset({
    "images_collected", "is_waiting_data", "cmd_executing", "get_answer", "get_command",
})

#: Bare error texts of the reference server (``(text, True)`` returns), sent
#: on the error line without the ``<command>. error:`` prefix.
_BARE_ERRORS = ("No acquisition done", "Unknown ROI", "not ready")


class CommandHandler:
    """Answers requests; safe to call from the server's DCU and memory threads
    at once, as :meth:`is_memory_only` splits them."""

    def __init__(self, ctrl: EigerController) -> None:
        self.ctrl = ctrl
        # "hello" never reaches here: the server's I/O loop answers it at once.
        self._commands: Dict[str, Callable[[List[str]], Reply]] = {
            "config": self._config, "exit": self._exit,
            "clear": self._ok, "goodbye": self._ok, "run": self._run, "halt": self._halt,
            "get_status": self._get_status, "set": self._set, "get": self._get,
            "read": self._read, "write": self._write, "xfer_done": self._ok,
            "set_roi": self._set_roi, "get_roi": self._get_roi,
        }

    def describe(self) -> str:
        return "eiger_server: DECTRIS EIGER through the SIMPLON API"

    def close(self) -> None:
        pass

    def is_memory_only(self, req: Request) -> bool:
        """True if ``req`` is answered from memory alone, so the server may run
        it beside another client's DCU call. The rule: a command of
        :data:`MEMORY_ONLY_COMMANDS`, ``get`` of a name in
        :data:`MEMORY_ONLY_GETS`, or a command this handler does not know
        (answered ``unknown``). Everything else may reach the DCU."""
        if req.command == "get":
            return bool(req.args) and req.args[0] in MEMORY_ONLY_GETS
        return req.command in MEMORY_ONLY_COMMANDS or req.command not in self._commands

    def execute(self, req: Request) -> Reply:
        command = self._commands.get(req.command)
        if command is None:
            return Reply(text="unknown")
        reply = command(list(req.args))
        if self.ctrl.shutdown_requested:
            reply.shutdown = True
        return reply

    def receive_payload(self, data: bytes) -> None:
        """Raw data of a ``write``: read off the wire as the protocol requires.
        The EIGER has no use for data from spec, so it is not kept."""
        log.log(15, "received %d bytes from spec (not used)", len(data))

    # -- commands -------------------------------------------------------------
    @staticmethod
    def _ok(args: List[str]) -> Reply:
        return Reply(text="ok")

    def _config(self, args: List[str]) -> Reply:
        if args and not self.ctrl.simplon.host:
            # Started without -a: take the detector address from spec's ADDR field.
            self.ctrl.simplon.host = check_host(args[0])
        # A DCU fresh from boot is in state "na" and refuses to arm until it
        # is initialized; do it now, while spec is configuring anyway, and
        # give it back the settings spec had set (it is at its defaults).
        self.ctrl.recover_dcu()
        # Detection happens here (the version is not cached until it succeeds),
        # so an absent DCU errors clearly now and is found when it appears.
        self.ctrl.cache.drop("detector", ["x_pixels_in_detector", "y_pixels_in_detector",
                                          "bit_depth_image"])
        typename, rows, cols = self.ctrl.image_geometry()
        return Reply(text=f"{typename} {rows} {cols}")

    def _exit(self, args: List[str]) -> Reply:
        return Reply(text="ok", shutdown=True)

    def _run(self, args: List[str]) -> Reply:
        if not args:
            raise ParameterError("run needs a preset (seconds)")
        self.ctrl.acq.start_count(parse_number(args[0], "run preset"))
        return Reply()

    def _halt(self, args: List[str]) -> Reply:
        self.ctrl.acq.halt()
        return Reply()

    def _get_status(self, args: List[str]) -> Reply:
        if self.ctrl.acq.counting():
            return Reply(text="1")
        error = self.ctrl.acq.take_error()
        if error is not None:
            raise error if isinstance(error, EigerError) else EigerError(str(error))
        return Reply(text="0")

    def _set(self, args: List[str]) -> Reply:
        if not args:
            raise ParameterError("set needs a parameter name")
        # spec may quote string values: set acq_mode "SINGLE".
        return Reply(text=self.ctrl.set(args[0], unquote(args[1:])))

    def _get(self, args: List[str]) -> Reply:
        if not args:
            raise ParameterError("get needs a parameter name")
        return Reply(text=self.ctrl.get(args[0], args[1:]))

    def _read(self, args: List[str]) -> Reply:
        if len(args) != 4:
            # The reference's answer; the EIGER is a 2-D device.
            return Reply(ok=False, text="cannot decode args")
        bounds = _bounds(args, "read")
        try:
            typename, npoints, data = self.ctrl.stream.read(*bounds)
        except DataError as exc:
            if "not ready" in str(exc):
                return Reply(ok=False, text="not ready")
            raise
        return Reply(text=f"{npoints} {typename}", payload=data)

    def _write(self, args: List[str]) -> Reply:
        # Bounds like read's: first last (1-D) or row_beg row_end col_beg col_end.
        if len(args) not in (2, 4):
            raise ParameterError("write needs bounds: row_beg row_end col_beg col_end "
                                 "(or first last)")
        bounds = _bounds(args, "write")
        count = 1
        for first, last in zip(bounds[::2], bounds[1::2]):
            if last < first:
                raise ParameterError(f"write: bounds {first}..{last} are inverted; "
                                     "give the first index before the last")
            count *= last - first + 1
        if count * 4 > 1 << 30:
            raise ParameterError("write: more than 1 GiB announced; refused")
        return Reply(text="ok", expect_bytes=count * 4)

    def _set_roi(self, args: List[str]) -> Reply:
        if len(args) != 5:
            # The reference's answer (set_roi name row_beg row_end col_beg col_end).
            return Reply(ok=False, text="Wrong number of values for ROI set")
        self.ctrl.stream.set_roi(args[0], *_bounds(args[1:], "set_roi"))
        return Reply()

    def _get_roi(self, args: List[str]) -> Reply:
        # The reference's order: no data first, then the ROI's name or bounds.
        if not self.ctrl.stream.has_image():
            return Reply(ok=False, text="No acquisition done")
        if len(args) not in (1, 4):
            return Reply(ok=False, text="Bad ROI parameters")
        # A ROI name or row_beg row_end col_beg col_end: the stream checks which.
        try:
            return Reply(text=format_value(self.ctrl.stream.get_roi(*args)))
        except DataError as exc:
            if str(exc) in _BARE_ERRORS:
                return Reply(ok=False, text=str(exc))
            raise


def _bounds(args: List[str], what: str) -> List[int]:
    """Whole-number bounds, or a clear error naming the bad one."""
    return [int(parse_number(a, what, integer=True)) for a in args]
