"""The metadata an image carries: its series' header values, the detector's
values at the count's start, and the frame's own times.

The receiver thread records each series header here (the last few series
only); a frame's metadata is built from them when it is dispatched, and
saved TIFFs and HDF5RAW masters take theirs from it.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from eiger_server.components.protocols import DetectorConfig
from eiger_server.errors import EigerError
from eiger_server.formats.stream_events import ImageMessage, SeriesHeader

__all__ = ["SeriesCatalog", "frame_meta", "header_meta", "snapshot_meta"]

# Detector values copied into the metadata of every saved image.
_META_KEYS = ("count_time", "frame_time", "photon_energy", "threshold_energy",
              "bit_depth_image", "nimages", "ntrigger", "trigger_mode", "compression")
_META_KEYS_18 = ("threshold/1/energy", "threshold/2/energy")
_HEADER_KEYS = ("count_time", "frame_time", "photon_energy", "incident_energy",
                "threshold_energy", "bit_depth_image", "nimages", "ntrigger",
                "description", "detector_description", "detector_number",
                "detector_serial_number", "wavelength", "incident_wavelength")
_KEPT_SERIES = 8


def snapshot_meta(detector: DetectorConfig) -> Dict[str, Any]:
    """Detector values for the metadata of a count's images (cached reads)."""
    meta: Dict[str, Any] = {}
    keys = _META_KEYS + (_META_KEYS_18 if detector.version_at_least(1, 8) else ())
    for key in keys:
        try:
            meta[key] = detector.config_value(key)
        except (EigerError, KeyError, TypeError):
            continue
    if "photon_energy" in meta:
        meta["energy"] = meta["photon_energy"]
    thresholds = {f"threshold_{n}": meta[f"threshold/{n}/energy"] for n in (1, 2)
                  if f"threshold/{n}/energy" in meta}
    if not thresholds and "threshold_energy" in meta:
        thresholds = {"threshold_1": meta["threshold_energy"]}
    if thresholds:
        meta["thresholds"] = thresholds
    return meta


def header_meta(header: SeriesHeader) -> Dict[str, Any]:
    """The metadata a series header gives its images."""
    config = header.config or {}
    meta: Dict[str, Any] = {"series": header.series}
    for key in _HEADER_KEYS:
        if key in config:
            value = config[key]
            meta[key] = dict(value) if isinstance(value, dict) or hasattr(value, "items") \
                else value
    if "incident_energy" in meta and "photon_energy" not in meta:
        meta["photon_energy"] = meta["incident_energy"]
    if "photon_energy" in meta:
        meta["energy"] = meta["photon_energy"]
    threshold = meta.get("threshold_energy")
    if isinstance(threshold, dict):            # V2: energy per channel
        meta["thresholds"] = meta.pop("threshold_energy")
    elif threshold is not None:
        meta["thresholds"] = {"threshold_1": threshold}
    if header.channels:
        meta["channels"] = list(header.channels)
    if header.unique_id:
        meta["series_unique_id"] = header.unique_id
    if header.appendix is not None:
        meta["header_appendix"] = header.appendix
    return meta


def frame_meta(series_meta: Dict[str, Any], count_meta: Dict[str, Any],
               event: ImageMessage) -> Dict[str, Any]:
    """One image's metadata: its series', then the count's, then its own."""
    meta = dict(series_meta)
    meta.update(count_meta)
    meta["series"] = event.series
    meta["frame"] = event.frame
    for key in ("start_time", "stop_time", "real_time"):
        value = getattr(event, key)
        if value is not None:
            meta[key] = value
    if event.appendix is not None:
        meta["image_appendix"] = event.appendix
    return meta


class SeriesCatalog:
    """The headers of the last few series the stream carried."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: Dict[int, Dict[str, Any]] = {}
        self._channels: Dict[int, List[str]] = {}
        self._headers: Dict[int, SeriesHeader] = {}

    def record(self, header: SeriesHeader) -> None:
        """(receiver thread) Remember ``header``; forget all but the last few series."""
        with self._lock:
            self._meta[header.series] = header_meta(header)
            self._channels[header.series] = list(header.channels)
            self._headers[header.series] = header
            for old in [s for s in self._meta if s != header.series][:-_KEPT_SERIES]:
                self._meta.pop(old, None)
                self._channels.pop(old, None)
                self._headers.pop(old, None)

    def meta(self, series: int) -> Dict[str, Any]:
        """The header metadata of ``series`` ({} when its header did not come)."""
        with self._lock:
            return self._meta.get(series, {})

    def header(self, series: int) -> Optional[SeriesHeader]:
        with self._lock:
            return self._headers.get(series)
