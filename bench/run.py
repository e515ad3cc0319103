#!/usr/bin/env python3
"""Stream-path benchmark: what eiger_server takes from an EIGER2's stream.

``make bench`` (or ``python bench/run.py [--models 1M --bits 16 --modes sum]``)
prints one table and writes it, with the notes, to BENCHMARKS.md.

How it measures
---------------
* The source is the fake DCU (``eiger_server.fakedcu``) in its own process:
  its engine hands out frames from ``PrecompressedCache`` (16 synthetic
  frames compressed once with bslz4) and its stream adapter pushes them over
  ZeroMQ (tcp on 127.0.0.1). Two rates: ``max`` (frame time forced to ~0 and
  the adapter made lossless, so frames go as fast as ZeroMQ and the sink
  allow) and ``real`` (the model's maximum frame rate; the adapter drops
  frames when its queue is full, as a DCU does).
* The sink runs in this process with eiger_server's own stream modules:
  ``receiver.StreamReceiver`` (zmq PULL, zero-copy frames, parsing,
  series books) hands images to a bounded queue and worker threads (one per
  core) do the mode's work with ``formats.decode``/``imageproc``/``storage.tiff``/
  ``hdf5raw``. Modes: null (receive and count), sum (decode + masked sum +
  max), roi (decode only the rows/blocks of 3 ROIs + their sums), tiff
  (decode + sum + TIFF to a tmpfs directory), hdf5-raw (compressed frames
  into HDF5 chunks on disk, no decoding; read back and compared).
* limit = frames/s of a plain single-thread ``dectris.compression`` decode
  loop over the same 16 frames, times the number of cores.
* CPU % is this (sink) process's CPU time over the run's wall time (200 % =
  both cores); src CPU % the source process's. Peak MB is the sink's VmHWM
  (reset before each run through /proc/self/clear_refs).
* ``+view+sub`` rows (``--observe``, for the modes of ``--observe-modes``,
  default sum and roi): the run again with ``eiger_server.observe`` attached
  to the sink (the observer hook on the receiver and the decoders, the live
  view's HTTP server, ``--publish`` with decoded images at 5/s) while another
  process polls the page as the browser does (/status 3 times a second,
  /latest.png for each new image) and subscribes as a viewer, to the decoded
  images; ``--observe image`` subscribes to every image as received instead
  (rows ``+view+sub(all)``: a second full-rate stream then leaves this
  process, over the same 2 cores); ``--observe none`` leaves them out.
* The control path: eiger_server as a separate process against a fake DCU
  streaming a 1M at its maximum rate; a client times ``get state`` round
  trips, and scan points (run → get_status 0 → get_roi).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from eiger_server.formats import decode  # noqa: E402
from eiger_server.stream import imageproc  # noqa: E402
from eiger_server.fakedcu.device.definitions import MODELS  # noqa: E402
from eiger_server.storage.tiff import save_tiff  # noqa: E402

ALL_MODES = ("null", "sum", "roi", "tiff", "hdf5-raw")
CORES = os.cpu_count() or 1
# frames per run at the max rate (about 2-5 s each on 2 cores)
FAST_FRAMES = {"500K": 6000, "1M": 5000, "4M": 1500, "9M": 600, "16M": 300}
REAL_SECONDS = 2.5
ROI_REAL_FRAMES = 20000          # the zero-drop target's length (1M, 4M)


# =========================================================================== source
def _source_main(conn: Any, model: str, bits: int, version: str, data_dir: str) -> None:
    """Child process: a fake DCU with the precompressed cache, driven by ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from eiger_server.fakedcu.app import FakeDCUApp
    from eiger_server.fakedcu.sources.synthetic import SyntheticSource
    from eiger_server.fakedcu.sources.replay import PrecompressedCache
    cache = PrecompressedCache(SyntheticSource(), "bslz4", n=16)
    app = FakeDCUApp(api="1.8.0", model=model, source=cache, data_dir=data_dir)
    app.start()
    m = app.model

    def put(sub: str, name: str, value: Any) -> None:
        m.put(sub, "config", name, {"value": value})
    m.put("detector", "command", "initialize", None)
    m.force("detector", "config", "bit_depth_image", bits)
    put("detector", "compression", "bslz4")
    put("detector", "trigger_mode", "ints")
    put("detector", "ntrigger", 1)
    put("stream", "mode", "enabled")
    put("stream", "format", "cbor" if version == "V2" else "legacy")
    put("stream", "header_detail", "basic")
    put("filewriter", "mode", "disabled")
    put("monitor", "mode", "disabled")
    adapter = app.stream_v2 if version == "V2" else app.stream_v1
    width, height, rate = MODELS[model]
    cache.prepare(width, height, np.dtype(f"u{bits // 8}"), ["threshold_1"])
    conn.send({"stream_port": app.stream_port, "stream2_port": app.stream2_port,
               "http_port": app.http_port})
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                return
            _, nframes, frame_time, lossless = msg
            adapter.lossless = bool(lossless)
            put("detector", "nimages", int(nframes))
            if frame_time is None:          # as fast as possible
                m.force("detector", "config", "count_time", 1e-7)
                m.force("detector", "config", "frame_time", 2e-7)
            else:
                put("detector", "frame_time", float(frame_time))
                put("detector", "count_time", float(frame_time) - 1e-7)
            sent0, dropped0 = adapter.frames_sent, adapter.status()["dropped"]
            cpu0 = time.process_time()
            m.put("detector", "command", "arm", None)
            conn.send("armed")
            t0 = time.perf_counter()
            m.put("detector", "command", "trigger", None)
            adapter.wait_idle(600)
            t1 = time.perf_counter()
            m.put("detector", "command", "disarm", None)
            adapter.wait_idle(60)
            conn.send({"sent": adapter.frames_sent - sent0,
                       "dropped": adapter.status()["dropped"] - dropped0,
                       "cpu": time.process_time() - cpu0, "wall": t1 - t0})
    except (BrokenPipeError, EOFError):
        pass                                # the benchmark has gone: just stop
    finally:
        app.stop()


