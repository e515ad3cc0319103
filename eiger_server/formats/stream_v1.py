"""Stream V1 ("legacy"): one zmq multipart message -> one event.

Message layouts (SIMPLON.md):

* header ``{"htype": "dheader-1.0", "series", "header_detail"}``, then the
  configuration JSON (detail ``basic``/``all``), then with ``all`` three
  (header, array) pairs, then the header appendix if any;
* image: ``dimage-1.0`` (series, frame, hash), ``dimage_d-1.0`` (shape [x, y],
  type, encoding, size), the blob, ``dconfig-1.0`` (times: nanoseconds on
  EIGER2 / 1.8, but 20 ns clock ticks on EIGER1 / 1.6), and the image
  appendix if any;
* ``dseries_end-1.0``.

:func:`parse` reads one message; blobs stay zero-copy views of the zmq
frames, nothing is decoded here. :class:`Parser` is ``parse`` for one
connection: it learns from each series header whether the times are clock
ticks (``software_version`` 1.6 or older) and converts them to seconds. ``encode_*`` build the same messages (the
fake DCU sends them).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from eiger_server.formats.compression import byte_view, le_contiguous
from eiger_server.formats.decode import Encoded
from eiger_server.formats.stream_events import (Event, ImageMessage, SeriesEnd, SeriesHeader, StreamErrorEvent,
                           buffer as _buffer, seconds)

CHANNEL = "threshold_1"     # V1 carries one image per message
_NS = 1e-9
TICK = 20e-9                # EIGER1 / SIMPLON 1.6: dconfig times count 20 ns clock ticks


def time_unit(config: Mapping[str, Any]) -> float:
    """Seconds per unit of the dconfig times for a series of this configuration."""
    version = str(config.get("software_version", "") or "")
    try:
        major_minor = tuple(int(n) for n in version.split(".")[:2])
    except ValueError:
        return _NS
    return TICK if len(major_minor) == 2 and major_minor < (1, 8) else _NS


class Parser:
    """``parse`` that remembers the time unit the last series header implied."""

    def __init__(self, unit: float = _NS) -> None:
        self.unit = unit

    def __call__(self, parts: Sequence[Any]) -> Event:
        event = parse(parts, self.unit)
        if isinstance(event, SeriesHeader) and event.config:
            self.unit = time_unit(event.config)
        return event


def _json(part: Any, what: str) -> dict:
    try:
        value = json.loads(bytes(_buffer(part)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _appendix(part: Any) -> Any:
    data = bytes(_buffer(part))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    try:
        return json.loads(text)
    except ValueError:
        return text


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} {value!r} is not a number")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a number") from None


def parse(parts: Sequence[Any], unit: float = _NS) -> Event:
    """The event one V1 multipart message carries; never raises.

    ``unit`` is the seconds per unit of the image times (``time_unit``).
    """
    series: Optional[int] = None
    frame: Optional[int] = None
    try:
        if not parts:
            raise ValueError("empty message")
        head = _json(parts[0], "first part")
        htype = str(head.get("htype", ""))
        if "series" in head:
            series = _int(head["series"], "series")
        if htype.startswith("dimage-"):
            frame = _int(head.get("frame"), "frame")
            return _image(head, parts, series, frame, unit)
        if htype.startswith("dheader-"):
            return _header(head, parts, series)
        if htype.startswith("dseries_end-"):
            if series is None:
                raise ValueError("series end without a series number")
            return SeriesEnd(series)
        raise ValueError(f"unknown htype {htype!r}")
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return StreamErrorEvent(f"stream V1 message not understood: {exc}", series, frame)


def _header(head: dict, parts: Sequence[Any], series: Optional[int]) -> SeriesHeader:
    if series is None:
        raise ValueError("series header without a series number")
    detail = str(head.get("header_detail", "none"))
    config: dict = {}
    used = 1
    if detail in ("basic", "all") and len(parts) > 1:
        config = _json(parts[1], "detector configuration")
        used = 2
    arrays: Dict[str, np.ndarray] = {}
    if detail == "all":
        used = _header_arrays(parts, used, arrays)
    appendix = _appendix(parts[used]) if len(parts) > used else None
    nimages = None
    try:
        if config.get("nimages") is not None:
            nimages = int(config["nimages"]) * max(1, int(config.get("ntrigger") or 1))
    except (TypeError, ValueError):
        nimages = None
    return SeriesHeader(series, config=config, channels=[CHANNEL], nimages=nimages,
                        appendix=appendix, arrays=arrays)


_HEADER_ARRAYS = {"dflatfield-1.0": "flatfield", "dpixelmask-1.0": "pixel_mask",
                  "dcountrate_table-1.0": "countrate_table"}


def _header_arrays(parts: Sequence[Any], used: int, arrays: Dict[str, np.ndarray]) -> int:
    """Read the flatfield, pixel mask and count-rate table pairs (header, data)
    from ``parts[used:]`` into ``arrays``; returns the index after them."""
    for _ in range(len(_HEADER_ARRAYS)):
        if used + 1 >= len(parts):
            break                                   # what is left is the appendix
        try:
            head = json.loads(bytes(_buffer(parts[used])))
        except (ValueError, UnicodeDecodeError):
            break                                   # the appendix
        if not isinstance(head, dict):
            break
        name = _HEADER_ARRAYS.get(str(head.get("htype", "")))
        if name is None:                            # an array we do not know: skip it
            used += 2
            continue
        shape = tuple(int(n) for n in head.get("shape", []))[::-1]   # sent as [x, y]
        dtype = np.dtype(str(head.get("type", "float32"))).newbyteorder("<")
        data = np.frombuffer(bytes(_buffer(parts[used + 1])), dtype=dtype)
        if shape and int(np.prod(shape)) != data.size:
            raise ValueError(f"{head['htype']} holds {data.size} values, its shape "
                             f"{list(shape[::-1])} needs {int(np.prod(shape))}")
        arrays[name] = data.reshape(shape) if shape else data
        used += 2
    return used


def _image(head: dict, parts: Sequence[Any], series: Optional[int],
           frame: int, unit: float) -> ImageMessage:
    if series is None:
        raise ValueError("image without a series number")
    if len(parts) < 3:
        raise ValueError(f"image message has {len(parts)} parts, expected at least 3")
    desc = _json(parts[1], "image description (dimage_d)")
    shape = desc.get("shape")
    # the format allows a third element (a real EIGER 4M sends two; 1 is harmless)
    if not isinstance(shape, list) or len(shape) not in (2, 3) \
            or (len(shape) == 3 and _int(shape[2], "third shape element") != 1):
        raise ValueError(f"image shape {shape!r} is not [x, y] (or [x, y, 1])")
    width, height = _int(shape[0], "width"), _int(shape[1], "height")
    try:
        dtype = np.dtype(str(desc.get("type", "")))
    except TypeError:
        raise ValueError(f"unknown pixel type {desc.get('type')!r}") from None
    encoding = str(desc.get("encoding", ""))
    blob = _buffer(parts[2])
    times: dict = {}
    if len(parts) > 3:
        try:
            times = _json(parts[3], "dconfig")
        except ValueError:
            times = {}
    appendix = _appendix(parts[4]) if len(parts) > 4 else None
    channel = Encoded(blob, encoding, (height, width), dtype)
    return ImageMessage(series, frame, {CHANNEL: channel},
                        start_time=seconds(times.get("start_time"), unit),
                        stop_time=seconds(times.get("stop_time"), unit),
                        real_time=seconds(times.get("real_time"), unit),
                        appendix=appendix, parts=list(parts))


# ------------------------------------------------------------------ encoding
# The fake DCU sends what these build; parse() above reads it back.
Part = Union[bytes, bytearray, memoryview]


def _dumps(obj: Dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _appendix_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def _json_value(value: Any) -> Tuple[bool, Any]:
    """(keep, value) for one config entry of the header; arrays are left out."""
    if isinstance(value, np.generic):
        return True, value.item()
    if isinstance(value, (np.ndarray, bytes, bytearray, memoryview)):
        return False, None
    if isinstance(value, dict) and "__darray__" in value:
        return False, None
    return True, value


def encode_header(series: int, header_detail: str, config: Mapping[str, Any], *,
                  flatfield: Optional[np.ndarray] = None,
                  pixel_mask: Optional[np.ndarray] = None,
                  countrate_table: Optional[np.ndarray] = None,
                  appendix: Any = None) -> List[Part]:
    """The parts of a ``dheader-1.0`` message: the configuration with detail
    ``basic``/``all`` (arrays in it left out), the three arrays with ``all``
    (an absent one is skipped), the appendix when there is one."""
    parts: List[Part] = [_dumps({"htype": "dheader-1.0", "series": int(series),
                                 "header_detail": header_detail})]
    if header_detail in ("basic", "all"):
        plain = {}
        for name, value in config.items():
            keep, value = _json_value(value)
            if keep:
                plain[name] = value
        parts.append(json.dumps(plain, default=str).encode())
    if header_detail == "all":
        for htype, array in (("dflatfield-1.0", flatfield), ("dpixelmask-1.0", pixel_mask),
                             ("dcountrate_table-1.0", countrate_table)):
            if array is None:
                continue
            array = le_contiguous(array)
            parts.append(_dumps({"htype": htype, "shape": list(array.shape[::-1]),
                                 "type": array.dtype.name}))
            parts.append(byte_view(array))
    if appendix:
        parts.append(_appendix_bytes(appendix))
    return parts


def encode_image(series: int, frame: int, image: Encoded, *, hash: str = "",
                 times_ns: Tuple[int, int, int] = (0, 0, 0), appendix: Any = None,
                 size: Optional[int] = None, clock_ticks: bool = False) -> List[Part]:
    """The parts of one image message: ``dimage-1.0``, ``dimage_d-1.0``, the
    blob as is (zero-copy), ``dconfig-1.0`` with (start, stop, real) times in
    ns, the appendix when there is one. ``size`` overrides the announced blob
    size (the fake DCU's corrupt-frame fault keeps the true one). With
    ``clock_ticks`` the times are sent as 20 ns ticks, as EIGER1 / 1.6 does."""
    height, width = (int(n) for n in image.shape)
    start_ns, stop_ns, real_ns = times_ns
    if clock_ticks:
        start_ns, stop_ns, real_ns = (int(round(t * _NS / TICK)) for t in times_ns)
    parts: List[Part] = [
        _dumps({"htype": "dimage-1.0", "series": int(series), "frame": int(frame),
                "hash": hash}),
        _dumps({"htype": "dimage_d-1.0", "shape": [width, height],
                "type": np.dtype(image.dtype).name, "encoding": str(image.encoding),
                "size": memoryview(image.data).nbytes if size is None else int(size)}),
        image.data,
        _dumps({"htype": "dconfig-1.0", "start_time": start_ns, "stop_time": stop_ns,
                "real_time": real_ns}),
    ]
    if appendix:
        parts.append(_appendix_bytes(appendix))
    return parts


def encode_end(series: int) -> List[Part]:
    """The one part of a ``dseries_end-1.0`` message."""
    return [_dumps({"htype": "dseries_end-1.0", "series": int(series)})]
