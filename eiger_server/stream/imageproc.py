"""What spec sees of an image: orientation, filters, masked-aware statistics,
and the sum of several images in accumulation mode.

Conventions (documented for users in the parameter table):

* Orientation: the rotation (0, 90, 180 or 270 degrees clockwise) is applied
  first, then the vertical flip (rows upside down), then the horizontal flip
  (columns mirrored).
* Masked pixels hold the type's maximum (65535 for 16 bit, ...). They stay at
  that value in delivered and saved images, and are left out of sum, maxval
  and ROI sums.
* Filters: an unmasked pixel below ``low_filter`` or above ``high_filter``
  reads as 0. ``high_filter`` 0 means no upper filter. Masked pixels are not
  filtered (they stay masked).
* Accumulation sums 8/16-bit images into uint32 and 32-bit images into
  uint64; a pixel masked in any of the images is masked in the result (the
  result type's maximum).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from eiger_server.errors import DataError

ROTATIONS = (0, 90, 180, 270)


@dataclass
class ImageResult:
    """One finished image (or accumulated result).

    ``data`` is the image as delivered to spec (oriented and filtered),
    ``raw`` the first channel as received (or accumulated), ``channels`` every
    channel as received, by name.
    """

    data: np.ndarray
    raw: np.ndarray
    channels: Dict[str, np.ndarray]
    series: int
    frame: int
    nframes: int = 1
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype


def mask_value(dtype: Any) -> Optional[int]:
    """The value that marks a masked pixel in ``dtype`` (None for floats)."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        return int(np.iinfo(dt).max)
    return None


