"""eiger_server as a process: lock file, daemon, -k, signals, exit status.

Each test runs ``python -m eiger_server`` in a subprocess with the simulated
detector (--fake-dcu), a free port and its own lock file.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eiger_server.wire.client import WireClient
from eiger_server.logsetup import CLIENT, PROGRESS, setup_logging, vlog
from eiger_server.options import ServerOptions, parse_args
from eiger_server.app.process import LockFile, pid_alive

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eiger_server", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def wait_port(port: int, timeout: float = START_TIMEOUT, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"server exited with {proc.returncode}: {out}{err}")
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} is still running"
        time.sleep(0.02)


def port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


@pytest.fixture
def pids():
    """pids of servers this test started; any left running are killed."""
    started: list[int] = []
    yield started
    for pid in started:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def setup(tmp_path):
    port = free_port()
    return port, tmp_path / "server.lock", tmp_path / "server.log"


def start_foreground(port: int, lock: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "eiger_server", "--fake-dcu", "--bind",
                             "127.0.0.1", "-p", str(port), "-L", str(lock), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_port(port, proc=proc)
    return proc


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - (INFO|CLIENT|PROGRESS|DEBUG|WARNING|ERROR) - ")


# ------------------------------------------------------------------ foreground

def test_foreground_server_sigterm_exits_cleanly(setup, pids):
    port, lock, log = setup
    proc = start_foreground(port, lock, "-l", str(log), "-v", "2")
    pids.append(proc.pid)
    assert lock.read_text().strip() == str(proc.pid)
    with WireClient("127.0.0.1", port, 10) as c:
        hello = c.hello("pytest")
    assert hello.startswith(f"hello back V2 {socket.gethostname()} {proc.pid} ")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert not lock.exists()
    lines = log.read_text().splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines if not line.startswith(" "))
    text = log.read_text()
    assert "-> #1 hello pytest" in text          # verbosity 2 logs client messages
    assert "SIGTERM" in text


def test_exit_command_ends_the_process(setup, pids):
    port, lock, _ = setup
    proc = start_foreground(port, lock)
    pids.append(proc.pid)
    with WireClient("127.0.0.1", port, 10) as c:
        assert c.command("exit").text == "ok"
    assert proc.wait(15) == 0
    assert not lock.exists()
    assert port_closed(port)


def test_second_instance_on_the_same_port_refuses(setup, pids):
    port, lock, _ = setup
    proc = start_foreground(port, lock)
    pids.append(proc.pid)
    second = run("--fake-dcu", "-p", str(port), "-L", str(lock))
    assert second.returncode == 1
    assert "already serves" in second.stderr and str(proc.pid) in second.stderr
    second_daemon = run("--fake-dcu", "-d", "-p", str(port), "-L", str(lock))
    assert second_daemon.returncode == 1
    assert lock.read_text().strip() == str(proc.pid)     # the first keeps its lock
    proc.terminate()
    assert proc.wait(15) == 0


def test_stale_lock_is_replaced(setup, pids):
    port, lock, log = setup
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n")
    proc = start_foreground(port, lock, "-l", str(log))
    pids.append(proc.pid)
    assert lock.read_text().strip() == str(proc.pid)
    assert f"stale lock file {lock} of pid {dead.pid}" in log.read_text()
    proc.terminate()
    assert proc.wait(15) == 0


def test_bad_options_exit_with_status_2():
    result = run("-v", "9")
    assert result.returncode == 2 and "verbosity 9" in result.stderr


def test_show_simplon_version_of_the_fake_dcu():
    result = run("-V", "--fake-dcu", "--fake-api", "1.6.0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.6.0"


def test_show_version_needs_an_address():
    result = run("-V")
    assert result.returncode == 1 and "-a HOST" in result.stderr


# ------------------------------------------------------------------ daemon

def test_daemon_start_status_and_kill(setup, pids):
    port, lock, _ = setup
    default_log = Path(f"/tmp/eiger_server-{port}.log")
    default_log.unlink(missing_ok=True)
    try:
        t0 = time.monotonic()
        result = run("--fake-dcu", "-d", "--bind", "127.0.0.1", "-p", str(port), "-L", str(lock))
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - t0 < START_TIMEOUT
        pid = int(lock.read_text())
        pids.append(pid)
        assert pid_alive(pid)
        assert str(pid) in result.stdout and str(default_log) in result.stdout
        # already listening when the starting command returned
        with WireClient("127.0.0.1", port, 10) as c:
            assert c.hello().split()[4] == str(pid)
        assert "listening" in default_log.read_text()
        killed = run("-p", str(port), "-L", str(lock), "-k")
        assert killed.returncode == 0, killed.stderr
        wait_gone(pid)
        assert not lock.exists()
        assert port_closed(port)
    finally:
        default_log.unlink(missing_ok=True)


def test_daemon_reports_a_failed_start(setup, pids):
    port, lock, log = setup
    with socket.socket() as blocker:          # somebody else has the port
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = run("--fake-dcu", "-d", "--bind", "127.0.0.1", "-p", str(port),
                     "-L", str(lock), "-l", str(log))
    assert result.returncode == 1
    assert "could not start" in result.stderr and "cannot listen" in result.stderr
    assert "start-up failed" in log.read_text()
    assert not lock.exists()


# ------------------------------------------------------------------ -k

def test_kill_with_nothing_running(setup):
    port, lock, _ = setup
    result = run("-p", str(port), "-L", str(lock), "-k")
    assert result.returncode == 1 and "nothing to stop" in result.stderr


def test_kill_removes_a_stale_lock(setup):
    port, lock, _ = setup
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n")
    result = run("-p", str(port), "-L", str(lock), "-k")
    assert result.returncode == 1 and "stale" in result.stderr
    assert not lock.exists()


def test_kill_escalates_to_sigkill(setup, pids):
    port, lock, _ = setup
    # An "eiger_server" that holds the lock and ignores SIGTERM.
    stubborn = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time\n"
         "from eiger_server.app.process import LockFile\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         f"LockFile({str(lock)!r}).acquire()\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pids.append(stubborn.pid)
    assert stubborn.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    result = run("-p", str(port), "-L", str(lock), "-k")
    assert result.returncode == 0, result.stderr
    assert "SIGKILL" in result.stderr
    assert 1.5 < time.monotonic() - t0 < 10
    assert stubborn.wait(5) == -signal.SIGKILL
    assert not lock.exists()


# ------------------------------------------------------------------ in-process pieces

def test_option_defaults_and_spec_style_command_line():
    opts = parse_args(["-p", "5001", "-d", "-a", "192.168.48.110"])
    assert (opts.port, opts.daemon, opts.dcu_host, opts.dcu_port) == (5001, True, "192.168.48.110", 80)
    assert opts.lock_path == "/tmp/eiger_server-5001.lock"
    assert opts.log_path == "/tmp/eiger_server-5001.log"       # daemon default
    assert parse_args([]).log_path is None                       # foreground: stdout
    assert parse_args(["-l", "x.log", "-d"]).log_path == "x.log"
    assert parse_args([]) == ServerOptions()


@pytest.mark.parametrize("flag,angle", [("-r", 90), ("--rotate", 90), ("--rotate90", 90),
                                        ("--rotate180", 180), ("--rotate270", 270)])
def test_rotation_options(flag, angle):
    assert parse_args([flag]).rotation == angle


def test_other_options():
    opts = parse_args(["--flipv", "--fliph", "--fake-dcu", "--fake-api", "1.6.0",
                       "--fake-model", "4M", "--simplon-version", "1.8.0", "--timeout", "2.5",
                       "-P", "8080", "-v", "3", "-L", "/tmp/x.lock", "--bind", "127.0.0.1", "-k"])
    assert (opts.flipv, opts.fliph, opts.fake_dcu, opts.fake_api, opts.fake_model) == \
        (True, True, True, "1.6.0", "4M")
    assert (opts.simplon_version, opts.http_timeout, opts.dcu_port, opts.verbosity) == \
        ("1.8.0", 2.5, 8080, 3)
    assert (opts.lock_path, opts.bind, opts.kill) == ("/tmp/x.lock", "127.0.0.1", True)
    with pytest.raises(SystemExit):
        parse_args(["--fake-api", "1.7.0"])


@pytest.mark.parametrize("verbosity,shown", [(1, {"info"}), (2, {"info", "client"}),
                                             (3, {"info", "client", "progress"}),
                                             (4, {"info", "client", "progress", "debug"})])
def test_verbosity_levels_and_line_format(tmp_path, verbosity, shown):
    import logging

    log = tmp_path / "v.log"
    root_level = logging.getLogger().level
    handler = setup_logging(verbosity, str(log))
    try:
        lg = logging.getLogger("eiger_server.test")
        lg.info("info")
        lg.log(CLIENT, "client")
        lg.log(PROGRESS, "progress")
        lg.debug("debug")
        vlog(2, "via vlog")
        handler.flush()
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
        handler.close()
    lines = log.read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in lines)
    assert {line.split(" - ")[2] for line in lines} - {"via vlog"} == shown
    assert ("via vlog" in log.read_text()) == (verbosity >= 2)
    assert any(" - CLIENT - " in line for line in lines) == (verbosity >= 2)


def test_lock_file_in_process(tmp_path):
    path = tmp_path / "x.lock"
    with LockFile(str(path)) as lock:
        assert path.read_text().strip() == str(os.getpid()) and lock.held
        other = subprocess.run(
            [sys.executable, "-c",
             "import sys\nfrom eiger_server.app.process import LockFile, AlreadyRunning\n"
             f"try:\n    LockFile({str(path)!r}).acquire()\nexcept AlreadyRunning as e:\n"
             "    print(e.pid)\n    sys.exit(3)\n"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert other.returncode == 3 and other.stdout.strip() == str(os.getpid())
    assert not path.exists()
