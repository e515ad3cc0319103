"""REST client of the DECTRIS SIMPLON API (versions 1.6 and 1.8).

One ``requests.Session`` per thread (sessions are not documented as
thread-safe), bounded timeouts on every call, and errors that carry the URL,
the HTTP status and the DCU's own text.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import threading
from typing import Any, Dict, Iterator, List, Optional

import requests

from eiger_server.errors import DetectorError

log = logging.getLogger(__name__)

SUBSYSTEMS = ("detector", "filewriter", "stream", "monitor", "system")
KNOWN_VERSIONS = ("1.8.0", "1.6.0")

# Commands that take seconds on real hardware get a longer timeout than
# parameter reads; the control path never waits on them (command thread).
SLOW_COMMANDS = {"initialize": 120.0, "arm": 60.0, "restart": 120.0, "reboot": 120.0,
                 "check_connections": 60.0}


def version_tuple(version: str) -> tuple:
    """'1.8.0' -> (1, 8, 0); tolerant of suffixes."""
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?\Z")


def check_host(host: str) -> str:
    """A detector address fit for a URL: a host name, IPv4 or IPv6 address.

    Anything else (``/``, ``@``, ``?``, spaces...) would change the URL the
    requests go to, so it is refused. IPv6 addresses come back in brackets.
    """
    host = (host or "").strip()
    if not host:
        return ""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
        return f"[{address}]" if address.version == 6 else str(address)
    except ValueError:
        pass
    if _HOSTNAME.match(host):
        return host
    raise DetectorError(f"'{host}' is not a host name or IP address; give the DCU's "
                        "address (e.g. 192.168.48.110 or eiger-dcu.example.org)")


def _short(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


class SimplonClient:
    """Talks to one DCU at ``http://host:port``."""

    def __init__(self, host: str, port: int = 80, *, version: Optional[str] = None,
                 timeout: float = 5.0) -> None:
        self.host = check_host(host)
        self.port = int(port)
        self.timeout = float(timeout)
        self._version = version
        self._local = threading.local()
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Content-Type"] = "application/json"
            self._local.session = session
        return session

    def url(self, subsystem: str, task: str, name: str = "") -> str:
        path = f"{self.base_url}/{subsystem}/api/{self.version}/{task}"
        return f"{path}/{name}" if name else path

    def request(self, method: str, url: str, *, json_body: Any = None,
                timeout: Optional[float] = None, stream: bool = False,
                what: str = "") -> requests.Response:
        """One HTTP call; any failure becomes a DetectorError naming the URL."""
        what = what or f"{method} {url}"
        if not self.host:
            raise DetectorError(f"{what}: no detector address is known; start eiger_server "
                                "with -a HOST (spec passes the ADDR field of its config)")
        kwargs: Dict[str, Any] = {"timeout": timeout or self.timeout, "stream": stream}
        if json_body is not None:
            kwargs["json"] = json_body
        try:
            response = self._session().request(method, url, **kwargs)
        except requests.Timeout:
            raise DetectorError(
                f"{what}: the detector at {self.base_url} did not answer within "
                f"{kwargs['timeout']:g} s; check that the DCU is up and reachable",
                url=url) from None
        except requests.ConnectionError as exc:
            raise DetectorError(
                f"{what}: cannot reach the detector at {self.base_url} "
                f"({_short(exc, 120)}); check the -a/-P options and the network",
                url=url) from None
        except requests.RequestException as exc:
            raise DetectorError(f"{what}: HTTP request failed: {_short(exc)}", url=url) from None
        if response.status_code >= 400:
            text = _short(response.text)
            response.close()
            raise DetectorError(
                f"{what}: the detector answered HTTP {response.status_code}"
                + (f": {text}" if text else ""),
                url=url, status=response.status_code, text=text)
        return response

    @staticmethod
    def _json(response: requests.Response, url: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise DetectorError(f"{url}: the detector's answer is not JSON: "
                                f"{_short(response.text, 120)}", url=url) from None

    # -- version --------------------------------------------------------
    @property
    def version(self) -> str:
        if self._version is None:
            with self._lock:
                if self._version is None:
                    self._version = self.detect_version()
        return self._version

    def detect_version(self) -> str:
        """Ask the DCU its API version; probe known versions if it won't say."""
        url = f"{self.base_url}/detector/api/version/"
        try:
            answer = self._json(self.request("GET", url, what="detector version"), url)
            value = answer.get("value") if isinstance(answer, dict) else None
            if value:
                return str(value)
        except DetectorError as exc:
            if exc.status is None:      # nothing answers at all: no point probing
                raise
        for candidate in KNOWN_VERSIONS:
            probe = f"{self.base_url}/detector/api/{candidate}/config/description"
            try:
                self.request("GET", probe, what="version probe").close()
                return candidate
            except DetectorError as exc:
                if exc.status is None:
                    raise
        raise DetectorError(
            f"the detector at {self.base_url} answers HTTP but none of the SIMPLON "
            f"versions {', '.join(KNOWN_VERSIONS)}; give one with --simplon-version",
            url=url)

    # -- parameters -----------------------------------------------------
    def get(self, subsystem: str, task: str, name: str,
            timeout: Optional[float] = None) -> Dict[str, Any]:
        """The full JSON description of a parameter (value, value_type, min, ...)."""
        url = self.url(subsystem, task, name)
        answer = self._json(self.request("GET", url, timeout=timeout,
                                         what=f"read {subsystem} {task} '{name}'"), url)
        if not isinstance(answer, dict):
            # Some 1.6 DCUs answer bare values for a few status names.
            answer = {"value": answer}
        return answer

    def get_value(self, subsystem: str, task: str, name: str) -> Any:
        return self.get(subsystem, task, name).get("value")

    def put(self, subsystem: str, task: str, name: str, value: Any = None, *,
            timeout: Optional[float] = None, what: str = "") -> Any:
        url = self.url(subsystem, task, name)
        body = None if value is None else {"value": value}
        response = self.request("PUT", url, json_body=body if body is not None else {},
                                timeout=timeout,
                                what=what or f"write {subsystem} {task} '{name}'")
        return self._json(response, url)

    def set_config(self, subsystem: str, name: str, value: Any) -> List[str]:
        """PUT a config value; returns the names whose values changed."""
        changed = self.put(subsystem, "config", name, value,
                           what=f"set {subsystem} '{name}' to {value!r}")
        if isinstance(changed, list):
            return [str(item) for item in changed]
        return [name]

    def command(self, subsystem: str, name: str, value: Any = None, *,
                timeout: Optional[float] = None) -> Any:
        timeout = timeout or max(self.timeout, SLOW_COMMANDS.get(name, self.timeout))
        return self.put(subsystem, "command", name, value, timeout=timeout,
                        what=f"{subsystem} command '{name}'")

    def keys(self, subsystem: str, task: str) -> List[str]:
        url = self.url(subsystem, task, "keys")
        answer = self._json(self.request("GET", url, what=f"list {subsystem} {task} names"), url)
        if isinstance(answer, dict):
            answer = answer.get("value", [])
        return [str(item) for item in (answer or [])]

    # -- files and images -----------------------------------------------
    def data_url(self, filename: str) -> str:
        return f"{self.base_url}/data/{filename}"

    def open_data(self, filename: str, timeout: Optional[float] = None) -> requests.Response:
        """Streaming GET of a file the FileWriter wrote (caller closes it)."""
        return self.request("GET", self.data_url(filename), stream=True, timeout=timeout,
                            what=f"download '{filename}'")

    def delete_data(self, filename: str) -> None:
        self.request("DELETE", self.data_url(filename), what=f"delete '{filename}'").close()

    def monitor_image(self, path: str) -> bytes:
        """GET /monitor/api/<v>/images/<path> (TIFF bytes)."""
        url = self.url("monitor", "images", path)
        return self.request("GET", url, what=f"monitor image '{path}'").content

    def monitor_list(self) -> Any:
        url = self.url("monitor", "images")
        return self._json(self.request("GET", url, what="list monitor images"), url)

    def iter_content(self, response: requests.Response,
                     chunk: int = 1 << 20) -> Iterator[bytes]:
        try:
            yield from response.iter_content(chunk)
        except requests.RequestException as exc:
            raise DetectorError(f"{response.url}: transfer broke off: {_short(exc)}",
                                url=response.url) from None


def detect_version(host: str, port: int = 80, timeout: float = 5.0) -> str:
    """The SIMPLON version of the DCU at host:port (for ``eiger_server -V``)."""
    return SimplonClient(host, port, timeout=timeout).detect_version()
