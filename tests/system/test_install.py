"""make install: server, macros and help land in SPECD, and the server runs.

The top-level Makefile includes mk/spec.mk; ``make install SPECD=DIR``
installs build/eiger_server (a launcher that finds the project's Python
environment), macros/eiger.mac and the rendered help page.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import free_port, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# make builds the venv on first use (pip install): longer than the default timeout
pytestmark = pytest.mark.timeout(600)


def _make(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    if not (ROOT / "Makefile").exists():
        pytest.fail("no top-level Makefile: it must exist and include mk/spec.mk")
    return subprocess.run(["make", "--no-print-directory", *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def specd(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("spec.d")
    result = _make("install", f"SPECD={target}")
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def _hello(port: int) -> bool:
    """True once the server answers spec's hello on the port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"=: 1 hello\n")
            sock.settimeout(5)
            return sock.recv(200).startswith(b"@: 1")
    except OSError:
        return False


def test_install_puts_every_file_in_place(specd):
    server = specd / "servers" / "eiger_server"
    assert server.is_file() and os.access(server, os.X_OK)
    assert (server.stat().st_mode & 0o777) == 0o755
    macros = specd / "macros" / "eiger.mac"
    assert macros.read_bytes() == (ROOT / "macros" / "eiger.mac").read_bytes()
    help_page = (specd / "help" / "eiger").read_text(encoding="utf-8")
    assert "eiger_scan_head(id, unit, filename)" in help_page
    assert "PARAMETERS" in help_page.splitlines()


def test_installed_server_answers_help_from_anywhere(specd, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"       # the launcher must not rely on an activated venv
    result = subprocess.run([str(specd / "servers" / "eiger_server"), "--help"],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--fake-dcu" in result.stdout


def test_installed_server_starts_with_fake_dcu(specd, tmp_path):
    port = free_port()
    log = tmp_path / "server.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(specd / "servers" / "eiger_server"), "-p", str(port),
                                 "--fake-dcu"], cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or _hello(port), 30,
                 what="the installed eiger_server to answer hello")
        assert proc.poll() is None, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("eiger_server did not stop on SIGTERM")
    assert code == 0, log.read_text(errors="replace")


def test_specd_defaults_to_usr_local_lib_spec_d():
    result = _make("-n", "install")
    assert result.returncode == 0, result.stderr
    assert "/usr/local/lib/spec.d/servers/eiger_server" in result.stdout
    assert "/usr/local/lib/spec.d/macros/eiger.mac" in result.stdout
    assert "/usr/local/lib/spec.d/help/eiger" in result.stdout


def test_eiger_help_target_renders_both_formats():
    result = _make("eiger_help")
    assert result.returncode == 0, result.stdout + result.stderr
    source = (ROOT / "help" / "eiger.rst").stat().st_mtime
    for name in ("eiger", "eiger.html"):
        assert (ROOT / "help" / name).stat().st_mtime >= source, f"help/{name} is stale"
    assert (ROOT / "help" / "eiger").stat().st_size > 10000
    assert "<html" in (ROOT / "help" / "eiger.html").read_text(encoding="utf-8")