def accumulated_dtype(dtype: Any) -> np.dtype:
    """uint32 for 8/16-bit images, uint64 for 32-bit (and wider)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return np.dtype(np.float64)
    return np.dtype(np.uint32) if dt.itemsize <= 2 else np.dtype(np.uint64)


def check_rotation(rotation: Any) -> int:
    try:
        value = int(rotation or 0) % 360
    except (TypeError, ValueError):
        raise DataError(f"rotation {rotation!r} is not a number of degrees") from None
    if value not in ROTATIONS:
        raise DataError(f"rotation {rotation} is not one of 0, 90, 180, 270")
    return value


def orient(image: np.ndarray, rotation: int = 0, flipv: bool = False,
           fliph: bool = False) -> np.ndarray:
    """Rotate clockwise by ``rotation`` degrees, then flip (may return a view)."""
    rotation = check_rotation(rotation)
    out = np.rot90(image, k=-(rotation // 90)) if rotation else image
    if flipv:
        out = out[::-1, :]
    if fliph:
        out = out[:, ::-1]
    return out


def apply_filters(image: np.ndarray, low: float = 0, high: float = 0) -> np.ndarray:
    """Unmasked pixels below ``low`` or above ``high`` (if > 0) set to 0.

    Returns ``image`` itself when no filter applies, else a new array.
    """
    low = low or 0
    high = high or 0
    if low <= 0 and high <= 0:
        return image
    masked_at = mask_value(image.dtype)
    reject = np.zeros(image.shape, dtype=bool)
    if low > 0:
        reject |= image < low
    if high > 0:
        reject |= image > high
    if masked_at is not None:
        reject &= image != masked_at
    out = np.array(image, copy=True)
    out[reject] = 0
    return out


def deliver(image: np.ndarray, rotation: int = 0, flipv: bool = False, fliph: bool = False,
            low: float = 0, high: float = 0) -> np.ndarray:
    """The image spec reads: oriented, filtered, C-contiguous."""
    out = apply_filters(orient(image, rotation, flipv, fliph), low, high)
    return np.ascontiguousarray(out)


def masked_sum(image: np.ndarray) -> int | float:
    """Sum of the unmasked pixels."""
    masked_at = mask_value(image.dtype)
    if masked_at is None:
        return float(image.sum(dtype=np.float64))
    total = int(image.sum(dtype=np.uint64 if image.dtype.kind == "u" else np.int64))
    nmasked = int(np.count_nonzero(image == masked_at))
    return total - nmasked * masked_at


def masked_max(image: np.ndarray) -> int | float:
    """Largest unmasked pixel (0 when every pixel is masked)."""
    masked_at = mask_value(image.dtype)
    if image.size == 0:
        return 0
    if masked_at is None:
        return float(image.max())
    top = int(image.max())
    if top != masked_at:
        return top
    return int(np.max(image, where=image != masked_at, initial=0))


def _wide_sum(image: np.ndarray) -> int:
    """Exact sum of an unsigned image; 8/16-bit rows are summed in uint32 first
    (a row cannot overflow it), which is about twice as fast as uint64."""
    if image.ndim == 2 and image.dtype.itemsize <= 2 and image.shape[1] < 65536:
        return int(image.sum(axis=1, dtype=np.uint32).sum(dtype=np.uint64))
    return int(image.sum(dtype=np.uint64))


def masked_stats(image: np.ndarray) -> tuple:
    """(masked_sum, masked_max) in one go, sharing the masked-pixel count.

    For unsigned images the largest unmasked value is found by adding 1 with
    wrap-around (the mask value becomes 0), which is much faster than a
    ``where=`` reduction.
    """
    masked_at = mask_value(image.dtype)
    if masked_at is None or image.dtype.kind != "u" or image.size == 0:
        return masked_sum(image), masked_max(image)
    top = int(image.max())
    nmasked = 0
    if top == masked_at:
        nmasked = int(np.count_nonzero(image == masked_at))
        top = 0 if nmasked == image.size else \
            int(np.add(image, 1, dtype=image.dtype).max()) - 1
    return _wide_sum(image) - nmasked * masked_at, top


def roi_bounds(shape: tuple, r0: int, r1: int, c0: int, c1: int) -> tuple:
    """Slices for an inclusive ROI, clipped to the image shape like the
    protocol's reference (numpy slicing): an end past the edge stops at it.
    Inverted, negative or wholly outside bounds are refused."""
    rows, cols = shape[:2]
    r0, r1, c0, c1 = int(r0), int(r1), int(c0), int(c1)
    if r0 > r1 or c0 > c1:
        raise DataError(f"ROI rows {r0}..{r1}, columns {c0}..{c1}: the first row/column "
                        "must not be after the last")
    if r0 < 0 or c0 < 0 or r0 >= rows or c0 >= cols:
        raise DataError(f"ROI rows {r0}..{r1}, columns {c0}..{c1} is outside the image (rows "
                        f"0..{rows - 1}, columns 0..{cols - 1}); ends past the edge are "
                        "clipped, but the first row and column must be inside")
    return slice(r0, min(r1, rows - 1) + 1), slice(c0, min(c1, cols - 1) + 1)


def roi_sum(image: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> int | float:
    """Masked-aware sum over rows r0..r1 and columns c0..c1 (inclusive)."""
    rows, cols = roi_bounds(image.shape, r0, r1, c0, c1)
    return masked_sum(image[rows, cols])


class Accumulator:
    """Sums the images of one count, channel by channel; thread-safe."""

    def __init__(self, nimages: int) -> None:
        self.nimages = max(1, int(nimages))
        self.added = 0
        self._lock = threading.Lock()
        self._sums: Dict[str, np.ndarray] = {}
        self._masks: Dict[str, np.ndarray] = {}
        self._dtypes: Dict[str, np.dtype] = {}
        self.first_frame: Optional[int] = None
        self.last_frame: Optional[int] = None

    def add(self, channels: Dict[str, np.ndarray], frame: int = 0) -> bool:
        """Add one image; True when this was the last one needed."""
        with self._lock:
            if self.added >= self.nimages:
                return False
            for name, image in channels.items():
                total = self._sums.get(name)
                if total is None:
                    self._dtypes[name] = image.dtype
                    total = self._sums[name] = np.zeros(image.shape,
                                                        accumulated_dtype(image.dtype))
                    self._masks[name] = np.zeros(image.shape, dtype=bool)
                if total.shape != image.shape:
                    raise DataError(f"accumulation: image {frame} is {image.shape[1]}x"
                                    f"{image.shape[0]}, the first was {total.shape[1]}x"
                                    f"{total.shape[0]}; the detector geometry changed")
                np.add(total, image, out=total, casting="unsafe")
                masked_at = mask_value(image.dtype)
                if masked_at is not None:
                    self._masks[name] |= image == masked_at
            self.added += 1
            self.first_frame = frame if self.first_frame is None else min(self.first_frame, frame)
            self.last_frame = frame if self.last_frame is None else max(self.last_frame, frame)
            return self.added >= self.nimages

    def result(self) -> Dict[str, np.ndarray]:
        """The summed channels, masked pixels set to the result type's maximum."""
        with self._lock:
            out = {}
            for name, total in self._sums.items():
                masked_at = mask_value(total.dtype)
                if masked_at is not None:
                    total[self._masks[name]] = masked_at
                out[name] = total
            return out
