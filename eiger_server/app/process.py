"""The server as an operating-system process: lock file, daemon, -k, signals.

* The lock file holds the server's pid and stays ``flock``-ed while the
  server runs, so a crashed server never leaves a lock that looks live: a
  lock nobody holds whose pid is dead (or not an eiger_server) is stale and
  is replaced.
* :func:`daemonize` forks twice; the original process waits on a pipe until
  the daemon says it is serving (exit status 0) or why it could not start
  (message on stderr, exit status 1).
* :func:`kill_running` is option ``-k``.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import signal
import sys
import time
from typing import Callable, Optional

from eiger_server.options import PROGRAM, default_lockfile

log = logging.getLogger(__name__)

#: How long the original process waits for the daemon to report.
STARTUP_WAIT = 60.0


class LockError(Exception):
    """The lock file cannot be taken."""


class AlreadyRunning(LockError):
    """Another live instance holds the lock."""

    def __init__(self, path: str, pid: Optional[int]) -> None:
        who = f"pid {pid}" if pid else "a process"
        super().__init__(f"another {PROGRAM} ({who}) already serves this port "
                         f"(lock file {path}); stop it with -k or choose another port with -p")
        self.path = path
        self.pid = pid


# ---------------------------------------------------------------- processes

def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # state is the field after the parenthesised command name
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def looks_like_server(pid: int) -> bool:
    """True if ``pid`` is alive and its command line names eiger_server
    (guards against a recycled pid). Without /proc, any live pid counts."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return PROGRAM.encode() in f.read()
    except OSError:
        return True


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path, "r", encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _lock_held(path: str) -> bool:
    """True if some process holds the flock of ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing also drops the flock we may have taken
    return False


# ---------------------------------------------------------------- lock file

class LockFile:
    """The pid lock file of one server instance."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)   # the daemon changes to / later
        self._fd: Optional[int] = None
        self.stale_pid: Optional[int] = None  # pid of a dead owner the lock was taken from

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`AlreadyRunning` / :class:`LockError`."""
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise LockError(f"cannot open lock file {self.path}: {exc.strerror}; "
                                f"choose another one with -L") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise AlreadyRunning(self.path, _read_pid(self.path)) from None
                raise LockError(f"cannot lock {self.path}: {exc.strerror}") from exc
            # The file may have been removed by its previous owner between our
            # open and flock: then we locked an orphan; try again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _read_pid(self.path)
            if old and old != os.getpid():
                if looks_like_server(old):
                    # Alive but without the flock (e.g. lock file on a file
                    # system without flock): still refuse.
                    os.close(fd)
                    raise AlreadyRunning(self.path, old)
                self.stale_pid = old
                log.info("replacing stale lock file %s (pid %d is not running)", self.path, old)
            self._fd = fd
            self.update_pid()
            return
        raise LockError(f"could not take lock file {self.path}: it keeps being replaced")

    def update_pid(self) -> None:
        """Write the current pid (after daemonizing it has changed)."""
        if self._fd is None:
            return
        data = f"{os.getpid()}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock."""
        if self._fd is None:
            return
        try:
            if _read_pid(self.path) == os.getpid():
                os.unlink(self.path)
        except OSError as exc:
            log.warning("could not remove lock file %s: %s", self.path, exc)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "LockFile":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------- daemon

class StartupReporter:
    """Tells the waiting original process how the start-up went.

    Without a pipe (foreground run) ``failed`` prints the message on stderr
    when the log goes to a file, so the user sees it either way.
    """

    def __init__(self, fd: Optional[int] = None, echo: bool = False) -> None:
        self._fd = fd
        self._echo = echo

    def ready(self) -> None:
        """The server is listening."""
        self._send(f"ready {os.getpid()}", close=True)

    def failed(self, message: str) -> None:
        """The server could not start, because of ``message``.

        The pipe stays open until this process exits, so the waiting parent
        returns only after the daemon has cleaned up (lock file removed).
        """
        if self._fd is None and self._echo:
            print(f"{PROGRAM}: {message}", file=sys.stderr, flush=True)
        self._send("failed " + " ".join(message.split()), close=False)

    def _send(self, line: str, close: bool) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, (line + "\n").encode("utf-8", errors="replace"))
        except OSError:
            pass  # the parent gave up waiting
        if close:
            os.close(self._fd)
        self._fd = None


