"""Shared fixtures: a real fake DCU (HTTP + ZeroMQ + HDF5) and the controller."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# A few test modules import helpers of another (test_transfers' Proxy, test_dcu_faults'
# configure): every folder is importable, whatever subset of the suite runs.
for _folder in sorted(Path(__file__).resolve().parent.glob("*/**/")):
    if _folder.name != "__pycache__" and str(_folder) not in sys.path:
        sys.path.append(str(_folder))

from helpers import SHARED, ServerProcess, in_ci, require_shared, server_args_for  # noqa: E402

from eiger_server.options import ServerOptions  # noqa: E402

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


# -- layers: a test's folder is its marker (unit, integration, system) -------------------
LAYERS = ("unit", "integration", "system")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    unplaced = set()
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(TESTS).parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
        else:
            unplaced.add("/".join(parts))
    if unplaced:
        # such tests run in "make test" but escape "make test-fast" and -m selections
        warnings.warn(pytest.PytestWarning(
            f"{', '.join(sorted(unplaced))}: not in a layer folder; move it (git mv) under "
            f"tests/{{{','.join(LAYERS)}}}/ to give it a layer marker"), stacklevel=2)


def pytest_runtest_setup(item):
    """``@pytest.mark.needs_shared(path)``: fail in CI, skip locally, when path is absent."""
    for marker in item.iter_markers("needs_shared"):
        for path in marker.args:
            require_shared(Path(path))


def pytest_terminal_summary(terminalreporter):
    if SHARED.is_dir() or in_ci():
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if str(SHARED) in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"WARNING: {len(skipped)} tests skipped because {SHARED} is absent; "
            "in CI (CI=true) they fail", yellow=True, bold=True)
