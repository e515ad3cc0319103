#!/usr/bin/env python3
"""Saving benchmark: CPU per frame of eiger_server's save functions against
the bare library loops they are measured by.

``python bench/storage.py [--seconds 2] [--models 1M 4M] [--dir /dev/shm]``
prints one table: CPU milliseconds per frame, bare and ours, and their
ratio (efficiency = bare / ours; above 1 means ours is cheaper).

* TIFF. bare: ``tifffile.imwrite(dir/bare.tif, image)`` of a decoded frame;
  ours: ``storage.tiff.save_tiff(dir/ours.tif, image, metadata)`` with the
  metadata the stream handler gives an image: the JSON description, the
  atomic temporary file and its rename, the fsyncs, a missing directory
  made. Both replace their file of the frame before, as the rotating
  names of ``bench/run.py`` do.
* HDF5RAW. bare: per frame ``dataset.resize(n + 1, axis=0)`` and
  ``dataset.id.write_direct_chunk((n, 0, 0), blob)`` on a dataset with
  chunks (1, h, w) and the Bitshuffle filter; ours:
  ``Hdf5RawWriter.write(n, {"threshold_1": Encoded(blob, "bslz4", ...)})``
  of a series started with its ``nimages`` (as the series header gives it;
  the row "nimages?" without). The frames of one series (``--series-frames``,
  one data file of 1000 images) are timed, the data file's opening in ours
  included; ``start`` and ``close`` (trimming, attributes, the master file)
  are once per series and shown below the table. Files are deleted between
  series, outside the timing.

CPU is ``time.process_time`` (user + system of this process). Bare and ours
take turns, a frame (TIFF) or a series (HDF5RAW) at a time, for at least
``--seconds`` of wall time each; each cell is the median per frame over the
turns, so that what else the machine does weighs little. Frames are 16-bit
(``--bits``) Poisson counts (mean 2) with the module gaps at the maximum,
as a detector sees them; most of the cost of a TIFF on a tmpfs is the
kernel's, allocating and freeing the pages of the file.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import h5py
import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eiger_server.formats.compression import compress, hdf5_filter  # noqa: E402
from eiger_server.formats.decode import Encoded  # noqa: E402
from eiger_server.storage.hdf5raw import Hdf5RawWriter  # noqa: E402
from eiger_server.storage.tiff import save_tiff  # noqa: E402

MODELS: Dict[str, Tuple[int, int]] = {"500K": (514, 1030), "1M": (1065, 1030),
                                      "4M": (2162, 2068), "9M": (3269, 3108)}
Run = Callable[[int], Tuple[int, float]]      # step -> (frames, CPU seconds)


def frames(shape: Tuple[int, int], bits: int, count: int = 4) -> List[np.ndarray]:
    """``count`` frames of Poisson counts (mean 2) with the module gaps at the maximum."""
    rng = np.random.default_rng(1)
    dtype = np.dtype(f"uint{bits}")
    out = []
    for _ in range(count):
        image = rng.poisson(2.0, shape).astype(dtype)
        image[:, 1028:1030] = np.iinfo(dtype).max
        out.append(image)
    return out


def metadata(series: int, frame: int) -> Dict[str, Any]:
    """What the stream handler gives save_tiff for one image."""
    return {"series": series, "frame": frame, "count_time": 0.0099999, "frame_time": 0.01,
            "photon_energy": 8041.0, "energy": 8041.0, "threshold_energy": 4020.5,
            "bit_depth_image": 16, "nimages": 1000, "ntrigger": 1, "trigger_mode": "ints",
            "compression": "bslz4", "thresholds": {"threshold_1": 4020.5},
            "start_time": [1700000000, 1234], "stop_time": [1700000000, 5678],
            "real_time": [9999000, 1], "channel": "threshold_1"}


def cpu_per_frame(bare: Run, ours: Run, seconds: float) -> Tuple[float, float]:
    """Median CPU seconds per frame of ``bare`` and of ``ours``, taking turns."""
    bare(0)                                 # warm up (imports, caches, first file)
    ours(0)
    times: Tuple[List[float], List[float]] = ([], [])
    wall = [0.0, 0.0]
    step = 1
    while min(wall) < seconds or len(times[0]) < 5:
        for k, run in enumerate((bare, ours)):
            start = time.perf_counter()
            n, used = run(step)
            wall[k] += time.perf_counter() - start
            times[k].append(used / n)
        step += 1
    return statistics.median(times[0]), statistics.median(times[1])


def tiff_rows(outdir: str, images: List[np.ndarray], seconds: float) -> Tuple[float, float]:
    bare_path = os.path.join(outdir, "bare.tif")
    ours_path = os.path.join(outdir, "ours.tif")
    metas = [metadata(1, i) for i in range(len(images))]

    def bare(i: int) -> Tuple[int, float]:
        image = images[i % len(images)]
        t0 = time.process_time()
        tifffile.imwrite(bare_path, image)
        return 1, time.process_time() - t0

    def ours(i: int) -> Tuple[int, float]:
        image, meta = images[i % len(images)], metas[i % len(images)]
        t0 = time.process_time()
        save_tiff(ours_path, image, meta, overwrite=True)
        return 1, time.process_time() - t0

    return cpu_per_frame(bare, ours, seconds)


def hdf5_rows(outdir: str, images: List[np.ndarray], seconds: float, per_series: int,
              nimages: Optional[int], series_cpu: List[float]) -> Tuple[float, float]:
    """Bare and ours per frame; ours' start + close per series are added to ``series_cpu``."""
    shape = images[0].shape
    dtype = images[0].dtype
    blobs = [compress(image, "bslz4") for image in images]
    filters = hdf5_filter("bslz4")
    channels = [{"threshold_1": Encoded(blob, "bslz4", shape, dtype, dtype.itemsize, v2=True)}
                for blob in blobs]

    def clean() -> None:                    # between series, not timed
        for path in glob.glob(os.path.join(outdir, "*.h5")):
            os.unlink(path)

    def bare(step: int) -> Tuple[int, float]:
        clean()
        with h5py.File(os.path.join(outdir, f"bare_{step}.h5"), "w") as handle:
            dataset = handle.create_dataset(
                "/entry/data/data", shape=(0,) + shape, maxshape=(None,) + shape,
                dtype=dtype, chunks=(1,) + shape, **filters)
            t0 = time.process_time()
            for n in range(per_series):
                dataset.resize(n + 1, axis=0)
                dataset.id.write_direct_chunk((n, 0, 0), blobs[n % len(blobs)])
            used = time.process_time() - t0
        return per_series, used

    def ours(step: int) -> Tuple[int, float]:
        clean()
        meta = metadata(step, 0)
        t0 = time.process_time()
        writer = Hdf5RawWriter(1000)
        writer.start(os.path.join(outdir, f"ours_{step}"), step, nimages=nimages, metadata=meta)
        t1 = time.process_time()
        for n in range(per_series):
            writer.write(n, channels[n % len(channels)])
        t2 = time.process_time()
        writer.close()
        series_cpu.append(t1 - t0 + time.process_time() - t2)
        return per_series, t2 - t1

    try:
        return cpu_per_frame(bare, ours, seconds)
    finally:
        clean()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="wall time of bare and of ours per row (s)")
    parser.add_argument("--models", nargs="+", default=["1M", "4M"], choices=sorted(MODELS))
    parser.add_argument("--bits", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument("--dir", default="/dev/shm", help="where the files go (a tmpfs)")
    parser.add_argument("--series-frames", type=int, default=500,
                        help="HDF5RAW frames per series (the files are deleted between series)")
    parser.add_argument("--only", choices=("tiff", "hdf5raw"), default=None)
    args = parser.parse_args()

    outdir = tempfile.mkdtemp(prefix="eiger-bench-storage-", dir=args.dir)
    rows = []
    series_cpu: Dict[str, List[float]] = {}
    try:
        for model in args.models:
            images = frames(MODELS[model], args.bits)
            if args.only in (None, "tiff"):
                rows.append(("TIFF", model) + tiff_rows(outdir, images, args.seconds))
            if args.only in (None, "hdf5raw"):
                for label, nimages in (("HDF5RAW", args.series_frames), ("nimages?", None)):
                    spent = series_cpu.setdefault(model, [])
                    rows.append((label, model) + hdf5_rows(
                        outdir, images, args.seconds, args.series_frames, nimages, spent))
    finally:
        shutil.rmtree(outdir, ignore_errors=True)

    print(f"CPU ms per frame, {args.bits}-bit, into {args.dir} "
          f"(>= {args.seconds:g} s each; efficiency = bare / ours)")
    print(f"{'format':<9} {'model':<5} {'bare ms':>9} {'ours ms':>9} {'efficiency':>10}")
    for fmt, model, bare, ours in rows:
        print(f"{fmt:<9} {model:<5} {bare * 1e3:9.3f} {ours * 1e3:9.3f} {bare / ours:10.2f}")
    for model, spent in series_cpu.items():
        if spent:
            print(f"HDF5RAW {model}: start + close (master file) "
                  f"{statistics.median(spent) * 1e3:.1f} ms CPU per series of "
                  f"{args.series_frames} frames")


if __name__ == "__main__":
    main()
