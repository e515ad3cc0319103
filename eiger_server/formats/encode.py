"""Compression of image data the way the detector sends and stores it.

Three framings are produced:

* ``"bslz4"`` — bitshuffle + LZ4 in the framing of the HDF5 bitshuffle filter
  (id 32008): an 8-byte big-endian uncompressed byte count, a 4-byte
  big-endian block size in bytes (8192), then the blocks, each a 4-byte
  big-endian compressed length followed by an LZ4 block. The ``bitshuffle``
  package writes the blocks; we add the 12-byte header it leaves out.
* ``"lz4"`` — the framing of the HDF5 LZ4 filter (id 32004): an 8-byte
  big-endian total size, a 4-byte big-endian block size, then per block a
  4-byte big-endian compressed size and a raw LZ4 block (a block that would
  not shrink is stored as is, its size equal to the block size).
* ``"lz4-raw"`` — one bare LZ4 block without any header (stream V1 ``lz4<``).

``"none"`` gives the raw little-endian bytes. Both framed formats are exactly
what ``dectris.compression.decompress`` accepts.
"""
from __future__ import annotations

import struct
from typing import Optional, Union

import bitshuffle
import lz4.block
import numpy as np

__all__ = [
    "BSLZ4_BLOCK_BYTES",
    "METHODS",
    "compress",
    "compress_buffer",
    "v1_encoding",
    "lz4_hdf5_single_block",
]

#: Block size (bytes) the DCU uses for bitshuffle/LZ4.
BSLZ4_BLOCK_BYTES = 8192
#: Largest input one LZ4 block may hold (LZ4_MAX_INPUT_SIZE).
_LZ4_MAX_BLOCK = 0x7E000000

METHODS = ("bslz4", "lz4", "lz4-raw", "none")

_HEADER = struct.Struct(">QI")
_BLOCK_LEN = struct.Struct(">I")

Buffer = Union[bytes, memoryview]


def _contiguous(array: np.ndarray) -> np.ndarray:
    """The array as little-endian C-contiguous data (a copy only if needed)."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def _bslz4(array: np.ndarray) -> bytes:
    flat = array.reshape(-1)
    itemsize = array.dtype.itemsize
    block_elems = BSLZ4_BLOCK_BYTES // itemsize
    body = bitshuffle.compress_lz4(flat, block_elems)
    # bitshuffle.compress_lz4 emits only the blocks; the HDF5 filter (and the
    # DCU) put the uncompressed size and block size in front.
    return b"".join((_HEADER.pack(array.nbytes, block_elems * itemsize), body))


def _lz4_hdf5(raw: memoryview, block_bytes: Optional[int] = None) -> bytes:
    total = raw.nbytes
    if block_bytes is None:
        # One block for the whole frame: fewest Python calls, same framing.
        block_bytes = max(1, min(total, _LZ4_MAX_BLOCK))
    parts: "list[Union[bytes, memoryview]]" = [_HEADER.pack(total, block_bytes)]
    for offset in range(0, total, block_bytes):
        block = raw[offset:offset + block_bytes]
        packed = lz4.block.compress(block, store_size=False)
        if len(packed) >= block.nbytes:
            # The HDF5 LZ4 filter stores blocks that do not shrink verbatim;
            # readers recognise them by compressed size == block size.
            parts.append(_BLOCK_LEN.pack(block.nbytes))
            parts.append(block)
        else:
            parts.append(_BLOCK_LEN.pack(len(packed)))
            parts.append(packed)
    return b"".join(parts)


def compress_buffer(array: np.ndarray, method: str) -> Buffer:
    """Like :func:`compress`, but ``"none"`` returns a zero-copy memoryview.

    Used on the hot path where a memoryview is as good as bytes (zmq send,
    cbor2, hashlib); the caller must keep ``array`` unchanged while the view
    is in use.
    """
    array = _contiguous(array)
    if method == "none":
        return memoryview(array).cast("B")  # type: ignore[arg-type]  # numpy stubs: buffer on 3.12+ only
    if method == "bslz4":
        return _bslz4(array)
    if method == "lz4":
        return _lz4_hdf5(memoryview(array).cast("B"))  # type: ignore[arg-type]  # numpy stubs: buffer on 3.12+ only
    if method == "lz4-raw":
        return lz4.block.compress(memoryview(array).cast("B"), store_size=False)  # type: ignore[arg-type]  # numpy stubs: buffer on 3.12+ only
    raise ValueError(
        f"unknown compression method {method!r}: use one of {', '.join(METHODS)}")


def compress(array: np.ndarray, method: str) -> bytes:
    """Compress ``array`` with ``method`` ("bslz4", "lz4", "lz4-raw", "none")."""
    out = compress_buffer(array, method)
    return out if isinstance(out, bytes) else out.tobytes()


def v1_encoding(method: str, dtype: np.dtype) -> str:
    """The stream V1 ``encoding`` string for data compressed with ``method``."""
    if method == "none":
        return "<"
    if method in ("lz4", "lz4-raw"):
        return "lz4<"
    if method == "bslz4":
        return f"bs{np.dtype(dtype).itemsize * 8}-lz4<"
    raise ValueError(
        f"unknown compression method {method!r}: use one of {', '.join(METHODS)}")


def lz4_hdf5_single_block(blob: Buffer) -> Optional[memoryview]:
    """The bare LZ4 block inside an HDF5-framed LZ4 blob, without copying.

    Returns None when the blob has more than one block or holds its data
    uncompressed, so the caller knows to compress again for stream V1.
    """
    view = memoryview(blob).cast("B")
    if view.nbytes < _HEADER.size + _BLOCK_LEN.size:
        return None
    total, block = _HEADER.unpack_from(view, 0)
    (length,) = _BLOCK_LEN.unpack_from(view, _HEADER.size)
    start = _HEADER.size + _BLOCK_LEN.size
    if block < total or length == block or start + length != view.nbytes:
        return None
    return view[start:]
