"""The bslz4 kernels (eiger_server/stream/kernels.py) against the bare decode.

Single thread, CPU time (``time.process_time``) per frame, each case run for
at least ``--seconds`` over 16 different synthetic frames cycled (bare and
kernel taking turns, so both see the same machine load), for 1M and 4M frames
of 16 and 32 bits:

* decode:     dectris.compression.decompress -> array    vs  bslz4_decode_into (reused array)
* accumulate: decode + np.add(acc, image, casting=unsafe) vs  bslz4_accumulate (+ masked pixels)
* stats:      decode + kernels.stats                      vs  bslz4_stats
* 40 rows:    decode of the whole frame                   vs  bslz4_decode_range of 40 rows

    .venv/bin/python bench/kernels.py [--seconds 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dectris import compression as dectris_compression  # noqa: E402

from eiger_server.fakedcu.sources.synthetic import SyntheticSource  # noqa: E402
from eiger_server.formats.compression import compress  # noqa: E402
from eiger_server.stream import bslz4_kernels, kernels, native  # noqa: E402

SIZES = (("1M", 1030, 1065), ("4M", 2068, 2162))
DTYPES = (np.dtype("u2"), np.dtype("u4"))
NFRAMES = 16
ROWS = 40
Step = Callable[[bytes], object]


def per_frame(bare: Step, kernel: Step, blobs: List[bytes], seconds: float) -> Tuple[float, float]:
    """CPU milliseconds per frame of ``bare`` and ``kernel``, cycling through
    ``blobs``; the two take turns (rounds of 16 frames) until each has used
    ``seconds``, so that both see the same load of the machine."""
    spent = [0.0, 0.0]
    frames = [0, 0]
    steps = (bare, kernel)
    for step in steps:
        for blob in blobs[:2]:
            step(blob)                       # warm up (and compile)
    while min(spent) < seconds:
        for n, step in enumerate(steps):
            start = time.process_time()
            for blob in blobs:
                step(blob)
            spent[n] += time.process_time() - start
            frames[n] += len(blobs)
    return 1e3 * spent[0] / frames[0], 1e3 * spent[1] / frames[1]


def cases(width: int, height: int, dt: np.dtype) -> List[Tuple[str, Step, Step]]:
    shape = (height, width)
    elem = dt.itemsize
    wide = np.dtype(np.uint64 if elem == 4 else np.uint32)

    def bare(blob: bytes) -> np.ndarray:
        raw = dectris_compression.decompress(blob, "bslz4", elem_size=elem)
        return np.frombuffer(raw, dt).reshape(shape)

    out = np.empty(shape, dt)
    acc = np.zeros(shape, wide)
    total = np.zeros(shape, wide)
    masked = np.zeros(shape, bool)
    first = (height // 2) * width
    stop = first + ROWS * width

    def bare_add(blob: bytes) -> None:
        np.add(acc, bare(blob), out=acc, casting="unsafe")

    return [
        ("decode", bare, lambda b: bslz4_kernels.bslz4_decode_into(b, out)),
        ("accumulate", bare_add, lambda b: bslz4_kernels.bslz4_accumulate(total, masked, b, dt)),
        ("stats", lambda b: kernels.stats(bare(b)), lambda b: bslz4_kernels.bslz4_stats(b, dt)),
        (f"{ROWS} rows", bare, lambda b: bslz4_kernels.bslz4_decode_range(b, dt, first, stop)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="minimum CPU time per measurement (default 1)")
    args = parser.parse_args()
    print(f"native library: {native.require()}")
    print(f"{'frame':<10} {'case':<11} {'bare ms':>9} {'kernel ms':>10} {'speed-up':>9}")
    source = SyntheticSource()
    for name, width, height in SIZES:
        for dt in DTYPES:
            blobs = [compress(source.frame(i, width, height, dt, ["threshold_1"])["threshold_1"],
                              "bslz4") for i in range(NFRAMES)]
            for case, bare, kernel in cases(width, height, dt):
                t_bare, t_kernel = per_frame(bare, kernel, blobs, args.seconds)
                print(f"{name + ' ' + str(dt.itemsize * 8) + '-bit':<10} {case:<11} "
                      f"{t_bare:9.3f} {t_kernel:10.3f} {t_bare / t_kernel:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
