"""The one-pass kernels against plain numpy, on random frames with masked pixels."""
from __future__ import annotations

import numpy as np
import pytest

from eiger_server.stream import imageproc, kernels

from helpers import kernel_frame as frame

DTYPES = (np.uint8, np.uint16, np.uint32)


def reference_stats(image: np.ndarray) -> tuple:
    valid = image[image != np.iinfo(image.dtype).max]
    return (int(valid.sum(dtype=np.uint64)), int(valid.max()) if valid.size else 0,
            int(image.size - valid.size))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stats_match_numpy(dtype: type) -> None:
    image = frame(dtype)
    assert kernels.stats(image) == reference_stats(image)
    assert imageproc.masked_stats(image) == reference_stats(image)[:2]
    # a non-contiguous view (an oriented image) gives the same numbers
    assert kernels.stats(image[::-1, ::2]) == reference_stats(image[::-1, ::2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_masked_frame_has_sum_and_max_0(dtype: type) -> None:
    image = np.full((4, 6), np.iinfo(dtype).max, dtype=dtype)
    assert kernels.stats(image) == (0, 0, 24)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_sums_match_numpy(dtype: type) -> None:
    image = frame(dtype, seed=1)
    rois = [(slice(0, 10), slice(0, 301)), (slice(100, 257), slice(17, 18)),
            (slice(40, 41), slice(40, 41))]
    out = kernels.roi_sums(image, rois)
    top = np.iinfo(dtype).max
    for value, (rows, cols) in zip(out, rois):
        part = image[rows, cols]
        assert int(value) == int(part[part != top].sum(dtype=np.uint64))
    again = kernels.roi_sums(image[::-1], rois, out=out)
    assert again is out                              # the buffer is reused


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulation_matches_numpy_and_records_masked_pixels(dtype: type) -> None:
    frames = [frame(dtype, seed=seed) for seed in range(5)]
    wide = imageproc.accumulated_dtype(dtype)
    total = np.zeros(frames[0].shape, wide)
    masked = np.zeros(frames[0].shape, bool)
    for image in frames:
        nmasked = kernels.accumulate(total, masked, image)
        assert nmasked == int(np.count_nonzero(image == np.iinfo(dtype).max))
    expected = np.sum(np.stack(frames).astype(wide), axis=0, dtype=wide)
    any_masked = np.any(np.stack(frames) == np.iinfo(dtype).max, axis=0)
    assert np.array_equal(total, expected)
    assert np.array_equal(masked, any_masked)
    kernels.finish_accumulation(total, masked)
    expected[any_masked] = np.iinfo(wide).max
    assert np.array_equal(total, expected)


def test_accumulator_from_several_threads_equals_the_numpy_sum() -> None:
    import threading
    frames = [frame(np.uint16, seed=seed) for seed in range(12)]
    acc = imageproc.Accumulator(len(frames))
    finished = []

    def add(part: list) -> None:
        for n, image in part:
            finished.append(acc.add({"t": image}, n))
    threads = [threading.Thread(target=add, args=(list(enumerate(frames))[k::3],))
               for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert finished.count(True) == 1
    stack = np.stack(frames)
    expected = stack.astype(np.uint32).sum(axis=0, dtype=np.uint32)
    expected[np.any(stack == 65535, axis=0)] = np.iinfo(np.uint32).max
    assert np.array_equal(acc.result()["t"], expected)
    assert (acc.first_frame, acc.last_frame) == (0, 11)


def test_signed_and_float_images_are_refused_by_kernels() -> None:
    with pytest.raises(TypeError):
        kernels.stats(np.zeros((2, 2), np.int16))


# ------------------------------------------------------------- bslz4 kernels
# The kernels that take the frame still compressed, against
# dectris.compression.decompress + the kernels/numpy above.
