"""The fake DCU's monitor: the last images of the acquisition, served as TIFF.

:class:`MonitorStore` is a :class:`~eiger_server.fakedcu.interfaces.FrameSink`
that is active while the monitor ``mode`` is ``enabled`` (SIMPLON 1.6 and 1.8
alike). It keeps references to the last ``buffer_size`` images (no copies:
the engine hands over arrays it does not reuse). With ``discard_new`` a full
buffer refuses new images, which are counted in ``dropped``; otherwise the
oldest image makes room.

Status values (:meth:`MonitorStore.status`):

* ``buffer_fill_level``: ``[images held, buffer_size]``.
* ``dropped``: images refused because the buffer was full and ``discard_new``
  was set (images pushed out by newer ones are not counted).
* ``buffer_free`` (1.8 only): images the buffer can still take.
* ``next_image_number`` (1.6 only): id of the image ``images/next`` hands
  out (the oldest buffered), -1 when the buffer is empty.
* ``monitor_image_number`` (1.6 only): id of the image ``images/monitor``
  hands out (the latest), -1 when there is none.

The defaults (both versions) are the real 1.8 ones: disabled, 100 images,
``discard_new`` true (a full buffer keeps its first images).

``threshold`` n in the image requests selects channel n-1 of the series'
channel list (1 = threshold_1, 2 = threshold_2, 3 = difference when present);
no threshold means the first channel.
"""
from __future__ import annotations

import collections
import io
import logging
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tifffile

from eiger_server.fakedcu.interfaces import ConfigSource, Frame, SeriesEnd, SeriesStart

log = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE = 100


@dataclass
class _Image:
    series: int
    image_id: int
    channels: List[str]
    data: Dict[str, np.ndarray]


