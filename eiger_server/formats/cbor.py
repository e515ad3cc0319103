"""CBOR vocabulary of stream V2: tag numbers, RFC 8746 typed arrays, item heads.

The one table of typed-array tags, used by the V2 parser (tag -> dtype) and
by every encoder (dtype -> tag): the server's parser, the fake DCU's stream
adapter and its capture replay.
"""
from __future__ import annotations

import struct
from typing import Dict, Optional

import numpy as np
from cbor2 import CBORTag

from eiger_server.formats.compression import le_contiguous

SELF_DESCRIBE_TAG = 55799          # RFC 8949 3.4.6, in front of every V2 message
MULTIDIM_ARRAY_TAG = 40            # RFC 8746 row-major [dimensions, typed array]
DECTRIS_COMPRESSION_TAG = 56500    # DECTRIS [algorithm, elem_size, compressed bytes]

# RFC 8746 typed-array tags -> numpy dtype (128-bit floats are not supported).
TYPED_ARRAY_DTYPES: Dict[int, str] = {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
}
# The little-endian tag of each dtype, the ones encoders write (68, clamped u1, never).
TYPED_ARRAY_TAGS: Dict[str, int] = {
    np.dtype(name).str: tag for tag, name in TYPED_ARRAY_DTYPES.items()
    if tag != 68 and not name.startswith(">")}


def typed_array_dtype(tag: int) -> Optional[np.dtype]:
    """The dtype of an RFC 8746 typed-array tag, or None for other tags."""
    name = TYPED_ARRAY_DTYPES.get(int(tag))
    return np.dtype(name) if name else None


def typed_array_tag(dtype: np.dtype) -> int:
    """The RFC 8746 tag for little-endian arrays of ``dtype``."""
    dt = np.dtype(dtype).newbyteorder("<")
    try:
        return TYPED_ARRAY_TAGS[dt.str]
    except KeyError:
        raise ValueError(f"no RFC 8746 typed-array tag for dtype {dt}: "
                         "use an unsigned/signed integer or float type") from None


def head(major: int, value: int) -> bytes:
    """The initial bytes of a CBOR item: major type and argument (RFC 8949 3.1)."""
    if value < 24:
        return bytes([(major << 5) | value])
    for code, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if value < 1 << (8 * struct.calcsize(fmt)):
            return bytes([(major << 5) | code]) + struct.pack(fmt, value)
    raise ValueError(f"CBOR argument {value} too large")


def typed_array(array: np.ndarray) -> CBORTag:
    """An RFC 8746 typed array (any shape, flattened) of raw little-endian data."""
    array = le_contiguous(array)
    return CBORTag(typed_array_tag(array.dtype), array.tobytes())


def multidim_array(array: np.ndarray) -> CBORTag:
    """An RFC 8746 multi-dimensional array (row-major) of raw little-endian data."""
    array = le_contiguous(array)
    return CBORTag(MULTIDIM_ARRAY_TAG, [list(array.shape), typed_array(array)])
