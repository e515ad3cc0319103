#!/usr/bin/env python3
"""Wire benchmark: a second client's memory-only reads while the first
client's command waits on a slow DCU (issue 11; target p99 < 5 ms).

``make bench`` runs it after bench/run.py; alone: ``python bench/wire_latency.py
[--seconds 6 --delay 0.5]``. It prints one table and puts it, as its own
section, into BENCHMARKS.md (``--output``; ``--output -`` prints only).

How it measures: the fake DCU runs in this process and is made slow through
its HTTP control ``PUT /fake/faults {"delay": D}`` (every SIMPLON answer
waits D seconds); eiger_server runs as a separate process against it. The
first client sends ``get nimages`` (a DCU read) again and again, so the
server's DCU executor is always waiting on the DCU. The second client sends
``get_status`` and ``get images_collected`` alternately, one at a time, and
times each round trip; only round trips that started and ended while a slow
call of the first client was outstanding are counted.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from eiger_server.fakedcu.app import FakeDCUApp  # noqa: E402
from eiger_server.wire.client import WireClient  # noqa: E402

SECTION = "## Wire: memory-only reads beside a slow DCU call"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(seconds: float, delay: float, scratch: str) -> Dict[str, float]:
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=Path(scratch) / "dcu")
    app.start()
    port = _free_port()
    cmd = [sys.executable, "-m", "eiger_server", "-p", str(port), "-L",
           os.path.join(scratch, "wire.lock"), "-l", os.path.join(scratch, "wire.log"),
           "-v", "1", "-a", "127.0.0.1", "-P", str(app.http_port),
           "--stream-port", str(app.stream_port), "--stream2-port", str(app.stream2_port)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    faults = f"http://127.0.0.1:{app.http_port}/fake/faults"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with WireClient("127.0.0.1", port, 2) as c:
                    c.command("config", "127.0.0.1", check=True)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("eiger_server did not start") from None
                time.sleep(0.1)
        requests.put(faults, json={"delay": delay}, timeout=5).raise_for_status()
        stop = threading.Event()
        outstanding: List[float] = []        # start of the first client's current slow call
        slow_calls: List[float] = []

        def first_client() -> None:
            with WireClient("127.0.0.1", port, 30) as c:
                while not stop.is_set():
                    t0 = time.monotonic()
                    outstanding.append(t0)
                    c.command("get", "nimages", check=True)
                    outstanding.clear()
                    slow_calls.append(time.monotonic() - t0)

        slow = threading.Thread(target=first_client, daemon=True)
        slow.start()
        times: List[float] = []
        skipped = 0
        with WireClient("127.0.0.1", port, 30) as second:
            end = time.monotonic() + seconds
            names = (("get_status",), ("get", "images_collected"))
            i = 0
            while time.monotonic() < end:
                began = outstanding[0] if outstanding else None
                t0 = time.perf_counter()
                resp = second.command(*names[i % 2], check=True)
                dt = time.perf_counter() - t0
                i += 1
                assert resp.text != "busy"
                # Counted only if the same slow call was outstanding throughout.
                if began is not None and outstanding and outstanding[0] == began:
                    times.append(dt)
                else:
                    skipped += 1
        stop.set()
        slow.join(delay * 4 + 10)
    finally:
        try:
            requests.put(faults, json={"delay": 0}, timeout=5)
        except requests.RequestException:
            pass
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        app.stop()
    if not times:
        raise RuntimeError("no read overlapped a slow DCU call")
    return {"reads": len(times), "skipped": skipped, "p50": _pct(times, 0.5) * 1e3,
            "p99": _pct(times, 0.99) * 1e3, "max": max(times) * 1e3,
            "slow_calls": len(slow_calls),
            "slow_call": (sum(slow_calls) / len(slow_calls)) if slow_calls else float("nan")}


def table(r: Dict[str, float], delay: float) -> str:
    return "\n".join([
        "| DCU delay | first client's call | reads timed | p50 ms | p99 ms | max ms | target |",
        "|---|---|---|---|---|---|---|",
        f"| {delay:g} s per answer | `get nimages`, {r['slow_call']:.2f} s each "
        f"({r['slow_calls']:.0f} calls) | {r['reads']:.0f} `get_status` / "
        f"`get images_collected` | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} "
        f"| p99 < 5 ms: {'met' if r['p99'] < 5 else 'NOT met'} |",
    ])


def write_section(path: Path, text: str) -> None:
    """Put ``text`` under SECTION in ``path``, replacing an earlier one."""
    old = path.read_text() if path.exists() else ""
    body = f"{SECTION}\n\n{text}\n"
    pattern = re.compile(re.escape(SECTION) + r"\n.*?(?=\n## |\Z)", re.S)
    new = pattern.sub(lambda _: body.rstrip("\n"), old) if SECTION in old \
        else (old.rstrip("\n") + "\n\n" + body if old else body)
    path.write_text(new if new.endswith("\n") else new + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="how long the second client reads")
    p.add_argument("--delay", type=float, default=0.5, help="seconds the DCU waits per answer")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"),
                   help="Markdown file to update ('-': print only)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wire-bench-") as scratch:
        result = measure(args.seconds, args.delay, scratch)
    text = table(result, args.delay)
    text += ("\n\nThe second client's reads go to the server's memory executor; the first "
             "client's `get nimages` holds the DCU executor for the whole delay. "
             f"{result['skipped']:.0f} reads that did not overlap one slow call throughout "
             "are left out. Measured by `bench/wire_latency.py` (fake DCU slowed through "
             "`PUT /fake/faults {\"delay\": ...}`).")
    print(text)
    if args.output != "-":
        write_section(Path(args.output), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
