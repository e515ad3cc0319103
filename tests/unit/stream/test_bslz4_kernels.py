"""The kernels over bitshuffle/LZ4 frames as they arrive (stream/bslz4_kernels.py),
against dectris.compression + numpy."""
from __future__ import annotations

import struct

import bitshuffle
import numpy as np
import pytest
from dectris import compression as dectris_compression

from eiger_server.formats import compression
from eiger_server.formats.compression import DecodeError, compress
from eiger_server.stream import bslz4_kernels, imageproc, kernels, native

from helpers import kernel_frame as frame

DTYPES = (np.uint8, np.uint16, np.uint32)


# < 8 pixels, < 1 block, not multiples of 8, a block and a half, exactly blocks
SHAPES = ((1, 3), (1, 8), (3, 5), (37, 301), (64, 64), (65, 129), (257, 301))


def masked_frame(dtype: type, shape: tuple, seed: int) -> np.ndarray:
    """Random pixels, some at the type's maximum: scattered and whole rows."""
    image = frame(dtype, shape, seed) if shape[0] > 3 and shape[1] > 5 else \
        np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)
    rng = np.random.default_rng(seed + 100)
    top = np.iinfo(dtype).max
    image.ravel()[rng.integers(0, image.size, 1 + image.size // 50)] = top
    if shape[0] > 10:
        image[rng.integers(0, shape[0], 2)] = top      # whole masked rows
    return image


def dectris_decode(blob: bytes, dtype: type, shape: tuple) -> np.ndarray:
    raw = dectris_compression.decompress(blob, "bslz4", elem_size=np.dtype(dtype).itemsize)
    return np.frombuffer(raw, dtype).reshape(shape)


def framed(array: np.ndarray, block_elems: int) -> bytes:
    """bslz4 with a block size of our choice (the DCU uses 8192 bytes)."""
    body = bitshuffle.compress_lz4(array.reshape(-1), block_elems)
    return struct.pack(">QI", array.nbytes, block_elems * array.itemsize) + body.tobytes()


def test_the_native_functions_are_found() -> None:
    assert bslz4_kernels.BSLZ4_AVAILABLE
    assert "LZ4_decompress_safe" in native.require()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_into_equals_dectris(dtype: type, shape: tuple) -> None:
    image = masked_frame(dtype, shape, seed=3)
    blob = compress(image, "bslz4")
    expected = dectris_decode(blob, dtype, shape)
    assert np.array_equal(expected, image)
    out = np.full(shape, 7, dtype)
    assert bslz4_kernels.bslz4_decode_into(blob, out) is out
    assert np.array_equal(out, expected)
    # the same buffer again, from a bytearray and a memoryview
    bslz4_kernels.bslz4_decode_into(bytearray(compress(image[::-1].copy(), "bslz4")), out)
    assert np.array_equal(out, image[::-1])
    bslz4_kernels.bslz4_decode_into(memoryview(blob), out)
    assert np.array_equal(out, image)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_stats_of_the_compressed_frame(dtype: type, shape: tuple) -> None:
    image = masked_frame(dtype, shape, seed=4)
    blob = compress(image, "bslz4")
    expected = kernels.stats(dectris_decode(blob, dtype, shape))
    assert bslz4_kernels.bslz4_stats(blob, dtype) == expected
    assert bslz4_kernels.bslz4_stats(blob, dtype, image.size) == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_accumulate_of_compressed_frames_equals_decode_then_accumulate(
        dtype: type, shape: tuple) -> None:
    wide = imageproc.accumulated_dtype(dtype)
    total, masked = np.zeros(shape, wide), np.zeros(shape, bool)
    ref_total, ref_masked = np.zeros(shape, wide), np.zeros(shape, bool)
    for seed in range(4):
        image = masked_frame(dtype, shape, seed=seed)
        if seed == 2:
            image[:] = np.iinfo(dtype).max                # every pixel masked
        blob = compress(image, "bslz4")
        got = bslz4_kernels.bslz4_accumulate(total, masked, blob, dtype)
        assert got == kernels.accumulate(ref_total, ref_masked, dectris_decode(blob, dtype, shape))
        assert np.array_equal(total, ref_total)
        assert np.array_equal(masked, ref_masked)


def test_accumulate_wraps_like_numpy() -> None:
    total = np.full((4, 64), 2**32 - 3, np.uint32)
    masked = np.zeros(total.shape, bool)
    image = np.full(total.shape, 1000, np.uint16)
    bslz4_kernels.bslz4_accumulate(total, masked, compress(image, "bslz4"), np.uint16)
    assert np.all(total == np.uint32(2**32 - 3 + 1000 - 2**32))


@pytest.mark.parametrize("dtype", (np.uint16, np.uint32))
def test_synthetic_detector_frames(dtype: type) -> None:
    from eiger_server.fakedcu.sources.synthetic import SyntheticSource
    source = SyntheticSource()
    width, height = 1030, 514                        # 500K: masked chip-gap rows and columns
    wide = imageproc.accumulated_dtype(dtype)
    total, masked = np.zeros((height, width), wide), np.zeros((height, width), bool)
    ref_total, ref_masked = total.copy(), masked.copy()
    out = np.empty((height, width), dtype)
    for i in range(3):
        image = source.frame(i, width, height, np.dtype(dtype), ["threshold_1"])["threshold_1"]
        blob = compress(image, "bslz4")
        decoded = dectris_decode(blob, dtype, image.shape)
        assert np.array_equal(bslz4_kernels.bslz4_decode_into(blob, out), decoded)
        assert bslz4_kernels.bslz4_stats(blob, dtype) == kernels.stats(decoded)
        assert bslz4_kernels.bslz4_accumulate(total, masked, blob, dtype) == \
            kernels.accumulate(ref_total, ref_masked, decoded)
        rows = bslz4_kernels.bslz4_decode_range(blob, dtype, 200 * width, 240 * width)
        assert np.array_equal(rows.reshape(40, width), decoded[200:240])
    assert np.array_equal(total, ref_total) and np.array_equal(masked, ref_masked)
    assert masked.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_elems", (8, 64, 136, 1024, 100_000))
def test_other_block_sizes(dtype: type, block_elems: int) -> None:
    shape = (37, 301)
    image = masked_frame(dtype, shape, seed=5)
    blob = framed(image, block_elems)
    assert np.array_equal(dectris_decode(blob, dtype, shape), image)
    out = np.empty(shape, dtype)
    assert np.array_equal(bslz4_kernels.bslz4_decode_into(blob, out), image)
    assert bslz4_kernels.bslz4_stats(blob, dtype) == kernels.stats(image)
    wide = imageproc.accumulated_dtype(dtype)
    total, masked = np.zeros(shape, wide), np.zeros(shape, bool)
    assert bslz4_kernels.bslz4_accumulate(total, masked, blob, dtype) == int((image == image.max()).sum())
    assert np.array_equal(total, image) and np.array_equal(masked, image == np.iinfo(dtype).max)
    flat = image.ravel()
    for first, stop in ((0, 9), (block_elems - 3, block_elems + 20), (5000, 11137)):
        first, stop = min(first, flat.size), min(stop, flat.size)
        assert np.array_equal(bslz4_kernels.bslz4_decode_range(blob, dtype, first, stop),
                              flat[first:stop])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_range(dtype: type, shape: tuple) -> None:
    image = masked_frame(dtype, shape, seed=6)
    blob = compress(image, "bslz4")
    flat = image.ravel()
    n = flat.size
    per_block = compression.BSLZ4_BLOCK_BYTES // np.dtype(dtype).itemsize
    ranges = {(0, n), (0, 1), (0, min(n, 40)), (n // 2, min(n, n // 2 + 33)),   # start, middle
              (max(0, n - 5), n), (max(0, n - 13), n), (n - n % 8, n),           # the raw tail
              (max(0, n - n % 8 - 3), n), (n // 3, n // 3),                      # across it, empty
              (min(n, per_block - 2), min(n, per_block + 2)),                    # across blocks
              (min(n, per_block), min(n, 2 * per_block))}                        # one whole block
    for first, stop in sorted(ranges):
        part = bslz4_kernels.bslz4_decode_range(blob, dtype, first, stop, nelems=n)
        assert part.dtype == np.dtype(dtype) and np.array_equal(part, flat[first:stop]), (first, stop)
    with pytest.raises(ValueError):
        bslz4_kernels.bslz4_decode_range(blob, dtype, 0, n + 1)
    with pytest.raises(ValueError):
        bslz4_kernels.bslz4_decode_range(blob, dtype, 5, 4)


def test_decode_into_any_number_type_of_the_element_size() -> None:
    image = np.linspace(-5, 5, 999).astype(np.float32).reshape(27, 37)
    out = np.empty_like(image)
    assert np.array_equal(bslz4_kernels.bslz4_decode_into(compress(image, "bslz4"), out), image)
    image64 = np.arange(-500, 499, dtype=np.int64).reshape(27, 37)
    assert np.array_equal(bslz4_kernels.bslz4_decode_range(compress(image64, "bslz4"), np.int64, 3, 800),
                          image64.ravel()[3:800])


# ---------------------------------------------------- what the kernels refuse
def corrupt_blobs(image: np.ndarray) -> dict:
    """Broken variants of the bslz4 blob of ``image`` (at least 3 blocks)."""
    blob = compress(image, "bslz4")
    first_len = struct.unpack_from(">I", blob, 12)[0]
    second = 12 + 4 + first_len                        # offset of block 1's length
    second_len = struct.unpack_from(">I", blob, second)[0]

    def patched(offset: int, data: bytes) -> bytes:
        return blob[:offset] + data + blob[offset + len(data):]

    return {
        "empty": b"",
        "short header": blob[:7],
        "header only": blob[:12],
        "block size 0": patched(8, struct.pack(">I", 0)),
        "block size not 8 elements": patched(8, struct.pack(">I", 8190)),
        "ends in a block length": blob[:second + 2],
        "ends in a block": blob[:second + 4 + second_len // 2],
        "block length past the end": patched(second, struct.pack(">I", 0xFFFFFF00)),
        "garbled LZ4": patched(second + 4, b"\xff" * 64),
        "LZ4 block too short": patched(second, struct.pack(">I", second_len - 1)),
        "raw tail missing": blob[:-3],
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_corrupt_or_truncated_blobs_raise_decode_error(dtype: type) -> None:
    shape = (123, 301)                               # 3+ blocks, a raw tail of 7
    image = masked_frame(dtype, shape, seed=7)
    wide = imageproc.accumulated_dtype(dtype)
    total = np.arange(image.size, dtype=wide).reshape(shape)
    masked = np.zeros(shape, bool)
    masked[::7] = True
    before = total.copy(), masked.copy()
    out = np.empty(shape, dtype)
    calls = (lambda b: bslz4_kernels.bslz4_decode_into(b, out, what="frame 12"),
             lambda b: bslz4_kernels.bslz4_stats(b, dtype, image.size, what="frame 12"),
             lambda b: bslz4_kernels.bslz4_accumulate(total, masked, b, dtype, what="frame 12"),
             lambda b: bslz4_kernels.bslz4_decode_range(b, dtype, 0, image.size, nelems=image.size,
                                                  what="frame 12"))
    for name, blob in corrupt_blobs(image).items():
        for call in calls:
            with pytest.raises(DecodeError) as info:
                call(blob)
            message = str(info.value)
            assert message.startswith("frame 12: cannot "), (name, message)
            assert "corrupt" in message or "truncated" in message, (name, message)
        # a failed accumulation leaves the total and the mask as they were
        assert np.array_equal(total, before[0]), name
        assert np.array_equal(masked, before[1]), name


def test_a_failed_accumulation_takes_back_the_blocks_already_added() -> None:
    shape = (123, 301)
    image = np.full(shape, np.iinfo(np.uint16).max, np.uint16)     # every pixel masked
    image[:, ::2] = 3
    blobs = corrupt_blobs(image)
    total = np.zeros(shape, np.uint32)
    masked = np.zeros(shape, bool)
    with pytest.raises(DecodeError, match="block 1 "):
        bslz4_kernels.bslz4_accumulate(total, masked, blobs["garbled LZ4"], np.uint16)
    assert not total.any() and not masked.any()


def test_random_damage_never_crashes() -> None:
    image = masked_frame(np.uint16, (57, 301), seed=8)
    blob = bytearray(compress(image, "bslz4"))
    rng = np.random.default_rng(9)
    out = np.empty(image.shape, np.uint16)
    total = np.zeros(image.shape, np.uint32)
    masked = np.zeros(image.shape, bool)
    calls = (lambda b: bslz4_kernels.bslz4_decode_into(b, out),
             lambda b: bslz4_kernels.bslz4_stats(b, np.uint16),
             lambda b: bslz4_kernels.bslz4_accumulate(total, masked, b, np.uint16),
             lambda b: bslz4_kernels.bslz4_decode_range(b, np.uint16, 1000, 9000))
    outcomes = set()
    for trial in range(300):
        damaged = bytearray(blob)
        for at in rng.integers(0, len(damaged), 1 + trial % 4):
            damaged[at] = rng.integers(0, 256)
        cut = bytes(damaged[:len(damaged) - int(rng.integers(0, 3)) * int(rng.integers(0, 40))])
        for call in calls:
            try:
                call(cut)
                outcomes.add("decoded")
            except DecodeError:
                outcomes.add("error")
    assert outcomes == {"decoded", "error"}


def test_what_the_kernels_do_not_take() -> None:
    image = masked_frame(np.uint16, (37, 301), seed=10)
    blob = compress(image, "bslz4")
    out = np.empty(image.shape, np.uint16)
    # header-less blocks (some simulators): the normal decode still takes them
    headerless = blob[12:]
    with pytest.raises(bslz4_kernels.UnsupportedBlob, match="no header"):
        bslz4_kernels.bslz4_decode_into(headerless, out)
    raw = compression.decompress(headerless, "bslz4", image.nbytes, elem_size=2)
    assert np.array_equal(np.frombuffer(raw, np.uint16).reshape(image.shape), image)
    # the header's size is not the image's: a DecodeError the caller may fall back on
    with pytest.raises(bslz4_kernels.UnsupportedBlob):
        bslz4_kernels.bslz4_stats(blob, np.uint16, image.size + 8)
    with pytest.raises(DecodeError):
        bslz4_kernels.bslz4_decode_into(blob, np.empty((image.size - 1,), np.uint16))
    with pytest.raises(bslz4_kernels.UnsupportedBlob, match="elem"):
        bslz4_kernels.bslz4_stats(blob, np.uint16, elem_size=4)
    # caller errors
    with pytest.raises(TypeError):
        bslz4_kernels.bslz4_stats(blob, np.int16)
    with pytest.raises(TypeError):
        bslz4_kernels.bslz4_accumulate(np.zeros(image.shape, np.uint8), np.zeros(image.shape, bool),
                                 blob, np.uint16)
    with pytest.raises(ValueError):
        bslz4_kernels.bslz4_decode_into(blob, np.empty((301, 37), np.uint16).T)
    with pytest.raises(ValueError):
        bslz4_kernels.bslz4_accumulate(np.zeros((37, 300), np.uint32), np.zeros(image.shape, bool),
                                 blob, np.uint16)
    with pytest.raises(TypeError):
        bslz4_kernels.bslz4_decode_into(blob, np.empty(image.shape, ">u2"))
