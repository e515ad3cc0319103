"""HDF5RAW series as a user reads them: every frame sent is in its slot, the data
files hold the frames that came (more or fewer than nimages said), the files
are split by images_per_file, and each chunk is the blob the stream sent."""
from __future__ import annotations

import os

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter)
import numpy as np
import pytest

from eiger_server.errors import DataError
from eiger_server.formats.compression import compress
from eiger_server.formats.decode import Encoded
from eiger_server.storage.hdf5raw import Hdf5RawWriter, read_frames

SHAPE = (9, 14)


def frame_image(number: int, shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(number)
    return rng.integers(0, 1000, shape).astype(dtype) + number


def bslz4(image: np.ndarray) -> Encoded:
    return Encoded(compress(image, "bslz4"), "bslz4", image.shape, image.dtype,
                   image.dtype.itemsize, v2=True)


def write_series(tmp_path, frames, *, nimages=None, per_file=1000, name="scan"):
    writer = Hdf5RawWriter(per_file)
    master = writer.start(str(tmp_path / name), 1, nimages=nimages)
    for number in frames:
        writer.write(number, {"threshold_1": bslz4(frame_image(number))})
    assert writer.close() == master
    assert writer.frames_written == len(frames)
    return master


def data_file(tmp_path, number, name="scan"):
    """(rows, image_nr_low, image_nr_high) of a data file."""
    with h5py.File(tmp_path / f"{name}_data_{number:06d}.h5", "r") as handle:
        data = handle["/entry/data/data"]
        return data.shape[0], int(data.attrs["image_nr_low"]), int(data.attrs["image_nr_high"])


def data_files(tmp_path, name="scan"):
    return sorted(p.name for p in tmp_path.glob(f"{name}_data_*.h5"))


@pytest.mark.parametrize("nimages", [None, 3, 5, 8])
def test_every_frame_sent_is_read_back_whatever_nimages_said(tmp_path, nimages):
    master = write_series(tmp_path, range(5), nimages=nimages)
    frames = read_frames(master)
    np.testing.assert_array_equal(frames, np.stack([frame_image(n) for n in range(5)]))
    assert data_files(tmp_path) == ["scan_data_000001.h5"]
    assert data_file(tmp_path, 1) == (5, 1, 5)       # no empty rows after the last frame


def test_a_series_with_fewer_frames_than_nimages_is_trimmed(tmp_path):
    master = write_series(tmp_path, range(4), nimages=100, per_file=3)
    np.testing.assert_array_equal(read_frames(master),
                                  np.stack([frame_image(n) for n in range(4)]))
    assert data_files(tmp_path) == ["scan_data_000001.h5", "scan_data_000002.h5"]
    assert data_file(tmp_path, 1) == (3, 1, 3)
    assert data_file(tmp_path, 2) == (1, 4, 4)
    with h5py.File(master, "r") as handle:
        assert sorted(handle["/entry/data"]) == ["data_000001", "data_000002"]


def test_a_series_with_more_frames_than_nimages_keeps_them_all(tmp_path):
    master = write_series(tmp_path, range(11), nimages=4, per_file=5)
    np.testing.assert_array_equal(read_frames(master),
                                  np.stack([frame_image(n) for n in range(11)]))
    assert [data_file(tmp_path, n) for n in (1, 2, 3)] == [(5, 1, 5), (5, 6, 10), (1, 11, 11)]


@pytest.mark.parametrize("nimages", [None, 7])
def test_files_are_split_by_images_per_file(tmp_path, nimages):
    master = write_series(tmp_path, range(7), nimages=nimages, per_file=3)
    assert data_files(tmp_path) == [f"scan_data_{n:06d}.h5" for n in (1, 2, 3)]
    assert [data_file(tmp_path, n) for n in (1, 2, 3)] == [(3, 1, 3), (3, 4, 6), (1, 7, 7)]
    with h5py.File(master, "r") as handle:
        links = handle["/entry/data"]
        assert sorted(links) == ["data_000001", "data_000002", "data_000003"]
        assert links.get("data_000002", getlink=True).filename == "scan_data_000002.h5"
        assert int(handle["/entry/instrument/detector/detectorSpecific/nimages_per_file"][()]) == 3
    np.testing.assert_array_equal(read_frames(master),
                                  np.stack([frame_image(n) for n in range(7)]))


def test_a_lost_frame_reads_as_zero_in_its_slot(tmp_path):
    master = write_series(tmp_path, [0, 1, 3, 4, 6], nimages=7, per_file=5)
    frames = read_frames(master)
    assert frames.shape == (7,) + SHAPE
    for number in range(7):
        expected = np.zeros(SHAPE, np.uint16) if number in (2, 5) else frame_image(number)
        np.testing.assert_array_equal(frames[number], expected)
    # the rows are numbered from the file's first image, lost or not
    assert [data_file(tmp_path, n) for n in (1, 2)] == [(5, 1, 5), (2, 6, 7)]


def test_a_series_without_nimages_grows_and_is_trimmed(tmp_path):
    master = write_series(tmp_path, range(37), per_file=100)
    assert data_file(tmp_path, 1) == (37, 1, 37)
    assert read_frames(master).shape == (37,) + SHAPE


def test_each_chunk_is_the_blob_the_stream_sent(tmp_path):
    blobs = {}
    writer = Hdf5RawWriter(4)
    master = writer.start(str(tmp_path / "raw"), 2, nimages=6)
    for number in range(6):
        encoded = bslz4(frame_image(number))
        blobs[number] = bytes(encoded.data)
        writer.write(number, {"threshold_1": encoded})
    writer.close()
    for number in range(6):
        path = tmp_path / f"raw_data_{number // 4 + 1:06d}.h5"
        with h5py.File(path, "r") as handle:
            mask, chunk = handle["/entry/data/data"].id.read_direct_chunk((number % 4, 0, 0))
        assert mask == 0 and bytes(chunk) == blobs[number]
    assert os.path.exists(master)


def test_several_channels_have_their_own_files(tmp_path):
    writer = Hdf5RawWriter(2)
    master = writer.start(str(tmp_path / "two"), 3, nimages=3)
    for number in range(3):
        writer.write(number, {"threshold_1": bslz4(frame_image(number)),
                              "threshold_2": bslz4(frame_image(100 + number))})
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("two_*data_*.h5")) == [
        "two_threshold_1_data_000001.h5", "two_threshold_1_data_000002.h5",
        "two_threshold_2_data_000001.h5", "two_threshold_2_data_000002.h5"]
    np.testing.assert_array_equal(read_frames(master, "threshold_2"),
                                  np.stack([frame_image(100 + n) for n in range(3)]))


