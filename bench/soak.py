"""Soak run: eiger_server for a long time against the fake DCU.

Repeats arm / trigger / disarm series with TIFF autosave on (the stream
alternates between V1 and V2 every few series) and checks, at the end, that
every frame the fake DCU sent was saved (saved count = sent count, nothing
dropped, no count failed), that the server stayed responsive, and that its
memory stayed flat. ``make soak`` runs it for 30 minutes; any length works::

    .venv/bin/python bench/soak.py --minutes 2

Saved images are checked (the last of each series against the frame the
fake DCU made) and then deleted, so the disk does not fill up. The exit
status is 0 when every check passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eiger_server.storage import tiff as tiffsave  # noqa: E402
from eiger_server.wire.client import WireClient  # noqa: E402
from eiger_server.fakedcu.app import FakeDCUApp  # noqa: E402

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_until(predicate, timeout: float, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Soak:
    """One soak run; ``run()`` returns True when every check passed."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="eiger-soak-", dir=args.workdir))
        self.data = self.work / "data"
        self.app: Optional[FakeDCUApp] = None
        self.proc: Optional[subprocess.Popen] = None
        self.port = free_port()
        self.series = 0
        self.saved = 0
        self.failures: List[str] = []
        self.rss: List[tuple] = []            # (seconds since start, bytes)
        self.hello_worst = 0.0
        self.series_times: List[float] = []

    # -- set-up ------------------------------------------------------------
    def start(self) -> WireClient:
        self.app = FakeDCUApp(api="1.8.0", model=self.args.model, data_dir=self.work / "dcu")
        self.app.start()
        log = self.work / "eiger_server.log"
        cmd = [sys.executable, "-m", "eiger_server", "-p", str(self.port), "--bind", "127.0.0.1",
               "-L", str(self.work / "eiger_server.lock"), "-l", str(log), "-v", "1",
               "-a", "127.0.0.1", "-P", str(self.app.http_port),
               "--stream-port", str(self.app.stream_port),
               "--stream2-port", str(self.app.stream2_port)]
        self.proc = subprocess.Popen(cmd, cwd=str(self.work), stdin=subprocess.DEVNULL)
        client = wait_until(self._connect, 30, 0.05)
        if not client:
            raise RuntimeError(f"eiger_server did not start; see {log}")
        client.command("config", "127.0.0.1", check=True)
        client.set("initialize")
        wait_until(lambda: client.get("cmd_executing") == "0", 30)
        for name, value in [("data_directory", self.data), ("stream_mode", 1),
                            ("compression", "bslz4"), ("trigger_mode", "ints"),
                            ("ntrigger", 1), ("nimages", self.args.nimages),
                            ("count_time", self.args.frame_time),
                            ("frame_time", self.args.frame_time),
                            ("stream_autosave", 1), ("stream_autoindex", 1),
                            ("stream_prefix", "soak_$id")]:
            client.set(name, value)
        return client

    def _connect(self) -> Optional[WireClient]:
        try:
            client = WireClient("127.0.0.1", self.port, 30)
            client.hello("soak")
            return client
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.app is not None:
            self.app.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- one series --------------------------------------------------------
    def one_series(self, c: WireClient, version: str) -> None:
        n = self.args.nimages
        t0 = time.monotonic()
        c.set("stream_version", version)
        seqid = int(c.set("arm"))
        c.set("trigger")
        while True:
            resp = c.command("get_status")
            if resp.text != "1":
                break
            time.sleep(0.005)
        if not resp.ok:
            self.failures.append(f"series {seqid}: {resp.text}")
        c.set("disarm")
        self.series += 1
        # every image of the series saved, complete, then removed
        pattern = f"soak_{seqid}_*.tif"
        files = wait_until(lambda: (lambda f: f if len(f) >= n else None)(
            sorted(self.data.glob(pattern))), 20)
        files = files or sorted(self.data.glob(pattern))
        self.saved += len(files)
        if len(files) != n:
            self.failures.append(f"series {seqid}: {len(files)} of {n} images saved")
        elif not self._check(files[-1]):
            self.failures.append(f"series {seqid}: {files[-1].name} differs from the frame sent")
        for path in files:
            path.unlink()
        self.series_times.append(time.monotonic() - t0)

    def _check(self, path: Path) -> bool:
        meta = tiffsave.read_metadata(str(path))
        model = self.app.model
        width = int(model.config_value("detector", "x_pixels_in_detector"))
        height = int(model.config_value("detector", "y_pixels_in_detector"))
        pixels = tifffile.imread(path)
        expected = model.source.frame(int(meta["frame"]), width, height, pixels.dtype,
                                      ["threshold_1"])["threshold_1"]
        return bool(np.array_equal(pixels, expected))

    # -- the run -------------------------------------------------------------
    def run(self) -> bool:
        args = self.args
        client = self.start()
        start = time.monotonic()
        end = start + args.minutes * 60.0
        last_report = start
        try:
            while time.monotonic() < end:
                version = "V1" if (self.series // args.switch_every) % 2 == 0 else "V2"
                self.one_series(client, version)
                self.rss.append((time.monotonic() - start, rss_bytes(self.proc.pid)))
                with WireClient("127.0.0.1", self.port, 10) as other:
                    t0 = time.monotonic()
                    other.hello("soak-probe")
                    self.hello_worst = max(self.hello_worst, time.monotonic() - t0)
                if self.proc.poll() is not None:
                    self.failures.append(f"eiger_server exited with {self.proc.returncode}")
                    break
                if time.monotonic() - last_report >= args.report_every:
                    last_report = time.monotonic()
                    print(f"{last_report - start:7.0f} s  series {self.series:6d}  "
                          f"saved {self.saved:8d}  RSS {self.rss[-1][1] / MiB:6.1f} MiB  "
                          f"failures {len(self.failures)}", flush=True)
                if args.pause:
                    time.sleep(args.pause)
            dropped = int(client.get("dropped"))
            client.close()
        finally:
            sent = (self.app.stream_v1.frames_sent + self.app.stream_v2.frames_sent
                    if self.app is not None else 0)
            elapsed = time.monotonic() - start
            self.stop()
        return self.report(sent, dropped, elapsed)

    def report(self, sent: int, dropped: int, elapsed: float) -> bool:
        ok = True
        print(f"\nsoak: {elapsed / 60:.1f} min, {self.series} series of {self.args.nimages} "
              f"images ({self.args.model}), {sent / max(elapsed, 1e-9):.0f} frames/s on average")
        print(f"  frames sent by the DCU  {sent}")
        print(f"  images saved            {self.saved}")
        print(f"  dropped (server)        {dropped}")
        if self.saved != sent or dropped != 0:
            ok = False
            print("  FAIL: saved count differs from sent count, or images were dropped")
        print(f"  failed series           {len(self.failures)}")
        for text in self.failures[:10]:
            print(f"    {text}")
        ok = ok and not self.failures
        if self.series_times:
            print(f"  series time             median {statistics.median(self.series_times):.3f} s,"
                  f" max {max(self.series_times):.3f} s")
        print(f"  slowest hello           {self.hello_worst * 1000:.1f} ms")
        growth = self.memory_growth()
        if growth is not None:
            base, final, limit = growth
            verdict = "flat" if final - base <= limit else "GROWING"
            print(f"  eiger_server RSS        {base / MiB:.1f} MiB after warm-up, "
                  f"{final / MiB:.1f} MiB at the end (limit +{limit / MiB:.1f} MiB): {verdict}")
            ok = ok and final - base <= limit
        print("  result                  " + ("PASS" if ok else "FAIL"))
        return ok

    def memory_growth(self) -> Optional[tuple]:
        """(RSS after warm-up, RSS at the end, allowed growth) from the samples:
        medians of the samples between 20 % and 30 % of the run and of the last 10 %."""
        if len(self.rss) < 10:
            return None
        total = self.rss[-1][0]
        early = [r for t, r in self.rss if 0.2 * total <= t <= 0.3 * total]
        late = [r for t, r in self.rss if t >= 0.9 * total]
        if not early or not late:
            return None
        base, final = statistics.median(early), statistics.median(late)
        return base, final, max(16 * MiB, 0.10 * base)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--nimages", type=int, default=10, help="images per series")
    parser.add_argument("--frame-time", type=float, default=0.005, help="seconds per frame")
    parser.add_argument("--pause", type=float, default=0.2,
                        help="seconds between series (a beamline is not a benchmark)")
    parser.add_argument("--model", default="500K", help="fake detector model")
    parser.add_argument("--switch-every", type=int, default=10,
                        help="series between switches of the stream version V1/V2")
    parser.add_argument("--report-every", type=float, default=30.0, help="seconds between "
                        "progress lines")
    parser.add_argument("--workdir", default=None, help="where the temporary files go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    soak = Soak(args)
    try:
        return 0 if soak.run() else 1
    except KeyboardInterrupt:
        soak.stop()
        return 1


if __name__ == "__main__":
    sys.exit(main())
