"""FakeDCUApp: the fake DCU's model, stores, HTTP server and stream adapters wired together."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Union

from eiger_server.fakedcu.sources.synthetic import make_source
from eiger_server.fakedcu.adapters.http import FakeDCUHTTPServer, Faults
from eiger_server.fakedcu.interfaces import FrameSource
from eiger_server.fakedcu.device.filewriter_profile import FileWriterProfile
from eiger_server.fakedcu.device.filewriter_profile import profile as profile_named
from eiger_server.fakedcu.device.model import FakeDCU
from eiger_server.fakedcu.device.profiles import Profile
from eiger_server.fakedcu.stores.filewriter import FileWriterStore
from eiger_server.fakedcu.stores.monitor_store import MonitorStore

log = logging.getLogger(__name__)

__all__ = ["FakeDCUApp"]


class _FileWriterSettings:
    """What the file writer reads: the model's config values, and its directory
    (None: a temporary one)."""

    def __init__(self, model: FakeDCU, data_dir: Optional[Path]):
        self.api = model.api
        self.config_value = model.config_value
        self.data_dir = data_dir


class FakeDCUApp:
    """A complete fake DCU on local ports (0 = a free port).

    ``start()`` binds and serves on background threads, ``stop()`` ends it;
    also a context manager. After start: ``http_port``, ``stream_port``
    (stream V1), ``stream2_port`` (stream V2) and ``url``. Real DCUs use
    80, 9999 and 31001. ``model`` is the device (its stores in
    ``model.filestore`` and ``model.monitorstore``), ``faults`` the switches
    of the REST API (``/fake/faults``). ``profile`` (a preset name of
    profiles.PROFILES or a Profile) says how the device sequences a series;
    ``files_profile`` (a :class:`FileWriterProfile` or a preset's name; default:
    the profile's own) how the FileWriter, ``initialize`` and ``restart`` behave.
    """

    def __init__(self, api: str = "1.8.0", model: str = "1M", host: str = "127.0.0.1",
                 http_port: int = 0, stream_port: int = 0, stream2_port: int = 0,
                 source: Union[str, FrameSource] = "synthetic",
                 data_dir: Optional[Union[str, Path]] = None, *,
                 streams: bool = True, arm_delay: float = 0.0,
                 files_profile: Union[str, FileWriterProfile, None] = None,
                 profile: Union[str, Profile, None] = None):
        self.host = host
        frame_source = make_source(source) if isinstance(source, str) else source
        self.model = FakeDCU(api, model, source=frame_source, arm_delay=arm_delay,
                             profile=profile)
        if files_profile is None:
            files_profile = self.model.profile.files
        self.files_profile = (profile_named(files_profile) if isinstance(files_profile, str)
                              else files_profile)
        self.model.files_profile = self.files_profile
        # the stores read their settings back from the model, which serves
        # their status and commands and feeds them the frames
        self._files = FileWriterStore(_FileWriterSettings(
            self.model, Path(data_dir) if data_dir is not None else None),
            profile=self.files_profile)
        self._monitor = MonitorStore(self.model)
        self.model.attach_stores(self._files, self._monitor)
        self._faults = Faults()
        self._want_ports = (http_port, stream_port, stream2_port)
        self._streams_wanted = streams
        self.http: Optional[FakeDCUHTTPServer] = None
        self.stream_v1: Any = None
        self.stream_v2: Any = None
        self.http_port: int = http_port
        self.stream_port: int = stream_port
        self.stream2_port: int = stream2_port
        self._started = False

    @property
    def url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def faults(self) -> Faults:
        """The fault switches of the REST API (also ``PUT /fake/faults``)."""
        return self._faults

    def start(self) -> "FakeDCUApp":
        """Bind all ports and start serving. OSError when a port is taken."""
        if self._started:
            return self
        http_port, stream_port, stream2_port = self._want_ports
        started: List[Any] = []
        try:
            if self._streams_wanted:
                from eiger_server.fakedcu.adapters.streams import StreamV1Adapter, StreamV2Adapter
                self.stream_v1 = StreamV1Adapter(self.model, self.host, stream_port)
                self.stream_v2 = StreamV2Adapter(self.model, self.host, stream2_port)
                for adapter in (self.stream_v1, self.stream_v2):
                    adapter.start()
                    started.append(adapter)
                    self.model.stream_adapters.append(adapter)
                    self.model.add_sink(adapter)
                self.stream_port = self.stream_v1.port
                self.stream2_port = self.stream_v2.port
            self.http = FakeDCUHTTPServer(self.model, self.host, http_port, files=self._files,
                                          monitor=self._monitor, faults=self._faults)
            self.http.start()
            self.http_port = self.http.port
        except Exception:
            for adapter in started:
                self._detach(adapter)
            raise
        self._started = True
        log.info("fake DCU (API %s, %s, profile %s) on %s, stream V1 port %s, stream V2 port %s",
                 self.model.api, self.model.detector_model, self.model.profile.name, self.url,
                 self.stream_port, self.stream2_port)
        return self

    def _detach(self, adapter: Any) -> None:
        self.model.remove_sink(adapter)
        if adapter in self.model.stream_adapters:
            self.model.stream_adapters.remove(adapter)
        try:
            adapter.close()
        except Exception:
            log.exception("closing stream adapter %r failed", adapter)

    def stop(self) -> None:
        """Stop serving, end any series, close sockets and threads."""
        if self.http is not None:
            self.http.close()
            self.http = None
        self.model.close()
        try:
            self._files.close()      # after the engine: the last series end is written
        except Exception:
            log.exception("closing the file writer failed")
        for adapter in (self.stream_v1, self.stream_v2):
            if adapter is not None:
                self._detach(adapter)
        self.stream_v1 = self.stream_v2 = None
        self._started = False

    def __enter__(self) -> "FakeDCUApp":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
