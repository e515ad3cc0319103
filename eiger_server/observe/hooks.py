"""The interface the stream path calls to be observed (and nothing else).

The receiver thread calls :meth:`StreamObserver.on_series_start`,
:meth:`~StreamObserver.on_frame` and :meth:`~StreamObserver.on_series_end`;
decoding workers call :meth:`~StreamObserver.on_image`; the saver thread
calls :meth:`~StreamObserver.on_saved`. Each is given only what the stream
already has (no copy, no decode, no extra work) and must return at once and
never raise: an observer that needs to do more hands it to its own thread.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from eiger_server.formats.stream_events import ImageMessage, SeriesEnd, SeriesHeader


class StreamObserver(Protocol):
    def on_series_start(self, header: Any, version: str) -> None:
        """A series header (formats.stream_events.SeriesHeader) arrived."""

    def on_frame(self, parts: Sequence[Any], series: int, frame: int, nbytes: int,
                 version: str) -> None:
        """An image was accepted: its zmq message ``parts`` as received."""

    def on_image(self, image: Any, meta: Mapping[str, Any]) -> None:
        """An image was decoded (``meta['nframes']`` > 1: an accumulated sum)."""

    def on_saved(self, paths: Sequence[str], nimages: int) -> None:
        """Files holding ``nimages`` images were written."""

    def on_series_end(self, series: int) -> None:
        """The series' end message arrived (its last images may still be in work)."""


class NullObserver:
    """Observes nothing; the stream's default."""

    def on_series_start(self, header: Any, version: str) -> None:
        pass

    def on_frame(self, parts: Sequence[Any], series: int, frame: int, nbytes: int,
                 version: str) -> None:
        pass

    def on_image(self, image: Any, meta: Mapping[str, Any]) -> None:
        pass

    def on_saved(self, paths: Sequence[str], nimages: int) -> None:
        pass

    def on_series_end(self, series: int) -> None:
        pass


NO_OBSERVER = NullObserver()


def notify(observer: StreamObserver, parts: Sequence[Any], event: Any, version: str) -> None:
    """(receiver thread) Tell ``observer`` about one accepted stream event."""
    if isinstance(event, ImageMessage):
        observer.on_frame(parts, event.series, event.frame, event.nbytes, version)
    elif isinstance(event, SeriesHeader):
        observer.on_series_start(event, version)
    elif isinstance(event, SeriesEnd):
        observer.on_series_end(event.series)
