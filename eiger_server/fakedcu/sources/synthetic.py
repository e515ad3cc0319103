"""Frame sources for the fake DCU: a synthetic diffraction pattern.

A synthetic frame has the model's module gaps and a few defective pixels at
the type's maximum, Poisson-distributed diffraction rings, and the frame
index written in binary into pixels [0:4, 0:8] (one bit per pixel, least
significant first) so that tests can tell frames apart
(:func:`frame_counter`). The pixel data of frame ``i`` is always the same.

Speed: the random part is precomputed once per geometry into a small bank of
frames; a frame is a copy of one bank entry plus the counter.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np

from eiger_server.fakedcu.interfaces import FrameSource
from eiger_server.fakedcu.device.definitions import model_for_size, module_rects

log = logging.getLogger(__name__)

CHANNELS = ("threshold_1", "threshold_2", "difference")
COUNTER_SHAPE = (4, 8)          # rows, columns of the frame-counter corner
_COUNTER_BITS = COUNTER_SHAPE[0] * COUNTER_SHAPE[1]
_BIT_WEIGHTS = (np.uint64(1) << np.arange(_COUNTER_BITS, dtype=np.uint64)).reshape(COUNTER_SHAPE)

# pixel mask bits as DECTRIS defines them
MASK_GAP = 1
MASK_DEAD = 2
MASK_NOISY = 16

_BANK_BYTES = 256 * 1024 * 1024   # memory budget of one noise bank
_POISSON_MAX_PIXELS = 5_000_000   # above this, Gaussian approximation of the noise


def gap_mask(width: int, height: int) -> np.ndarray:
    """Boolean (height, width) array, True where no module covers the pixel."""
    model = model_for_size(width, height)
    if model is None:
        return np.zeros((height, width), dtype=bool)
    gaps = np.ones((height, width), dtype=bool)
    for x0, y0, w, h in module_rects(model):
        gaps[y0:y0 + h, x0:x0 + w] = False
    if model == "500K":
        # the 500K module shows its chip boundaries as double-width lines
        for x in (256, 514, 772):
            gaps[:, x:x + 2] = True
        gaps[256:258, :] = True
    return gaps


def defect_pixels(width: int, height: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed (rows, cols, mask bits) of a few dead and noisy pixels."""
    rng = np.random.default_rng([width, height, 7])
    n = 12
    rows = rng.integers(8, max(9, height - 1), n)
    cols = rng.integers(16, max(17, width - 1), n)
    bits = np.where(np.arange(n) % 3 == 0, MASK_DEAD, MASK_NOISY).astype(np.uint32)
    return rows, cols, bits


def default_pixel_mask(width: int, height: int) -> np.ndarray:
    """The DCU's factory pixel mask: uint32 (height, width), gaps and defects flagged."""
    mask = np.zeros((height, width), dtype=np.uint32)
    mask[gap_mask(width, height)] |= MASK_GAP
    rows, cols, bits = defect_pixels(width, height)
    mask[rows, cols] |= bits
    return mask


def write_counter(image: np.ndarray, index: int) -> None:
    """Write ``index`` in binary into image[0:4, 0:8] (one bit per pixel)."""
    bits = (np.uint64(index) >> np.arange(_COUNTER_BITS, dtype=np.uint64)) & np.uint64(1)
    image[:COUNTER_SHAPE[0], :COUNTER_SHAPE[1]] = bits.reshape(COUNTER_SHAPE)


def frame_counter(image: np.ndarray) -> int:
    """The frame index a synthetic frame carries (see :func:`write_counter`)."""
    corner = np.asarray(image[:COUNTER_SHAPE[0], :COUNTER_SHAPE[1]]).astype(np.uint64) & np.uint64(1)
    return int((corner * _BIT_WEIGHTS).sum())


def _expected_counts(width: int, height: int) -> np.ndarray:
    """Mean counts per pixel: powder rings around the centre, a beam stop, background."""
    y = np.arange(height, dtype=np.float32)[:, None] - np.float32(height / 2.0)
    x = np.arange(width, dtype=np.float32)[None, :] - np.float32(width / 2.0)
    r = np.sqrt(x * x + y * y)
    scale = min(width, height) / 2.0
    lam = np.full((height, width), 0.08, dtype=np.float32)
    for frac, amp, sigma in ((0.18, 40.0, 2.5), (0.32, 25.0, 3.0), (0.47, 14.0, 3.5),
                             (0.63, 8.0, 4.0), (0.85, 4.0, 5.0), (1.1, 2.5, 6.0)):
        d = (r - np.float32(frac * scale)) / np.float32(sigma)
        lam += np.float32(amp) * np.exp(-0.5 * d * d)
    lam[r < max(6.0, 0.04 * scale)] = 0.0   # beam stop shadow
    return lam


