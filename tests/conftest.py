"""Shared fixtures: a real fake DCU (HTTP + ZeroMQ + HDF5) and the controller."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import ServerProcess, server_args_for  # noqa: E402

from eiger_server.app.options import ServerOptions  # noqa: E402

APIS = ["1.6.0", "1.8.0"]


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own directory: nothing a test (or a server it
    starts) writes by a relative name can land in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=APIS)
def api(request) -> str:
    return request.param


@pytest.fixture
def fake_dcu(api, tmp_path):
    """A started fake DCU (500K, small frames) for the parametrized API."""
    from eiger_server.fakedcu.app import FakeDCUApp
    app = FakeDCUApp(api=api, model="500K", data_dir=tmp_path / "dcu")
    app.start()
    yield app
    app.stop()


@pytest.fixture
def dcu(tmp_path):
    """A started fake DCU, SIMPLON 1.8.0, 500K, for tests that need only one API."""
    from eiger_server.fakedcu.app import FakeDCUApp
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=tmp_path / "dcu")
    app.start()
    yield app
    app.stop()


def controller_options(app, **overrides) -> ServerOptions:
    """Options pointing a controller at the in-process fake DCU ``app``."""
    return ServerOptions(dcu_host="127.0.0.1", dcu_port=app.http_port,
                         stream_port=app.stream_port, stream2_port=app.stream2_port,
                         **overrides)


@pytest.fixture
def controller(fake_dcu, tmp_path):
    """An EigerController in this process, talking to the fake DCU over HTTP."""
    from eiger_server.control.controller import EigerController
    ctrl = EigerController(controller_options(fake_dcu))
    data = tmp_path / "data"
    ctrl.set("data_directory", [str(data)])
    ctrl.simplon.command("detector", "initialize")
    yield ctrl
    ctrl.close()


@pytest.fixture
def server(fake_dcu, tmp_path):
    """eiger_server as a subprocess against the fake DCU."""
    proc = ServerProcess(server_args_for(fake_dcu), tmp_path)
    yield proc
    proc.stop()
