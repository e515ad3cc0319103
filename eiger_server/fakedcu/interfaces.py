"""Contracts between the fake DCU's device logic, its stores and its adapters.

The acquisition engine (model.py) produces frames; stream adapters, the file
writer and the monitor consume them as :class:`FrameSink` objects. The stores
read their settings through a :class:`ConfigSource` (the model); the model
serves their status and commands and the HTTP adapter their files and images
(:class:`FileStore`, :class:`MonitorImages`). Nothing in here does I/O.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol

import numpy as np


@dataclass
class SeriesStart:
    """What the detector knows when it is armed."""

    series_id: int
    series_unique_id: str
    config: Dict[str, Any]          # detector config snapshot: name -> value
    channels: List[str]             # e.g. ["threshold_1"] or ["threshold_1", "threshold_2", "difference"]
    width: int                      # x_pixels_in_detector
    height: int                     # y_pixels_in_detector
    dtype: np.dtype                 # uint8/uint16/uint32 from bit_depth_image
    nimages: int
    ntrigger: int
    compression: str                # "bslz4", "lz4" or "none"
    pixel_mask: np.ndarray          # uint32 (height, width)
    flatfield: np.ndarray           # float32 (height, width)
    countrate_table: np.ndarray     # float32 (2, N) or similar
    # stream config: header_detail, header_appendix, image_appendix, format
    stream: Dict[str, Any] = field(default_factory=dict)
    filewriter: Dict[str, Any] = field(default_factory=dict)  # filewriter config snapshot
    api: str = "1.8.0"


@dataclass
class Frame:
    """One image of a series; one array per enabled channel."""

    series_id: int
    image_id: int                   # 0-based index within the series
    data: Dict[str, np.ndarray]     # channel -> (height, width) array of the series dtype
    start_time_ns: int = 0
    stop_time_ns: int = 0
    real_time_ns: int = 0
    # Optional pre-compressed blobs (channel -> bytes, in the series compression,
    # HDF5 filter framing). Sinks that need compressed data use them when present
    # instead of compressing again (the fast path of the benchmarks).
    encoded: Optional[Dict[str, bytes]] = None


@dataclass
class SeriesEnd:
    series_id: int
    series_unique_id: str
    nframes: int                    # frames actually produced


class FrameSink(Protocol):
    """Something that consumes an acquisition (stream adapter, file writer, monitor)."""

    def series_start(self, start: SeriesStart) -> None: ...

    def frame(self, frame: Frame) -> None: ...

    def series_end(self, end: SeriesEnd) -> None: ...


class FrameSource(Protocol):
    """Something that makes the pixel data of frame number ``index``."""

    def frame(self, index: int, width: int, height: int, dtype: np.dtype,
              channels: List[str]) -> Dict[str, np.ndarray]: ...


class ConfigSource(Protocol):
    """Where a store reads its settings: the model's config values."""

    api: str

    def config_value(self, subsystem: str, name: str) -> Any: ...


class FileStore(FrameSink, Protocol):
    """The file writer: HDF5 files of the series, its status and commands."""

    capacity_bytes: int

    def status(self) -> Dict[str, Any]: ...

    def command(self, name: str, body: Any = None) -> None: ...

    def buffer_free(self) -> int: ...

    def list_files(self) -> List[str]: ...

    def file_path(self, name: str) -> pathlib.Path: ...

    def delete_file(self, name: str) -> None: ...

    def close(self, timeout: float = 10.0) -> None: ...


class MonitorImages(FrameSink, Protocol):
    """The monitor: the last images as TIFF, its status and commands."""

    def status(self) -> Dict[str, Any]: ...

    def command(self, name: str, body: Any = None) -> None: ...

    def image_list(self) -> List[List[Any]]: ...

    def latest_tiff(self, threshold: Optional[int] = None) -> bytes: ...

    def pop_tiff(self) -> bytes: ...

    def get_tiff(self, series: int, image_id: int, threshold: Optional[int] = None) -> bytes: ...
