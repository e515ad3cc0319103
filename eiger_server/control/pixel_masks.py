"""Pixel mask and flatfield: pixelmask_save, pixelmask_load,
pixelmask_calibrate, flatfield_save.

Arrays travel to and from the DCU as darray JSON (darray.py) and are kept
here as numpy ``.npy`` files in the detector's orientation, shape (y, x).
File names: a relative name lands in data_directory; an absolute one must be
inside data_directory or /tmp (where the documented defaults live). A name
without ``.npy`` gets it, as numpy.save does.

Calibration assumes the latest stream image is dark: every pixel that counted
is flagged in the mask with bit 3 (value 8, "hot" in SIMPLON's mask bits:
0 gap, 1 dead, 2 cold, 3 hot, 4 noisy). Pixels holding the type's maximum are
already masked or in gaps and are left alone. The old mask is kept as
/tmp/pixelmask.bck (a .npy file despite its name).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Tuple

import numpy as np

from eiger_server.control.bindings import component
from eiger_server.control.interfaces import DetectorConfig, FileSettings
from eiger_server.simplon.rest import SimplonClient
from eiger_server.storage import paths
from eiger_server.formats.darray import decode_darray, encode_darray
from eiger_server.errors import DataError, ParameterError

log = logging.getLogger(__name__)

DEFAULT_MASK_FILE = "/tmp/pixelmask.npy"
DEFAULT_FLATFIELD_FILE = "/tmp/flatfield.npy"
BACKUP_FILE = "/tmp/pixelmask.bck"
TMP_DIR = "/tmp"
HOT_BIT = 1 << 3


@component
class PixelMasks:
    """The DCU's pixel mask and flatfield as files.

    ``latest`` gives the stream's latest image (for calibration from a dark).
    """

    def __init__(self, detector: DetectorConfig, simplon: SimplonClient,
                 settings: FileSettings, latest: Callable[[], Optional[Any]]) -> None:
        self.detector = detector
        self.simplon = simplon
        self.settings = settings
        self._latest = latest

    # -- files ---------------------------------------------------------
    def resolve(self, name: str, default: str, *, extension: bool = True) -> str:
        """The full path for a file name from spec (see the module docstring)."""
        name = (name or "").strip() or default
        if extension and not name.endswith(".npy"):
            name += ".npy"
        return paths.resolve_user_path(self.settings.data_directory, name,
                                       allowed_extra=(TMP_DIR,))

    def _save_array(self, array: np.ndarray, path: str, what: str) -> None:
        try:
            paths.ensure_dir(os.path.dirname(path))
            with paths.atomic_file(path) as out:
                np.save(out, array, allow_pickle=False)
        except OSError as exc:
            raise paths.disk_error(exc, path, f"saving the {what} to") from None

    # -- DCU arrays --------------------------------------------------------
    def _shape(self) -> Tuple[int, int]:
        return (int(self.detector.config_value("y_pixels_in_detector")),
                int(self.detector.config_value("x_pixels_in_detector")))

    def _fetch(self, key: str, what: str) -> np.ndarray:
        array = decode_darray(self.simplon.get("detector", "config", key))
        shape = self._shape()
        if array.shape != shape:
            raise DataError(f"the DCU's {what} has shape {array.shape}, but the detector is "
                            f"{shape[1]} x {shape[0]} pixels (y, x = {shape})")
        return array

    def current_mask(self) -> np.ndarray:
        return self._fetch("pixel_mask", "pixel mask")

    def load_mask(self, mask: np.ndarray) -> None:
        """PUT ``mask`` (uint32, shape (y, x)) to the DCU."""
        self.detector.write_config("detector", "pixel_mask",
                               encode_darray(np.ascontiguousarray(mask, dtype="<u4")),
                               force=True)

    # -- spec commands -----------------------------------------------------
    def do_pixelmask_save(self, *args: str) -> str:
        """Save the DCU's pixel mask to a .npy file (default /tmp/pixelmask.npy)."""
        path = self.resolve(" ".join(args), DEFAULT_MASK_FILE)
        mask = self.current_mask()
        self._save_array(mask, path, "pixel mask")
        log.info("pixel mask (%d flagged pixels) saved to %s", int(np.count_nonzero(mask)), path)
        return path

    def do_flatfield_save(self, *args: str) -> str:
        """Save the DCU's flatfield to a .npy file (default /tmp/flatfield.npy)."""
        path = self.resolve(" ".join(args), DEFAULT_FLATFIELD_FILE)
        self._save_array(self._fetch("flatfield", "flatfield"), path, "flatfield")
        log.info("flatfield saved to %s", path)
        return path

    def do_pixelmask_load(self, *args: str) -> str:
        """Load a pixel mask from a .npy file onto the DCU."""
        name = " ".join(args).strip()
        if not name:
            raise ParameterError("pixelmask_load needs a file name (a .npy file made by "
                                 "pixelmask_save or numpy.save)")
        path = self.resolve(name, "", extension=False)
        if not os.path.exists(path) and not path.endswith(".npy") \
                and os.path.exists(path + ".npy"):
            path += ".npy"
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"pixelmask_load: '{path}' does not exist") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"pixelmask_load: '{path}' is not a numpy .npy array file "
                            f"({exc})") from None
        mask = self.check_mask(array, path)
        self.load_mask(mask)
        flagged = int(np.count_nonzero(mask))
        log.info("pixel mask loaded from %s (%d flagged pixels)", path, flagged)
        return f"pixel mask loaded from {path} ({flagged} flagged pixels)"

    def check_mask(self, array: np.ndarray, source: str) -> np.ndarray:
        """``array`` as a uint32 mask of the detector's shape, or a clear error."""
        shape = self._shape()
        if array.shape != shape:
            raise DataError(f"the mask in '{source}' has shape {array.shape}; this detector "
                            f"needs (y, x) = {shape}")
        if array.dtype.kind == "b":
            return array.astype(np.uint32)
        if array.dtype.kind not in "iu":
            raise DataError(f"the mask in '{source}' holds {array.dtype} values; a pixel "
                            "mask holds unsigned integers (bit flags)")
        if array.size and (array.min() < 0 or array.max() > np.iinfo(np.uint32).max):
            raise DataError(f"the mask in '{source}' has values outside 0..4294967295")
        return array.astype(np.uint32)

    def do_pixelmask_calibrate(self, *args: str) -> int:
        """Flag every pixel that counted in the latest (dark) image; the number newly flagged."""
        latest = self._latest()
        if latest is None:
            raise DataError("no image yet: take a dark image with the stream enabled first")
        raw = np.asarray(getattr(latest, "raw", latest))
        if raw.ndim == 3:            # several channels: the first one
            raw = raw[0]
        old = self.current_mask()
        if raw.shape != old.shape:
            raise DataError(f"the latest image has shape {raw.shape} but the pixel mask "
                            f"{old.shape}; take a new dark image with the current settings")
        counted = raw != 0
        if raw.dtype.kind in "iu":
            counted &= raw != np.iinfo(raw.dtype).max   # gap or already masked
        new = old | np.where(counted, np.uint32(HOT_BIT), np.uint32(0))
        newly = int(np.count_nonzero(new != old))
        # Keep the old mask before touching the DCU's.
        self._save_array(old, BACKUP_FILE, "previous pixel mask")
        self.load_mask(new)
        log.info("pixelmask_calibrate: %d pixels newly flagged (old mask in %s)",
                 newly, BACKUP_FILE)
        return newly

