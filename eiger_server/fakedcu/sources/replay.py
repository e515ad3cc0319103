"""Frame sources that replay recorded data, and a pusher for real V2 captures.

* :class:`Hdf5ReplaySource` reads the images of an NXmx master file
  (``/entry/data/data_000001`` … external links to the data files).
* :class:`CborReplaySource` decodes the image messages of a stream V2
  capture directory (one zmq message per ``*.cbor`` file).
* :func:`push_capture` sends such a directory, byte for byte, on a PUSH
  socket, optionally after a start message synthesized from the images.
* :func:`v1_session` groups a recorded Stream V1 session (one ``part_NN``
  file per zmq message part) into its multipart messages, filling empty
  array parts with arrays of the announced shape and type;
  :func:`push_v1_session` sends them on a PUSH socket.
* :class:`PrecompressedCache` compresses a few frames once and hands them
  out again as ``Frame.encoded`` blobs, for "as fast as ZeroMQ allows" runs.

All sources cycle: frame ``index`` is frame ``index % nframes`` of the data.
"""
from __future__ import annotations

import bisect
import collections
import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 HDF5 filters)
import numpy as np
import zmq

from eiger_server.formats import stream_v2
from eiger_server.formats.compression import compress, filter_method
from eiger_server.formats.decode import Encoded

log = logging.getLogger(__name__)

__all__ = [
    "Hdf5ReplaySource",
    "CborReplaySource",
    "PrecompressedCache",
    "push_capture",
    "capture_files",
    "decode_message",
    "synthesize_start",
    "v1_session",
    "push_v1_session",
]

PathLike = Union[str, os.PathLike]


def fit_frame(array: np.ndarray, width: int, height: int, dtype: np.dtype) -> np.ndarray:
    """``array`` as a (height, width) image of ``dtype``: cropped or zero-padded,
    values clipped to the type's range. Returned unchanged when it already fits."""
    dtype = np.dtype(dtype)
    if array.shape == (height, width) and array.dtype == dtype:
        return array
    out = np.zeros((height, width), dtype=dtype)
    h, w = min(height, array.shape[0]), min(width, array.shape[1])
    part = array[:h, :w]
    if dtype.kind in "ui" and part.dtype != dtype:
        info = np.iinfo(dtype)
        part = np.clip(part, info.min, info.max)
    out[:h, :w] = part
    out.flags.writeable = False
    return out


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


# ================================================================= HDF5
class Hdf5ReplaySource:
    """Replays the images of an NXmx master file (legacy DECTRIS layout).

    Attributes ``width``, ``height``, ``dtype``, ``nframes``. Every requested
    channel gets the same recorded image (the files hold one threshold).
    Decoded frames are kept in a small cache so short series cycle cheaply.
    """

    def __init__(self, master_path: PathLike, *, cache_frames: int = 32) -> None:
        self.path = Path(master_path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise OSError(f"cannot open HDF5 master file {self.path}: {exc}; "
                          "give the path of an existing *_master.h5") from exc
        self._datasets: List[h5py.Dataset] = []
        group = self._file.get("/entry/data")
        if group is None:
            self._file.close()
            raise ValueError(f"{self.path} has no /entry/data group: not an NXmx master file")
        names = sorted(n for n in group if n.startswith("data_"))
        if not names and "data" in group:
            names = ["data"]
        for name in names:
            try:
                ds = group[name]
            except KeyError as exc:   # dangling external link: data file missing
                log.warning("%s: /entry/data/%s cannot be opened (%s); skipped",
                            self.path, name, exc)
                continue
            if isinstance(ds, h5py.Dataset) and ds.ndim == 3 and ds.shape[0] > 0:
                self._datasets.append(ds)
        if not self._datasets:
            self._file.close()
            raise ValueError(f"{self.path}: no image data found under /entry/data "
                             "(are the *_data_NNNNNN.h5 files next to the master?)")
        first = self._datasets[0]
        self.height = int(first.shape[1])
        self.width = int(first.shape[2])
        self.dtype = np.dtype(first.dtype)
        self._offsets = []
        total = 0
        for ds in self._datasets:
            self._offsets.append(total)
            total += int(ds.shape[0])
        self.nframes = total
        self.compression = self._compression(first)
        self._cache: "collections.OrderedDict[int, np.ndarray]" = collections.OrderedDict()
        self._cache_frames = max(0, cache_frames)

    @staticmethod
    def _compression(ds: h5py.Dataset) -> str:
        chunks = ds.chunks
        if not chunks or chunks[0] != 1 or tuple(chunks[1:]) != tuple(ds.shape[1:]):
            return "other"   # not one image per chunk: no raw chunk fast path
        plist = ds.id.get_create_plist()
        return filter_method([plist.get_filter(i)[0] for i in range(plist.get_nfilters())])

    def _locate(self, index: int) -> Tuple[h5py.Dataset, int]:
        i = index % self.nframes
        k = bisect.bisect_right(self._offsets, i) - 1
        return self._datasets[k], i - self._offsets[k]

    def image(self, index: int) -> np.ndarray:
        """Recorded image ``index % nframes`` (read-only array)."""
        i = index % self.nframes
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        ds, j = self._locate(i)
        array = _readonly(ds[j])
        if self._cache_frames:
            self._cache[i] = array
            if len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)
        return array

    def frame(self, index: int, width: int, height: int, dtype: np.dtype,
              channels: List[str]) -> Dict[str, np.ndarray]:
        array = fit_frame(self.image(index), width, height, dtype)
        return {ch: array for ch in channels}

    def encoded(self, index: int) -> Optional[bytes]:
        """The stored chunk of image ``index`` as is (HDF5 filter framing) when
        the file uses one chunk per image with bslz4 or lz4, else None."""
        if self.compression not in ("bslz4", "lz4"):
            return None
        ds, j = self._locate(index)
        _, chunk = ds.id.read_direct_chunk((j, 0, 0))
        return bytes(chunk)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Hdf5ReplaySource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ================================================================= CBOR
