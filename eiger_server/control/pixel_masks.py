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

Real DCUs send a darray's shape as [height, width] although DECTRIS' text
says [width, height]: an array is accepted in either order when it matches
the detector, and goes back in the order the DCU itself used.

On SIMPLON 1.8 each threshold has its own mask (``threshold/<n>/pixel_mask``;
``pixel_mask`` is threshold 1's). ``pixelmask_save``/``load``/``calibrate``
take an optional threshold number first. Without one, ``save`` saves
threshold 1's mask (the one ``pixel_mask`` names), ``load`` and ``calibrate``
change every threshold's mask, so that the pixels stay masked whichever
threshold is read; the answers name the masks touched. On 1.6 there is one
mask. After loading a mask into an idle detector it is armed and disarmed
once, as facility scripts do, so that the DCU takes the new mask into use.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from eiger_server.components.binding import component
from eiger_server.components.protocols import DetectorConfig, FileSettings
from eiger_server.simplon.rest import SimplonClient
from eiger_server.storage import paths
from eiger_server.formats.darray import NUMPY_ORDER, darray_order, decode_darray, encode_darray
from eiger_server.errors import DataError, DetectorError, ParameterError

log = logging.getLogger(__name__)

DEFAULT_MASK_FILE = "/tmp/pixelmask.npy"
DEFAULT_FLATFIELD_FILE = "/tmp/flatfield.npy"
BACKUP_FILE = "/tmp/pixelmask.bck"
TMP_DIR = "/tmp"
HOT_BIT = 1 << 3
THRESHOLD_MASK = re.compile(r"threshold/(\d+)/pixel_mask$")


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
        # the darray shape order each array name last came in (written back alike)
        self._orders: Dict[str, str] = {}

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
        answer = self.simplon.get("detector", "config", key)
        shape = self._shape()
        array = decode_darray(answer, shape)
        if array.shape != shape:
            raise DataError(f"the DCU's {what} has shape {array.shape}, which is neither "
                            f"(height, width) = {shape} nor (width, height) of this "
                            f"{shape[1]} x {shape[0]} pixel detector")
        self._orders[key] = darray_order(answer, shape)
        return array

    def thresholds(self) -> List[int]:
        """The thresholds with a mask of their own (1.8), [] when there is one mask."""
        try:
            keys = self.simplon.keys("detector", "config")
        except DetectorError as exc:
            log.debug("config keys unavailable, assuming one mask: %s", exc)
            return []
        return sorted(int(m.group(1)) for m in map(THRESHOLD_MASK.match, keys) if m)

    def _mask_keys(self, threshold: Optional[int], *, every: bool) -> List[Tuple[str, str]]:
        """(SIMPLON name, label) of the masks a command touches.

        ``threshold`` None: threshold 1's alone, or every threshold's with ``every``.
        """
        numbers = self.thresholds()
        if threshold is not None:
            if threshold not in numbers:
                raise ParameterError(
                    f"threshold {threshold} has no pixel mask of its own on this detector "
                    + (f"(thresholds with masks: {', '.join(map(str, numbers))})" if numbers
                       else f"(SIMPLON {self.detector.version} has one mask: give no threshold)"))
            return [(f"threshold/{threshold}/pixel_mask", f"threshold {threshold}")]
        if not numbers:
            return [("pixel_mask", "the pixel mask")]
        chosen = numbers if every else numbers[:1]
        return [(f"threshold/{n}/pixel_mask", f"threshold {n}") for n in chosen]

    def current_mask(self, key: str = "pixel_mask") -> np.ndarray:
        return self._fetch(key, "pixel mask")

    def load_mask(self, mask: np.ndarray, key: str = "pixel_mask") -> None:
        """PUT ``mask`` (uint32, shape (y, x)) to the DCU, in the DCU's own shape order."""
        if key not in self._orders:
            self._fetch(key, "pixel mask")          # learn the DCU's order first
        self.detector.write_config("detector", key,
                                   encode_darray(np.ascontiguousarray(mask, dtype="<u4"),
                                                 self._orders.get(key, NUMPY_ORDER)),
                                   force=True)

    def _arm_disarm_once(self) -> str:
        """Arm and disarm an idle detector once so the new mask takes effect."""
        try:
            state = str(self.simplon.get("detector", "status", "state").get("value"))
        except DetectorError as exc:
            log.warning("pixel mask loaded; detector state unknown, not armed: %s", exc)
            return ""
        if state != "idle":
            return f"; the detector is {state}: the mask applies from its next arm"
        self.simplon.command("detector", "arm")
        self.simplon.command("detector", "disarm")
        log.info("armed and disarmed once so that the new pixel mask takes effect")
        return "; armed and disarmed once to apply it"

    # -- spec commands -----------------------------------------------------
    def do_pixelmask_save(self, *args: str) -> str:
        """``pixelmask_save [threshold] [file]``: save a pixel mask to a .npy file
        (default /tmp/pixelmask.npy; without a threshold, threshold 1's)."""
        threshold, rest = _threshold_first(args)
        path = self.resolve(" ".join(rest), DEFAULT_MASK_FILE)
        (key, label), = self._mask_keys(threshold, every=False)
        mask = self.current_mask(key)
        self._save_array(mask, path, "pixel mask")
        log.info("pixel mask of %s (%d flagged pixels) saved to %s", label,
                 int(np.count_nonzero(mask)), path)
        return path

    def do_flatfield_save(self, *args: str) -> str:
        """Save the DCU's flatfield to a .npy file (default /tmp/flatfield.npy)."""
        path = self.resolve(" ".join(args), DEFAULT_FLATFIELD_FILE)
        self._save_array(self._fetch("flatfield", "flatfield"), path, "flatfield")
        log.info("flatfield saved to %s", path)
        return path

    def do_pixelmask_load(self, *args: str) -> str:
        """``pixelmask_load [threshold] file``: load a pixel mask from a .npy file
        onto the DCU (without a threshold into every threshold's mask)."""
        threshold, rest = _threshold_first(args)
        name = " ".join(rest).strip()
        if not name:
            raise ParameterError("pixelmask_load needs a file name (a .npy file made by "
                                 "pixelmask_save or numpy.save), after an optional "
                                 "threshold number")
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
        targets = self._mask_keys(threshold, every=True)
        for key, _ in targets:
            self.load_mask(mask, key)
        flagged = int(np.count_nonzero(mask))
        where = _labels(targets)
        applied = self._arm_disarm_once()
        log.info("pixel mask loaded from %s into %s (%d flagged pixels)", path, where, flagged)
        return f"pixel mask loaded from {path} ({flagged} flagged pixels) into {where}{applied}"

    def check_mask(self, array: np.ndarray, source: str) -> np.ndarray:
        """``array`` as a uint32 mask of the detector's shape, or a clear error.

        A mask of (width, height) is taken as the transposed one.
        """
        shape = self._shape()
        if array.ndim == 2 and array.shape == shape[::-1] and array.shape != shape:
            array = array.T
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
        return np.ascontiguousarray(array, dtype=np.uint32)

    def do_pixelmask_calibrate(self, *args: str) -> str:
        """``pixelmask_calibrate [threshold]``: flag every pixel that counted in the
        latest (dark) image; the answer names each mask touched and the pixels
        newly flagged in it."""
        threshold, rest = _threshold_first(args)
        if rest:
            raise ParameterError(f"pixelmask_calibrate takes only a threshold number; got "
                                 f"'{' '.join(rest)}'")
        latest = self._latest()
        if latest is None:
            raise DataError("no image yet: take a dark image with the stream enabled first")
        raw = np.asarray(getattr(latest, "raw", latest))
        if raw.ndim == 3:            # several channels: the first one
            raw = raw[0]
        counted = raw != 0
        if raw.dtype.kind in "iu":
            counted &= raw != np.iinfo(raw.dtype).max   # gap or already masked
        targets = self._mask_keys(threshold, every=True)
        counts = []
        backups = []
        for index, (key, _) in enumerate(targets):
            old = self.current_mask(key)
            if raw.shape != old.shape:
                raise DataError(f"the latest image has shape {raw.shape} but the pixel mask "
                                f"{old.shape}; take a new dark image with the current settings")
            new = old | np.where(counted, np.uint32(HOT_BIT), np.uint32(0))
            counts.append(int(np.count_nonzero(new != old)))
            # Keep the old mask before touching the DCU's.
            backups.append(BACKUP_FILE if index == 0 else
                           f"{BACKUP_FILE[:-4]}_{key.split('/')[1]}.bck")
            self._save_array(old, backups[-1], "previous pixel mask")
            self.load_mask(new, key)
        if len(targets) == 1:
            flagged = f"{counts[0]} newly flagged pixel{'' if counts[0] == 1 else 's'}"
        else:
            flagged = "newly flagged pixels: " + ", ".join(
                f"{count} in {label}" for count, (_, label) in zip(counts, targets))
        answer = (f"pixel mask calibrated from the latest image into {_labels(targets)}: "
                  f"{flagged}; old mask{'s' if len(backups) > 1 else ''} kept in "
                  f"{', '.join(backups)}")
        log.info("pixelmask_calibrate: %s", answer)
        return answer


def _threshold_first(args: Sequence[str]) -> Tuple[Optional[int], List[str]]:
    """An optional leading threshold number (a bare positive integer), and the rest."""
    words = [word for arg in args for word in str(arg).split()]
    if words and words[0].isdigit() and 0 < int(words[0]) < 10:
        return int(words[0]), words[1:]
    return None, words


def _labels(targets: Sequence[Tuple[str, str]]) -> str:
    labels = [label for _, label in targets]
    if labels[0].startswith("threshold "):
        return ("threshold " if len(labels) == 1 else "thresholds ") + \
            ", ".join(label.split()[1] for label in labels) + \
            (" (its mask)" if len(labels) == 1 else " (each one's mask)")
    return labels[0]
