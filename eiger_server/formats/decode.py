"""Image data of the streams: compressed blobs -> numpy arrays.

Every encoding the DCU sends:

* stream V1 ``encoding`` strings: ``<`` (raw little-endian), ``lz4<`` (one
  bare LZ4 block), ``bs8-lz4<``/``bs16-lz4<``/``bs32-lz4<`` (bitshuffle + LZ4
  in the HDF5 bitshuffle-filter framing). Big-endian (``>``) variants are
  refused: no DCU sends them.
* stream V2 DECTRIS tag 56500 payloads ``["bslz4", elem_size, bytes]`` and
  ``["lz4", 0, bytes]`` (HDF5 filter framing), and plain RFC 8746 typed arrays.

The heavy lifting is done by ``dectris.compression`` and ``lz4.block``, which
release the GIL, so a few worker threads decode in parallel. Arrays returned
may be read-only views of the decompressed bytes (no extra copy).

A failure raises :class:`DecodeError` naming the frame, the encoding and what
is wrong.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import lz4.block
import numpy as np
from dectris import compression as dectris_compression

from eiger_server.errors import DataError

Buffer = Union[bytes, bytearray, memoryview]
Shape = Tuple[int, int]

# RFC 8746 typed-array tags -> numpy dtype (128-bit floats are not supported).
TYPED_ARRAY_DTYPES = {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
}
DECTRIS_COMPRESSION_TAG = 56500
MULTIDIM_ARRAY_TAG = 40
SELF_DESCRIBE_TAG = 55799

_V1_BSLZ4 = re.compile(r"bs(8|16|32|64)-lz4([<>])\Z")
V1_ENCODINGS = ("<", "lz4<", "bs8-lz4<", "bs16-lz4<", "bs32-lz4<")


class DecodeError(DataError):
    """A blob that cannot be turned into the image it claims to be."""


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


_HDF5_HEADER = struct.Struct(">QI")


def _dectris(data: Buffer, algorithm: str, elem_size: int, what: str, encoding: str,
             expected: int) -> bytes:
    view = memoryview(data)
    # Check the HDF5 filter header first: a garbled size would make the
    # decompressor allocate whatever the header claims.
    if view.nbytes < _HDF5_HEADER.size:
        raise DecodeError(f"{_prefix(what)}{encoding} data is only {view.nbytes} bytes; "
                          "the frame is truncated")
    total, block = _HDF5_HEADER.unpack_from(view, 0)
    if total != expected or block == 0 or block > max(expected, 1 << 20):
        raise DecodeError(f"{_prefix(what)}{encoding} header announces {total} bytes in "
                          f"blocks of {block}, but the image needs {expected}; the frame is "
                          "corrupt or its shape/type is wrong")
    try:
        if algorithm == "bslz4":
            return dectris_compression.decompress(data, algorithm, elem_size=elem_size)
        return dectris_compression.decompress(data, algorithm)
    except Exception as exc:     # RuntimeError, ValueError, SystemError on garbage
        raise DecodeError(f"{_prefix(what)}cannot decompress {encoding} data "
                          f"({view.nbytes} bytes): {exc}; the frame is corrupt") from None


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
    if encoding == "<":
        return _as_array(blob, shape, dt, what, encoding)
    if encoding == "lz4<":
        expected = shape[0] * shape[1] * dt.itemsize
        try:
            raw = lz4.block.decompress(blob, uncompressed_size=expected)
        except (lz4.block.LZ4BlockError, ValueError, TypeError) as exc:
            raise DecodeError(f"{_prefix(what)}cannot decompress lz4< data "
                              f"({memoryview(blob).nbytes} bytes): {exc}") from None
        return _as_array(raw, shape, dt, what, encoding)
    match = _V1_BSLZ4.match(encoding)
    if match:
        elem_size = int(match.group(1)) // 8
        raw = _dectris(blob, "bslz4", elem_size, what, encoding,
                       shape[0] * shape[1] * dt.itemsize)
        return _as_array(raw, shape, dt, what, encoding)
    raise DecodeError(f"{_prefix(what)}unknown stream encoding '{encoding}'; known: "
                      f"{', '.join(V1_ENCODINGS)}")


def decode_v2(data: Buffer, algorithm: str, elem_size: int, shape: Shape, dtype: Any, *,
              what: str = "") -> np.ndarray:
    """Decode a stream V2 image: ``algorithm`` "raw", "bslz4" or "lz4"."""
    shape = _check_shape(shape, what, algorithm)
    dt = _check_dtype(dtype, what)
    if algorithm == "raw":
        return _as_array(data, shape, dt, what, "raw")
    if algorithm == "bslz4":
        size = int(elem_size) or dt.itemsize
        raw = _dectris(data, "bslz4", size, what, "bslz4", shape[0] * shape[1] * dt.itemsize)
        return _as_array(raw, shape, dt, what, "bslz4")
    if algorithm == "lz4":
        raw = _dectris(data, "lz4", 0, what, "lz4", shape[0] * shape[1] * dt.itemsize)
        return _as_array(raw, shape, dt, what, "lz4")
    raise DecodeError(f"{_prefix(what)}unknown compression '{algorithm}' in tag "
                      f"{DECTRIS_COMPRESSION_TAG}; known: bslz4, lz4")


def typed_array_dtype(tag: int) -> Optional[np.dtype]:
    """The dtype of an RFC 8746 typed-array tag, or None for other tags."""
    name = TYPED_ARRAY_DTYPES.get(int(tag))
    return np.dtype(name) if name else None


def _bslz4_spec(encoded: Encoded) -> Optional[Tuple[np.dtype, int]]:
    """(dtype, elem_size) when ``encoded`` is bitshuffle/LZ4, else None."""
    if encoded.v2:
        if encoded.encoding != "bslz4":
            return None
        dt = _check_dtype(encoded.dtype, "")
        return dt, int(encoded.elem_size) or dt.itemsize
    match = _V1_BSLZ4.match(str(encoded.encoding))
    if match is None or match.group(2) != "<":
        return None
    return _check_dtype(encoded.dtype, "").newbyteorder("<"), int(match.group(1)) // 8


def bslz4_block_range(data: Buffer, first_elem: int, stop_elem: int,
                      elem_size: int) -> Tuple[bytes, int, int]:
    """The part of a bitshuffle/LZ4 stream (HDF5 framing) holding elements
    ``first_elem`` up to ``stop_elem`` (exclusive), as a stream of its own.

    Returns ``(sub_stream, sub_first_elem, sub_nelems)``: decoding
    ``sub_stream`` gives ``sub_nelems`` elements starting at element
    ``sub_first_elem`` of the image. Each block of the framing holds
    ``block_bytes // elem_size`` consecutive elements; walking the blocks costs
    one 4-byte read each, no decompression. A range reaching into the last,
    shorter block takes the rest of the stream (bitshuffle stores the final
    ``n % 8`` elements uncompressed after it).
    """
    view = memoryview(data).cast("B")
    if view.nbytes < _HDF5_HEADER.size:
        raise DecodeError(f"bslz4 data is only {view.nbytes} bytes; the frame is truncated")
    total, block_bytes = _HDF5_HEADER.unpack_from(view, 0)
    if block_bytes <= 0 or block_bytes % elem_size or total % elem_size:
        raise DecodeError(f"bslz4 header announces {total} bytes in blocks of {block_bytes}, "
                          f"which does not fit {elem_size}-byte elements; the frame is corrupt")
    nelems = total // elem_size
    per_block = block_bytes // elem_size
    full_blocks = nelems // per_block
    first_block = first_elem // per_block
    stop_block = -(-stop_elem // per_block)           # first block not needed
    offset = _HDF5_HEADER.size
    size_of = _BLOCK_SIZE.unpack_from
    start_offset = offset
    for block in range(min(stop_block, full_blocks)):
        if block == first_block:
            start_offset = offset
        if offset + 4 > view.nbytes:
            raise DecodeError("bslz4 data ends inside its block list; the frame is truncated")
        offset += 4 + size_of(view, offset)[0]
    if first_block >= full_blocks:
        start_offset = offset
    if stop_block > full_blocks:
        # the tail (short block + raw remainder) runs to the end of the stream
        sub_first = first_block * per_block
        sub_n = nelems - sub_first
        body = view[start_offset:]
    else:
        sub_first = first_block * per_block
        sub_n = (stop_block - first_block) * per_block
        body = view[start_offset:offset]
    head = _HDF5_HEADER.pack(sub_n * elem_size, block_bytes)
    return head + bytes(body), sub_first, sub_n


_BLOCK_SIZE = struct.Struct(">I")


def decode_rows(encoded: Encoded, row_begin: int, row_end: int,
                what: str = "") -> np.ndarray:
    """Rows ``row_begin..row_end`` (inclusive) of an image, shape (rows, width).

    For bitshuffle/LZ4 data only the blocks holding these rows are
    decompressed (see :func:`bslz4_block_range`), which makes a small ROI far
    cheaper than the whole frame. Other encodings are decoded whole and sliced.
    """
    height, width = _check_shape(encoded.shape, what, str(encoded.encoding))
    row_begin = max(0, int(row_begin))
    row_end = min(height - 1, int(row_end))
    if row_begin > row_end:
        raise DecodeError(f"{_prefix(what)}rows {row_begin}..{row_end} are not inside the "
                          f"image (rows 0..{height - 1})")
    spec = _bslz4_spec(encoded)
    if spec is None or (row_begin == 0 and row_end == height - 1):
        return encoded.decode(what)[row_begin:row_end + 1]
    dt, elem_size = spec
    if elem_size != dt.itemsize:
        return encoded.decode(what)[row_begin:row_end + 1]
    first, stop = row_begin * width, (row_end + 1) * width
    expected = height * width * dt.itemsize
    view = memoryview(encoded.data)
    if view.nbytes >= _HDF5_HEADER.size:
        total, _ = _HDF5_HEADER.unpack_from(view.cast("B"), 0)
        if total != expected:
            raise DecodeError(f"{_prefix(what)}bslz4 header announces {total} bytes, but the "
                              f"image needs {expected}; the frame is corrupt or its "
                              "shape/type is wrong")
    try:
        sub, sub_first, sub_n = bslz4_block_range(encoded.data, first, stop, elem_size)
    except DecodeError as exc:
        raise DecodeError(f"{_prefix(what)}{exc}") from None
    raw = _dectris(sub, "bslz4", elem_size, what, "bslz4", sub_n * elem_size)
    values = np.frombuffer(raw, dtype=dt)
    part = values[first - sub_first:stop - sub_first]
    return part.reshape(row_end - row_begin + 1, width)
