"""Command line: run a fake DCU until SIGINT/SIGTERM.

``python -m eiger_server.fakedcu --http-port 8080 --api 1.8.0 --model 1M``
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import List, Optional

from eiger_server.fakedcu.app import FakeDCUApp
from eiger_server.fakedcu.device.definitions import API_VERSIONS, MODELS
from eiger_server.fakedcu.device.filewriter_profile import PRESETS
from eiger_server.fakedcu.device.profiles import PROFILES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eiger_server.fakedcu",
        description="A simulated DECTRIS EIGER DCU: SIMPLON REST API, stream V1/V2, "
                    "file writer and monitor, for testing without a detector.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8080,
                   help="REST API port (a real DCU uses 80; 0 = any free port; default 8080)")
    p.add_argument("--stream-port", type=int, default=9999,
                   help="stream V1 (legacy) port (default 9999; 0 = any free port)")
    p.add_argument("--stream2-port", type=int, default=31001,
                   help="stream V2 (CBOR) port (default 31001; 0 = any free port)")
    p.add_argument("--api", choices=API_VERSIONS, default="1.8.0",
                   help="SIMPLON API version to speak (default 1.8.0)")
    p.add_argument("--model", choices=list(MODELS), default="1M",
                   help="detector model, sets image size and maximum frame rate (default 1M)")
    p.add_argument("--source", default="synthetic",
                   help="frame source: synthetic, hdf5:MASTER.h5 or cbor:DIRECTORY")
    p.add_argument("--data-dir", default=None,
                   help="where the file writer keeps its files (default: a temporary directory)")
    p.add_argument("--arm-delay", type=float, default=0.0,
                   help="seconds that initialize and arm take (default 0)")
    p.add_argument("--files-profile", choices=list(PRESETS), default=None,
                   help="how the file writer, initialize and restart behave: simple (files "
                        "appear complete) or like a real DCU (dectris, dectris-ready); default: the --fake-profile's")
    p.add_argument("--fake-profile", choices=list(PROFILES), default="ideal",
                   help="how the simulated DCU sequences a series (trigger answer, stream "
                        "latency, images per trigger, auto-disarm); default ideal")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-v info, -vv debug)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        app = FakeDCUApp(api=args.api, model=args.model, host=args.host,
                         http_port=args.http_port, stream_port=args.stream_port,
                         stream2_port=args.stream2_port, source=args.source,
                         data_dir=args.data_dir, arm_delay=args.arm_delay,
                         files_profile=args.files_profile, profile=args.fake_profile)
        app.start()
    except (OSError, ValueError, ImportError) as exc:
        print(f"fakedcu: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    print(f"fakedcu api {args.api} model {args.model} profile {args.fake_profile} http {app.url} "
          f"http_port {app.http_port} stream_port {app.stream_port} "
          f"stream2_port {app.stream2_port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
