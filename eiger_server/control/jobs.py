"""Background commands: get_command, cmd_executing, get_answer.

Long commands (transfer, delete, pixelmask_calibrate, initialize, restart)
run on their own thread so the command thread keeps answering spec. One runs
at a time: a second one is refused with :class:`errors.Busy` instead of being
queued, so spec always knows which command its answer belongs to.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from eiger_server.components.binding import component
from eiger_server.errors import Busy, EigerError
from eiger_server.values import format_value

log = logging.getLogger(__name__)


@component
class JobRunner:
    """Runs one background command at a time and keeps its answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._name = ""
        self._answer = ""
        self._executing = False
        # Set by close(): long jobs (transfers) check it between chunks.
        self.stop_event = threading.Event()

    # -- starting -------------------------------------------------------
    def start(self, name: str, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on a background thread; return at once.

        Raises Busy while another background command is still running.
        """
        with self._lock:
            if self._executing:
                raise Busy(f"'{name}' refused: '{self._name}' is still running in the "
                           "background; poll cmd_executing and retry")
            if self.stop_event.is_set():
                raise Busy(f"'{name}' refused: the server is shutting down")
            self._name = name
            self._answer = ""
            self._executing = True
            thread = threading.Thread(target=self._run, args=(name, fn),
                                      name=f"job-{name}", daemon=True)
            self._thread = thread
        thread.start()

    def _run(self, name: str, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
            answer = format_value(result)
            log.info("background command '%s' finished: %s", name, answer)
        except Exception as exc:                   # the answer carries it to spec
            answer = f"error: {exc}"
            # An EigerError already says it all; anything else is a bug: keep the trace.
            log.error("background command '%s' failed: %s", name, exc,
                      exc_info=not isinstance(exc, EigerError))
        with self._lock:
            self._answer = answer
            self._executing = False

    # -- what spec reads -------------------------------------------------
    def get_command(self) -> str:
        """Name of the latest background command ("" before the first)."""
        with self._lock:
            return self._name

    def get_executing(self) -> bool:
        """True while a background command runs."""
        with self._lock:
            return self._executing

    def get_answer(self) -> str:
        """What the latest background command returned, or ``error: <message>``.

        Empty while it still runs (poll cmd_executing first).
        """
        with self._lock:
            return "" if self._executing else self._answer

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    # -- shutdown ---------------------------------------------------------
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the running command to end; False if it still runs."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self, timeout: float = 3.0) -> None:
        """Ask a running command to stop (transfers stop between chunks) and wait briefly."""
        self.stop_event.set()
        if not self.wait(timeout):
            log.warning("background command '%s' still running at shutdown", self._name)
