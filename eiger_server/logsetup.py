"""Logging for eiger_server: verbosity levels 1-4 and the log line format.

Verbosity (option ``-v``) chooses how much is written:

1. basic messages (INFO and above)
2. also every request and reply exchanged with clients (level ``CLIENT``)
3. also acquisition progress (level ``PROGRESS``)
4. also debugging messages (DEBUG)

Lines look like ``14:03:07.412 - INFO - listening on port 5000`` and go to a
file (``-l``) or to standard output.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import Optional

#: Level of messages exchanged with clients (verbosity 2).
CLIENT = 18
#: Level of acquisition progress messages (verbosity 3).
PROGRESS = 15

logging.addLevelName(CLIENT, "CLIENT")
logging.addLevelName(PROGRESS, "PROGRESS")

#: Verbosity number -> the lowest level that is written.
VERBOSITY_LEVELS = {
    0: logging.WARNING,
    1: logging.INFO,
    2: CLIENT,
    3: PROGRESS,
    4: logging.DEBUG,
}

LOG_FORMAT = "%(asctime)s.%(msecs)03d - %(levelname)s - %(message)s"
DATE_FORMAT = "%H:%M:%S"

# Marks the handler installed by setup_logging so that a second call
# replaces it instead of doubling every line.
_OURS = "_eiger_server_handler"


def level_for(verbosity: int) -> int:
    """The logging level written at a verbosity (clamped to 0..4)."""
    return VERBOSITY_LEVELS[max(0, min(4, int(verbosity)))]


def vlog(verbosity: int, msg: str, *args: object,
         logger: Optional[logging.Logger] = None) -> None:
    """Log ``msg`` so that it shows from verbosity ``verbosity`` upwards."""
    (logger or logging.getLogger("eiger_server")).log(level_for(verbosity), msg, *args)


def setup_logging(verbosity: int = 1, logfile: Optional[str] = None) -> logging.Handler:
    """Send log records of the chosen verbosity to ``logfile`` or stdout.

    Configures the root logger (so library messages, e.g. from urllib3 at
    verbosity 4, are written too) and returns the installed handler. Calling
    it again replaces the previous configuration.
    """
    level = level_for(verbosity)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _OURS, False):
            root.removeHandler(old)
            old.close()
    handler: logging.Handler
    if logfile:
        # WatchedFileHandler reopens the file if logrotate moves it away.
        handler = logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that chatter at DEBUG stay quiet unless full debugging is on.
    for noisy in ("urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level <= logging.DEBUG
                                          else logging.WARNING)
    return handler