def daemonize(logfile: str, wait: float = STARTUP_WAIT) -> StartupReporter:
    """Become a daemon; return (in the daemon) the start-up reporter.

    The calling process does not return: it waits for the daemon's report and
    exits 0 once the daemon serves, or prints the reason and exits 1. Call it
    before any thread is started.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    first = os.fork()
    if first:
        os.close(wfd)
        status = _wait_for_daemon(rfd, first, logfile, wait)
        os._exit(status)
    # first child: leave the terminal's session, then fork again so the
    # daemon is not a session leader and can never get a terminal back.
    os.close(rfd)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return StartupReporter(wfd)


def _wait_for_daemon(rfd: int, child: int, logfile: str, wait: float) -> int:
    data = b""
    deadline = time.monotonic() + wait
    # Read up to "ready"; after "failed", on to the end of the pipe (the
    # daemon has exited and cleaned up), but not for long.
    while not (data.startswith(b"ready") and b"\n" in data):
        if data.startswith(b"failed") and b"\n" in data:
            deadline = min(deadline, time.monotonic() + 10.0)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if not ready:
            continue
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(rfd)
    try:
        os.waitpid(child, 0)
    except ChildProcessError:
        pass
    line = data.decode("utf-8", errors="replace").strip()
    if line.startswith("ready"):
        pid = line.split()[1] if len(line.split()) > 1 else "?"
        print(f"{PROGRAM}: serving in the background as pid {pid}; log in {logfile}", flush=True)
        return 0
    if line.startswith("failed"):
        reason = line[len("failed"):].strip()
        print(f"{PROGRAM}: could not start: {reason} (see {logfile})", file=sys.stderr, flush=True)
    elif data:
        print(f"{PROGRAM}: unexpected start-up report {line!r}; see {logfile}",
              file=sys.stderr, flush=True)
    elif time.monotonic() >= deadline:
        print(f"{PROGRAM}: the background server did not report within {wait:.0f} s; "
              f"it may still be starting, see {logfile}", file=sys.stderr, flush=True)
    else:
        print(f"{PROGRAM}: the background server exited during start-up; see {logfile}",
              file=sys.stderr, flush=True)
    return 1


# ---------------------------------------------------------------- -k

def kill_running(port: int, lockfile: Optional[str] = None, wait: float = 2.0) -> int:
    """Stop the instance serving ``port`` (option ``-k``); the exit status.

    SIGTERM first, SIGKILL if it is still there after ``wait`` seconds; the
    lock file is removed. Returns 0 when an instance was stopped, 1 when none
    was running (a stale lock file is removed) or it could not be stopped.
    """
    path = os.path.abspath(lockfile or default_lockfile(port))
    if not os.path.exists(path):
        print(f"{PROGRAM}: nothing to stop: no lock file {path} for port {port}",
              file=sys.stderr)
        return 1
    pid = _read_pid(path)
    held = _lock_held(path)
    if pid is None or not pid_alive(pid) or (not held and not looks_like_server(pid)):
        if held:
            print(f"{PROGRAM}: lock file {path} is in use but holds no valid pid; "
                  f"not touching it", file=sys.stderr)
            return 1
        _remove(path)
        print(f"{PROGRAM}: no server was running on port {port}; removed stale lock file {path}",
              file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _remove(path)
        return 1
    except PermissionError:
        print(f"{PROGRAM}: not allowed to stop pid {pid} (another user's process)",
              file=sys.stderr)
        return 1
    if not _wait_gone(pid, wait):
        print(f"{PROGRAM}: pid {pid} ignored SIGTERM for {wait:g} s; sending SIGKILL",
              file=sys.stderr)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not _wait_gone(pid, 2.0):
            print(f"{PROGRAM}: pid {pid} is still there after SIGKILL", file=sys.stderr)
            return 1
    if _read_pid(path) == pid:
        _remove(path)
    print(f"{PROGRAM}: stopped the server on port {port} (pid {pid})")
    return 0


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        print(f"{PROGRAM}: could not remove {path}: {exc.strerror}", file=sys.stderr)


# ---------------------------------------------------------------- signals

def install_signal_handlers(stop: Callable[[str], None]) -> None:
    """Make SIGTERM and SIGINT call ``stop(signal name)`` (a clean shutdown)
    instead of killing the process. Must be called on the main thread.

    The handler does not log: it runs between two bytecodes of the main
    thread, possibly inside a log call, where a nested record can be lost;
    the caller logs the name once the server has stopped."""
    def on_signal(signum: int, _frame: object) -> None:
        stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
