"""Saved TIFF files, as a user reads them: tifffile gives back the pixels, the
metadata in the description and the Software tag; the names, the missing
directory and the disk errors behave as the README says."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tifffile

from eiger_server.errors import DataError
from eiger_server.storage import tiff
from eiger_server.storage.tiff import read_metadata, save_tiff

SHAPES = [(1, 1), (1, 7), (7, 1), (3, 5), (13, 17), (514, 1030), (1065, 1030)]
META = {"series": 4, "frame": 17, "count_time": 0.0099999, "photon_energy": 8041.0,
        "thresholds": {"threshold_1": 4020.5}, "start_time": [1700000000, 1234],
        "channel": "threshold_1", "trigger_mode": "ints"}


def image(shape, dtype, seed=1):
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        return rng.normal(10, 3, shape).astype(dtype)
    info = np.iinfo(dtype)
    data = rng.integers(max(info.min, -1000), min(info.max, 70000), shape, endpoint=True)
    data = data.astype(dtype)
    data.flat[0] = info.max                           # the gap value of a detector
    return data


def tags(path_or_bytes):
    """{tag code: value} of the first page, and the page's description."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        return {tag.code: tag.value for tag in page.tags.values()}, page.description


def reference(array, text):
    """The file tifffile writes with the arguments save_tiff always used."""
    out = io.BytesIO()
    tifffile.imwrite(out, array, description=text, metadata=None, photometric="minisblack",
                     software="eiger_server")
    return out.getvalue()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_saved_image_reads_back_with_its_pixels_metadata_and_software(tmp_path, shape, dtype):
    data = image(shape, dtype)
    path = save_tiff(str(tmp_path / "image"), data, META)
    assert path == str(tmp_path / "image.tif")
    back = tifffile.imread(path)
    assert back.dtype == data.dtype and back.shape == shape
    np.testing.assert_array_equal(back, data)
    assert read_metadata(path) == META
    found, text = tags(path)
    assert json.loads(text) == META
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and len(tif.pages[0].dataoffsets) == 1   # one strip
    assert found[305] == "eiger_server"                          # Software
    assert found[262] == tifffile.PHOTOMETRIC.MINISBLACK
    assert found[259] == tifffile.COMPRESSION.NONE
    assert found[258] == 8 * np.dtype(dtype).itemsize            # BitsPerSample
    assert (found[256], found[257]) == (shape[1], shape[0])
    assert 339 not in found                                      # unsigned: the default


@pytest.mark.parametrize("dtype", ["u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8",
                                   "f2", "f4", "f8"])
@pytest.mark.parametrize("meta", [{}, {"a": 1}, {"a": "xy"}, META,
                                  {"text": "x" * 101, "n": [1, 2, 3]}])
def test_the_tags_are_those_tifffile_writes(tmp_path, dtype, meta):
    """Same tags and values (ImageDescription, Software, SampleFormat, strips,
    resolution ...) as the files tifffile wrote for us, whatever the description's length."""
    for shape in ((1, 1), (5, 3), (31, 33)):
        data = image(shape, dtype)
        path = save_tiff(str(tmp_path / "t.tif"), data, meta)
        ours, text = tags(path)
        theirs, their_text = tags(reference(data, tiff.description(meta)))
        assert text == their_text
        ours.pop(273)                       # StripOffsets: where the pixels are, may differ
        theirs.pop(273)
        assert ours == theirs
        np.testing.assert_array_equal(tifffile.imread(path), data)


def test_the_description_is_json_of_plain_values(tmp_path):
    meta = {"n": np.int64(3), "x": np.float32(1.5), "flag": np.bool_(True), "raw": b"ab\xff",
            "nested": {"t": (1, np.uint16(2)), 5: "five"}, "none": None, "array": np.arange(3)}
    path = save_tiff(str(tmp_path / "m.tif"), np.zeros((2, 2), np.uint16), meta)
    assert read_metadata(path) == {"n": 3, "x": 1.5, "flag": True, "raw": "ab\ufffd",
                                   "nested": {"t": [1, 2], "5": "five"}, "none": None,
                                   "array": "[0 1 2]"}
    text = tags(path)[1]
    assert text == json.dumps(json.loads(text), sort_keys=True)  # keys sorted, as always


def test_big_endian_and_strided_input_are_saved_as_their_values(tmp_path):
    data = image((40, 50), np.uint32)
    for variant in (data.astype(">u4"), data[::2, ::3], np.asfortranarray(data),
                    data.astype(">u2")[5:, 1:-1]):
        path = save_tiff(str(tmp_path / "v.tif"), variant, {})
        back = tifffile.imread(path)
        assert back.dtype.byteorder in ("<", "=", "|")
        np.testing.assert_array_equal(back, variant)


@pytest.mark.parametrize("data", [np.array([[True, False], [False, True]]),
                                  np.ones((3, 4), np.complex64),
                                  np.arange(24, dtype=np.uint16).reshape(2, 3, 4)],
                         ids=["bool", "complex", "3-D"])
def test_other_images_are_still_saved(tmp_path, data):
    path = save_tiff(str(tmp_path / "o.tif"), data, {"k": 1})
    np.testing.assert_array_equal(tifffile.imread(path), data)
    assert read_metadata(path) == {"k": 1}
    assert tags(path)[0][305] == "eiger_server"


