"""The EIGER (legacy DECTRIS NXmx) HDF5 layout: master file and data files.

One writer for the fake DCU's FileWriter and the server's HDF5RAW save mode::

    <prefix>_master.h5
      /entry (NXentry)
        /instrument (NXinstrument)
          /detector (NXdetector)   beam_center_x, count_time, x_pixel_size, ...
            /detectorSpecific      nimages, ntrigger, x_pixels_in_detector, ...,
                                   pixel_mask, flatfield, countrate_correction_table
          /beam (NXbeam)           incident_wavelength
        /sample (NXsample)
          /goniometer (NXtransformations)  omega, omega_end, ... per frame
        /data (NXdata)             data_000001 ... external links to
    <prefix>_data_000001.h5:/entry/data/data  (n, height, width), one image per
                                   chunk, attributes image_nr_low / image_nr_high

The values come from a configuration mapping that may hold SIMPLON names
(the DCU's detector configuration, a stream V1 header) or stream V2 start
message fields: each dataset takes the first name present. Absent values
are left out, never invented.
"""
from __future__ import annotations

import datetime
import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import h5py
import numpy as np

from eiger_server.formats.compression import hdf5_filter
from eiger_server.formats.stream_v2 import GONIOMETER_AXES

log = logging.getLogger(__name__)

__all__ = ["create_data", "label_data", "now_iso", "write_master"]

# NXdetector dataset -> (names to read, SIMPLON first, then V2), units
_DETECTOR: Tuple[Tuple[str, Tuple[str, ...], Optional[str]], ...] = (
    ("beam_center_x", ("beam_center_x",), "pixel"),
    ("beam_center_y", ("beam_center_y",), "pixel"),
    ("count_time", ("count_time",), "s"),
    ("frame_time", ("frame_time",), "s"),
    ("x_pixel_size", ("x_pixel_size", "pixel_size_x"), "m"),
    ("y_pixel_size", ("y_pixel_size", "pixel_size_y"), "m"),
    ("sensor_material", ("sensor_material",), None),
    ("sensor_thickness", ("sensor_thickness",), "m"),
    ("bit_depth_image", ("bit_depth_image",), None),
    ("detector_distance", ("detector_distance",), "m"),
    ("description", ("description", "detector_description"), None),
    ("detector_number", ("detector_number", "detector_serial_number"), None),
    ("threshold_energy", ("threshold_energy", "threshold/1/energy"), "eV"),
    ("countrate_correction_applied",
     ("countrate_correction_applied", "countrate_correction_enabled"), None),
    ("flatfield_correction_applied", ("flatfield_correction_applied", "flatfield_enabled"),
     None),
    ("pixel_mask_applied", ("pixel_mask_applied", "pixel_mask_enabled"), None),
)
# detectorSpecific datasets read from the configuration
_SPECIFIC: Tuple[Tuple[str, Tuple[str, ...], Optional[str]], ...] = (
    ("trigger_mode", ("trigger_mode",), None),
    ("nframes_sum", ("nframes_sum",), None),
    ("frame_count_time", ("frame_count_time",), "s"),
    ("photon_energy", ("photon_energy", "incident_energy"), "eV"),
)


def now_iso() -> str:
    """The local time now, ISO 8601 with milliseconds (as the DCU writes dates)."""
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(
        timespec="milliseconds")