def _to_dtype(counts: np.ndarray, dtype: np.dtype, masked: np.ndarray) -> np.ndarray:
    """Counts as ``dtype``, saturated one below the maximum; masked pixels at the maximum."""
    top = np.iinfo(dtype).max
    out = np.minimum(counts, top - 1).astype(dtype)
    out[masked] = top
    return out


class _Bank:
    """Precomputed frames of one geometry: channel -> list of arrays."""

    def __init__(self, seed: int, width: int, height: int, dtype: np.dtype,
                 channels: Tuple[str, ...]):
        masked = default_pixel_mask(width, height) != 0
        lam = _expected_counts(width, height)
        npix = width * height
        per_frame = npix * dtype.itemsize * len(CHANNELS)  # same bank size whatever the channels
        self.size = int(max(2, min(8, _BANK_BYTES // max(1, per_frame))))
        self.frames: Dict[str, List[np.ndarray]] = {c: [] for c in channels}
        big = npix > _POISSON_MAX_PIXELS
        if big:
            z = np.random.default_rng([seed, width, height]).standard_normal(
                (height, width), dtype=np.float32)
            sqrt_lam = np.sqrt(lam)
        for slot in range(self.size):
            rng = np.random.default_rng([seed, width, height, slot])
            if big:
                shifted = np.roll(z, (slot * 97, slot * 131), axis=(0, 1))
                t1 = np.rint(np.maximum(lam + sqrt_lam * shifted, 0.0)).astype(np.int64)
                t2 = np.rint(t1 * 0.35).astype(np.int64)
            else:
                t1 = rng.poisson(lam)
                t2 = rng.binomial(t1, 0.35)
            for c in channels:
                if c == "threshold_2":
                    counts = t2
                elif c == "difference":
                    counts = np.maximum(t1 - t2, 0)
                else:
                    counts = t1
                self.frames[c].append(_to_dtype(counts, dtype, masked))


class SyntheticSource:
    """A :class:`FrameSource` making synthetic detector images."""

    _cache: "OrderedDict[tuple, _Bank]" = OrderedDict()
    _cache_lock = threading.Lock()
    _CACHE_ENTRIES = 2

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _bank(self, width: int, height: int, dtype: np.dtype,
              channels: Tuple[str, ...]) -> _Bank:
        key = (self.seed, width, height, dtype.str, channels)
        with self._cache_lock:
            bank = self._cache.get(key)
            if bank is not None:
                self._cache.move_to_end(key)
                return bank
            log.debug("building noise bank %dx%d %s %s", width, height, dtype, channels)
            bank = _Bank(self.seed, width, height, dtype, channels)
            self._cache[key] = bank
            while len(self._cache) > self._CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return bank

    def prepare(self, width: int, height: int, dtype: np.dtype, channels: List[str]) -> None:
        """Build the noise bank now (called at arm) so frames come fast."""
        self._bank(width, height, np.dtype(dtype), _channel_key(channels))

    def frame(self, index: int, width: int, height: int, dtype: np.dtype,
              channels: List[str]) -> Dict[str, np.ndarray]:
        bank = self._bank(width, height, np.dtype(dtype), _channel_key(channels))
        slot = index % bank.size
        out = {}
        for c in channels:
            frames = bank.frames.get(c) or bank.frames[CHANNELS[0]]
            img = frames[slot].copy()
            write_counter(img, index)
            out[c] = img
        return out


def _channel_key(channels: List[str]) -> Tuple[str, ...]:
    # unknown channel names are served the threshold_1 pattern
    known = tuple(sorted({c if c in CHANNELS else CHANNELS[0] for c in channels}))
    return known or (CHANNELS[0],)


def make_source(spec: str) -> FrameSource:
    """A frame source from its command-line spelling.

    ``synthetic`` (optionally ``synthetic:<seed>``), ``hdf5:<master.h5>``
    (replay an HDF5 data set) or ``cbor:<dir>`` (replay Stream V2 captures).
    """
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        try:
            return SyntheticSource(int(arg) if arg else 0)
        except ValueError:
            raise ValueError(f"frame source {spec!r}: the seed after 'synthetic:' "
                             "must be an integer") from None
    if kind in ("hdf5", "cbor"):
        if not arg:
            raise ValueError(f"frame source {spec!r} needs a path: '{kind}:<path>'")
        from eiger_server.fakedcu.sources import replay  # written separately; imported only when asked for
        if kind == "hdf5":
            return replay.Hdf5ReplaySource(arg)
        return replay.CborReplaySource(arg)
    raise ValueError(f"unknown frame source {spec!r}; use 'synthetic', "
                     "'hdf5:<master.h5>' or 'cbor:<directory>'")
