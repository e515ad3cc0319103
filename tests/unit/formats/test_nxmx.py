"""One EIGER/NXmx layout: the fake DCU's master and an HDF5RAW master agree.

The fake DCU writes a series through its FileWriter; the server's HDF5RAW
writer stores the same frames with the series header the fake's stream
encoder would deliver (V1 and V2). Both masters open with h5py + hdf5plugin
and hold the same groups and datasets at the same places.
"""
from __future__ import annotations

import datetime as dt
from typing import Dict

import h5py
import hdf5plugin  # noqa: F401  (registers the HDF5 filters for reading)
import numpy as np
import pytest

from eiger_server.fakedcu.interfaces import Frame, SeriesEnd, SeriesStart
from eiger_server.fakedcu.stores.filewriter import FileWriterStore
from eiger_server.formats import stream_v1, stream_v2
from eiger_server.formats.compression import compress, v1_encoding
from eiger_server.formats.decode import Encoded
from eiger_server.formats.stream_events import SeriesHeader
from eiger_server.storage.hdf5raw import Hdf5RawWriter, read_frames

WIDTH, HEIGHT = 40, 30

# The stream header does not carry these arrays to the saver (the parsers leave them out).
# masks come with header_detail "all" only (tests/unit/storage/test_hdf5raw_master.py)
ONLY_IN_FAKE = {"/entry/instrument/detector/detectorSpecific/pixel_mask",
                "/entry/instrument/detector/pixel_mask",
                "/entry/instrument/detector/detectorSpecific/flatfield",
                "/entry/instrument/detector/detectorSpecific/countrate_correction_table"}


class StubModel:
    """The filewriter settings the fake DCU's store reads."""

    def __init__(self, data_dir) -> None:
        self.data_dir = data_dir
        self.settings = {"mode": "enabled", "nimages_per_file": 10, "image_nr_start": 1,
                         "name_pattern": "series_$id", "compression_enabled": True}

    def config_value(self, subsystem, name):
        assert subsystem == "filewriter"
        return self.settings[name]


def make_start(series_id: int, nimages: int) -> SeriesStart:
    rng = np.random.default_rng(series_id)
    return SeriesStart(
        series_id=series_id, series_unique_id=f"uid-{series_id}",
        config={"beam_center_x": 20.5, "beam_center_y": 15.25, "count_time": 0.1,
                "frame_time": 0.1, "x_pixel_size": 7.5e-5, "y_pixel_size": 7.5e-5,
                "sensor_material": "Si", "sensor_thickness": 4.5e-4, "bit_depth_image": 16,
                "detector_distance": 0.12, "description": "Dectris EIGER2 fake",
                "threshold/1/energy": 4020.5, "wavelength": 1.0332,
                "omega_start": 10.0, "omega_increment": 0.5},
        channels=["threshold_1"], width=WIDTH, height=HEIGHT, dtype=np.dtype(np.uint16),
        nimages=nimages, ntrigger=1, compression="bslz4",
        pixel_mask=(rng.random((HEIGHT, WIDTH)) < 0.05).astype(np.uint32),
        flatfield=rng.random((HEIGHT, WIDTH), dtype=np.float32) + 0.5,
        countrate_table=np.arange(20, dtype=np.float32).reshape(2, 10))


def layout(path) -> Dict[str, str]:
    """path inside the file -> "group <NX_class>", "dataset" or "link <file>"."""
    found: Dict[str, str] = {}

    def walk(group: h5py.Group, prefix: str) -> None:
        for name in group:
            link = group.get(name, getlink=True)
            full = f"{prefix}/{name}"
            if isinstance(link, h5py.ExternalLink):
                found[full] = f"link {link.path}"
                continue
            item = group[name]
            if isinstance(item, h5py.Group):
                found[full] = f"group {item.attrs.get('NX_class', '')}"
                walk(item, full)
            else:
                found[full] = "dataset"

    with h5py.File(path, "r") as handle:
        walk(handle, "")
    return found


def header_of(start, version: str) -> SeriesHeader:
    """The series header the fake DCU's encoder sends for ``start``, as parsed."""
    if version == "V1":
        parts = stream_v1.encode_header(start.series_id, "basic", start.config)
        header = stream_v1.parse(parts)
    else:
        msg = stream_v2.start_message(
            start.series_id, start.series_unique_id,
            dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), start.config,
            nimages=start.nimages, width=start.width, height=start.height,
            dtype=start.dtype, channels=start.channels)
        header = stream_v2.parse([stream_v2.encode_start(msg)])
    assert isinstance(header, SeriesHeader)
    return header


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_hdf5raw_master_has_the_fake_dcu_layout(tmp_path, version):
    start = make_start(series_id=4, nimages=12)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 1000, size=(HEIGHT, WIDTH), dtype=np.uint16) for _ in range(12)]
    store = FileWriterStore(StubModel(tmp_path / "dcu"))
    try:
        store.series_start(start)
        for i, array in enumerate(images):
            store.frame(Frame(series_id=4, image_id=i, data={"threshold_1": array}))
        store.series_end(SeriesEnd(4, "uid-4", len(images)))
        assert store.flush(10)
        fake_master = store.file_path("series_4_master.h5")
    finally:
        store.close()

    raw = Hdf5RawWriter(images_per_file=10)
    base = str(tmp_path / "raw" / "scan")
    raw.start(base, 4, nimages=12, header=header_of(start, version),
              metadata={"count_time": 0.1, "nimages": 12, "ntrigger": 1})
    for i, array in enumerate(images):
        if version == "V1":
            enc = Encoded(compress(array, "bslz4"), v1_encoding("bslz4", array.dtype),
                          (HEIGHT, WIDTH), array.dtype)
        else:
            enc = Encoded(compress(array, "bslz4"), "bslz4", (HEIGHT, WIDTH), array.dtype,
                          2, v2=True)
        raw.write(i, {"threshold_1": enc})
    raw_master = raw.close()

    fake, ours = layout(fake_master), layout(raw_master)
    missing = set(fake) - set(ours) - ONLY_IN_FAKE
    assert not missing, f"HDF5RAW master lacks {sorted(missing)}"
    for path in set(fake) & set(ours):
        assert fake[path] == ours[path], path
    np.testing.assert_array_equal(read_frames(raw_master), np.stack(images))
    np.testing.assert_array_equal(read_frames(str(fake_master)), np.stack(images))

    with h5py.File(raw_master, "r") as handle, h5py.File(fake_master, "r") as other:
        det, det_fake = handle["/entry/instrument/detector"], other["/entry/instrument/detector"]
        for name in ("beam_center_x", "beam_center_y", "x_pixel_size", "count_time",
                     "detector_distance", "threshold_energy", "sensor_thickness"):
            assert det[name][()] == pytest.approx(det_fake[name][()]), name
            assert det[name].attrs.get("units") == det_fake[name].attrs.get("units")
        assert det["sensor_material"][()] == det_fake["sensor_material"][()] == b"Si"
        spec = det["detectorSpecific"]
        assert (spec["x_pixels_in_detector"][()], spec["y_pixels_in_detector"][()]) == \
            (WIDTH, HEIGHT)
        assert spec["nimages"][()] == 12 and spec["compression"][()] == b"bslz4"
        assert int(spec["series"][()]) == 4 and int(spec["frames_written"][()]) == 12
        assert handle["/entry/instrument/beam/incident_wavelength"][()] == \
            pytest.approx(1.0332)
        np.testing.assert_allclose(handle["/entry/sample/goniometer/omega"][...],
                                   other["/entry/sample/goniometer/omega"][...])
