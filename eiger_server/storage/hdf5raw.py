"""HDF5RAW save mode: the stream's compressed frames written as HDF5 chunks.

Nothing is decoded: each frame's blob goes into its chunk with h5py's
``write_direct_chunk``. A bslz4 blob in the HDF5 framing *is* a chunk of the
bitshuffle filter, an HDF5-framed lz4 blob a chunk of the LZ4 filter; a
stream V1 ``lz4<`` blob (one bare LZ4 block) gets the 16-byte LZ4-filter
framing put in front, and raw data is stored unfiltered (the framings and
filters: :mod:`eiger_server.formats.compression`).
``hdf5plugin`` registers the filters, so h5py reads the files back.

Layout (like the DCU's own NXmx files)::

    <name>_master.h5   /entry (NXentry), /entry/data (NXdata) with
                       data_000001, data_000002 ... external links to
    <name>_data_000001.h5:/entry/data/data   (n, height, width), one image per
                       chunk, attributes image_nr_low / image_nr_high (1-based:
                       the images of its first and last row)

With several channels (stream V2 thresholds) each channel gets its own data
files ``<name>_<channel>_data_000001.h5`` and master links
``<channel>_000001``. Frame ``i`` of the series lands in file ``i //
nimages_per_file + 1`` at index ``i % nimages_per_file``; a lost frame leaves
its slot unwritten (reads as 0). A data file is made with room for the frames
the series is to have (``nimages``, when known, so that no frame has to grow
the dataset) and ends at the last frame written to it when it is finished.

:class:`Hdf5RawWriter` keeps the open files of one series. It is not
thread-safe: the stream handler calls it only from its saver thread, through
the bounded saving queue, so a slow disk makes frames be refused and counted,
never memory grow.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import h5py
import numpy as np

from eiger_server.storage import paths
from eiger_server import __version__
from eiger_server.formats import nxmx
from eiger_server.formats.compression import lz4_hdf5_frame, v1_method
from eiger_server.formats.decode import Encoded
from eiger_server.errors import DataError
from eiger_server.formats.stream_events import SeriesHeader, valid_channel

log = logging.getLogger(__name__)

DEFAULT_IMAGES_PER_FILE = 1000


def chunk_kind(encoded: Encoded) -> Tuple[str, int]:
    """(compression method: "bslz4"|"lz4"|"lz4-raw"|"none", elem_size) of one
    channel's blob."""
    if encoded.v2:
        kind = str(encoded.encoding)
        if kind not in ("bslz4", "lz4", "raw"):
            raise DataError(f"HDF5RAW: compression '{kind}' cannot be stored as HDF5 chunks")
        return ("none" if kind == "raw" else kind,
                int(encoded.elem_size) or np.dtype(encoded.dtype).itemsize)
    encoding = str(encoded.encoding)
    method = v1_method(encoding)
    if method is not None:
        return method[0], method[1] or np.dtype(encoded.dtype).itemsize
    raise DataError(f"HDF5RAW: stream encoding '{encoding}' cannot be stored as HDF5 chunks")


def _chunk_bytes(kind: str, encoded: Encoded) -> Any:
    data = encoded.data
    if kind == "lz4-raw":      # one bare block: add the LZ4-filter framing
        total = encoded.shape[0] * encoded.shape[1] * np.dtype(encoded.dtype).itemsize
        return lz4_hdf5_frame(data, total)
    return data


@dataclass
class _Channel:
    kind: str
    elem_size: int
    shape: Tuple[int, ...]
    dtype: np.dtype
    name_ok: bool = False         # the name was checked for use in file names
    file_index: int = 0
    file: Optional[h5py.File] = None
    dataset: Optional[h5py.Dataset] = None
    rows: int = 0                 # the open dataset's length (asking h5py costs more)
    write_chunk: Optional[Callable[..., Any]] = None    # its id.write_direct_chunk
    high: int = 0                 # the number (1-based) of the last frame written to the file
    files: Dict[int, str] = field(default_factory=dict)


