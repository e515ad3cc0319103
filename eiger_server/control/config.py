"""The DCU's configuration as components see it: SIMPLON config values through a cache.

Values are programmed only when they change; a PUT answers with the names it
changed, and those are read again on next use. This is the DetectorConfig
(components/protocols.py) every component gets.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from eiger_server.simplon.rest import SimplonClient, version_tuple


class ValueCache:
    """Descriptions (value, value_type, min, max, ...) of SIMPLON config values.

    A PUT answers with the names it changed; those are dropped so the next
    use reads them again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: Dict[Tuple[str, str], Dict[str, Any]] = {}

    def get(self, subsystem: str, key: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            return self._data.get((subsystem, key))

    def put(self, subsystem: str, key: str, description: Dict[str, Any]) -> None:
        with self._lock:
            self._data[(subsystem, key)] = description

    def drop(self, subsystem: str, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._data.pop((subsystem, key), None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class CachedConfig:
    """SIMPLON config values with the cache; ``on_changed(subsystem, keys)``
    hears of every PUT (the acquisition re-arms)."""

    def __init__(self, simplon: SimplonClient,
                 on_changed: Callable[[str, Sequence[str]], None]) -> None:
        self.simplon = simplon
        self.cache = ValueCache()
        self._on_changed = on_changed
        self._keys: Dict[Tuple[str, str], List[str]] = {}

    @property
    def version(self) -> str:
        return self.simplon.version

    def version_at_least(self, major: int, minor: int) -> bool:
        return version_tuple(self.version)[:2] >= (major, minor)

    def describe(self, subsystem: str, key: str, fresh: bool = False) -> Dict[str, Any]:
        """The DCU's description of a config value, cached."""
        if not fresh:
            cached = self.cache.get(subsystem, key)
            if cached is not None:
                return cached
        description = self.simplon.get(subsystem, "config", key)
        self.cache.put(subsystem, key, description)
        return description

    def config_value(self, key: str, subsystem: str = "detector") -> Any:
        """A config value, from the cache when possible (for hot paths)."""
        return self.describe(subsystem, key).get("value")

    def write_config(self, subsystem: str, key: str, value: Any, force: bool = False) -> bool:
        """PUT a config value unless the DCU already has it; True if sent."""
        if not force:
            cached = self.cache.get(subsystem, key)
            if cached is not None and _same(cached.get("value"), value):
                return False
        changed = self.simplon.set_config(subsystem, key, value)
        self.cache.drop(subsystem, list(changed) + [key])
        self._on_changed(subsystem, [key, *changed])
        return True

    def keys(self, subsystem: str, task: str) -> List[str]:
        """The names the DCU lists for ``subsystem``/``task``, asked once."""
        cache_key = (subsystem, task)
        if cache_key not in self._keys:
            self._keys[cache_key] = self.simplon.keys(subsystem, task)
        return self._keys[cache_key]

    def forget(self) -> None:
        """After a restart/reboot/initialize: cached values may all be stale."""
        self.cache.clear()
        self._keys.clear()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b
