"""SIMPLON "darray" JSON <-> numpy arrays.

The DCU sends arrays (pixel_mask, flatfield, countrate_correction_table) as
``{"__darray__": [1, 0, 0], "type": "<u4", "shape": [width, height],
"filters": ["base64"], "data": "..."}``. The shape lists the fastest axis
first, so the numpy array is ``(height, width)`` in C order.
"""
from __future__ import annotations

import base64
from typing import Any, Dict

import numpy as np

from eiger_server.errors import DataError


class DarrayError(DataError, ValueError):
    """A malformed darray (a ValueError too, for code that treats it as bad input)."""


def decode_darray(obj: Any) -> np.ndarray:
    """Turn a darray object (or a plain nested list) into a numpy array."""
    if isinstance(obj, dict) and "value" in obj and "__darray__" not in obj:
        obj = obj["value"]
    if isinstance(obj, list):
        return np.asarray(obj)
    if not isinstance(obj, dict) or "__darray__" not in obj:
        raise DarrayError(f"expected a darray object, got {type(obj).__name__}")
    filters = obj.get("filters", [])
    if list(filters) != ["base64"]:
        raise DarrayError(f"darray filters {filters} are not supported (only ['base64'])")
    try:
        dtype = np.dtype(str(obj["type"]))
        shape = [int(n) for n in obj["shape"]]
        raw = base64.b64decode(obj["data"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise DarrayError(f"malformed darray (needs type, shape and base64 data): {exc}"
                          ) from None
    if any(n < 0 for n in shape):
        raise DarrayError(f"darray shape {shape} has a negative size")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DarrayError(f"darray holds {len(raw)} bytes, shape {shape} of {dtype} "
                        f"needs {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape[::-1]).copy()


def encode_darray(array: np.ndarray) -> Dict[str, Any]:
    """The darray object for ``array`` (a 2-D array is sent as [width, height])."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    data = array.astype(dtype, copy=False).tobytes()
    return {"__darray__": [1, 0, 0], "type": dtype.str, "shape": list(array.shape[::-1]),
            "filters": ["base64"], "data": base64.b64encode(data).decode("ascii")}
