"""Image data of the streams: encoded channels -> numpy arrays.

Every encoding the DCU sends:

* stream V1 ``encoding`` strings: ``<`` (raw little-endian), ``lz4<`` (one
  bare LZ4 block), ``bs8-lz4<``/``bs16-lz4<``/``bs32-lz4<`` (bitshuffle + LZ4
  in the HDF5 bitshuffle-filter framing). Big-endian (``>``) variants are
  refused: no DCU sends them.
* stream V2 DECTRIS tag 56500 payloads ``["bslz4", elem_size, bytes]`` and
  ``["lz4", 0, bytes]`` (HDF5 filter framing), and plain RFC 8746 typed arrays.

The framings themselves live in :mod:`eiger_server.formats.compression`;
this module checks shapes and types and turns the bytes into arrays. Arrays
returned may be read-only views of the decompressed bytes (no extra copy).
Neither ``dectris.compression.decompress`` nor bitshuffle's binding can write
into a caller's buffer, so a decode allocates its frame once; what follows
(sums, accumulation) writes into reused buffers (stream/kernels.py), and
ROI-only counts decode just the ROI rows (:func:`decode_rows`,
stream/roi_stage.py).

A failure raises :class:`DecodeError` naming the frame, the encoding and what
is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from eiger_server.formats.cbor import DECTRIS_COMPRESSION_TAG
from eiger_server.formats.compression import (HEADER, V1_ENCODINGS, Buffer, DecodeError,
                                              bslz4_block_range, decompress, v1_method)

__all__ = ["Compressed", "DecodeError", "Encoded", "bslz4_spec", "decode", "decode_rows",
           "decode_v2"]

Shape = Tuple[int, int]


@dataclass(frozen=True)
class Compressed:
    """The payload of DECTRIS tag 56500: still compressed (decoded by workers)."""

    algorithm: str
    elem_size: int
    data: Buffer


@dataclass(frozen=True)
class Encoded:
    """One channel of one image as it arrived, not decoded yet.

    ``encoding`` is a V1 encoding string, or (``v2`` true) ``"raw"``,
    ``"bslz4"`` or ``"lz4"``. ``shape`` is (height, width); ``dtype`` the image's type.
    """

    data: Buffer
    encoding: str
    shape: Shape
    dtype: np.dtype
    elem_size: int = 0
    v2: bool = False

    @property
    def nbytes(self) -> int:
        return memoryview(self.data).nbytes

    def decode(self, what: str = "") -> np.ndarray:
        """The (height, width) array; ``what`` names the frame in errors."""
        if self.v2:
            return decode_v2(self.data, self.encoding, self.elem_size, self.shape,
                             self.dtype, what=what)
        return decode(self.data, self.encoding, self.shape, self.dtype, what=what)


def _prefix(what: str) -> str:
    return f"{what}: " if what else ""


def _check_shape(shape: Any, what: str, encoding: str) -> Shape:
    try:
        height, width = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise DecodeError(f"{_prefix(what)}{encoding} image has an invalid shape {shape!r}; "
                          "expected (height, width)") from None
    if height <= 0 or width <= 0:
        raise DecodeError(f"{_prefix(what)}{encoding} image has an empty shape {shape!r}")
    return height, width


def _check_dtype(dtype: Any, what: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DecodeError(f"{_prefix(what)}unknown pixel type {dtype!r}") from None
    if dt.kind not in "uif":
        raise DecodeError(f"{_prefix(what)}pixel type {dt} is not a number type")
    return dt


def _as_array(data: Buffer, shape: Shape, dtype: np.dtype, what: str,
              encoding: str) -> np.ndarray:
    expected = shape[0] * shape[1] * dtype.itemsize
    size = memoryview(data).nbytes
    if size != expected:
        raise DecodeError(
            f"{_prefix(what)}{encoding} data holds {size} bytes after decoding, but a "
            f"{shape[1]}x{shape[0]} {dtype.name} image needs {expected}; the frame is "
            "truncated or corrupt")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    return array


def decode(blob: Buffer, encoding: str, shape: Shape, dtype: Any, *,
           what: str = "") -> np.ndarray:
    """Decode a stream V1 blob with ``encoding`` into a (height, width) array."""
    shape = _check_shape(shape, what, encoding)
    dt = _check_dtype(dtype, what)
    encoding = str(encoding)
    if encoding.endswith(">"):
        raise DecodeError(f"{_prefix(what)}encoding '{encoding}' is big-endian, which "
                          "this server does not decode; no DCU is known to send it")
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    method = v1_method(encoding)
    if method is None:
        raise DecodeError(f"{_prefix(what)}unknown stream encoding '{encoding}'; known: "
                          f"{', '.join(V1_ENCODINGS)}")
    kind, elem_size = method
    if kind == "none":
        return _as_array(blob, shape, dt, what, encoding)
    raw = decompress(blob, kind, shape[0] * shape[1] * dt.itemsize, elem_size=elem_size,
                     what=what, label=encoding)
    return _as_array(raw, shape, dt, what, encoding)


def decode_v2(data: Buffer, algorithm: str, elem_size: int, shape: Shape, dtype: Any, *,
              what: str = "") -> np.ndarray:
    """Decode a stream V2 image: ``algorithm`` "raw", "bslz4" or "lz4"."""
    shape = _check_shape(shape, what, algorithm)
    dt = _check_dtype(dtype, what)
    if algorithm == "raw":
        return _as_array(data, shape, dt, what, "raw")
    if algorithm in ("bslz4", "lz4"):
        size = (int(elem_size) or dt.itemsize) if algorithm == "bslz4" else 0
        raw = decompress(data, algorithm, shape[0] * shape[1] * dt.itemsize, elem_size=size,
                         what=what)
        return _as_array(raw, shape, dt, what, algorithm)
    raise DecodeError(f"{_prefix(what)}unknown compression '{algorithm}' in tag "
                      f"{DECTRIS_COMPRESSION_TAG}; known: bslz4, lz4")


def bslz4_spec(encoded: Encoded) -> Optional[Tuple[np.dtype, int]]:
    """(little-endian dtype, elem_size) when ``encoded`` is bitshuffle/LZ4, else None."""
    if encoded.v2:
        if encoded.encoding != "bslz4":
            return None
        dt = _check_dtype(encoded.dtype, "")
        return dt, int(encoded.elem_size) or dt.itemsize
    method = v1_method(encoded.encoding)
    if method is None or method[0] != "bslz4":
        return None
    return _check_dtype(encoded.dtype, "").newbyteorder("<"), method[1]


def decode_rows(encoded: Encoded, row_begin: int, row_end: int,
                what: str = "") -> np.ndarray:
    """Rows ``row_begin..row_end`` (inclusive) of an image, shape (rows, width).

    For bitshuffle/LZ4 data only the blocks holding these rows are
    decompressed (see :func:`~eiger_server.formats.compression.bslz4_block_range`),
    which makes a small ROI far cheaper than the whole frame. Other encodings
    are decoded whole and sliced.
    """
    height, width = _check_shape(encoded.shape, what, str(encoded.encoding))
    row_begin = max(0, int(row_begin))
    row_end = min(height - 1, int(row_end))
    if row_begin > row_end:
        raise DecodeError(f"{_prefix(what)}rows {row_begin}..{row_end} are not inside the "
                          f"image (rows 0..{height - 1})")
    spec = bslz4_spec(encoded)
    if spec is None or (row_begin == 0 and row_end == height - 1):
        return encoded.decode(what)[row_begin:row_end + 1]
    dt, elem_size = spec
    if elem_size != dt.itemsize:
        return encoded.decode(what)[row_begin:row_end + 1]
    first, stop = row_begin * width, (row_end + 1) * width
    expected = height * width * dt.itemsize
    view = memoryview(encoded.data)
    if view.nbytes >= HEADER.size:
        total, _ = HEADER.unpack_from(view.cast("B"), 0)
        if total != expected:
            raise DecodeError(f"{_prefix(what)}bslz4 header announces {total} bytes, but the "
                              f"image needs {expected}; the frame is corrupt or its "
                              "shape/type is wrong")
    try:
        sub, sub_first, sub_n = bslz4_block_range(encoded.data, first, stop, elem_size)
    except DecodeError as exc:
        raise DecodeError(f"{_prefix(what)}{exc}") from None
    raw = decompress(sub, "bslz4", sub_n * elem_size, elem_size=elem_size, what=what)
    values = np.frombuffer(raw, dtype=dt)
    part = values[first - sub_first:stop - sub_first]
    return part.reshape(row_end - row_begin + 1, width)
