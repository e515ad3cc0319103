"""Monitor images (SIMPLON 1.6 and 1.8): monitor_images, monitor_save,
monitor_save_threshold, monitor_pop.

The monitor hands out TIFF files; they are written unchanged into
data_directory, atomically and never over an existing file. Names come from
the prefix (``$id`` -> series id):

* ``<prefix>_monitor[_th<n>].tif``            latest image (``$id`` -> latest seqid)
* ``<prefix>_s<series>_i<id>[_th<n>].tif``     a given image, or the popped one

SIMPLON serves ``images/monitor`` (latest), ``images/next`` (pop the oldest)
and ``images/<series>/<id>[/<threshold>]``, nothing else: the latest image of
one threshold is the newest one the buffer lists, asked by series and id.
With no image the DCU waits 500 ms and answers HTTP 408.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Sequence, Tuple

from eiger_server.components.binding import component
from eiger_server.components.protocols import FileSettings
from eiger_server.simplon.rest import SimplonClient
from eiger_server.storage import paths
from eiger_server.values import parse_number
from eiger_server.errors import DataError, DetectorError, ParameterError

log = logging.getLogger(__name__)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@component
class MonitorImages:
    """Saving images the DCU's monitor holds.

    ``seqid`` gives the id of the last arm (names files of the latest series).
    """

    def __init__(self, simplon: SimplonClient, settings: FileSettings,
                 seqid: Callable[[], Any]) -> None:
        self.simplon = simplon
        self.settings = settings
        self._last_seqid = seqid
        self.latest_file = ""

    # -- listing ---------------------------------------------------------
    def do_images(self, *args: str) -> List[List[Any]]:
        """``[[series, [ids...]], ...]`` of the images in the monitor buffer."""
        answer = self.simplon.monitor_list()
        if isinstance(answer, dict):
            answer = answer.get("value", [])
        return list(answer or [])

    # -- saving ----------------------------------------------------------
    def do_save(self, *args: str) -> str:
        """``monitor_save [series id [threshold]]``: save the latest or a given image."""
        words = _words(args)
        if not words:
            return self._save_latest()
        if len(words) not in (2, 3):
            raise ParameterError("monitor_save takes no argument (latest image), or "
                                 f"'series id [threshold]'; got '{' '.join(words)}'")
        series = _int(words[0], "monitor_save series")
        image_id = _int(words[1], "monitor_save id")
        threshold = _int(words[2], "monitor_save threshold", 1) if len(words) == 3 else None
        path = f"{series}/{image_id}" + (f"/{threshold}" if threshold is not None else "")
        data = self._fetch(path, f"image {image_id} of series {series}"
                           + (f", threshold {threshold}" if threshold else ""))
        return self._write(data, self._name(series, f"s{series}_i{image_id}", threshold))

    def do_save_threshold(self, *args: str) -> str:
        """``monitor_save_threshold n``: save the newest buffered image of threshold n."""
        words = _words(args)
        if len(words) != 1:
            raise ParameterError("monitor_save_threshold needs one threshold number (1, 2, "
                                 "or 3 for the difference image)")
        threshold = _int(words[0], "monitor_save_threshold", 1)
        newest = self._newest()
        if newest is None:
            raise DataError(f"no monitor image of threshold {threshold}: the monitor buffer "
                            "is empty; enable the monitor (monitor_mode 1) and acquire")
        series, image_id = newest
        data = self._fetch(f"{series}/{image_id}/{threshold}",
                           f"image {image_id} of series {series}, threshold {threshold}")
        return self._write(data, self._name(series, "monitor", threshold))

    def do_pop(self, *args: str) -> str:
        """Save the oldest buffered image, which the DCU then drops; the file name."""
        oldest = self._oldest()
        data = self._fetch("next", "the oldest monitor image")
        if oldest is None:
            name = self._name(self._seqid(), "next", None)
        else:
            name = self._name(oldest[0], f"s{oldest[0]}_i{oldest[1]}", None)
        return self._write(data, name)

    # -- helpers -----------------------------------------------------------
    def _save_latest(self) -> str:
        data = self._fetch("monitor", "the latest monitor image")
        return self._write(data, self._name(self._seqid(), "monitor", None))

    def _newest(self) -> Optional[Tuple[int, int]]:
        """(series, id) of the newest buffered image, or None."""
        for series, ids in reversed(self.do_images()):
            if ids:
                return int(series), int(ids[-1])
        return None

    def _oldest(self) -> Optional[Tuple[int, int]]:
        """(series, id) the next pop returns, if the list says (best effort)."""
        try:
            for series, ids in self.do_images():
                if ids:
                    return int(series), int(ids[0])
        except (DetectorError, TypeError, ValueError) as exc:
            log.debug("monitor list unusable for naming: %s", exc)
        return None

    def _seqid(self) -> Optional[int]:
        try:
            value = self._last_seqid()
            return int(value) if value not in (None, "") else None
        except (AttributeError, TypeError, ValueError):
            return None

    def _name(self, series: Optional[int], what: str, threshold: Optional[int]) -> str:
        base = paths.expand_id(self.settings.prefix, series, "latest")
        return f"{base}_{what}" + (f"_th{threshold}" if threshold is not None else "") + ".tif"

    def _fetch(self, path: str, what: str) -> bytes:
        try:
            data = self.simplon.monitor_image(path)
        except DetectorError as exc:
            if exc.status == 408:
                raise DataError(f"{what} is not available: the monitor holds no such image "
                                "(the DCU timed out waiting for one); enable the monitor "
                                "(monitor_mode 1), acquire, and see monitor_images") from None
            if exc.status in (400, 404):
                raise DataError(f"{what} is not available: {exc.text or exc}; enable the "
                                "monitor (monitor_mode 1), acquire, and see "
                                "monitor_images") from None
            raise
        if not data.startswith(TIFF_MAGIC):
            raise DataError(f"the monitor sent {len(data)} bytes for {what} that are not "
                            "a TIFF file")
        return data

    def _write(self, data: bytes, name: str) -> str:
        directory = self.settings.data_directory
        target = paths.unique_path(paths.safe_join(directory, name, allow_subdirs=False))
        try:
            with paths.atomic_file(target) as out:
                out.write(data)
        except OSError as exc:
            raise paths.disk_error(exc, target, "saving the monitor image to") from None
        self.latest_file = target
        log.info("monitor image saved to %s (%d bytes)", target, len(data))
        return target


def _words(args: Sequence[str]) -> List[str]:
    """spec may send 'series id threshold' as one argument or as several."""
    return [word for arg in args for word in str(arg).split()]


def _int(text: str, what: str, minimum: int = 0) -> int:
    value = parse_number(text, what, integer=True)
    if value < minimum:
        raise ParameterError(f"{what}: {text} must be {minimum} or more")
    return int(value)
