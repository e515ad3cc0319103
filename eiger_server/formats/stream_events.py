"""What one stream message means, whatever the stream version.

stream_v1.py and stream_v2.py turn zmq messages into these events; the
receiver and the stream handler work only with them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from eiger_server.formats.decode import Encoded

# Channel names become parts of file names: letters, digits and _ only.
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_]+")


def valid_channel(name: Any) -> bool:
    """True when ``name`` may be used as a channel name (and in a file name)."""
    return isinstance(name, str) and _CHANNEL_NAME.fullmatch(name) is not None


def buffer(part: Any) -> memoryview:
    """A memoryview of a zmq.Frame, bytes or memoryview message part."""
    buf = getattr(part, "buffer", None)
    return buf if buf is not None else memoryview(part)


def seconds(value: Any, unit: float = 1.0) -> Optional[float]:
    """A time from a stream message in seconds: ``value`` (a number, or a
    ``[numerator, denominator]`` pair) times ``unit``; None when unreadable."""
    try:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return float(value[0]) / float(value[1]) * unit
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value) * unit
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


@dataclass
class SeriesHeader:
    """Sent at arm: the series number and what the detector knows."""

    series: int
    config: Dict[str, Any] = field(default_factory=dict)   # detector configuration
    channels: List[str] = field(default_factory=list)
    nimages: Optional[int] = None            # images the series will hold, when known
    unique_id: str = ""
    appendix: Any = None
    # the header's arrays, when sent: "pixel_mask", "flatfield", "countrate_table"
    arrays: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageMessage:
    """One image: every channel, still encoded (decoding is the workers' job)."""

    series: int
    frame: int                               # 0-based image number within the series
    channels: Dict[str, Encoded]
    start_time: Optional[float] = None       # seconds from the series start
    stop_time: Optional[float] = None
    real_time: Optional[float] = None
    appendix: Any = None
    unique_id: str = ""
    parts: Any = None                        # keeps zero-copy zmq frames alive

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self.channels.values())


@dataclass
class SeriesEnd:
    series: int
    unique_id: str = ""


@dataclass
class StreamErrorEvent:
    """A message that could not be understood; never raised out of the receiver."""

    message: str
    series: Optional[int] = None
    frame: Optional[int] = None


Event = Any   # SeriesHeader | ImageMessage | SeriesEnd | StreamErrorEvent
