"""One-pass numeric kernels over decoded frames (numba, GIL-free).

Each kernel reads a decoded frame once: sum, maximum and masked-pixel count
together; ROI sums of several ROIs; accumulation that adds a frame into a
reused total and records its masked pixels in the same pass. Masked pixels
hold the type's maximum (``mask_at``) and are left out of sums and maxima.
Frames still compressed (bitshuffle/LZ4) have kernels of their own that never
write the decoded frame to memory: :mod:`eiger_server.stream.bslz4_kernels`.

The kernels release the GIL (``nogil``), so the decode threads run them in
parallel, and are compiled once per pixel type and cached on disk
(``cache``), so a restart does not compile again (:func:`warm_up` compiles
them ahead: ``make venv`` runs it once, the server at start in the background).
"""
from __future__ import annotations

import logging
import threading
from typing import Optional, Sequence, Tuple

import numba
import numpy as np

__all__ = ["accumulate", "finish_accumulation", "roi_sums", "stats", "stats_run", "warm_up",
           "warm_up_in_background"]

log = logging.getLogger(__name__)
_warm_lock = threading.Lock()
_warm_thread: Optional[threading.Thread] = None

_jit = numba.njit(nogil=True, cache=True)


@_jit
def stats_run(values, n, mask_at, total, top, nmasked):  # type: ignore[no-untyped-def]
    """(sum, maximum, masked) of ``values[:n]`` added to the running ones;
    for the kernels here and bslz4_kernels' per-block statistics."""
    one = np.uint64(1)
    # branch-free so that the loop vectorises
    for i in range(n):
        value = np.uint64(values[i])
        keep = np.uint64(value != mask_at)
        value = value * keep
        nmasked += one - keep
        total += value
        top = max(top, value)
    return total, top, nmasked


@_jit
def _stats(image, mask_at):  # type: ignore[no-untyped-def]
    flat = image.ravel()
    return stats_run(flat, flat.size, mask_at, np.uint64(0), np.uint64(0), np.uint64(0))


@_jit
def _roi_sums(image, bounds, mask_at, out):  # type: ignore[no-untyped-def]
    for k in range(bounds.shape[0]):
        total = np.uint64(0)
        for r in range(bounds[k, 0], bounds[k, 1]):
            for c in range(bounds[k, 2], bounds[k, 3]):
                value = np.uint64(image[r, c])
                if value != mask_at:
                    total += value
        out[k] = total


@_jit
def _accumulate(total, masked, image, mask_at):  # type: ignore[no-untyped-def]
    t = total.ravel()
    m = masked.ravel()
    flat = image.ravel()
    nmasked = np.int64(0)
    # branch-free (the mask is written every pixel) so that the loop vectorises
    for i in range(flat.size):
        value = flat[i]
        t[i] += value
        hit = np.uint8(value == mask_at)
        m[i] = m[i] | hit
        nmasked += hit
    return nmasked


@_jit
def _finish(total, masked, fill):  # type: ignore[no-untyped-def]
    t = total.ravel()
    m = masked.ravel()
    for i in range(t.size):
        if m[i]:
            t[i] = fill


def _mask_at(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).max)


def _contiguous(image: np.ndarray) -> np.ndarray:
    if image.dtype.kind != "u":
        raise TypeError(f"kernels take unsigned images, not {image.dtype}")
    return image if image.flags.c_contiguous else np.ascontiguousarray(image)


def stats(image: np.ndarray) -> Tuple[int, int, int]:
    """(sum, maximum, number of masked pixels) of an unsigned image, masked
    pixels left out (maximum 0 when every pixel is masked)."""
    total, top, nmasked = _stats(_contiguous(image), np.uint64(_mask_at(image.dtype)))
    return int(total), int(top), int(nmasked)


def roi_sums(image: np.ndarray, bounds: Sequence[Tuple[slice, slice]],
             out: "np.ndarray | None" = None) -> np.ndarray:
    """Masked-aware sums of the ROIs ``bounds`` ((row slice, column slice) each,
    already clipped, step 1) in one call; ``out`` (uint64) is reused if given."""
    table = np.array([(r.start, r.stop, c.start, c.stop) for r, c in bounds],
                     dtype=np.int64).reshape(-1, 4)
    if out is None or out.shape[0] != len(table):
        out = np.zeros(len(table), dtype=np.uint64)
    if image.dtype.kind != "u":
        raise TypeError(f"kernels take unsigned images, not {image.dtype}")
    _roi_sums(image, table, np.uint64(_mask_at(image.dtype)), out)
    return out


def accumulate(total: np.ndarray, masked: np.ndarray, image: np.ndarray) -> int:
    """``total += image`` and ``masked |= image == type max``, one pass;
    returns how many pixels of ``image`` are masked."""
    if total.shape != image.shape or masked.shape != image.shape:
        raise ValueError(f"accumulate: image {image.shape} into total {total.shape}")
    if not (total.flags.c_contiguous and masked.flags.c_contiguous):
        raise ValueError("accumulate: the total and the mask must be C-contiguous")
    return int(_accumulate(total, masked.view(np.uint8), _contiguous(image),
                           image.dtype.type(_mask_at(image.dtype))))


def finish_accumulation(total: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Masked pixels of ``total`` set to its type's maximum (in place)."""
    _finish(total, masked, total.dtype.type(_mask_at(total.dtype)))
    return total


def warm_up() -> None:
    """Compile (or load from the cache) every kernel for every pixel type
    the stream path uses, so that no count waits for the compiler."""
    from eiger_server.stream import bslz4_kernels
    for frame_type, total_type in ((np.uint8, np.uint32), (np.uint16, np.uint32),
                                   (np.uint32, np.uint64)):
        image = np.zeros((2, 8), frame_type)
        total = np.zeros(image.shape, total_type)
        masked = np.zeros(image.shape, bool)
        for array in (image, total):
            stats(array)
            roi_sums(array, [(slice(0, 1), slice(0, 1))])
        accumulate(total, masked, image)
        finish_accumulation(total, masked)
        bslz4_kernels.warm_up(image)


def _warm_up_logged() -> None:
    try:
        warm_up()
    except Exception:                 # the kernels then compile at first use
        log.exception("compiling the stream kernels ahead failed")


def warm_up_in_background() -> None:
    """:func:`warm_up` on a thread of its own, once per process."""
    global _warm_thread
    with _warm_lock:
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=_warm_up_logged, name="kernel-warm-up",
                                            daemon=True)
            _warm_thread.start()
