"""Control-path latency while a large HDF5 transfer runs in the background.

Puts a ~200 MB data file on a fake DCU, starts eiger_server as its own
process, starts ``transfer`` and measures ``get state`` round trips over the
wire until the transfer ends. Prints p50 / p99 / max and the transfer rate.

    .venv/bin/python bench/transfer_latency.py [--mbytes 200]
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the filters the DCU's files use)
import numpy as np

from eiger_server.wire.client import WireClient
from eiger_server.fakedcu.app import FakeDCUApp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_file(path: Path, mbytes: int) -> int:
    """An HDF5 data file of incompressible frames, ~mbytes in size."""
    frame = (1062, 1028)
    n = max(1, mbytes * 1024 * 1024 // (frame[0] * frame[1] * 2))
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as h5:
        data = h5.create_dataset("/entry/data/data", (n, *frame), dtype="u2",
                                 chunks=(1, *frame))
        for i in range(n):
            data[i] = rng.integers(0, 65535, frame, dtype=np.uint16)
        data.attrs["image_nr_low"], data.attrs["image_nr_high"] = 1, n
    return path.stat().st_size


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbytes", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "dcu").mkdir()
        size = make_file(tmp / "dcu" / "big_data_000001.h5", args.mbytes)
        with FakeDCUApp(api="1.8.0", model="1M", data_dir=tmp / "dcu") as app:
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "eiger_server", "-p", str(port), "-a", "127.0.0.1",
                 "-P", str(app.http_port), "-L", str(tmp / "lock"), "-l", str(tmp / "log")],
                stdin=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        client = WireClient("127.0.0.1", port, timeout=10)
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                client.set("data_directory", str(tmp / "local"))
                client.get("state")
                baseline = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    client.get("state")
                    baseline.append(time.perf_counter() - t0)
                started = time.perf_counter()
                client.set("transfer", "big_data_000001.h5")
                during = []
                while client.get("cmd_executing") == "1":
                    t0 = time.perf_counter()
                    client.get("state")
                    during.append(time.perf_counter() - t0)
                    time.sleep(0.002)
                elapsed = time.perf_counter() - started
                answer = client.get("get_answer")
                client.close()
            finally:
                server.terminate()
                server.wait(10)
    print(f"transfer: {answer}")
    print(f"{size / 1e6:.0f} MB in {elapsed:.2f} s = {size / 1e6 / elapsed:.0f} MB/s")
    print("| get state round trip | samples | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- |")
    for label, values in (("idle", baseline), ("during transfer", during)):
        print(f"| {label} | {len(values)} | {percentile(values, 50):.2f} | "
              f"{percentile(values, 99):.2f} | {max(values) * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
