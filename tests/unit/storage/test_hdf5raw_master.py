"""The HDF5RAW master is complete: geometry, beam, detectorSpecific and masks from
the series header, readable by DIALS' nxmx reader and by h5py + hdf5plugin."""
from __future__ import annotations

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter)
import numpy as np
import pytest

from eiger_server.formats import stream_v1, stream_v2
from eiger_server.formats.compression import compress, v1_encoding
from eiger_server.formats.decode import Encoded
from eiger_server.storage.hdf5raw import Hdf5RawWriter

HEIGHT, WIDTH = 40, 60
CONFIG = {"x_pixel_size": 75e-6, "y_pixel_size": 75e-6, "detector_distance": 0.125,
          "beam_center_x": 30.5, "beam_center_y": 20.25, "wavelength": 0.98,
          "count_time": 0.099, "frame_time": 0.1, "nimages": 3, "ntrigger": 1,
          "sensor_material": "Si", "sensor_thickness": 450e-6, "photon_energy": 12650.0,
          "threshold_energy": 6325.0, "bit_depth_image": 16, "description": "Dectris EIGER2 Si 1M",
          "detector_number": "E-32-0123", "omega_start": 10.0, "omega_increment": 0.5}


def arrays():
    mask = np.zeros((HEIGHT, WIDTH), np.uint32)
    mask[:, 29] = 1                                 # a gap column
    mask[5, 7] = 8                                  # a hot pixel
    flat = np.full((HEIGHT, WIDTH), 1.25, np.float32)
    table = np.arange(20, dtype=np.uint32).reshape(2, 10)
    return mask, flat, table


def v1_header():
    mask, flat, table = arrays()
    parts = stream_v1.encode_header(4, "all", CONFIG, flatfield=flat, pixel_mask=mask,
                                    countrate_table=table, appendix={"user": 1})
    return stream_v1.parse([bytes(memoryview(p)) for p in parts])


def test_v1_header_keeps_its_arrays():
    header = v1_header()
    mask, flat, table = arrays()
    assert np.array_equal(header.arrays["pixel_mask"], mask)
    assert np.array_equal(header.arrays["flatfield"], flat)
    assert np.array_equal(header.arrays["countrate_table"], table)
    assert header.appendix == {"user": 1}


def test_v2_start_message_keeps_its_arrays():
    mask, flat, table = arrays()
    msg = stream_v2.start_message(4, "uid", "2026-01-01T00:00:00Z", CONFIG, nimages=3,
                                  width=WIDTH, height=HEIGHT, dtype=np.uint16,
                                  channels=["threshold_1"], pixel_mask=mask, flatfield=flat,
                                  countrate_table=table.ravel())
    header = stream_v2.parse([stream_v2.encode_start(msg)])
    assert np.array_equal(header.arrays["pixel_mask"], mask)
    assert np.array_equal(header.arrays["flatfield"], flat)
    assert np.array_equal(header.arrays["countrate_table"], table.ravel())


@pytest.fixture
def master(tmp_path):
    header = v1_header()
    writer = Hdf5RawWriter(images_per_file=2)
    path = writer.start(str(tmp_path / "scan"), 4, nimages=3, header=header)
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 100, (HEIGHT, WIDTH)).astype(np.uint16) for _ in range(3)]
    for n, image in enumerate(frames):
        enc = Encoded(compress(image, "bslz4"), v1_encoding("bslz4", image.dtype),
                      image.shape, image.dtype)
        writer.write(n, {"threshold_1": enc})
    writer.close()
    return path, frames


def test_master_opens_with_h5py_and_hdf5plugin(master):
    path, frames = master
    mask, flat, table = arrays()
    with h5py.File(path) as f:
        det = f["/entry/instrument/detector"]
        assert det["x_pixel_size"][()] == pytest.approx(75e-6)
        assert det["detector_distance"][()] == pytest.approx(0.125)
        assert det["beam_center_x"][()] == pytest.approx(30.5)
        assert f["/entry/instrument/beam/incident_wavelength"][()] == pytest.approx(0.98)
        spec = det["detectorSpecific"]
        assert np.array_equal(spec["pixel_mask"][()], mask)
        assert np.array_equal(spec["flatfield"][()], flat)
        assert np.array_equal(spec["countrate_correction_table"][()], table)
        assert int(spec["x_pixels_in_detector"][()]) == WIDTH
        assert int(spec["nimages"][()]) == 3
        data = np.concatenate([f["/entry/data/data_000001"][()],
                               f["/entry/data/data_000002"][()]])
        assert np.array_equal(data, np.stack(frames))


def test_master_reads_with_dials_nxmx(master):
    import nxmx  # DIALS' reader, in the test extra
    path, _ = master
    with h5py.File(path) as f:
        entry = nxmx.NXmx(f).entries[0]
        assert entry.definition == "NXmx"
        instrument = entry.instruments[0]
        detector = instrument.detectors[0]
        assert detector.distance.to("mm").magnitude == pytest.approx(125.0)
        assert detector.beam_center_x.magnitude == pytest.approx(30.5)
        assert detector.sensor_material == "Si"
        assert np.array_equal(detector.pixel_mask[()], arrays()[0])
        module = detector.modules[0]
        assert list(module.data_size) == [HEIGHT, WIDTH]
        assert module.fast_pixel_direction.vector.tolist() == [1, 0, 0]
        assert module.fast_pixel_direction[()].to("mm").magnitude == pytest.approx(0.075)
        chain = nxmx.get_dependency_chain(module.fast_pixel_direction)
        assert [a.path.rsplit("/", 1)[1] for a in chain] == [
            "fast_pixel_direction", "module_offset", "translation"]
        # where the beam (the z axis) meets the detector: at the beam centre
        origin = nxmx.get_cumulative_transformation(
            nxmx.get_dependency_chain(module.module_offset))[0]
        pixel = -origin[:2, 3] / np.array([0.075, -0.075])     # mm -> pixels
        assert pixel.tolist() == pytest.approx([30.5, 20.25])
        assert instrument.beams[0].incident_wavelength.to("angstrom").magnitude == \
            pytest.approx(0.98)
        sample = entry.samples[0]
        omega = sample.depends_on
        assert omega.transformation_type == "rotation"
        assert omega[()].to("degree").magnitude.tolist() == [10.0, 10.5, 11.0]