def test_bad_frames_are_data_errors(tmp_path):
    writer = Hdf5RawWriter(10)
    writer.start(str(tmp_path / "bad"), 1, nimages=3)
    writer.write(0, {"threshold_1": bslz4(frame_image(0))})
    with pytest.raises(DataError, match="started with"):
        writer.write(1, {"threshold_1": bslz4(frame_image(1, shape=(9, 15)))})
    with pytest.raises(DataError, match="channel name"):
        writer.write(1, {"threshold_1": bslz4(frame_image(1)),
                         "../x": bslz4(frame_image(1))})
    writer.write(2, {"threshold_1": bslz4(frame_image(2))})
    master = writer.close()
    assert not list(tmp_path.glob("*x_data*"))
    frames = read_frames(master)
    np.testing.assert_array_equal(frames[2], frame_image(2))
    with pytest.raises(DataError, match="before its series"):
        writer.write(0, {"threshold_1": bslz4(frame_image(0))})


def test_a_data_file_that_cannot_be_made_is_a_data_error(tmp_path):
    (tmp_path / "blocked_data_000001.h5").mkdir()      # a directory where the file goes
    writer = Hdf5RawWriter(10)
    writer.start(str(tmp_path / "blocked"), 1, nimages=2)
    with pytest.raises(DataError, match="blocked_data_000001.h5"):
        writer.write(0, {"threshold_1": bslz4(frame_image(0))})
    writer.close()