def capture_files(directory: PathLike) -> List[Path]:
    """The ``*.cbor`` files of a capture directory, in message order."""
    files = sorted(Path(directory).glob("*.cbor"))
    if not files:
        raise FileNotFoundError(f"no *.cbor files in {directory}: give a stream V2 "
                                "capture directory (one message per file)")
    return files


def decode_message(blob: bytes) -> Dict[str, Any]:
    """A stream V2 message as a dict, read by the server's own parser: image
    channels become :class:`~eiger_server.formats.decode.Encoded` (still
    compressed), dates datetimes."""
    msg = stream_v2.loads(blob)
    if not hasattr(msg, "get") or "type" not in msg:
        raise ValueError("not a stream V2 message: expected a CBOR map with a 'type' key")
    return dict(msg)


def _channel_data(value: Any) -> Encoded:
    if not isinstance(value, Encoded):
        reason = getattr(value, "reason", "it is not an RFC 8746 multi-dimensional array "
                                          "(tag 40)")
        raise ValueError(f"image data not understood: {reason}")
    return value


class CborReplaySource:
    """Replays the image messages of a real stream V2 capture directory.

    Attributes ``width``, ``height``, ``dtype``, ``nframes``, ``channels``
    (as recorded) and ``compression``. A requested channel the capture lacks
    gets the capture's first channel.
    """

    def __init__(self, directory: PathLike) -> None:
        self.directory = Path(directory)
        self._images: List[Dict[str, Any]] = []
        for path in capture_files(self.directory):
            msg = decode_message(path.read_bytes())
            if msg.get("type") == "image":
                self._images.append(msg)
        if not self._images:
            raise ValueError(f"{self.directory}: the capture holds no image message")
        first = self._images[0]
        self.channels: List[str] = list(first["data"])
        sample = _channel_data(first["data"][self.channels[0]])
        self.height, self.width = (int(n) for n in sample.shape)
        self.dtype = np.dtype(sample.dtype)
        self.compression = "none" if sample.encoding == "raw" else str(sample.encoding)
        self.nframes = len(self._images)
        self.series_unique_id = str(first.get("series_unique_id", ""))
        self._decoded: Dict[Tuple[int, str], np.ndarray] = {}

    def _channel(self, channel: str) -> str:
        return channel if channel in self.channels else self.channels[0]

    def image(self, index: int, channel: str) -> np.ndarray:
        """Decoded recorded image (read-only) of ``channel`` at ``index % nframes``."""
        key = (index % self.nframes, self._channel(channel))
        array = self._decoded.get(key)
        if array is None:
            msg = self._images[key[0]]
            array = _readonly(_channel_data(msg["data"][key[1]]).decode(
                f"{self.directory} image {key[0]} {key[1]}"))
            self._decoded[key] = array
        return array

    def frame(self, index: int, width: int, height: int, dtype: np.dtype,
              channels: List[str]) -> Dict[str, np.ndarray]:
        return {ch: fit_frame(self.image(index, ch), width, height, dtype) for ch in channels}

    def encoded(self, index: int, channels: Sequence[str]) -> Dict[str, bytes]:
        """The recorded compressed blobs (HDF5 framing, ``self.compression``)."""
        msg = self._images[index % self.nframes]
        return {ch: bytes(_channel_data(msg["data"][self._channel(ch)]).data)
                for ch in channels}


