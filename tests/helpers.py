"""Test helpers, importable from every layer: paths, free ports, the
eiger_server process, waiting."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# shared/ (requirements, real DECTRIS recordings) lies beside the clone: <clone>/../shared
SHARED = ROOT.parent / "shared"


def in_ci() -> bool:
    """True when the suite runs in CI (environment variable CI=true)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_shared(path: Path) -> Path:
    """``path`` (inside ../shared) for a test that needs it.

    Absent in CI: the test fails, since CI always has shared/ beside the clone.
    Absent locally: the test is skipped, and the summary says so.
    """
    if path.exists():
        return path
    message = (f"{path} is absent: this test needs the shared data beside the clone "
               f"({SHARED}); put shared/ there")
    if in_ci():
        pytest.fail(message + " (CI=true: a missing shared/ is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns a true value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def hello_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"=: 1 hello\n")
            return sock.recv(200).startswith(b"@: 1 ")
    except OSError:
        return False


class ServerProcess:
    """``python -m eiger_server`` as spec would run it, in the foreground."""

    def __init__(self, args: List[str], tmp: Path, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.lock = tmp / f"eiger_server-{self.port}.lock"
        self.log = tmp / f"eiger_server-{self.port}.log"
        cmd = [sys.executable, "-m", "eiger_server", "-p", str(self.port), "-L", str(self.lock),
               "-l", str(self.log), "-v", "4", *args]
        self.proc = subprocess.Popen(cmd, cwd=str(tmp), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: self.proc.poll() is not None or hello_ok(self.port), 20,
                     what="eiger_server to answer hello")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace")
            raise AssertionError(f"eiger_server exited {self.proc.returncode}: {out}\n"
                                 f"{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()


def server_args_for(app) -> List[str]:
    """Options pointing eiger_server at an in-process FakeDCUApp."""
    return ["-a", "127.0.0.1", "-P", str(app.http_port), "--stream-port", str(app.stream_port),
            "--stream2-port", str(app.stream2_port)]



def take_first_image(client, data_directory) -> List[str]:
    """Over the wire: config, initialize, then one 10 ms ints image through
    the V1 stream (nothing saved). The words of config's answer (type, rows,
    columns)."""
    words = client.command("config", "127.0.0.1", check=True).text.split()
    client.set("initialize")
    wait_for(lambda: client.get("cmd_executing") == "0", 20, what="initialize")
    for name, value in [("data_directory", data_directory), ("stream_mode", 1),
                        ("stream_version", "V1"), ("stream_autosave", 0),
                        ("trigger_mode", "ints"), ("nimages", 1), ("ntrigger", 1),
                        ("count_time", 0.01), ("frame_time", 0.01)]:
        client.set(name, value)
    client.set("trigger")
    wait_for(lambda: client.command("get_status", check=True).text == "0", 20,
             what="the first image")
    assert client.get("images_collected") == "1"
    return words

def acquire(ctrl, nimages: int) -> int:
    """One series of ``nimages`` fast images through an in-process controller;
    returns its series id once the series is over."""
    ctrl.set("nimages", [str(nimages)])
    ctrl.set("ntrigger", ["1"])
    ctrl.set("trigger_mode", ["ints"])
    ctrl.set("count_time", ["0.001"])
    ctrl.set("frame_time", ["0.002"])
    seqid = int(ctrl.set("arm"))
    ctrl.set("trigger")
    wait_for(lambda: not ctrl.acq.counting() and ctrl.get("state") in ("ready", "idle"), 20,
             what="the series")
    ctrl.set("disarm")
    return seqid


class StubController:
    """What StreamHandler needs of EigerController, with no DCU: detector
    values come from ``config`` ({(subsystem, name): value}); writes land there
    too and are listed in ``written``. ``stream_handler()`` wires a handler to it."""

    def __init__(self, data_directory, port: int = 1, config=None, prefix: str = "s$id",
                 **options) -> None:
        from types import SimpleNamespace

        from eiger_server.options import ServerOptions
        from eiger_server.control.settings import Settings
        self.options = ServerOptions(stream_port=port, stream2_port=port, **options)
        self.simplon = SimpleNamespace(host="127.0.0.1", get=self._status)
        self.settings = Settings(self.write_config)
        self.settings.data_directory = str(data_directory)
        self.settings.prefix = prefix
        self.acq_mode = "SINGLE"
        self.version = "1.8.0"
        self.config = dict(config or {})
        self.written = []

    def stream_handler(self):
        """A StreamHandler wired to this stub as the controller wires it."""
        from eiger_server.stream.handler import StreamHandler
        return StreamHandler(self, self.simplon, self.settings, self.options,
                             acq_mode=lambda: self.acq_mode)

    def _status(self, subsystem, task, name):
        from eiger_server.errors import DetectorError
        raise DetectorError("no DCU in this test")

    def version_at_least(self, major, minor):
        return True

    def config_value(self, key, subsystem="detector"):
        from eiger_server.errors import DetectorError
        if (subsystem, key) not in self.config:
            raise DetectorError(f"{key} unknown")
        return self.config[(subsystem, key)]

    def write_config(self, subsystem, key, value, force=False):
        self.written.append((subsystem, key, value))
        self.config[(subsystem, key)] = value
        return True


def kernel_frame(dtype: type, shape: tuple = (257, 301), seed: int = 0) -> np.ndarray:
    """Random pixels of ``dtype``, 2 % at the type's maximum (masked), one just below."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    image = rng.integers(0, min(top, 1 << 20), shape, dtype=np.uint64).astype(dtype)
    image[rng.random(shape) < 0.02] = top           # masked / gap pixels
    image[3, 5] = top - 1                           # the largest real value is not masked
    return image