class Source:
    """The fake DCU process of one (model, bits, stream version)."""

    def __init__(self, model: str, bits: int, version: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="eiger-bench-dcu-")
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_source_main, args=(child, model, bits, version, self.tmp),
                                daemon=True)
        self.proc.start()
        if not self.conn.poll(300):
            raise RuntimeError(f"fake DCU for {model} did not start")
        self.ports = self.conn.recv()
        self.version = version
        port = self.ports["stream2_port" if version == "V2" else "stream_port"]
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def run(self, nframes: int, frame_time: Optional[float], lossless: bool) -> None:
        self.conn.send(("run", nframes, frame_time, lossless))
        assert self.conn.recv() == "armed"

    def result(self, timeout: float = 900) -> Dict[str, Any]:
        if not self.conn.poll(timeout):
            raise RuntimeError("fake DCU did not finish the series")
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except OSError:
            pass
        self.proc.join(20)
        if self.proc.is_alive():
            self.proc.terminate()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ============================================================================= sink
def _peak_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def rois_for(height: int, width: int) -> List[Tuple[int, int, int, int]]:
    """Three ROIs (r0, r1, c0, c1 inclusive): centre 64x64, a 200x200 box, a 40-row strip."""
    return [(height // 2 - 32, height // 2 + 31, width // 2 - 32, width // 2 + 31),
            (100, 299, 100, 299), (height - 50, height - 11, 0, width - 1)]


class Sink:
    """eiger_server's receiver + bounded queue + worker threads doing one mode."""

    def __init__(self, endpoint: str, version: str, mode: str, *, depth: int, lossless: bool,
                 outdir: str, workers: int = CORES, observe: bool = False) -> None:
        from eiger_server.storage.hdf5raw import Hdf5RawWriter
        from eiger_server.stream.receiver import StreamReceiver
        from eiger_server.storage.tiff import TiffSaver
        self.mode = mode
        self.lossless = lossless
        self.outdir = outdir
        self.queue: "queue.Queue[Any]" = queue.Queue(depth)
        self.processed = 0
        self.dropped = 0
        self.failed = 0
        self.bytes_decoded = 0
        self.t_first: Optional[float] = None
        self.t_last = 0.0
        self.ended = threading.Event()
        self.samples: List[decode.Encoded] = []
        self._count_lock = threading.Lock()
        self.writer = Hdf5RawWriter(1000) if mode == "hdf5-raw" else None
        self.saver = TiffSaver(depth, 1 << 30, name="bench-saver") if mode == "hdf5-raw" else None
        self.threads = []
        # roi work is small: done on the receiver thread, no hand-off
        self.inline = mode == "roi" and os.environ.get("BENCH_ROI_THREADS") is None
        if mode not in ("null", "hdf5-raw") and not self.inline:
            for n in range(workers):
                thread = threading.Thread(target=self._work, daemon=True, name=f"bench-{n}")
                thread.start()
                self.threads.append(thread)
        self.observation = self._observe(outdir, depth) if observe else None
        observer = self.observation.observer if self.observation else None
        self.on_image = observer.on_image if observer else None
        self.receiver = StreamReceiver(endpoint, version, self._on_event, rcvhwm=depth,
                                       **({"observer": observer} if observer else {}))
        self.receiver.start()

    def _observe(self, outdir: str, depth: int) -> Any:
        """eiger_server.observe as the server builds it, around this sink."""
        from types import SimpleNamespace
        from eiger_server.observe.service import Observation
        counters = lambda: {"queue": self.queue.qsize(), "queue_depth": depth}  # noqa: E731
        ctrl = SimpleNamespace(
            stream=SimpleNamespace(counters=counters, get_images_collected=lambda: 0,
                                   latest_file=""),
            simplon=SimpleNamespace(host=""), settings=SimpleNamespace(data_directory=outdir),
            acq=SimpleNamespace(counting=lambda: False))
        return Observation(ctrl, SimpleNamespace(
            http_port=0, bind="127.0.0.1", publish=f"tcp://127.0.0.1:{_free_port()}",
            publish_decoded=5.0, queue_depth=depth))

    def close(self) -> None:
        self.receiver.stop()
        if self.observation is not None:
            self.observation.close()
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(5)
        if self.saver is not None:
            self.saver.close(60)

    # -- receiver thread ---------------------------------------------------
    def _on_event(self, event: Any) -> None:
        from eiger_server.formats.stream_events import ImageMessage, SeriesEnd, SeriesHeader
        if isinstance(event, ImageMessage):
            if self.t_first is None:
                self.t_first = time.perf_counter()
            if len(self.samples) < 16:
                enc = event.channels["threshold_1"]
                self.samples.append(decode.Encoded(bytes(enc.data), enc.encoding, enc.shape,
                                                     enc.dtype, enc.elem_size, enc.v2))
            if self.mode == "null":
                self._done(0)
            elif self.mode == "hdf5-raw":
                self._save_raw(event)
            elif self.inline:
                self._handle(event)
            else:
                self.queue.put(event)       # blocks: back-pressure to zmq and the source
        elif isinstance(event, SeriesHeader):
            if self.writer is not None:
                base = os.path.join(self.outdir, f"series_{event.series}")
                self._control(lambda: self.writer.start(base, event.series,
                                                        nimages=event.nimages))
        elif isinstance(event, SeriesEnd):
            if self.saver is not None:
                self._control(self.writer.close)
            self.ended.set()

    def _control(self, job: Any) -> None:
        """Series start/end jobs must not be refused: wait for room."""
        while not self.saver.submit(job, 0):
            time.sleep(0.001)

    def _save_raw(self, event: Any) -> None:
        def job() -> None:
            self.writer.write(event.frame, event.channels)
            self._done(0)
        while not self.saver.submit(job, event.nbytes):
            if not self.lossless:           # the server's policy: refuse, count, go on
                with self._count_lock:
                    self.dropped += 1
                return
            time.sleep(0.0005)

    def _done(self, nbytes: int) -> None:
        with self._count_lock:
            self.processed += 1
            self.bytes_decoded += nbytes
            self.t_last = time.perf_counter()

    # -- worker threads ----------------------------------------------------
    def _work(self) -> None:
        while True:
            event = self.queue.get()
            if event is None:
                return
            self._handle(event)

    def _handle(self, event: Any) -> None:
        try:
            enc = event.channels["threshold_1"]
            nbytes = 0
            if self.mode == "roi":
                for r0, r1, c0, c1 in rois_for(*enc.shape):
                    rows = decode.decode_rows(enc, r0, r1)
                    nbytes += rows.nbytes
                    imageproc.masked_sum(rows[:, c0:c1 + 1])
            else:
                image = enc.decode()
                nbytes = image.nbytes
                if self.on_image is not None:
                    self.on_image(image, {"series": event.series, "frame": event.frame})
                imageproc.masked_stats(image)
                if self.mode == "tiff":
                    save_tiff(os.path.join(self.outdir, f"frame_{event.frame % 32:02d}.tif"),
                              image, {"frame": event.frame}, overwrite=True)
            self._done(nbytes)
        except Exception as exc:               # a benchmark must report, not die
            with self._count_lock:
                self.failed += 1
            print(f"bench: frame {event.frame} failed: {exc}", file=sys.stderr)

    def wait(self, expected: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._count_lock:
                done = self.processed + self.dropped + self.failed
            if self.ended.is_set() and (done >= expected or (
                    self.queue.empty() and (self.saver is None or self.saver.pending() == 0)
                    and time.monotonic() > deadline - timeout + 1)):
                if self.saver is not None:
                    self.saver.wait_idle(60)
                return
            time.sleep(0.01)


def decode_limit(samples: List[decode.Encoded], seconds: float = 1.0) -> float:
    """frames/s of one thread decoding ``samples`` in a loop (dectris-compression)."""
    if not samples:
        return float("nan")
    for s in samples:
        s.decode()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        samples[n % len(samples)].decode()
        n += 1
    return n / (time.perf_counter() - t0)


def verify_hdf5(outdir: str, model: str, bits: int, count: int = 24) -> str:
    """Read the HDF5RAW files back and compare frames with what the source sent."""
    from eiger_server.fakedcu.sources.synthetic import SyntheticSource
    from eiger_server.storage.hdf5raw import read_frames
    masters = sorted(Path(outdir).glob("*_master.h5"))
    if not masters:
        return "no file"
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle filter)
    width, height, _ = MODELS[model]
    source = SyntheticSource()
    with h5py.File(masters[-1], "r") as handle:
        data = handle["/entry/data/data_000001"]
        n = min(count, data.shape[0])
        for i in range(n):
            want = source.frame(i % 16, width, height, np.dtype(f"u{bits // 8}"),
                                ["threshold_1"])["threshold_1"]
            if not np.array_equal(data[i], want):
                return f"frame {i} differs"
    del read_frames
    return f"ok ({n} frames compared)"


# ========================================================================== one run
def _watcher_main(conn: Any, url: str, address: str, topic: str) -> None:
    """Child process: the live page as a browser polls it, and a PUB subscriber."""
    import json
    import urllib.request
    import zmq
    stop = threading.Event()
    got = {"pictures": 0, "images": 0}

    def page() -> None:
        shown = None
        while not stop.wait(0.3):
            try:
                with urllib.request.urlopen(url + "status", timeout=5) as answer:
                    image = json.loads(answer.read()).get("image")
                if image and image["id"] != shown:
                    with urllib.request.urlopen(url + "latest.png", timeout=5) as answer:
                        answer.read()
                    shown = image["id"]
                    got["pictures"] += 1
            except OSError:
                pass
    thread = threading.Thread(target=page, daemon=True)
    thread.start()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sub.connect(address)
    conn.send("ready")
    while not conn.poll(0):
        if sub.poll(100):
            sub.recv_multipart(copy=False)
            got["images"] += 1
    stop.set()
    thread.join(5)
    sub.close(0)
    conn.send(got)


def run_one(source: Source, model: str, bits: int, mode: str, rate: str, nframes: int,
            depth: int, scratch: str, observe: str = "") -> Dict[str, Any]:
    width, height, max_rate = MODELS[model]
    lossless = rate == "max"
    outdir = tempfile.mkdtemp(prefix=f"{mode}-", dir=scratch if mode != "tiff" else "/dev/shm")
    sink = Sink(source.endpoint, source.version, mode, depth=depth, lossless=lossless,
                outdir=outdir, observe=bool(observe))
    watcher = None
    if observe:
        conn, child = mp.get_context("spawn").Pipe()
        watcher = (mp.get_context("spawn").Process(
            target=_watcher_main, args=(child, sink.observation.url,
                                        sink.observation.publisher.endpoint, observe),
            daemon=True), conn)
        watcher[0].start()
        conn.poll(60)
        conn.recv()
    time.sleep(0.3)                                   # let zmq connect
    _peak_reset()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    source.run(nframes, None if rate == "max" else 1.0 / max_rate, lossless)
    src = source.result()
    sink.wait(nframes, timeout=120)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    seen = ""
    if watcher is not None:
        time.sleep(0.5)                               # the subscriber drains
        watcher[1].send("stop")
        got = watcher[1].recv() if watcher[1].poll(30) else {}
        watcher[0].join(10)
        publisher = sink.observation.publisher
        seen = (f"page {got.get('pictures', '?')} pictures, subscriber ({observe}) "
                f"{got.get('images', '?')} images, pub dropped {publisher.dropped}")
    sink.close()
    span = max(1e-9, sink.t_last - (sink.t_first or sink.t_last))
    fps = (sink.processed - 1) / span if sink.processed > 1 else 0.0
    lost = nframes - sink.processed
    label = {"": "", "decoded": " +view+sub", "image": " +view+sub(all)"}[observe]
    row = {"model": model, "bits": bits, "mode": mode + label,
           "rate": rate, "frames": nframes,
           "processed": sink.processed, "fps": fps,
           "mbps": (sink.bytes_decoded / span / 1e6) if mode not in ("null", "hdf5-raw") else
           (sink.processed * width * height * bits / 8 / span / 1e6),
           "dropped": lost, "src_dropped": src["dropped"], "failed": sink.failed,
           "cpu": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
           "src_cpu": 100.0 * src["cpu"] / max(1e-9, src["wall"]),
           "peak_mb": _peak_mb(), "samples": sink.samples, "check": seen}
    if mode == "hdf5-raw":
        row["check"] = verify_hdf5(outdir, model, bits)
        row["disk_mbps"] = sum(f.stat().st_size for f in Path(outdir).glob("*.h5")) / span / 1e6
    shutil.rmtree(outdir, ignore_errors=True)
    return row


# =================================================================== control path
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def control_path(scratch: str, seconds: float = 6.0, points: int = 20) -> Dict[str, Any]:
    """get state latency while a 1M streams at its max rate; scan-point overhead."""
    from eiger_server.wire.client import WireClient
    model, bits = "1M", 16
    width, height, max_rate = MODELS[model]
    source = Source(model, bits, "V1")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="ctl-", dir=scratch)
    cmd = [sys.executable, "-m", "eiger_server", "-p", str(port), "-L",
           os.path.join(workdir, "lock"), "-l", os.path.join(workdir, "log"),
           "-a", "127.0.0.1", "-P", str(source.ports["http_port"]),
           "--stream-port", str(source.ports["stream_port"]),
           "--stream2-port", str(source.ports["stream2_port"])]
    server = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: Dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 20
        client = None
        while client is None:
            try:
                client = WireClient("127.0.0.1", port, timeout=10)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.hello("bench")
        client.set("data_directory", workdir)
        client.set("stream_version", "V1")
        client.set("stream_mode", "1")

        def latencies(duration: float, name: str = "state") -> List[float]:
            values = []
            end = time.monotonic() + duration
            while time.monotonic() < end:
                t = time.perf_counter()
                client.get(name)
                values.append((time.perf_counter() - t) * 1e3)
            return values

        idle = latencies(1.5)
        nframes = int(seconds * max_rate)
        source.run(nframes, 1.0 / max_rate, False)
        time.sleep(0.2)
        busy = latencies(seconds * 0.4)
        # The same while streaming, for a value the server holds itself: what
        # the server adds, without the DCU's HTTP answer (the fake DCU shares
        # these 2 cores with the stream it is pushing).
        local = latencies(seconds * 0.4, "images_collected")
        src = source.result()
        collected = int(client.get("images_collected") or 0)
        dropped = client.get("dropped")

        def pct(values: List[float], q: float) -> float:
            return float(np.percentile(values, q)) if values else float("nan")
        out.update(idle_p50=pct(idle, 50), idle_p99=pct(idle, 99), busy_p50=pct(busy, 50),
                   busy_p99=pct(busy, 99), busy_n=len(busy), stream_frames=nframes,
                   local_p50=pct(local, 50), local_p99=pct(local, 99), local_n=len(local),
                   src_dropped=src["dropped"], server_dropped=dropped,
                   collected=collected)
        # scan points: a count of count_time, then the ROI sum back
        count_time = 0.01
        client.set("nimages", "1")
        client.set("count_time", str(count_time))
        client.command("set_roi", "bench", height // 2 - 32, height // 2 + 31,
                       width // 2 - 32, width // 2 + 31, check=True)
        client.command("run", count_time, 0, check=True)       # warm-up
        while client.command("get_status", check=True).text != "0":
            time.sleep(0.0005)
        costs = []
        for _ in range(points):
            t = time.perf_counter()
            client.command("run", count_time, 0, check=True)
            while client.command("get_status", check=True).text != "0":
                pass
            client.command("get_roi", "bench", check=True)
            costs.append((time.perf_counter() - t - count_time) * 1e3)
        out.update(scan_p50=statistics.median(costs), scan_max=max(costs), scan_n=points,
                   count_time=count_time)
        client.close()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        source.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


# ======================================================================== reporting
HEAD = ("| model | bits | mode | rate | frames | frames/s | MB/s | dropped | CPU % | src CPU % "
        "| peak MB | limit fr/s | % of limit | note |")
SEP = "|" + "---|" * 14


def fmt_row(r: Dict[str, Any]) -> str:
    pct = 100.0 * r["fps"] / r["limit"] if r.get("limit") else float("nan")
    note = r.get("check", "")
    if r["src_dropped"]:
        note = (note + f" src dropped {r['src_dropped']}").strip()
    if r.get("failed"):
        note = (note + f" failed {r['failed']}").strip()
    if r.get("disk_mbps"):
        note = (note + f" disk {r['disk_mbps']:.0f} MB/s").strip()
    return (f"| {r['model']} | {r['bits']} | {r['mode']} | {r['rate']} | {r['frames']} | "
            f"{r['fps']:.0f} | {r['mbps']:.0f} | {r['dropped']} | {r['cpu']:.0f} | "
            f"{r['src_cpu']:.0f} | {r['peak_mb']:.0f} | {r['limit']:.0f} | {pct:.0f} | {note} |")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="1M,4M,16M")
    p.add_argument("--bits", default="16,32")
    p.add_argument("--modes", default=",".join(ALL_MODES))
    p.add_argument("--rates", default="max,real", help="max, real or both")
    p.add_argument("--stream", default="V1", choices=("V1", "V2"))
    p.add_argument("--depth", type=int, default=1024, help="queue depth (images)")
    p.add_argument("--frames", type=int, default=0, help="frames per max-rate run (0: by model)")
    p.add_argument("--roi-frames", type=int, default=ROI_REAL_FRAMES,
                   help="frames of the real-rate roi runs on 1M/4M (target: 20000)")
    p.add_argument("--no-control", action="store_true", help="skip the control-path test")
    p.add_argument("--observe", nargs="?", const="decoded", default="decoded",
                   choices=("decoded", "image", "none"), help="repeat the runs of "
                   "--observe-modes with the live view open and a PUB subscriber to the "
                   "decoded images (default), to every image, or not (none)")
    p.add_argument("--observe-modes", default="sum,roi",
                   help="modes repeated with --observe (default sum,roi)")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--scratch", default=None,
                   help="directory on disk for HDF5 files (default: a temporary one)")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval for the sink (default: Python's 5 ms)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    models = [m for m in args.models.split(",") if m and m != "none"]
    bits_list = [int(b) for b in args.bits.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    rates = [r for r in args.rates.split(",") if r]
    for m in modes:
        if m not in ALL_MODES:
            p.error(f"unknown mode {m}; use {', '.join(ALL_MODES)}")
    scratch = args.scratch or tempfile.mkdtemp(prefix="eiger-bench-", dir="/var/tmp")
    os.makedirs(scratch, exist_ok=True)
    started = time.perf_counter()
    rows: List[Dict[str, Any]] = []
    print(HEAD)
    print(SEP)
    try:
        for model in models:
            width, height, max_rate = MODELS[model]
            for bits in bits_list:
                source = Source(model, bits, args.stream)
                limit = None
                try:
                    for rate in rates:
                        for mode, observe in [(m, o) for m in modes for o in (
                                ("", args.observe) if args.observe != "none"
                                and m in args.observe_modes.split(",") else ("",))]:
                            if rate == "max":
                                n = args.frames or FAST_FRAMES[model]
                            elif mode == "roi" and model in ("1M", "4M"):
                                n = args.roi_frames
                            else:
                                n = int(REAL_SECONDS * max_rate)
                            row = run_one(source, model, bits, mode, rate, n, args.depth,
                                          scratch, observe)
                            if limit is None:
                                limit = decode_limit(row["samples"]) * CORES
                            row.pop("samples")      # 16 frames each: do not keep them
                            row["limit"] = limit
                            rows.append(row)
                            print(fmt_row(row), flush=True)
                finally:
                    source.close()
        control = {} if args.no_control else control_path(scratch)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - started
    write_report(args, rows, control, elapsed, argv)
    return 0


def write_report(args: Any, rows: List[Dict[str, Any]], control: Dict[str, Any],
                 elapsed: float, argv: Optional[List[str]]) -> None:
    lines = ["# Stream-path benchmark", "",
             f"Command: `python bench/run.py {' '.join(argv or sys.argv[1:])}`".rstrip() +
             f" — {CORES} cores, {elapsed / 60:.1f} min, stream {args.stream}, "
             f"queue depth {args.depth}, bslz4, synthetic frames.", "",
             HEAD, SEP] + [fmt_row(r) for r in rows] + [""]
    if control:
        lines += ["## Control path (1M, 16 bit, streaming at the maximum rate)", "",
                  f"* `get state` round trip, idle: p50 {control['idle_p50']:.2f} ms, "
                  f"p99 {control['idle_p99']:.2f} ms",
                  f"* `get state` round trip while streaming ({control['stream_frames']} frames "
                  f"at {MODELS['1M'][2]:.0f} Hz, {control['busy_n']} requests): p50 "
                  f"{control['busy_p50']:.2f} ms, p99 {control['busy_p99']:.2f} ms",
                  f"* `get images_collected` (answered by the server alone, no DCU round "
                  f"trip) while streaming ({control['local_n']} requests): p50 "
                  f"{control['local_p50']:.2f} ms, p99 {control['local_p99']:.2f} ms",
                  f"* stream during that: source dropped {control['src_dropped']}, "
                  f"server `dropped` {control['server_dropped']}",
                  f"* scan point (run {control['count_time']} → get_status 0 → get_roi), "
                  f"cost beyond the count time over {control['scan_n']} points: median "
                  f"{control['scan_p50']:.1f} ms, max {control['scan_max']:.1f} ms", ""]
    lines += ["Columns: frames/s achieved by the sink; MB/s of decoded data (null, hdf5-raw: "
              "of the frames' uncompressed size); dropped = frames sent or due but not "
              "processed (at the real rate the source's own drops when the sink falls "
              "behind are in it); CPU % of the sink process (200 = both cores); src CPU % "
              "of the fake DCU process; peak MB = VmHWM of the sink; limit = single-thread "
              "dectris-compression decode loop x cores over the same frames.", ""]
    out = Path(args.output)
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    out.write_text("\n".join(lines))
    print(f"\nwritten to {out}")
    if control:
        print("\n".join(lines[lines.index("## Control path (1M, 16 bit, streaming at the "
                                           "maximum rate)"):][:7]))


if __name__ == "__main__":
    sys.exit(main())
