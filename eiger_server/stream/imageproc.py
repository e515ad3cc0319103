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
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from eiger_server.errors import DataError
from eiger_server.formats.decode import Encoded, bslz4_spec
from eiger_server.stream import bslz4_kernels, kernels

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


def _kernel_ok(image: np.ndarray) -> bool:
    """True when the one-pass kernels apply (unsigned, not empty)."""
    return image.dtype.kind == "u" and image.size > 0 and image.dtype.byteorder in "=|<"


def masked_sum(image: np.ndarray) -> int | float:
    """Sum of the unmasked pixels."""
    if _kernel_ok(image):
        return kernels.stats(image)[0]
    masked_at = mask_value(image.dtype)
    if masked_at is None:
        return float(image.sum(dtype=np.float64))
    total = int(image.sum(dtype=np.int64))
    nmasked = int(np.count_nonzero(image == masked_at))
    return total - nmasked * masked_at


def masked_max(image: np.ndarray) -> int | float:
    """Largest unmasked pixel (0 when every pixel is masked)."""
    if image.size == 0:
        return 0
    if _kernel_ok(image):
        return kernels.stats(image)[1]
    masked_at = mask_value(image.dtype)
    if masked_at is None:
        return float(image.max())
    return int(np.max(image, where=image != masked_at, initial=0))


def masked_stats(image: np.ndarray) -> tuple:
    """(masked_sum, masked_max) in one pass over the image."""
    if _kernel_ok(image):
        total, top, _ = kernels.stats(image)
        return total, top
    return masked_sum(image), masked_max(image)


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
    if _kernel_ok(image) and image.ndim == 2:
        return int(kernels.roi_sums(image, [(rows, cols)])[0])
    return masked_sum(image[rows, cols])


def _fusable(encoded: Encoded) -> bool:
    """True when the fused kernels take ``encoded`` as it is."""
    if not bslz4_kernels.BSLZ4_AVAILABLE:
        return False
    spec = bslz4_spec(encoded)
    if spec is None:
        return False
    dtype, elem_size = spec
    return dtype.kind == "u" and dtype.itemsize in (1, 2, 4) and elem_size == dtype.itemsize


def accumulate_encoded(total: np.ndarray, masked: np.ndarray, encoded: Encoded,
                       what: str = "") -> int:
    """``total += image``, ``masked |= image == type max`` for an image as it
    arrived; the fused kernel for bitshuffle/LZ4 (a header-less blob falls
    back to the ordinary decode). Returns the image's masked pixels."""
    spec = bslz4_spec(encoded) if _fusable(encoded) else None
    if spec is not None:
        try:
            return bslz4_kernels.bslz4_accumulate(total, masked, encoded.data, spec[0], what=what)
        except bslz4_kernels.UnsupportedBlob:
            pass                          # the ordinary decode reads it or says why not
    return accumulate_array(total, masked, encoded.decode(what), what)


def accumulate_array(total: np.ndarray, masked: np.ndarray, image: np.ndarray,
                     what: str = "") -> int:
    """``total += image``, ``masked |= image == type max`` for a decoded image."""
    if image.shape != total.shape:
        raise DataError(f"accumulation: {what or 'an image'} is {image.shape}, the sum "
                        f"{total.shape}; the detector geometry changed")
    if _kernel_ok(image):
        return kernels.accumulate(total, masked, image)
    np.add(total, image, out=total, casting="unsafe")
    return 0


