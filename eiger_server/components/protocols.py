"""What components need of each other: narrow typed interfaces.

Each component gets exactly these (or plain callables) from the controller,
which wires them; none receives the controller itself.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Protocol


class DetectorConfig(Protocol):
    """The DCU's configuration through the controller's cache."""

    @property
    def version(self) -> str: ...

    def version_at_least(self, major: int, minor: int) -> bool: ...

    def describe(self, subsystem: str, key: str, fresh: bool = False) -> Dict[str, Any]: ...

    def config_value(self, key: str, subsystem: str = "detector") -> Any: ...

    def write_config(self, subsystem: str, key: str, value: Any, force: bool = False) -> bool: ...


class FileSettings(Protocol):
    """Where local files go (control/settings.py)."""

    @property
    def data_directory(self) -> str: ...

    @property
    def prefix(self) -> str: ...


class CountingStream(Protocol):
    """What a count needs of the stream (stream/handler.py)."""

    def prepare_series(self) -> None: ...

    def open_count(self) -> None: ...

    def begin_count(self, nimages: int, accumulate: bool, series: Optional[int] = None,
                    first_frame: int = 0, new_series: bool = False) -> None: ...

    def bind_series(self, series: Optional[int], first_frame: int = 0) -> None: ...

    def fail_count(self, reason: str) -> None: ...

    def enabled(self) -> bool: ...

    def wait_count(self, timeout: float) -> bool: ...

    def images_collected(self) -> int: ...

    def images_arrived(self) -> int: ...
