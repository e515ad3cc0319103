"""SIMPLON "darray" JSON <-> numpy arrays.

The DCU sends arrays (pixel_mask, flatfield, countrate_correction_table) as
``{"__darray__": [1, 0, 0], "type": "<u4", "shape": [...],
"filters": ["base64"], "data": "..."}``. Real DCUs send the shape in numpy
order, ``[height, width]`` (a 1030 x 514 EIGER 500K on 1.6.6 answers
``[514, 1030]``), although DECTRIS' reference text says ``[width, height]``.
:func:`decode_darray` therefore takes the detector's ``(height, width)`` and
accepts either order when it matches; :func:`darray_order` tells which one an
answer used so that an array goes back in the DCU's own order.
"""
from __future__ import annotations

import base64
from typing import Any, Dict, Optional, Tuple

import numpy as np

from eiger_server.errors import DataError


class DarrayError(DataError, ValueError):
    """A malformed darray (a ValueError too, for code that treats it as bad input)."""


NUMPY_ORDER = "numpy"        # shape [height, width]: what real DCUs send
REVERSED_ORDER = "reversed"  # shape [width, height]: DECTRIS' reference text


def darray_order(obj: Any, pixels: Optional[Tuple[int, int]] = None) -> str:
    """The axis order of a darray's ``shape``: NUMPY_ORDER or REVERSED_ORDER.

    ``pixels`` is the detector's (height, width); a shape that equals it
    reversed (and not itself) is REVERSED_ORDER, anything else NUMPY_ORDER.
    """
    if isinstance(obj, dict) and "value" in obj and "__darray__" not in obj:
        obj = obj["value"]
    try:
        shape = [int(n) for n in obj["shape"]]
    except (KeyError, TypeError, ValueError):
        return NUMPY_ORDER
    if pixels is not None and len(shape) == 2 and shape != list(pixels) \
            and shape == list(pixels)[::-1]:
        return REVERSED_ORDER
    return NUMPY_ORDER


def decode_darray(obj: Any, pixels: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Turn a darray object (or a plain nested list) into a numpy array.

    The shape is read in numpy order, as real DCUs send it; with the
    detector's ``pixels`` = (height, width) a 2-D shape given as
    ``[width, height]`` is accepted too, and the array is (height, width).
    """
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
    if darray_order(obj, pixels) == REVERSED_ORDER:
        shape = shape[::-1]
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def encode_darray(array: np.ndarray, order: str = NUMPY_ORDER) -> Dict[str, Any]:
    """The darray object for ``array``; ``order`` is the shape's axis order
    (NUMPY_ORDER, as real DCUs send it, or REVERSED_ORDER)."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    data = array.astype(dtype, copy=False).tobytes()
    shape = array.shape[::-1] if order == REVERSED_ORDER else array.shape
    return {"__darray__": [1, 0, 0], "type": dtype.str, "shape": list(shape),
            "filters": ["base64"], "data": base64.b64encode(data).decode("ascii")}