class _Slot:
    """One partial sum of an Accumulator, used by one thread at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sums: Dict[str, np.ndarray] = {}
        self.masks: Dict[str, np.ndarray] = {}


class Accumulator:
    """Sums the images of one count, channel by channel; thread-safe.

    Each decode thread adds into a partial sum of its own (a free slot, so
    threads never wait for each other's pass over a frame); :meth:`result`
    adds the partial sums together. Adding an image and recording its masked
    pixels is one pass (:func:`kernels.accumulate`).
    """

    def __init__(self, nimages: int) -> None:
        self.nimages = max(1, int(nimages))
        self.added = 0
        self._lock = threading.Lock()
        self._slots: List[_Slot] = []
        self._shapes: Dict[str, tuple] = {}
        self.first_frame: Optional[int] = None
        self.last_frame: Optional[int] = None

    def _claim(self) -> _Slot:
        """(under _lock) A free slot, locked; claimed before ``added`` counts
        the image, so :meth:`result` waits for every image counted."""
        for slot in self._slots:
            if slot.lock.acquire(blocking=False):
                return slot
        slot = _Slot()
        slot.lock.acquire()
        self._slots.append(slot)
        return slot

    def _reserve(self, shapes: Mapping[str, tuple], frame: int) -> Optional[Tuple[_Slot, bool]]:
        """Count one image and claim a slot for it (None: the sum is full);
        ``(slot, this was the last image needed)``."""
        with self._lock:
            if self.added >= self.nimages:
                return None
            for name, image_shape in shapes.items():
                shape = self._shapes.setdefault(name, image_shape)
                if shape != image_shape:
                    raise DataError(f"accumulation: image {frame} is {image_shape[1]}x"
                                    f"{image_shape[0]}, the first was {shape[1]}x"
                                    f"{shape[0]}; the detector geometry changed")
            self.added += 1
            return self._claim(), self.added >= self.nimages

    def _settle(self, slot: _Slot, frame: int, ok: bool) -> None:
        """The image reserved is in (``ok``), or could not be added: uncount it."""
        with self._lock:
            if ok:
                self.first_frame = frame if self.first_frame is None else \
                    min(self.first_frame, frame)
                self.last_frame = frame if self.last_frame is None else \
                    max(self.last_frame, frame)
            else:
                self.added -= 1
        slot.lock.release()

    @staticmethod
    def _slot_arrays(slot: _Slot, name: str, shape: tuple,
                     dtype: np.dtype) -> Tuple[np.ndarray, np.ndarray]:
        total = slot.sums.get(name)
        if total is None:
            total = slot.sums[name] = np.zeros(shape, accumulated_dtype(dtype))
            slot.masks[name] = np.zeros(shape, dtype=bool)
        return total, slot.masks[name]

    def _add(self, shapes: Mapping[str, tuple], frame: int,
             add_into: Callable[[_Slot], None]) -> bool:
        """Count one image, ``add_into`` a slot, settle; True when this was the
        last one needed (False, nothing added, when the sum is full)."""
        reserved = self._reserve(shapes, frame)
        if reserved is None:
            return False
        slot, finished = reserved
        ok = False
        try:
            add_into(slot)
            ok = True
        finally:
            self._settle(slot, frame, ok)
        return finished

    def add(self, channels: Mapping[str, np.ndarray], frame: int = 0) -> bool:
        """Add one image; True when this was the last one needed."""
        def add_into(slot: _Slot) -> None:
            for name, image in channels.items():
                total, masked = self._slot_arrays(slot, name, image.shape, image.dtype)
                accumulate_array(total, masked, image)
        return self._add({name: image.shape for name, image in channels.items()}, frame,
                         add_into)

    def add_encoded(self, channels: Mapping[str, Encoded], frame: int = 0,
                    what: str = "") -> bool:
        """Add one image as it arrived (``what`` names it in a DecodeError);
        True when this was the last one needed.

        A single bitshuffle/LZ4 channel is decoded block by block straight
        into the sum (bslz4_kernels.bslz4_accumulate: the decoded frame never
        goes through memory); other images are decoded first. An image that
        cannot be decoded raises DecodeError, is not counted and leaves the
        sum as it was."""
        names = {name: f"{what}, channel {name}" if what else "" for name in channels}
        # several channels are all decoded before any is added: one that cannot
        # be read must not leave the others' sums holding the image
        if len(channels) != 1 or not all(_fusable(encoded) for encoded in channels.values()):
            return self.add({name: encoded.decode(names[name])
                             for name, encoded in channels.items()}, frame)
        name, encoded = next(iter(channels.items()))
        shape = tuple(encoded.shape)

        def add_into(slot: _Slot) -> None:
            total, masked = self._slot_arrays(slot, name, shape, np.dtype(encoded.dtype))
            accumulate_encoded(total, masked, encoded, names[name])
        return self._add({name: shape}, frame, add_into)

    def add_partial(self, sums: Dict[str, np.ndarray], masks: Dict[str, np.ndarray],
                    frames: List[int]) -> bool:
        """Add the partial sum of ``frames`` made elsewhere (a worker process);
        True when the count needs no more images."""
        if not frames:
            return False
        with self._lock:
            self.added += len(frames)
            first, last = min(frames), max(frames)
            self.first_frame = first if self.first_frame is None else min(self.first_frame, first)
            self.last_frame = last if self.last_frame is None else max(self.last_frame, last)
            finished = self.added >= self.nimages
            slot = self._claim()
        try:
            for name, total in sums.items():
                mine = slot.sums.get(name)
                if mine is None:
                    slot.sums[name] = total.copy()
                    slot.masks[name] = masks[name].copy()
                else:
                    np.add(mine, total, out=mine)
                    np.logical_or(slot.masks[name], masks[name], out=slot.masks[name])
        finally:
            slot.lock.release()
        return finished

    def result(self) -> Dict[str, np.ndarray]:
        """The summed channels, masked pixels set to the result type's maximum."""
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            slot.lock.acquire()          # wait for a thread still adding
        try:
            out: Dict[str, np.ndarray] = {}
            masks: Dict[str, np.ndarray] = {}
            for slot in slots:
                for name, total in slot.sums.items():
                    if name not in out:
                        out[name], masks[name] = total.copy(), slot.masks[name].copy()
                    else:
                        np.add(out[name], total, out=out[name])
                        np.logical_or(masks[name], slot.masks[name], out=masks[name])
            for name, total in out.items():
                if mask_value(total.dtype) is not None:
                    kernels.finish_accumulation(total, masks[name])
            return out
        finally:
            for slot in slots:
                slot.lock.release()
