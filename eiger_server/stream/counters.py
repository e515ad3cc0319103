"""Counters that several threads add to (receiver, decode workers, saver)."""
from __future__ import annotations

import threading
from typing import Dict

__all__ = ["Counters"]


class Counters:
    """Named integer totals, each addition under one lock.

    ``x += 1`` on a shared attribute is a read, an add and a write: two
    threads doing it at once lose one of the additions, so ``dropped`` would
    undercount exactly when the load is high.
    """

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._values: Dict[str, int] = {name: 0 for name in names}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._values[name]

    def total(self) -> int:
        with self._lock:
            return sum(self._values.values())