# ============================================================ push_capture
def _ratio_seconds(value: Any) -> Optional[float]:
    try:
        num, den = value
        return float(num) / float(den) if den else None
    except (TypeError, ValueError):
        return None


def synthesize_start(images: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """A stream V2 start message built from a capture's image messages.

    The published captures lack their start message; this one carries what
    the images tell (ids, channels, geometry, dtype, count, timing).
    """
    if not images:
        raise ValueError("cannot build a start message without any image message")
    first = images[0]
    channels = list(first["data"])
    sample = _channel_data(first["data"][channels[0]])
    height, width = sample.shape
    count_time = _ratio_seconds(first.get("real_time")) or 0.0
    frame_time = count_time
    if len(images) > 1:
        t0 = _ratio_seconds(images[0].get("start_time"))
        t1 = _ratio_seconds(images[1].get("start_time"))
        if t0 is not None and t1 is not None and t1 > t0:
            frame_time = t1 - t0
    arm_date = first.get("series_date")
    if not isinstance(arm_date, _dt.datetime):
        arm_date = _dt.datetime.now(_dt.timezone.utc)
    return {
        "type": "start",
        "series_id": first.get("series_id", 0),
        "series_unique_id": first.get("series_unique_id", ""),
        "arm_date": arm_date,
        "beam_center_x": 0.0,
        "beam_center_y": 0.0,
        "count_time": count_time,
        "frame_time": frame_time,
        "detector_distance": 0.0,
        "incident_energy": 0.0,
        "incident_wavelength": 0.0,
        "number_of_images": len(images),
        "image_size_x": int(width),
        "image_size_y": int(height),
        "image_dtype": np.dtype(sample.dtype).name,
        "channels": channels,
        "threshold_energy": {},
    }


def push_capture(directory: PathLike, endpoint: str, *, bind: bool = True,
                 start_message: bool = False, timeout: float = 10.0) -> int:
    """Send every file of a capture directory as one zmq message on a PUSH socket.

    The file bytes go out untouched. With ``start_message`` a start message
    synthesized from the image messages goes first. ``bind`` binds
    ``endpoint``, otherwise the socket connects to it. Raises TimeoutError when
    no receiver takes a message within ``timeout`` seconds. Returns the
    number of messages sent; they are delivered when this returns.
    """
    files = capture_files(directory)
    blobs = [path.read_bytes() for path in files]
    messages: List[bytes] = []
    if start_message:
        images = []
        for blob in blobs:
            msg = decode_message(blob)
            if msg.get("type") == "image":
                images.append(msg)
        messages.append(stream_v2.encode_start(synthesize_start(images)))
    messages.extend(blobs)
    return _push(endpoint, [[blob] for blob in messages], bind, timeout, "push_capture")


def _push(endpoint: str, messages: Sequence[Sequence[Any]], bind: bool, timeout: float,
          who: str) -> int:
    """Send each multipart message on a PUSH socket bound to (or connected to)
    ``endpoint``; the number sent, delivered when this returns."""
    linger_ms = int(timeout * 1000)
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    try:
        sock.setsockopt(zmq.SNDTIMEO, linger_ms)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        for n, message in enumerate(messages):
            try:
                sock.send_multipart(list(message), copy=False)
            except zmq.Again:
                raise TimeoutError(f"{who}: no receiver took message {n} on {endpoint} "
                                   f"within {timeout} s; connect a PULL socket first") from None
    finally:
        sock.close(linger=linger_ms)
        context.term()   # waits until queued messages are delivered (or linger ends)
    return len(messages)


# ====================================================== Stream V1 sessions
_V1_MESSAGE_STARTS = ("dheader-", "dimage-", "dseries_end-")


def _htype(part: bytes) -> str:
    if not part.startswith(b"{") or len(part) > 65536:
        return ""
    try:
        value = json.loads(part)
    except (ValueError, UnicodeDecodeError):
        return ""
    return str(value.get("htype", "")) if isinstance(value, dict) else ""


def v1_session(directory: PathLike, *, flatfield: Optional[np.ndarray] = None,
               pixel_mask: Optional[np.ndarray] = None) -> List[List[bytes]]:
    """The multipart messages of a recorded V1 session, in order.

    A part whose ``htype`` is ``dheader-``, ``dimage-`` or ``dseries_end-``
    starts a message; every other part belongs to the one before. An empty
    array part after a ``dflatfield``/``dpixelmask`` header is filled with
    ``flatfield``/``pixel_mask`` (default ones / zeros of the announced
    ``[x, y]`` shape and type), as a replay of published data must.
    """
    files = sorted(Path(directory).glob("part_*"), key=lambda p: int(p.name.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"no part_NN files in {directory}")
    messages: List[List[bytes]] = []
    announced: Optional[Dict[str, Any]] = None
    for path in files:
        part = path.read_bytes()
        htype = _htype(part)
        if not part and announced is not None:
            part = _filled(announced, flatfield, pixel_mask)
        announced = json.loads(part) if htype in ("dflatfield-1.0", "dpixelmask-1.0") else None
        if htype.startswith(_V1_MESSAGE_STARTS) and not htype.startswith("dimage_d"):
            messages.append([part])
        elif messages:
            messages[-1].append(part)
        else:
            raise ValueError(f"{path}: the session does not start with a message header")
    return messages


def _filled(header: Dict[str, Any], flatfield: Optional[np.ndarray],
            pixel_mask: Optional[np.ndarray]) -> bytes:
    width, height = (int(n) for n in header["shape"][:2])
    dtype = np.dtype(str(header["type"])).newbyteorder("<")
    given = flatfield if header["htype"].startswith("dflatfield") else pixel_mask
    if given is None:
        given = (np.ones if header["htype"].startswith("dflatfield") else np.zeros)(
            (height, width), dtype)
    array = np.ascontiguousarray(given, dtype=dtype)
    if array.shape != (height, width):
        raise ValueError(f"{header['htype']}: the array given is {array.shape}, the header "
                         f"announces (y, x) = {(height, width)}")
    return array.tobytes()


def push_v1_session(messages: Sequence[Sequence[bytes]], endpoint: str, *,
                    bind: bool = True, timeout: float = 10.0) -> int:
    """Send V1 multipart ``messages`` on a PUSH socket; the number sent.

    Raises TimeoutError when no receiver takes a message within ``timeout``.
    """
    return _push(endpoint, messages, bind, timeout, "push_v1_session")


# ====================================================== PrecompressedCache
class PrecompressedCache:
    """Compresses ``n`` frames of ``source`` once and hands them out cycling.

    A FrameSource itself (``frame``) plus ``encoded`` for the blobs in
    ``compression`` (HDF5 framing; raw bytes for "none"), so the engine can
    fill ``Frame.encoded`` and the sinks skip compressing. The cache is
    rebuilt when the geometry, dtype or channels asked for change.
    """

    def __init__(self, source: Any, compression: str, n: int = 16) -> None:
        if compression not in ("bslz4", "lz4", "none"):
            raise ValueError(f"PrecompressedCache: compression {compression!r} is not "
                             "one of bslz4, lz4, none")
        self.source = source
        self.compression = compression
        self.n = max(1, int(n))
        self._key: Optional[Tuple[Any, ...]] = None
        self._frames: List[Dict[str, np.ndarray]] = []
        self._blobs: List[Dict[str, bytes]] = []

    def prepare(self, width: int, height: int, dtype: np.dtype, channels: List[str]) -> None:
        """Build the cache for this geometry now (else on first use)."""
        key = (int(width), int(height), np.dtype(dtype).str, tuple(channels))
        if key == self._key:
            return
        frames, blobs = [], []
        for k in range(self.n):
            data = self.source.frame(k, width, height, dtype, list(channels))
            # private read-only copies: the sinks may hold them while we reuse them
            data = {ch: _readonly(np.array(a, copy=True)) for ch, a in data.items()}
            frames.append(data)
            blobs.append({ch: compress(a, self.compression) for ch, a in data.items()})
        self._frames, self._blobs, self._key = frames, blobs, key

    def frame(self, index: int, width: int, height: int, dtype: np.dtype,
              channels: List[str]) -> Dict[str, np.ndarray]:
        self.prepare(width, height, dtype, channels)
        return self._frames[index % self.n]

    def encoded(self, index: int, width: int, height: int, dtype: np.dtype,
                channels: List[str]) -> Dict[str, bytes]:
        self.prepare(width, height, dtype, channels)
        return self._blobs[index % self.n]
