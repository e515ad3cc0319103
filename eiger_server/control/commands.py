"""server_hdw's standard commands, mapped onto the controller.

``CommandHandler.execute`` runs on the server's single command thread; an
exception becomes an error reply ``<command>. error: <message>``.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List

from eiger_server.control.controller import EigerController
from eiger_server.values import format_value, parse_number
from eiger_server.errors import DataError, EigerError, ParameterError
from eiger_server.wire.protocol import Reply, Request
from eiger_server.simplon.rest import check_host

log = logging.getLogger(__name__)


class CommandHandler:
    """Answers one request at a time."""

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
        # is initialized; do it now, while spec is configuring anyway.
        if self.ctrl.simplon.get_value("detector", "status", "state") == "na":
            log.info("detector state is 'na': initializing it")
            self.ctrl.simplon.command("detector", "initialize")
            self.ctrl.forget_detector()
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
        return Reply(text=self.ctrl.set(args[0], args[1:]))

    def _get(self, args: List[str]) -> Reply:
        if not args:
            raise ParameterError("get needs a parameter name")
        return Reply(text=self.ctrl.get(args[0], args[1:]))

    def _read(self, args: List[str]) -> Reply:
        bounds = [int(parse_number(a, "read", integer=True)) for a in args]
        if len(bounds) != 4:
            raise ParameterError("read needs row_beg row_end col_beg col_end")
        try:
            typename, npoints, data = self.ctrl.stream.read(*bounds)
        except DataError as exc:
            if "not ready" in str(exc):
                return Reply(ok=False, text="not ready")
            raise
        return Reply(text=f"{npoints} {typename}", payload=data)

    def _write(self, args: List[str]) -> Reply:
        dims = [int(parse_number(a, "write", integer=True)) for a in args] or [0]
        count = 1
        for dim in dims:
            if dim < 0:
                raise ParameterError("write: dimensions must not be negative")
            count *= dim
        if count * 4 > 1 << 30:
            raise ParameterError("write: more than 1 GiB announced; refused")
        return Reply(text="ok", expect_bytes=count * 4)

    def _set_roi(self, args: List[str]) -> Reply:
        if len(args) != 5:
            raise ParameterError("set_roi needs name row_beg row_end col_beg col_end")
        bounds = [int(parse_number(a, "set_roi", integer=True)) for a in args[1:]]
        self.ctrl.stream.set_roi(args[0], *bounds)
        return Reply()

    def _get_roi(self, args: List[str]) -> Reply:
        # A ROI name or row_beg row_end col_beg col_end: the stream checks which.
        return Reply(text=format_value(self.ctrl.stream.get_roi(*args)))
