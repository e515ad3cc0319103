"""Command-line options of eiger_server."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import List, Optional, Sequence

from eiger_server import __version__

PROGRAM = "eiger_server"
FAKE_APIS = ("1.6.0", "1.8.0")


def default_lockfile(port: int) -> str:
    """Where the lock file of the instance serving ``port`` lives by default."""
    return f"/tmp/{PROGRAM}-{port}.lock"


def default_logfile(port: int) -> str:
    """The log file of a daemonized instance without ``-l``."""
    return f"/tmp/{PROGRAM}-{port}.log"


@dataclass
class ServerOptions:
    """Everything the command line can set.

    ``dcu_host`` is None when ``-a`` was not given: the server still starts
    and ``config`` reports that no detector address is known.  The defaults
    here are the only ones: the parser (build_parser) takes them from here,
    and code and tests build options as ``ServerOptions(...)``.
    """

    dcu_host: Optional[str] = None
    dcu_port: int = 80
    port: int = 5000
    bind: str = ""
    daemon: bool = False
    kill: bool = False
    logfile: Optional[str] = None
    lockfile: Optional[str] = None
    verbosity: int = 1
    show_version: bool = False
    rotation: int = 0
    flipv: bool = False
    fliph: bool = False
    fake_dcu: bool = False
    fake_api: str = "1.8.0"
    fake_model: str = "1M"
    fake_profile: str = "ideal"
    simplon_version: Optional[str] = None
    http_timeout: float = 5.0
    stream_port: int = 9999
    stream2_port: int = 31001
    queue_depth: int = 64
    stream_workers: int = 2
    http_port: Optional[int] = None
    publish: Optional[str] = None
    publish_decoded: float = 0.0
    workers: int = 0                 # worker processes (stream/workers.py); 0 = threads only
    worker_port: int = 0             # their ROUTER port (+1 for results); 0 = any free port

    @property
    def lock_path(self) -> str:
        """The lock file in effect (``-L`` or the default for the port)."""
        return self.lockfile or default_lockfile(self.port)

    @property
    def log_path(self) -> Optional[str]:
        """The log file in effect: ``-l``, the default when daemonized, or
        None for standard output."""
        if self.logfile:
            return self.logfile
        return default_logfile(self.port) if self.daemon else None


_DESCRIPTION = """\
Serve a DECTRIS EIGER detector to spec over spec's server_hdw protocol.
spec normally starts this program itself with -p, -d and -a taken from its
configuration; run it by hand to test, to stop a daemonized instance (-k) or
to ask the detector for its SIMPLON version (-V)."""

_EPILOG = """\
examples:
  eiger_server -a 192.168.48.110 -p 5000 -v 2      serve in the foreground
  eiger_server -p 5000 -k                         stop the instance on port 5000
  eiger_server -V -a 192.168.48.110 -P 80         print the SIMPLON version
  eiger_server --fake-dcu --fake-api 1.6.0 -p 5001  serve a simulated detector"""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0-65535")
    return value


def _verbosity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"verbosity {text!r} is not a number 1-4") from None
    if not 1 <= value <= 4:
        raise argparse.ArgumentTypeError(f"verbosity {value} is outside 1-4")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value} is outside 1-1000000")
    return value


def _process_workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers {text!r} is not a number") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"--workers {value}: give 0 (none) to 64")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{value} decoding threads is outside 1-64")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of images per second"
                                         ) from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"{value:g} images/s is outside (0, 1000]")
    return value


def _publish_address(text: str) -> str:
    if not text.startswith("tcp://") or ":" not in text[len("tcp://"):]:
        raise argparse.ArgumentTypeError(f"{text!r} is not tcp://HOST:PORT "
                                         "(for example tcp://*:9100)")
    return text


# The fake DCU's profile presets (fakedcu/device/profiles.py PROFILES; a unit
# test keeps the two equal), named here so the parser need not import the fake.
FAKE_PROFILES = ("ideal", "simplon-1.8-real", "simplon-1.6-real", "eager-simulator")

_DEFAULTS = ServerOptions()


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of eiger_server; its defaults are ServerOptions'."""
    d = _DEFAULTS
    p = argparse.ArgumentParser(prog=PROGRAM, description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    det = p.add_argument_group("detector")
    det.add_argument("-a", dest="dcu_host", metavar="HOST",
                     help="address or host name of the detector's DCU (spec passes its ADDR field)")
    det.add_argument("-P", dest="dcu_port", type=_port, default=d.dcu_port, metavar="PORT",
                     help=f"HTTP port of the DCU (default {d.dcu_port})")
    det.add_argument("--timeout", dest="http_timeout", type=_seconds, default=d.http_timeout,
                     metavar="SECONDS", help="time limit of one request to the DCU "
                     f"(default {d.http_timeout:g})")
    det.add_argument("--simplon-version", metavar="X.Y.Z",
                     help="use this SIMPLON API version instead of asking the detector")
    det.add_argument("--stream-port", dest="stream_port", type=_port, default=d.stream_port,
                     metavar="PORT", help="the DCU's stream V1 (legacy) port "
                     f"(default {d.stream_port})")
    det.add_argument("--stream2-port", dest="stream2_port", type=_port, default=d.stream2_port,
                     metavar="PORT", help="the DCU's stream V2 (CBOR) port "
                     f"(default {d.stream2_port})")
    det.add_argument("--queue-depth", dest="queue_depth", type=_count, default=d.queue_depth,
                     metavar="N", help="frames buffered between the stream and its "
                     "processing; past it frames are dropped and counted "
                     f"(default {d.queue_depth})")
    det.add_argument("--stream-workers", dest="stream_workers", type=_workers,
                     default=d.stream_workers, metavar="N",
                     help="threads decoding stream images; more use more cores on fast "
                     f"series (default {d.stream_workers})")
    det.add_argument("--workers", dest="workers", type=_process_workers, default=d.workers,
                     metavar="N", help="worker processes that decode and accumulate "
                     "stream images over ZeroMQ (0 = none: decode threads only; "
                     f"default {d.workers})")
    det.add_argument("--worker-port", dest="worker_port", type=_port,
                     default=d.worker_port, metavar="PORT",
                     help="port the workers connect to (PORT and PORT+1); set it to "
                     "run workers on other hosts (default: any free port)")
    det.add_argument("-V", dest="show_version", action="store_true",
                     help="print the detector's SIMPLON API version and exit (needs -a)")

    srv = p.add_argument_group("server")
    srv.add_argument("-p", dest="port", type=_port, default=d.port, metavar="PORT",
                     help=f"TCP port spec connects to (default {d.port})")
    srv.add_argument("--bind", default=d.bind, metavar="ADDRESS",
                     help="listen on this local address only (default: all interfaces)")
    srv.add_argument("-d", dest="daemon", action="store_true",
                     help="run in the background; log to /tmp/eiger_server-PORT.log unless -l")
    srv.add_argument("-k", dest="kill", action="store_true",
                     help="stop the instance serving PORT, remove its lock file and exit")
    srv.add_argument("-l", dest="logfile", metavar="FILE",
                     help="write the log to FILE (default: standard output)")
    srv.add_argument("-L", dest="lockfile", metavar="FILE",
                     help="lock file holding the server's pid (default /tmp/eiger_server-PORT.lock)")
    srv.add_argument("-v", dest="verbosity", type=_verbosity, default=d.verbosity, metavar="N",
                     help="log detail: 1 basic, 2 + client messages, 3 + acquisition progress, "
                          f"4 + debugging (default {d.verbosity})")
    srv.add_argument("--version", action="version", version=f"{PROGRAM} {__version__}")

    obs = p.add_argument_group("watching the stream from other programs")
    obs.add_argument("--http-port", dest="http_port", type=_port, default=d.http_port, metavar="PORT",
                     help="serve a read-only live view (/), /status, /metrics, /latest.png "
                          "and /latest.tiff on PORT, bound like --bind (default: off)")
    obs.add_argument("--publish", dest="publish", type=_publish_address, default=d.publish,
                     metavar="tcp://HOST:PORT", help="re-publish every image as received on "
                     "a ZeroMQ PUB socket bound there (default: off)")
    obs.add_argument("--publish-decoded", dest="publish_decoded", type=_rate, default=d.publish_decoded,
                     metavar="HZ", help="with --publish, also publish the latest decoded "
                     "image at most HZ times a second (default: off)")

    img = p.add_argument_group("image orientation (applied to images read through the stream)")
    img.add_argument("-r", "--rotate", "--rotate90", dest="rotation", action="store_const",
                     const=90, default=d.rotation, help="rotate images 90 degrees clockwise")
    img.add_argument("--rotate180", dest="rotation", action="store_const", const=180,
                     help="rotate images 180 degrees")
    img.add_argument("--rotate270", dest="rotation", action="store_const", const=270,
                     help="rotate images 270 degrees clockwise")
    img.add_argument("--flipv", action="store_true", help="flip images top to bottom")
    img.add_argument("--fliph", action="store_true", help="flip images left to right")

    fake = p.add_argument_group("simulation")
    fake.add_argument("--fake-dcu", action="store_true",
                      help="start a simulated DCU inside the server and use it instead of -a")
    fake.add_argument("--fake-api", choices=FAKE_APIS, default=d.fake_api,
                      help=f"SIMPLON API version the simulated DCU speaks (default {d.fake_api})")
    fake.add_argument("--fake-model", default=d.fake_model, metavar="MODEL",
                      help="detector model the simulated DCU pretends to be "
                      f"(default {d.fake_model})")
    # names checked by the fake (fakedcu/device/profiles.py), which this
    # module does not import: the server needs none of it without --fake-dcu
    fake.add_argument("--fake-profile", default=d.fake_profile, metavar="NAME",
                      choices=FAKE_PROFILES,
                      help="how the simulated DCU behaves: " + ", ".join(FAKE_PROFILES)
                      + f" (default {d.fake_profile})")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> ServerOptions:
    """Parse a command line (``sys.argv[1:]`` when None) into options.

    Bad options print a usage message and raise SystemExit(2).
    """
    ns = build_parser().parse_args(None if argv is None else list(argv))
    # Every dataclass field has an argparse destination of the same name, and
    # every destination a field (a new option cannot be forgotten here).
    names = {f.name for f in fields(ServerOptions)}
    extra = set(vars(ns)) - names
    if extra:
        raise TypeError(f"options without a ServerOptions field: {sorted(extra)}")
    return ServerOptions(**{name: getattr(ns, name) for name in names})


__all__: List[str] = ["ServerOptions", "parse_args", "build_parser", "default_lockfile",
                      "default_logfile", "PROGRAM"]