def test_without_overwrite_an_existing_file_is_kept_and_the_next_name_is_used(tmp_path):
    first = save_tiff(str(tmp_path / "scan.tif"), np.full((3, 3), 1, np.uint16), {"n": 1})
    second = save_tiff(str(tmp_path / "scan.tif"), np.full((3, 3), 2, np.uint16), {"n": 2},
                       overwrite=False)
    third = save_tiff(str(tmp_path / "scan"), np.full((3, 3), 3, np.uint16), {"n": 3},
                      overwrite=False)
    assert [os.path.basename(p) for p in (first, second, third)] == [
        "scan.tif", "scan-img001.tif", "scan-img002.tif"]
    for number, path in enumerate((first, second, third), 1):
        assert (tifffile.imread(path) == number).all() and read_metadata(path) == {"n": number}
    again = save_tiff(str(tmp_path / "scan-img002.tif"), np.zeros((3, 3), np.uint16), {},
                      overwrite=False)
    assert os.path.basename(again) == "scan-img003.tif"
    # with overwrite the file is replaced
    assert save_tiff(first, np.full((2, 2), 9, np.uint8), {"n": 9}) == first
    assert (tifffile.imread(first) == 9).all() and read_metadata(first) == {"n": 9}
    assert sorted(os.listdir(tmp_path)) == ["scan-img001.tif", "scan-img002.tif",
                                            "scan-img003.tif", "scan.tif"]


def test_a_missing_or_vanished_directory_is_made(tmp_path):
    directory = tmp_path / "a" / "b"
    path = save_tiff(str(directory / "one.tif"), np.ones((4, 4), np.uint16), {"i": 1})
    assert tifffile.imread(path).sum() == 16
    shutil.rmtree(tmp_path / "a")                     # removed behind the server's back
    for overwrite in (True, False):
        path = save_tiff(str(directory / "two.tif"), np.ones((4, 4), np.uint16), {"i": 2},
                         overwrite=overwrite)
        assert read_metadata(path) == {"i": 2}
        shutil.rmtree(tmp_path / "a")


def test_a_directory_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(DataError, match="creating the directory"):
        save_tiff(str(tmp_path / "file" / "sub" / "x.tif"), np.ones((2, 2), np.uint16))


def test_a_full_disk_is_a_data_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fd, buffers):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(DataError, match="disk is full") as raised:
        save_tiff(str(tmp_path / "x.tif"), np.ones((20, 20), np.uint16), {"a": 1})
    assert "saving the image" in str(raised.value)
    assert os.listdir(tmp_path) == []                 # no partial file, no temporary left


_TOO_LARGE = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from eiger_server.errors import DataError
    from eiger_server.storage.tiff import save_tiff
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    try:
        save_tiff(sys.argv[1], np.ones((300, 300), np.uint16), {"a": 1})
    except DataError as exc:
        print(exc)
""")


def test_a_file_too_large_for_the_disk_is_a_data_error_and_leaves_nothing(tmp_path):
    """A real short write (the file size limit stands in for a full disk)."""
    answer = subprocess.run([sys.executable, "-c", _TOO_LARGE, str(tmp_path / "big.tif")],
                            capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert "saving the image" in answer.stdout and "big.tif" in answer.stdout, answer.stdout
    assert os.listdir(tmp_path) == []


def test_a_short_write_is_continued(tmp_path, monkeypatch):
    real = os.writev

    def dribble(fd, buffers):                         # at most 1000 bytes per call
        first = memoryview(buffers[0]).cast("B")
        return real(fd, [first[:1000]])
    monkeypatch.setattr(os, "writev", dribble)
    data = image((61, 70), np.uint16)
    path = save_tiff(str(tmp_path / "s.tif"), data, META)
    np.testing.assert_array_equal(tifffile.imread(path), data)
    assert read_metadata(path) == META


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_a_data_error(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(DataError, match="permission denied"):
            save_tiff(str(directory / "x.tif"), np.ones((2, 2), np.uint16))
    finally:
        directory.chmod(0o700)


def test_images_saved_at_once_into_a_missing_directory_are_all_saved(tmp_path):
    directory = tmp_path / "new" / "dir"
    errors = []

    def save(number):
        try:
            save_tiff(str(directory / f"i{number}.tif"), np.full((8, 8), number, np.uint16),
                      {"n": number})
        except Exception as exc:          # reported below
            errors.append(exc)
    threads = [threading.Thread(target=save, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(os.listdir(directory)) == sorted(f"i{n}.tif" for n in range(8))


def test_streamed_images_are_not_flushed_one_by_one_but_saves_are(tmp_path, monkeypatch) -> None:
    """Autosaved stream images skip fsync (the disk's latency would bound the
    rate); an explicit save and every other atomic file still flush."""
    import os as os_module

    from eiger_server.storage import paths
    synced: list = []
    real_fsync = os_module.fsync
    monkeypatch.setattr(paths.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    streamed = save_tiff(str(tmp_path / "streamed.tif"), image, {"frame": 1}, durable=False)
    assert synced == []
    np.testing.assert_array_equal(tifffile.imread(streamed), image)
    saved = save_tiff(str(tmp_path / "saved.tif"), image, {"frame": 1})
    assert len(synced) == 2                 # the file, then the directory's rename
    np.testing.assert_array_equal(tifffile.imread(saved), image)
