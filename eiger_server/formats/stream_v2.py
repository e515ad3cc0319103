"""Stream V2 (CBOR): one zmq message -> one event.

The message is a CBOR map (usually inside the self-describe tag 55799) with
``type`` ``start``, ``image`` or ``end``. Images are tag 40 arrays
``[[height, width], typed array]``; the typed array's bytes may be wrapped in
DECTRIS tag 56500 ``[algorithm, elem_size, bytes]``. The tag hook turns these
into :class:`~eiger_server.formats.decode.Encoded` objects without decompressing:
decoding is left to the worker threads.

cbor2 >= 6 calls ``tag_hook(tag, immutable)``; older releases call
``tag_hook(decoder, tag[, shareable_index])``. The hook accepts both.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import cbor2
import numpy as np

from eiger_server.formats.cbor import (DECTRIS_COMPRESSION_TAG, MULTIDIM_ARRAY_TAG,
                                       SELF_DESCRIBE_TAG, typed_array_dtype)
from eiger_server.formats.decode import Compressed, Encoded
from eiger_server.formats.stream_events import (Event, ImageMessage, SeriesEnd, SeriesHeader, StreamErrorEvent,
                           buffer, seconds, valid_channel)

# Large start-message entries left out of the configuration kept per series.
_BULKY = ("pixel_mask", "flatfield", "countrate_correction_lookup_table")


class _Typed:
    """A typed array, its bytes possibly still compressed."""

    __slots__ = ("dtype", "payload")

    def __init__(self, dtype: np.dtype, payload: Any) -> None:
        self.dtype = dtype
        self.payload = payload


class _Bad:
    """A tag whose content is malformed; reported when the image is used."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _convert(tag: cbor2.CBORTag) -> Any:
    number, value = tag.tag, tag.value
    if number == SELF_DESCRIBE_TAG:
        return value
    if number == DECTRIS_COMPRESSION_TAG:
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or not isinstance(value[2], (bytes, bytearray, memoryview))):
            return _Bad(f"tag {DECTRIS_COMPRESSION_TAG} is not [algorithm, elem_size, bytes]")
        try:
            return Compressed(str(value[0]), int(value[1]), value[2])
        except (TypeError, ValueError):
            return _Bad(f"tag {DECTRIS_COMPRESSION_TAG} has a bad element size {value[1]!r}")
    dtype = typed_array_dtype(number)
    if dtype is not None:
        return _Typed(dtype, value)
    if number == MULTIDIM_ARRAY_TAG:
        return _multidim(value)
    return tag


def _multidim(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return _Bad("tag 40 is not [dimensions, array]")
    dims, array = value
    if isinstance(array, _Bad):
        return array
    if not isinstance(array, _Typed):
        return _Bad("tag 40 does not hold a typed array")
    try:
        shape = tuple(int(n) for n in dims)
    except (TypeError, ValueError):
        return _Bad(f"tag 40 dimensions {dims!r} are not numbers")
    if len(shape) != 2:
        # start messages carry 1-D/other arrays (count-rate table): keep them encoded raw
        shape = (1, int(np.prod(shape))) if shape else (1, 0)
    payload = array.payload
    if isinstance(payload, Compressed):
        return Encoded(payload.data, payload.algorithm, shape, array.dtype,
                       payload.elem_size, v2=True)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return Encoded(payload, "raw", shape, array.dtype, v2=True)
    return _Bad("tag 40 array holds neither bytes nor tag 56500")


def tag_hook(*args: Any) -> Any:
    """cbor2 tag hook for both calling conventions (see module doc)."""
    for arg in args:
        if isinstance(arg, cbor2.CBORTag):
            return _convert(arg)
    return args[-1] if args else None


def loads(data: Any) -> Any:
    """Decode one CBOR message with the stream's tags understood."""
    return cbor2.loads(data, tag_hook=tag_hook)


def parse(parts: Sequence[Any]) -> Event:
    """The event one V2 zmq message carries; never raises."""
    series: Optional[int] = None
    frame: Optional[int] = None
    try:
        if len(parts) != 1:
            raise ValueError(f"expected one CBOR part, got {len(parts)}")
        message = loads(buffer(parts[0]))
        if isinstance(message, cbor2.CBORTag) and message.tag == SELF_DESCRIBE_TAG:
            message = message.value
        if not isinstance(message, Mapping):
            raise ValueError("message is not a CBOR map")
        kind = message.get("type")
        if message.get("series_id") is not None:
            series = int(message["series_id"])
        if kind == "image":
            frame = int(message["image_id"])
            return _image(message, series, frame)
        if kind == "start":
            return _start(message, series)
        if kind == "end":
            if series is None:
                raise ValueError("end message without series_id")
            return SeriesEnd(series, str(message.get("series_unique_id", "")))
        raise ValueError(f"unknown message type {kind!r}")
    except Exception as exc:   # cbor2 raises several types; nothing may escape
        return StreamErrorEvent(f"stream V2 message not understood: {exc}", series, frame)


def _start(message: Mapping, series: Optional[int]) -> SeriesHeader:
    if series is None:
        raise ValueError("start message without series_id")
    config: Dict[str, Any] = {k: v for k, v in message.items() if k not in _BULKY}
    channels = [str(c) for c in message.get("channels") or []]
    for name in channels:
        if not valid_channel(name):
            raise ValueError(f"channel name {name!r} is not letters, digits and _")
    nimages = message.get("number_of_images")
    return SeriesHeader(series, config=config, channels=channels,
                        nimages=int(nimages) if nimages is not None else None,
                        unique_id=str(message.get("series_unique_id", "")),
                        appendix=message.get("user_data"))


def _image(message: Mapping, series: Optional[int], frame: int) -> ImageMessage:
    if series is None:
        raise ValueError("image without series_id")
    data = message.get("data")
    if not isinstance(data, Mapping) or not data:
        raise ValueError("image without data")
    channels: Dict[str, Encoded] = {}
    for name, item in data.items():
        if not valid_channel(name):
            raise ValueError(f"channel name {name!r} is not letters, digits and _")
        if isinstance(item, _Bad):
            raise ValueError(f"channel {name}: {item.reason}")
        if not isinstance(item, Encoded):
            raise ValueError(f"channel {name} is not a tag 40 image")
        channels[name] = item
    return ImageMessage(series, frame, channels,
                        start_time=seconds(message.get("start_time")),
                        stop_time=seconds(message.get("stop_time")),
                        real_time=seconds(message.get("real_time")),
                        appendix=message.get("user_data"),
                        unique_id=str(message.get("series_unique_id", "")))
