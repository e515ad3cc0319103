"""Stream V2 (CBOR): one zmq message -> one event.

The message is a CBOR map (usually inside the self-describe tag 55799) with
``type`` ``start``, ``image`` or ``end``. Images are tag 40 arrays
``[[height, width], typed array]``; the typed array's bytes may be wrapped in
DECTRIS tag 56500 ``[algorithm, elem_size, bytes]``. The tag hook turns these
into :class:`~eiger_server.formats.decode.Encoded` objects without decompressing:
decoding is left to the worker threads.

:func:`parse` reads one message; ``start_message``/``encode_*`` build them
(the fake DCU sends them).

cbor2 >= 6 calls ``tag_hook(tag, immutable)``; older releases call
``tag_hook(decoder, tag[, shareable_index])``. The hook accepts both.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import cbor2
import numpy as np

from eiger_server.formats.cbor import (DECTRIS_COMPRESSION_TAG, MULTIDIM_ARRAY_TAG,
                                       SELF_DESCRIBE_TAG, head, multidim_array, typed_array,
                                       typed_array_dtype, typed_array_tag)
from eiger_server.formats.decode import Compressed, DecodeError, Encoded
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
                        appendix=message.get("user_data"), arrays=_start_arrays(message))


def _start_arrays(message: Mapping) -> Dict[str, np.ndarray]:
    """The pixel mask and flatfield (of the first channel) and the count-rate
    table of a start message, as arrays; an unreadable one is left out."""
    arrays: Dict[str, np.ndarray] = {}
    for key, name in (("pixel_mask", "pixel_mask"), ("flatfield", "flatfield")):
        per_channel = message.get(key)
        value = next(iter(per_channel.values()), None) \
            if isinstance(per_channel, Mapping) else per_channel
        if isinstance(value, Encoded) and value.encoding == "raw":
            try:
                arrays[name] = value.decode(f"start message {key}")
            except DecodeError:
                continue
    table = message.get("countrate_correction_lookup_table")
    if isinstance(table, _Typed) and isinstance(table.payload, (bytes, bytearray, memoryview)):
        arrays["countrate_table"] = np.frombuffer(bytes(table.payload), table.dtype)
    return arrays


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


# ------------------------------------------------------------------ encoding
# The fake DCU sends what these build; parse() above reads it back.

# start message field -> SIMPLON config names to take it from (first one present)
_REQUIRED = {
    "beam_center_x": ("beam_center_x",),
    "beam_center_y": ("beam_center_y",),
    "count_time": ("count_time",),
    "frame_time": ("frame_time",),
    "detector_distance": ("detector_distance",),
    "incident_energy": ("incident_energy", "photon_energy"),
    "incident_wavelength": ("wavelength", "incident_wavelength"),
}
_OPTIONAL = {
    "detector_description": (("description",), str),
    "detector_serial_number": (("detector_number",), str),
    "pixel_size_x": (("x_pixel_size",), float),
    "pixel_size_y": (("y_pixel_size",), float),
    "sensor_material": (("sensor_material",), str),
    "sensor_thickness": (("sensor_thickness",), float),
    "saturation_value": (("countrate_correction_count_cutoff",), int),
    "countrate_correction_enabled": (("countrate_correction_applied",), bool),
    "flatfield_enabled": (("flatfield_correction_applied",), bool),
    "pixel_mask_enabled": (("pixel_mask_applied",), bool),
    "virtual_pixel_interpolation_enabled": (("virtual_pixel_correction_applied",), bool),
}
# SIMPLON <axis>_start/<axis>_increment; the V2 ``goniometer`` map; the NXmx master.
GONIOMETER_AXES = ("chi", "kappa", "omega", "phi", "two_theta")
_NS = 1_000_000_000


def _first(config: Mapping[str, Any], names: Tuple[str, ...]) -> Any:
    for name in names:
        if name in config and config[name] is not None:
            return config[name]
    return None


def _threshold_energy(config: Mapping[str, Any], channel: str) -> Any:
    if channel.startswith("threshold_"):
        n = channel[len("threshold_"):]
        value = _first(config, (f"threshold/{n}/energy",))
        if value is None and n == "1":
            value = config.get("threshold_energy")
        return value
    return None


def _dumps(message: Mapping[str, Any]) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(SELF_DESCRIBE_TAG, dict(message)))


def start_message(series_id: int, unique_id: str, arm_date: Any,
                  config: Mapping[str, Any], *, nimages: int, width: int, height: int,
                  dtype: Any, channels: Sequence[str],
                  pixel_mask: Optional[np.ndarray] = None,
                  flatfield: Optional[np.ndarray] = None,
                  countrate_table: Optional[np.ndarray] = None,
                  user_data: Any = None) -> Dict[str, Any]:
    """The ``start`` message of a series, its fields taken from the detector's
    SIMPLON ``config`` (absent numbers of the required fields become 0.0).
    Arrays given are sent, masks and flatfield once per channel."""
    msg: Dict[str, Any] = {"type": "start", "series_id": int(series_id),
                           "series_unique_id": unique_id, "arm_date": arm_date}
    for key, names in _REQUIRED.items():
        try:
            msg[key] = float(_first(config, names))
        except (TypeError, ValueError):   # absent or not a number in the snapshot
            msg[key] = 0.0
    msg["number_of_images"] = int(nimages)
    msg["image_size_x"] = int(width)
    msg["image_size_y"] = int(height)
    msg["image_dtype"] = np.dtype(dtype).name
    msg["channels"] = list(channels)
    energies = {}
    for channel in channels:
        value = _threshold_energy(config, channel)
        if value is not None:
            energies[channel] = float(value)
    msg["threshold_energy"] = energies
    for key, (names, kind) in _OPTIONAL.items():
        value = _first(config, names)
        if value is not None:
            try:
                msg[key] = kind(value)
            except (TypeError, ValueError):
                pass
    goniometer = {}
    for axis in GONIOMETER_AXES:
        begin = config.get(f"{axis}_start")
        step = config.get(f"{axis}_increment")
        if begin is not None or step is not None:
            goniometer[axis] = {"start": float(begin or 0.0), "increment": float(step or 0.0)}
    if goniometer:
        msg["goniometer"] = goniometer
    msg["detector_translation"] = [0.0, 0.0, msg["detector_distance"]]
    if pixel_mask is not None:
        mask = multidim_array(np.asarray(pixel_mask, dtype="<u4"))
        msg["pixel_mask"] = {ch: mask for ch in channels}
    if flatfield is not None:
        flat = multidim_array(np.asarray(flatfield, dtype="<f4"))
        msg["flatfield"] = {ch: flat for ch in channels}
    if countrate_table is not None:
        msg["countrate_correction_lookup_table"] = typed_array(countrate_table)
    if user_data:
        msg["user_data"] = user_data
    return msg


def encode_start(message: Mapping[str, Any]) -> bytes:
    """A start message (see :func:`start_message`) as one self-described CBOR map."""
    return _dumps(message)


_SELF_DESCRIBE_HEAD = head(6, SELF_DESCRIBE_TAG)
_TAG40_ARRAY2 = head(6, MULTIDIM_ARRAY_TAG) + head(4, 2)
_TAG56500_ARRAY3 = head(6, DECTRIS_COMPRESSION_TAG) + head(4, 3)
_DATA_KEY = cbor2.dumps("data")


def _channel_fragments(image: Encoded) -> List[Any]:
    """CBOR of one ``data`` entry: tag 40 [[h, w], typed array (maybe tag 56500)]."""
    height, width = (int(n) for n in image.shape)
    out: List[Any] = [_TAG40_ARRAY2, cbor2.dumps([height, width]),
                      head(6, typed_array_tag(image.dtype))]
    if image.encoding not in ("raw", "none"):
        out += [_TAG56500_ARRAY3, cbor2.dumps(str(image.encoding)),
                cbor2.dumps(int(image.elem_size))]
    out += [head(2, memoryview(image.data).nbytes), image.data]
    return out


def encode_image(series_id: int, unique_id: str, image_id: int,
                 channels: Mapping[str, Encoded], *, series_date: Any = None,
                 times_ns: Tuple[int, int, int] = (0, 0, 0),
                 user_data: Any = None) -> bytes:
    """One ``image`` message holding every channel. An ``Encoded`` whose
    encoding is not ``raw`` goes inside tag 56500 [encoding, elem_size, bytes]
    as is (any name: the fake DCU's bad-encoding fault sends a bogus one).
    ``times_ns`` are (start, stop, real) in ns, sent as [ns, 10**9]."""
    start_ns, stop_ns, real_ns = times_ns
    msg: Dict[str, Any] = {
        "type": "image",
        "series_id": int(series_id),
        "series_unique_id": unique_id,
        "image_id": int(image_id),
        "real_time": [int(real_ns), _NS],
        "series_date": series_date,
        "start_time": [int(start_ns), _NS],
        "stop_time": [int(stop_ns), _NS],
    }
    if user_data:
        msg["user_data"] = user_data
    # The image blobs are spliced in rather than passed through cbor2.dumps:
    # one join copies each blob once, where cbor2 is several times slower
    # on multi-megabyte byte strings (and encodes memoryviews as arrays).
    encoded = cbor2.dumps(msg)
    parts: List[Any] = [_SELF_DESCRIBE_HEAD, head(5, len(msg) + 1),
                        memoryview(encoded)[len(head(5, len(msg))):],
                        _DATA_KEY, head(5, len(channels))]
    for name, image in channels.items():
        parts.append(cbor2.dumps(name))
        parts += _channel_fragments(image)
    return b"".join(parts)


def encode_end(series_id: int, unique_id: str) -> bytes:
    """The ``end`` message of a series."""
    return _dumps({"type": "end", "series_id": int(series_id), "series_unique_id": unique_id})