class Hdf5RawWriter:
    """Writes the compressed frames of one series at a time into HDF5 files."""

    def __init__(self, images_per_file: int = DEFAULT_IMAGES_PER_FILE) -> None:
        self.images_per_file = int(images_per_file) if int(images_per_file) > 0 else \
            DEFAULT_IMAGES_PER_FILE
        self.series: Optional[int] = None
        self.requested_base = ""          # the base start() was given
        self.base = ""                    # path without _master.h5 (unique without overwrite)
        self.overwrite = True
        self.master = ""
        self.written_master = ""          # the master the last close() wrote ("" if none)
        self.frames_written = 0
        self.nimages: Optional[int] = None
        self.metadata: Dict[str, Any] = {}
        self.header: Optional[SeriesHeader] = None
        self._channels: Dict[str, _Channel] = {}

    # -- the saver thread calls these ---------------------------------------
    def start(self, base: str, series: int, *, nimages: Optional[int] = None,
              images_per_file: Optional[int] = None, overwrite: bool = True,
              metadata: Optional[Mapping[str, Any]] = None,
              header: Optional[SeriesHeader] = None) -> str:
        """Begin series ``series``: files named ``base``_master.h5 etc. Returns the master path.

        The master's NXmx metadata comes from ``header`` (the series header the
        stream delivered: SIMPLON names with V1, start message fields with V2),
        then from ``metadata`` (the detector values of the count) for the rest.

        Without ``overwrite`` an existing series' files are never touched: the
        series gets the first of ``base``, ``base``-img001, ... for which no
        master and no data file exists. A series still open is finished first.
        """
        self.close()
        if images_per_file:
            self.images_per_file = int(images_per_file)
        directory = os.path.dirname(base) or "."
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise paths.disk_error(exc, directory, "creating the directory") from None
        self.requested_base = base
        if not overwrite:
            base = paths.unique_stem(base, _series_exists)
        master = base + "_master.h5"
        self.base, self.master, self.series = base, master, int(series)
        self.overwrite = bool(overwrite)
        self.nimages = int(nimages) if nimages else None
        self.metadata = dict(metadata or {})
        self.header = header
        self.frames_written = 0
        self._channels = {}
        return master

    def write(self, frame: int, channels: Mapping[str, Encoded]) -> None:
        """Store frame ``frame`` (0-based) of every channel; raises DataError on failure."""
        if self.series is None:
            raise DataError("HDF5RAW: a frame came before its series was started")
        multi = len(channels) > 1
        for name, encoded in channels.items():
            channel = self._channels.get(name)
            if channel is None or (multi and not channel.name_ok):
                if multi and not valid_channel(name):
                    raise DataError(f"HDF5RAW: channel name {name!r} cannot be part of a "
                                    "file name")
                if channel is None:
                    kind, elem_size = chunk_kind(encoded)
                    channel = self._channels[name] = _Channel(
                        kind, elem_size, tuple(int(n) for n in encoded.shape),
                        np.dtype(encoded.dtype).newbyteorder("<"))
                channel.name_ok = multi
            shape = encoded.shape
            if shape != channel.shape and tuple(shape) != channel.shape:
                raise DataError(f"HDF5RAW: frame {frame} is {encoded.shape}, the series "
                                f"started with {channel.shape}")
            try:
                self._put(name if multi else None, channel, int(frame),
                          encoded.data if channel.kind != "lz4-raw"
                          else _chunk_bytes(channel.kind, encoded))
            except (OSError, RuntimeError) as exc:     # h5py: disk full, file too large ...
                where = channel.files.get(channel.file_index) or self.base
                raise paths.disk_error(exc, where, f"HDF5RAW: writing frame {frame} to") \
                    from None
        self.frames_written += 1

    def close(self) -> str:
        """Finish the series: trim, set attributes, write the master file.

        Returns the master's path ("" when no series was open or it got no
        frame). The master is written even when finishing a data file fails
        (its frames may be lost); that failure is then raised as a DataError.
        """
        if self.series is None:
            return ""
        self.written_master = ""
        failed: Optional[DataError] = None
        try:
            for channel in self._channels.values():
                try:
                    self._close_file(channel)
                except Exception as exc:       # h5py raises OSError/RuntimeError
                    path = channel.files.get(channel.file_index, self.base)
                    log.error("HDF5RAW: finishing %s failed: %s", path, exc)
                    if failed is None:
                        failed = exc if isinstance(exc, DataError) else paths.disk_error(
                            exc, path, "HDF5RAW: finishing the data file")
            if not self._channels:
                return ""
            self._write_master()
            self.written_master = self.master
        finally:
            self.series = None
            self._channels = {}
        if failed is not None:
            raise failed
        return self.master

    # -- internals ------------------------------------------------------------
    def _data_path(self, channel_name: Optional[str], number: int) -> str:
        middle = f"_{channel_name}" if channel_name else ""
        name = f"{os.path.basename(self.base)}{middle}_data_{number:06d}.h5"
        return paths.safe_join(os.path.dirname(self.base) or ".", name, allow_subdirs=False)

    def _put(self, name: Optional[str], channel: _Channel, frame: int, chunk: Any) -> None:
        # once per frame: as little Python and as few HDF5 calls as can be
        number, index = divmod(frame, self.images_per_file)
        number += 1
        if channel.file_index != number:
            self._close_file(channel)
            self._open_file(name, channel, number)
        write_chunk = channel.write_chunk
        if write_chunk is None:
            raise DataError(f"HDF5RAW: data file {number} of the series is closed")
        if index >= channel.rows:          # more frames than expected: grow, doubling
            self._grow(channel, index + 1)
        write_chunk((index, 0, 0), chunk)
        if frame >= channel.high:           # image numbers are 1-based
            channel.high = frame + 1

    def _grow(self, channel: _Channel, rows: int) -> None:
        assert channel.dataset is not None
        rows = min(self.images_per_file, max(rows, 2 * channel.rows))
        channel.dataset.resize(rows, axis=0)
        channel.rows = rows

    def _open_file(self, name: Optional[str], channel: _Channel, number: int) -> None:
        path = self._data_path(name, number)
        per_file = self.images_per_file
        first = (number - 1) * per_file
        rows = per_file
        if self.nimages:
            rows = max(1, min(per_file, self.nimages - first))
        height, width = channel.shape
        try:
            # without overwrite an existing file is an error, never truncated
            handle = h5py.File(path, "w" if self.overwrite else "x")
        except (OSError, FileExistsError) as exc:
            raise DataError(f"HDF5RAW: cannot create {path}: {exc}; check data_directory "
                            "and the disk") from None
        try:
            dataset = nxmx.create_data(handle, rows, per_file, height, width, channel.dtype,
                                       channel.kind)
        except BaseException:
            try:
                handle.close()
            except Exception:
                pass
            raise
        channel.file, channel.dataset, channel.file_index = handle, dataset, number
        channel.rows, channel.write_chunk = rows, dataset.id.write_direct_chunk
        channel.high = 0
        channel.files[number] = path

    def _close_file(self, channel: _Channel) -> None:
        handle, dataset = channel.file, channel.dataset
        if handle is None or dataset is None:
            return
        try:
            first = (channel.file_index - 1) * self.images_per_file
            used = channel.high - first if channel.high else 0
            if used and used < channel.rows:    # room for frames that never came
                dataset.resize(used, axis=0)
            # row i is image first + 1 + i, also when the file's first frames were lost
            nxmx.label_data(dataset, first + 1, channel.high or first)
        finally:
            channel.file = channel.dataset = channel.write_chunk = None
            channel.rows = 0
            handle.close()

    def _master_config(self) -> Dict[str, Any]:
        """The values the master describes: the stream's header over the count's metadata."""
        config = dict(self.metadata)
        if self.header is not None:
            config.update(self.header.config or {})
        return config

    def _write_master(self) -> None:
        temp = paths.temp_name(self.master)
        config = self._master_config()
        multi = len(self._channels) > 1
        links = {}
        for name, channel in self._channels.items():
            for number, path in sorted(channel.files.items()):
                link = f"{name}_{number:06d}" if multi else f"data_{number:06d}"
                links[link] = os.path.basename(path)
        first = next(iter(self._channels.values()))
        try:
            nimages = int(config.get("nimages") or 0)
            ntrigger = max(1, int(config.get("ntrigger") or 1))
        except (TypeError, ValueError):
            nimages, ntrigger = 0, 1
        if not nimages:
            nimages, ntrigger = self.nimages or self.frames_written, 1
        specific: Dict[str, Any] = {"nimages_per_file": self.images_per_file,
                                    "series": self.series,
                                    "frames_written": self.frames_written}
        specific.update(self.metadata)
        arrays = self.header.arrays if self.header is not None else {}
        try:
            with h5py.File(temp, "w") as master:
                nxmx.write_master(
                    master, config, nimages=nimages, ntrigger=ntrigger,
                    width=first.shape[1], height=first.shape[0], dtype=first.dtype,
                    compression="lz4" if first.kind == "lz4-raw" else first.kind,
                    channels=list(self._channels),
                    software_version=f"eiger_server {__version__} HDF5RAW",
                    links=links, specific=specific,
                    pixel_mask=arrays.get("pixel_mask"), flatfield=arrays.get("flatfield"),
                    countrate_table=arrays.get("countrate_table"))
            os.replace(temp, self.master)
            paths.fsync_dir(os.path.dirname(self.master))
        except (OSError, RuntimeError) as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise paths.disk_error(exc, self.master, "writing the HDF5 master file") from None


def _series_exists(base: str) -> bool:
    """True when files of a series named ``base`` exist (master or data files)."""
    if os.path.exists(base + "_master.h5"):
        return True
    return bool(glob.glob(glob.escape(base) + "_*data_[0-9][0-9][0-9][0-9][0-9][0-9].h5"))


def read_frames(master: str, channel: Optional[str] = None) -> np.ndarray:
    """Every frame of a series written by :class:`Hdf5RawWriter`, decoded (tests, tools)."""
    with h5py.File(master, "r") as handle:
        group = handle["/entry/data"]
        prefix = f"{channel}_" if channel else "data_"
        names = sorted(n for n in group if n.startswith(prefix))
        return np.concatenate([group[n][()] for n in names]) if names else np.zeros((0,))
