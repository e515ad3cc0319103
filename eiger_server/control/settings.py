"""Small local components: where files go (Settings) and the server's own names (ServerInfo)."""
from __future__ import annotations

import os
import platform
import sys
import threading
from typing import Any, Callable

from eiger_server import __version__
from eiger_server.components.binding import component
from eiger_server.errors import ParameterError
from eiger_server.values import one_arg


@component
class Settings:
    """Where files go: data_directory and the prefix shared with the filewriter."""

    def __init__(self, write_config: Callable[[str, str, Any], bool]) -> None:
        self._write_config = write_config
        self._lock = threading.Lock()
        # A daemon runs in "/": an explicit, writable default until spec sets one.
        self.data_directory = "/tmp"
        self.prefix = "eiger_$id"

    def get_data_directory(self) -> str:
        return self.data_directory

    def set_data_directory(self, *args: str) -> str:
        path = os.path.expanduser(one_arg(args, "data_directory"))
        if not os.path.isabs(path):
            # Relative to what? The server may be a daemon running in "/".
            raise ParameterError(f"data_directory: '{path}' is not an absolute path; give "
                                 "the full path (e.g. from spec's DATA_DIR)")
        path = os.path.normpath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ParameterError(f"data_directory: '{path}' exists and is not a directory")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise ParameterError(f"data_directory: cannot create '{path}': {exc.strerror}; "
                                 "choose a directory you can write") from None
        if not os.access(path, os.W_OK):
            raise ParameterError(f"data_directory: '{path}' is not writable; "
                                 "choose a directory you can write")
        with self._lock:
            self.data_directory = path
        return path

    def get_prefix(self) -> str:
        return self.prefix

    def set_prefix(self, *args: str) -> str:
        prefix = one_arg(args, "prefix")
        if "/" in prefix or prefix in (".", "..") or "\x00" in prefix:
            raise ParameterError(f"prefix: '{prefix}' must be a plain file name "
                                 "(no '/'); set data_directory for the folder")
        # The prefix doubles as the FileWriter's name_pattern.
        self._write_config("filewriter", "name_pattern", prefix)
        with self._lock:
            self.prefix = prefix
        return prefix


@component
class ServerInfo:
    """server_version, simplon_version and kill."""

    def __init__(self, simplon_version: Callable[[], str],
                 request_shutdown: Callable[[], None]) -> None:
        self._simplon_version = simplon_version
        self._request_shutdown = request_shutdown

    def get_version(self) -> str:
        return (f"eiger_server {__version__} (Python {platform.python_version()}, "
                f"{sys.executable})")

    def get_simplon_version(self) -> str:
        return self._simplon_version()

    def do_kill(self, *args: str) -> str:
        self._request_shutdown()
        return "ok"