def _first(config: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        value = config.get(name)
        if value is not None:
            return value
    return None


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _put(group: h5py.Group, name: str, value: Any, units: Optional[str] = None) -> None:
    """Store one scalar/array value; values that are absent or not storable are
    skipped, and so is a name the group already holds."""
    if value is None or name in group:
        return
    if isinstance(value, (list, tuple)) and not value:
        return
    if isinstance(value, dict) or hasattr(value, "items"):
        return  # a JSON array object or similar: not metadata the layout carries
    if isinstance(value, datetime.datetime):
        value = value.isoformat()
    try:
        dset = group.create_dataset(name, data=value)
    except (TypeError, ValueError):
        log.debug("master file: %s=%r not storable, skipped", name, value)
        return
    if units:
        dset.attrs["units"] = units


def _threshold(config: Mapping[str, Any], channels: Sequence[str]) -> Any:
    value = _first(config, ("threshold_energy", "threshold/1/energy"))
    if hasattr(value, "items"):          # V2: energy per channel
        per_channel = dict(value)
        value = per_channel.get(channels[0]) if channels else None
        if value is None and per_channel:
            value = next(iter(per_channel.values()))
    return value


def _goniometer(config: Mapping[str, Any]) -> Dict[str, Tuple[float, float]]:
    """axis -> (start, increment), from SIMPLON ``<axis>_start``/``_increment``
    or the V2 ``goniometer`` map."""
    axes: Dict[str, Tuple[float, float]] = {}
    v2 = config.get("goniometer")
    for axis in GONIOMETER_AXES:
        first, step = config.get(f"{axis}_start"), config.get(f"{axis}_increment")
        entry = v2.get(axis) if isinstance(v2, Mapping) else None
        if first is None and step is None and isinstance(entry, Mapping):
            first, step = entry.get("start"), entry.get("increment")
        if first is None and step is None:
            continue
        try:
            axes[axis] = (float(first or 0.0), float(step or 0.0))
        except (TypeError, ValueError):
            continue
    return axes


def write_master(f: h5py.File, config: Mapping[str, Any], *, nimages: int, ntrigger: int,
                 width: int, height: int, dtype: Any, compression: str,
                 channels: Sequence[str], software_version: str,
                 pixel_mask: Optional[np.ndarray] = None,
                 flatfield: Optional[np.ndarray] = None,
                 countrate_table: Optional[np.ndarray] = None,
                 links: Mapping[str, str] = {},
                 specific: Mapping[str, Any] = {}) -> None:
    """Write the metadata of a series and its data links into the open master ``f``.

    ``links`` maps a name under /entry/data to the data file it links to
    (``/entry/data/data`` in that file, path relative to the master);
    ``specific`` adds scalars to detectorSpecific (names already written stay).
    """
    config = config or {}
    entry = _group(f, "entry", "NXentry")
    instrument = _group(entry, "instrument", "NXinstrument")
    det = _group(instrument, "detector", "NXdetector")
    for name, names, units in _DETECTOR:
        if name == "threshold_energy":
            value = _threshold(config, channels)
        elif name == "bit_depth_image":
            value = _first(config, names) or np.dtype(dtype).itemsize * 8
        else:
            value = _first(config, names)
        _put(det, name, value, units)

    spec = det.require_group("detectorSpecific")
    for name, value in (("nimages", int(nimages)), ("ntrigger", int(ntrigger)),
                        ("x_pixels_in_detector", int(width)),
                        ("y_pixels_in_detector", int(height)),
                        ("data_collection_date", _first(config, ("data_collection_date",
                                                                 "arm_date")) or now_iso()),
                        ("software_version", config.get("software_version", software_version)),
                        ("compression", compression),
                        ):
        _put(spec, name, value)
    for name, names, units in _SPECIFIC:
        _put(spec, name, _first(config, names), units)
    _put(spec, "channels", ",".join(channels))
    # Masks are big but mostly constant: gzip keeps them small and readable without plugins.
    for name, array, kind in (("pixel_mask", pixel_mask, np.uint32),
                              ("flatfield", flatfield, np.float32),
                              ("countrate_correction_table", countrate_table, None)):
        if array is None:
            continue
        array = np.asarray(array, dtype=kind)
        opts = ({"compression": "gzip", "compression_opts": 1, "shuffle": True}
                if array.ndim >= 2 and array.size > 1024 else {})
        spec.create_dataset(name, data=array, **opts)
    if "pixel_mask" in spec and "pixel_mask" not in det:
        det["pixel_mask"] = spec["pixel_mask"]       # where NXmx readers look for it
    for key, value in specific.items():
        if isinstance(value, (int, float, str, bool, np.generic)):
            _put(spec, str(key).replace("/", "_"), value)

    beam = _group(instrument, "beam", "NXbeam")
    _put(beam, "incident_wavelength", _first(config, ("wavelength", "incident_wavelength")),
        "angstrom")

    sample = _group(entry, "sample", "NXsample")
    gonio = _group(sample, "goniometer", "NXtransformations")
    nframes = int(nimages) * max(1, int(ntrigger))
    for axis, (first, step) in _goniometer(config).items():
        positions = first + step * np.arange(nframes, dtype=np.float64)
        _put(gonio, axis, positions, "degree")
        _put(gonio, f"{axis}_end", positions + step, "degree")
        _put(gonio, f"{axis}_range_average", step, "degree")
        _put(gonio, f"{axis}_range_total", step * nframes, "degree")

    _nxmx_geometry(f, entry, det, gonio, config, width=width, height=height,
                   nframes=nframes)

    data = _group(entry, "data", "NXdata")
    for name, path in links.items():
        data[name] = h5py.ExternalLink(path, "/entry/data/data")


def _axis(group: h5py.Group, name: str, value: Any, kind: str, vector: Sequence[float],
          depends_on: str, units: str, offset: Optional[Sequence[float]] = None) -> None:
    """An NXtransformations axis (a dataset with its transformation attributes);
    an axis already written (the goniometer's positions) only gets the attributes."""
    if name not in group:
        group.create_dataset(name, data=value)
    dset = group[name]
    dset.attrs["transformation_type"] = kind
    dset.attrs["vector"] = np.asarray(vector, dtype=np.float64)
    dset.attrs["depends_on"] = depends_on
    dset.attrs["units"] = units
    if offset is not None:
        dset.attrs["offset"] = np.asarray(offset, dtype=np.float64)
        dset.attrs["offset_units"] = "m"


def _nxmx_geometry(f: h5py.File, entry: h5py.Group, det: h5py.Group, gonio: h5py.Group,
                   config: Mapping[str, Any], *, width: int, height: int,
                   nframes: int) -> None:
    """The NXmx geometry data processing programs (DIALS' nxmx, XDS' plugins)
    read: definition, the detector's position and module (pixel directions and
    the beam centre as the module's offset), the sample's rotation axis.

    Conventions (McStas, as the DCU's own NXmx masters): z along the beam, fast
    pixels along +x, slow pixels along -y, the rotation axis along +x. Nothing
    is invented: without pixel size and distance there is no geometry."""
    _put(entry, "definition", "NXmx")
    start = _first(config, ("data_collection_date", "arm_date"))
    _put(entry, "start_time", start if start is not None else now_iso())
    try:
        px = float(_first(config, ("x_pixel_size", "pixel_size_x")))
        py = float(_first(config, ("y_pixel_size", "pixel_size_y")))
        distance = float(_first(config, ("detector_distance",)))
    except (TypeError, ValueError):
        log.debug("master file: no pixel size or distance, no NXmx geometry")
        return
    bcx = float(_first(config, ("beam_center_x",)) or 0.0)
    bcy = float(_first(config, ("beam_center_y",)) or 0.0)
    base = det.name
    _put(det, "distance", distance, "m")           # the NXmx name of detector_distance
    trans = _group(det, "transformations", "NXtransformations")
    _axis(trans, "translation", distance, "translation", (0, 0, 1), ".", "m")
    _put(det, "depends_on", f"{base}/transformations/translation")
    module = _group(det, "module", "NXdetector_module")
    _put(module, "data_origin", np.array([0, 0], dtype=np.int64))
    _put(module, "data_size", np.array([height, width], dtype=np.int64))
    _put(module, "data_stride", np.array([1, 1], dtype=np.int64))
    _axis(module, "module_offset", 0.0, "translation", (1, 0, 0),
          f"{base}/transformations/translation", "m", offset=(-bcx * px, bcy * py, 0.0))
    _axis(module, "fast_pixel_direction", px, "translation", (1, 0, 0),
          f"{module.name}/module_offset", "m", offset=(0.0, 0.0, 0.0))
    _axis(module, "slow_pixel_direction", py, "translation", (0, -1, 0),
          f"{module.name}/module_offset", "m", offset=(0.0, 0.0, 0.0))
    sample = gonio.parent
    if "omega" not in gonio:
        _put(gonio, "omega", np.zeros(max(1, nframes)), "degree")
    _axis(gonio, "omega", None, "rotation", (1, 0, 0), ".", "deg")
    _put(sample, "depends_on", f"{gonio.name}/omega")
    _put(sample, "name", "sample")


def create_data(f: h5py.File, rows: int, maxrows: Optional[int], height: int, width: int,
                dtype: Any, compression: str) -> h5py.Dataset:
    """``/entry/data/data`` of a data file (or a master holding its images):
    (rows, height, width), one image per chunk, chunks being blobs of
    ``compression`` ("bslz4", "lz4", "lz4-raw" or "none")."""
    entry = _group(f, "entry", "NXentry")
    data = _group(entry, "data", "NXdata")
    return data.create_dataset(
        "data", shape=(rows, height, width), maxshape=(maxrows, height, width),
        dtype=np.dtype(dtype), chunks=(1, height, width), **hdf5_filter(compression))


def label_data(dset: h5py.Dataset, low: int, high: int) -> None:
    """The 1-based numbers of the first and last image a data dataset holds."""
    dset.attrs["image_nr_low"] = np.int64(low)
    dset.attrs["image_nr_high"] = np.int64(high)
