"""``eiger_server``: parse options, take the lock, daemonize, serve."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, List, Optional, Sequence

from eiger_server import __version__
from eiger_server.logsetup import setup_logging
from eiger_server.options import PROGRAM, ServerOptions, parse_args
from eiger_server.app.process import (LockError, LockFile, StartupReporter, daemonize,
                      install_signal_handlers, kill_running)

log = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run eiger_server with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    opts = parse_args(argv)
    if opts.show_version:
        return show_simplon_version(opts)
    if opts.kill:
        return kill_running(opts.port, opts.lock_path)

    lock = LockFile(opts.lock_path)
    try:
        lock.acquire()
    except LockError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1

    logfile = opts.log_path
    if logfile:
        logfile = os.path.abspath(logfile)   # the daemon changes to /
    if opts.daemon:
        reporter = daemonize(logfile or "")   # only the daemon returns
        lock.update_pid()
    else:
        reporter = StartupReporter(echo=bool(logfile))
    try:
        setup_logging(opts.verbosity, logfile)
    except OSError as exc:
        message = f"cannot write the log file {logfile}: {exc.strerror}; choose another with -l"
        if opts.daemon:
            lock.release()
            reporter.failed(message)
        else:
            print(f"{PROGRAM}: {message}", file=sys.stderr)
            lock.release()
        return 1
    if lock.stale_pid:
        log.info("replaced stale lock file %s of pid %d, which is no longer running",
                 lock.path, lock.stale_pid)
    try:
        return serve(opts, reporter)
    finally:
        lock.release()


def serve(opts: ServerOptions, reporter: StartupReporter) -> int:
    """Build the detector side and the server, serve until told to stop."""
    from eiger_server.wire.server import HardwareServer

    log.info("%s %s starting: pid %d, port %d, verbosity %d", PROGRAM, __version__,
             os.getpid(), opts.port, opts.verbosity)
    stopping: List[str] = []          # the signals that asked to stop
    server: Optional[HardwareServer] = None

    def stop(signame: str) -> None:
        stopping.append(signame)
        if server is not None:
            server.stop()

    install_signal_handlers(stop)
    closers: List[Any] = []   # what to close at exit, in reverse order
    try:
        try:
            if opts.fake_dcu:
                from eiger_server.fakedcu.app import FakeDCUApp

                app = FakeDCUApp(api=opts.fake_api, model=opts.fake_model,
                             profile=opts.fake_profile)
                app.start()
                closers.append(("fake DCU", app.stop))
                opts.dcu_host = "127.0.0.1"
                opts.dcu_port = app.http_port
                opts.stream_port = app.stream_port
                opts.stream2_port = app.stream2_port
                log.info("simulated DCU (SIMPLON %s, model %s) at http://127.0.0.1:%d",
                         opts.fake_api, opts.fake_model, app.http_port)
            elif not opts.dcu_host:
                log.warning("no detector address given (-a HOST); config will say so "
                            "if the detector cannot be reached")
            from eiger_server.control.commands import CommandHandler
            from eiger_server.control.controller import EigerController

            ctrl = EigerController(opts)
            closers.append(("controller", ctrl.close))
            from eiger_server.observe.service import Observation

            observation = Observation(ctrl, opts)
            closers.append(("live view and publisher", observation.close))
            handler = CommandHandler(ctrl)
            closers.append(("command handler", handler.close))
            server = HardwareServer(observation.wrap(handler), opts.port, opts.bind)
        except Exception as exc:
            message = f"start-up failed: {exc}"
            log.error("%s", message, exc_info=not isinstance(exc, OSError))
            reporter.failed(message)
            return 1
        reporter.ready()
        if stopping:
            log.info("received %s during start-up; stopping", stopping[0])
            return 0
        server.serve_forever()
        if stopping:
            log.info("received %s; stopping", stopping[0])
        return 0
    finally:
        for what, close in reversed(closers):
            try:
                close()
            except Exception:
                log.exception("closing the %s failed", what)
        log.info("%s on port %d has stopped", PROGRAM, opts.port)


def show_simplon_version(opts: ServerOptions) -> int:
    """Option -V: print the detector's SIMPLON API version."""
    app = None
    host, port = opts.dcu_host, opts.dcu_port
    try:
        if opts.fake_dcu:
            from eiger_server.fakedcu.app import FakeDCUApp

            app = FakeDCUApp(api=opts.fake_api, model=opts.fake_model,
                             profile=opts.fake_profile)
            app.start()
            host, port = "127.0.0.1", app.http_port
        if not host:
            print(f"{PROGRAM}: -V needs the detector's address: -a HOST [-P PORT]",
                  file=sys.stderr)
            return 1
        from eiger_server.simplon.rest import detect_version

        print(detect_version(host, port, opts.http_timeout))
        return 0
    except Exception as exc:
        print(f"{PROGRAM}: cannot read the SIMPLON version from {host}:{port}: {exc}",
              file=sys.stderr)
        return 1
    finally:
        if app is not None:
            app.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
