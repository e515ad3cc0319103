"""Compression of image data the way the detector sends and stores it: both sides.

Methods (the names the fake DCU and the HDF5 files use):

* ``"bslz4"`` — bitshuffle + LZ4 in the framing of the HDF5 bitshuffle filter
  (:data:`BSHUF_ID`): an 8-byte big-endian uncompressed byte count, a 4-byte
  big-endian block size in bytes (8192), then the blocks, each a 4-byte
  big-endian compressed length followed by an LZ4 block. The ``bitshuffle``
  package writes the blocks; we add the 12-byte header it leaves out.
* ``"lz4"`` — the framing of the HDF5 LZ4 filter (:data:`LZ4_ID`): the same
  12-byte header, then per block a 4-byte big-endian compressed size and a
  raw LZ4 block (a block that would not shrink is stored as is, its size
  equal to the block size).
* ``"lz4-raw"`` — one bare LZ4 block without any header (stream V1 ``lz4<``).
* ``"none"`` — the raw little-endian bytes.

Both framed formats are exactly what ``dectris.compression.decompress``
accepts and what the HDF5 filters store as a chunk. Stream V1 names these
methods with its ``encoding`` strings (:func:`v1_encoding`, :func:`v1_method`).
Decompression (``dectris.compression``, ``lz4.block``) releases the GIL.
"""
from __future__ import annotations

import re
import struct
from typing import Any, Dict, List, Optional, Tuple, Union

import bitshuffle
import hdf5plugin
import lz4.block
import numpy as np
from dectris import compression as dectris_compression

from eiger_server.errors import DataError

__all__ = [
    "BSHUF_ID",
    "BSLZ4_BLOCK_BYTES",
    "DecodeError",
    "LZ4_ID",
    "METHODS",
    "V1_ENCODINGS",
    "bslz4_block_range",
    "compress",
    "compress_buffer",
    "decompress",
    "filter_method",
    "hdf5_filter",
    "le_contiguous",
    "lz4_hdf5_frame",
    "lz4_hdf5_single_block",
    "v1_encoding",
    "v1_method",
]

#: HDF5 filter ids of the DECTRIS compressions (registered by hdf5plugin).
BSHUF_ID: int = hdf5plugin.BSHUF_ID
LZ4_ID: int = hdf5plugin.LZ4_ID
#: Block size (bytes) the DCU uses for bitshuffle/LZ4.
BSLZ4_BLOCK_BYTES = 8192
#: Largest input one LZ4 block may hold (LZ4_MAX_INPUT_SIZE).
_LZ4_MAX_BLOCK = 0x7E000000

METHODS = ("bslz4", "lz4", "lz4-raw", "none")
V1_ENCODINGS = ("<", "lz4<", "bs8-lz4<", "bs16-lz4<", "bs32-lz4<")
_V1_BSLZ4 = re.compile(r"bs(8|16|32|64)-lz4([<>])\Z")

#: The HDF5 filters' header: total uncompressed bytes, block size in bytes.
HEADER = struct.Struct(">QI")
_BLOCK_LEN = struct.Struct(">I")

Buffer = Union[bytes, bytearray, memoryview]


class DecodeError(DataError):
    """A blob that cannot be turned into the image it claims to be."""


def _prefix(what: str) -> str:
    return f"{what}: " if what else ""


# ----------------------------------------------------------------- compress
def le_contiguous(array: np.ndarray) -> np.ndarray:
    """The array as little-endian C-contiguous data (a copy only if needed)."""
    array = np.asarray(array)
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
    return b"".join((HEADER.pack(array.nbytes, block_elems * itemsize), body))


def _lz4_hdf5(raw: memoryview, block_bytes: Optional[int] = None) -> bytes:
    total = raw.nbytes
    if block_bytes is None:
        # One block for the whole frame: fewest Python calls, same framing.
        block_bytes = max(1, min(total, _LZ4_MAX_BLOCK))
    parts: List[Union[bytes, memoryview]] = [HEADER.pack(total, block_bytes)]
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


def byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array as a flat memoryview, without copying."""
    # numpy's stubs declare the buffer protocol only on Python 3.12+.
    return memoryview(array).cast("B")  # type: ignore[arg-type]


def compress_buffer(array: np.ndarray, method: str) -> Buffer:
    """Like :func:`compress`, but ``"none"`` returns a zero-copy memoryview.

    Used on the hot path where a memoryview is as good as bytes (zmq send,
    cbor2, hashlib); the caller must keep ``array`` unchanged while the view
    is in use.
    """
    array = le_contiguous(array)
    if method == "none":
        return byte_view(array)
    if method == "bslz4":
        return _bslz4(array)
    if method == "lz4":
        return _lz4_hdf5(byte_view(array))
    if method == "lz4-raw":
        return lz4.block.compress(byte_view(array), store_size=False)
    raise ValueError(
        f"unknown compression method {method!r}: use one of {', '.join(METHODS)}")


def compress(array: np.ndarray, method: str) -> bytes:
    """Compress ``array`` with ``method`` ("bslz4", "lz4", "lz4-raw", "none")."""
    out = compress_buffer(array, method)
    return out if isinstance(out, bytes) else bytes(out)


def lz4_hdf5_single_block(blob: Buffer) -> Optional[memoryview]:
    """The bare LZ4 block inside an HDF5-framed LZ4 blob, without copying.

    Returns None when the blob has more than one block or holds its data
    uncompressed, so the caller knows to compress again for stream V1.
    """
    view = memoryview(blob).cast("B")
    if view.nbytes < HEADER.size + _BLOCK_LEN.size:
        return None
    total, block = HEADER.unpack_from(view, 0)
    (length,) = _BLOCK_LEN.unpack_from(view, HEADER.size)
    start = HEADER.size + _BLOCK_LEN.size
    if block < total or length == block or start + length != view.nbytes:
        return None
    return view[start:]


def lz4_hdf5_frame(block: Buffer, nbytes: int) -> bytes:
    """A bare LZ4 block of ``nbytes`` uncompressed bytes in the LZ4-filter
    framing (one block as large as the whole): a chunk of filter LZ4_ID."""
    return HEADER.pack(nbytes, nbytes) + _BLOCK_LEN.pack(memoryview(block).nbytes) + bytes(block)


# -------------------------------------------------------------- V1 names
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


def v1_method(encoding: str) -> Optional[Tuple[str, int]]:
    """(method, elem_size) of a little-endian V1 ``encoding`` string:
    ("none", 0), ("lz4-raw", 0) or ("bslz4", bytes per element); None for
    unknown and big-endian encodings."""
    encoding = str(encoding)
    if encoding == "<":
        return "none", 0
    if encoding == "lz4<":
        return "lz4-raw", 0
    match = _V1_BSLZ4.match(encoding)
    if match and match.group(2) == "<":
        return "bslz4", int(match.group(1)) // 8
    return None


# ---------------------------------------------------------------- decompress
def decompress(data: Buffer, method: str, nbytes: int, *, elem_size: int = 0,
               what: str = "", label: Optional[str] = None) -> bytes:
    """The ``nbytes`` uncompressed bytes of ``data`` compressed with ``method``
    ("bslz4", "lz4" or "lz4-raw"); raises :class:`DecodeError` naming ``what``
    (the frame) and ``label`` (the encoding as the stream calls it)."""
    label = label or method
    view = memoryview(data)
    if method == "lz4-raw":
        try:
            return lz4.block.decompress(data, uncompressed_size=nbytes)
        except (lz4.block.LZ4BlockError, ValueError, TypeError) as exc:
            raise DecodeError(f"{_prefix(what)}cannot decompress {label} data "
                              f"({view.nbytes} bytes): {exc}") from None
    # Check the HDF5 filter header first: a garbled size would make the
    # decompressor allocate whatever the header claims.
    if view.nbytes < HEADER.size:
        raise DecodeError(f"{_prefix(what)}{label} data is only {view.nbytes} bytes; "
                          "the frame is truncated")
    total, block = HEADER.unpack_from(view, 0)
    if method == "bslz4" and total != nbytes and elem_size:
        # Some simulators send bitshuffle.compress_lz4's blocks without the
        # 12-byte header (real DCUs send it): a header is recognisable by its
        # sizes, so a blob without one is decoded with the default block size.
        headerless = _headerless_bslz4(view, nbytes, elem_size)
        if headerless is not None:
            return headerless
    if total != nbytes or block == 0 or block > max(nbytes, 1 << 20):
        raise DecodeError(f"{_prefix(what)}{label} header announces {total} bytes in "
                          f"blocks of {block}, but the image needs {nbytes}"
                          + (" (and the data is no header-less bitshuffle/LZ4 either)"
                             if method == "bslz4" else "")
                          + "; the frame is corrupt or its shape/type is wrong")
    try:
        if method == "bslz4":
            return dectris_compression.decompress(data, method, elem_size=elem_size)
        return dectris_compression.decompress(data, method)
    except Exception as exc:     # RuntimeError, ValueError, SystemError on garbage
        raise DecodeError(f"{_prefix(what)}cannot decompress {label} data "
                          f"({view.nbytes} bytes): {exc}; the frame is corrupt") from None


def _headerless_bslz4(view: memoryview, nbytes: int, elem_size: int) -> Optional[bytes]:
    """``view`` decoded as header-less bitshuffle/LZ4 blocks, or None if it is not."""
    framed = b"".join((HEADER.pack(nbytes, BSLZ4_BLOCK_BYTES), view))
    try:
        raw = dectris_compression.decompress(framed, "bslz4", elem_size=elem_size)
    except Exception:            # not header-less blocks either: the caller reports it
        return None
    return raw if len(raw) == nbytes else None


def bslz4_header(data: Buffer) -> Tuple[int, int]:
    """(total bytes, block bytes) of a framed blob; DecodeError when too short."""
    view = memoryview(data)
    if view.nbytes < HEADER.size:
        raise DecodeError(f"bslz4 data is only {view.nbytes} bytes; the frame is truncated")
    total, block = HEADER.unpack_from(view, 0)
    return int(total), int(block)


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
    total, block_bytes = bslz4_header(view)
    if block_bytes <= 0 or block_bytes % elem_size or total % elem_size:
        raise DecodeError(f"bslz4 header announces {total} bytes in blocks of {block_bytes}, "
                          f"which does not fit {elem_size}-byte elements; the frame is corrupt")
    nelems = total // elem_size
    per_block = block_bytes // elem_size
    full_blocks = nelems // per_block
    first_block = first_elem // per_block
    stop_block = -(-stop_elem // per_block)           # first block not needed
    offset = HEADER.size
    size_of = _BLOCK_LEN.unpack_from
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
    head = HEADER.pack(sub_n * elem_size, block_bytes)
    return head + bytes(body), sub_first, sub_n


# ------------------------------------------------------------- HDF5 filters
def hdf5_filter(method: str) -> Dict[str, Any]:
    """h5py ``create_dataset`` keywords whose chunks are blobs of ``method``
    (none for "none")."""
    if method == "bslz4":
        return dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    if method in ("lz4", "lz4-raw"):
        return dict(hdf5plugin.LZ4(nbytes=0))
    return {}


def filter_method(filter_ids: List[int]) -> str:
    """The method whose blobs are the chunks of a dataset with these filters:
    "bslz4", "lz4", "none" (no filter) or "other"."""
    if list(filter_ids) == [BSHUF_ID]:
        return "bslz4"
    if list(filter_ids) == [LZ4_ID]:
        return "lz4"
    return "none" if not filter_ids else "other"