class MonitorStore:
    """Last images of the acquisition for the monitor API."""

    def __init__(self, config: ConfigSource) -> None:
        self._config_source = config
        self._lock = threading.Lock()
        self._buffer: "collections.OrderedDict[Tuple[int, int], _Image]" = \
            collections.OrderedDict()
        self._latest: Optional[_Image] = None
        self._dropped = 0
        self._active_series: Optional[int] = None
        self._channels: List[str] = []
        self._capacity = DEFAULT_BUFFER_SIZE
        self._discard_new = True
        self._acquiring = False

    # ------------------------------------------------------------------ settings
    def _config(self, name: str, default: Any) -> Any:
        try:
            value = self._config_source.config_value("monitor", name)
        except Exception:
            return default
        return default if value is None else value

    def _enabled(self) -> bool:
        return str(self._config("mode", "disabled")).lower() == "enabled"

    def _read_buffer_settings(self) -> None:
        try:
            capacity = int(self._config("buffer_size", DEFAULT_BUFFER_SIZE))
        except (TypeError, ValueError):
            capacity = DEFAULT_BUFFER_SIZE
        discard = self._config("discard_new", True)
        if isinstance(discard, str):
            discard = discard.strip().lower() in ("true", "1", "yes")
        with self._lock:
            self._capacity = max(0, capacity)
            self._discard_new = bool(discard)
            while len(self._buffer) > self._capacity:
                self._buffer.popitem(last=False)

    # ------------------------------------------------------------------ FrameSink
    def series_start(self, start: SeriesStart) -> None:
        """Watch this series when the monitor is enabled."""
        if not self._enabled():
            self._active_series = None
            return
        self._read_buffer_settings()
        self._channels = list(start.channels)
        self._active_series = start.series_id
        self._acquiring = True

    def frame(self, frame: Frame) -> None:
        """Keep the image (references only) as the latest and, if room, in the buffer."""
        if self._active_series is None or frame.series_id != self._active_series:
            return
        image = _Image(frame.series_id, int(frame.image_id),
                       self._channels or list(frame.data), frame.data)
        key = (image.series, image.image_id)
        with self._lock:
            self._latest = image
            if key in self._buffer:
                self._buffer[key] = image
                return
            if len(self._buffer) >= self._capacity:
                if self._discard_new or self._capacity == 0:
                    self._dropped += 1
                    return
                self._buffer.popitem(last=False)
            self._buffer[key] = image

    def series_end(self, end: SeriesEnd) -> None:
        if end.series_id == self._active_series:
            self._active_series = None
            self._acquiring = False

    # ------------------------------------------------------------------ status and commands
    def status(self) -> Dict[str, Any]:
        """The monitor status values (see the module docstring for their meaning)."""
        enabled = self._enabled()
        on_1_6 = str(getattr(self._config_source, "api", "1.8.0")).startswith("1.6")
        with self._lock:
            if not enabled:
                state = "disabled"
            elif self._acquiring:
                state = "acquire"
            else:
                state = "ready"
            values: Dict[str, Any] = {
                "state": state,
                "error": [],
                "buffer_fill_level": [len(self._buffer), self._capacity],
                "dropped": self._dropped,
            }
            if on_1_6:
                oldest = next(iter(self._buffer.values()), None)
                values["next_image_number"] = -1 if oldest is None else oldest.image_id
                values["monitor_image_number"] = (-1 if self._latest is None
                                                  else self._latest.image_id)
            else:
                values["buffer_free"] = max(0, self._capacity - len(self._buffer))
            return values

    def command(self, name: str, body: Any = None) -> None:
        """``clear`` empties the buffer; ``initialize`` also resets the counters."""
        if name not in ("clear", "initialize"):
            raise ValueError(f"monitor command {name!r} is unknown; "
                             "the fake DCU knows 'clear' and 'initialize'")
        with self._lock:
            self._buffer.clear()
            self._latest = None
            if name == "initialize":
                self._dropped = 0
        if name == "initialize":
            self._read_buffer_settings()

    # ------------------------------------------------------------------ images
    def image_list(self) -> List[List[Any]]:
        """``[[series, [image ids...]], ...]`` of the buffered images, oldest first."""
        result: List[List[Any]] = []
        with self._lock:
            for series, image_id in self._buffer:
                if result and result[-1][0] == series:
                    result[-1][1].append(image_id)
                else:
                    result.append([series, [image_id]])
        return result

    def latest_tiff(self, threshold: Optional[int] = None) -> bytes:
        """The last image received (``images/monitor``). KeyError when there is none."""
        with self._lock:
            image = self._latest
        if image is None:
            raise KeyError("the monitor has no image yet: enable the monitor and acquire")
        return _tiff(image, threshold)

    def pop_tiff(self) -> bytes:
        """Take the oldest buffered image out (``images/next``). KeyError when empty."""
        with self._lock:
            if not self._buffer:
                raise KeyError("the monitor buffer is empty")
            _, image = self._buffer.popitem(last=False)
        return _tiff(image, None)

    def get_tiff(self, series: int, image_id: int, threshold: Optional[int] = None) -> bytes:
        """One buffered image (``images/<series>/<id>[/<threshold>]``). KeyError when absent."""
        with self._lock:
            image = self._buffer.get((int(series), int(image_id)))
        if image is None:
            raise KeyError(f"image {image_id} of series {series} is not in the monitor "
                           "buffer; GET images lists what is there")
        return _tiff(image, threshold)


def _tiff(image: _Image, threshold: Optional[int]) -> bytes:
    """Uncompressed TIFF of one channel in the array's own dtype."""
    if threshold is None:
        index = 0
    else:
        index = int(threshold) - 1
    if not 0 <= index < len(image.channels) or image.channels[index] not in image.data:
        raise KeyError(f"threshold {threshold} is not recorded for series {image.series}: "
                       f"its channels are {image.channels} (threshold n = channel n)")
    channel = image.channels[index]
    array = np.ascontiguousarray(image.data[channel])
    out = io.BytesIO()
    tifffile.imwrite(out, array, photometric="minisblack", compression=None,
                     metadata=None,
                     description=f"series {image.series} image {image.image_id} "
                                 f"channel {channel}")
    return out.getvalue()
