#!/usr/bin/env python3
"""Pipeline benchmark: eiger_server's StreamHandler against the bare single-core loop.

``python bench/pipeline.py [--quick] [--models 1M,4M] [--bits 16]`` (``make bench``
runs it; ``--quick`` takes about a minute) prints one table and writes it to
BENCHMARKS.md (section "Pipeline efficiency").

* The source: the fake DCU in its own process (bench/run.py's ``Source``),
  frames from its precompressed cache (16 synthetic frames, bslz4), pushed
  over ZeroMQ tcp on 127.0.0.1, lossless at the maximum rate.
* The server: a spawned process running eiger_server's ``StreamHandler`` with
  its own receiver, decode threads, saver and (``procs``) worker processes,
  configured as spec would (accumulation, TIFF autosave, HDF5RAW autosave,
  sum on the latest image, ROI-only). ``CPU/frame`` is the CPU time of that
  process (all threads) and of its worker processes, over the frames counted.
* The bare loop, single thread, in this process, in the same run, over the
  same 16 frames: decode + ``np.add`` into a uint32/uint64 accumulator
  (accum), decode + ``tifffile.imwrite`` of a new file in the same kind of
  directory (tiff; a file of the same name is removed first, as the server's
  rename replaces it), ``write_direct_chunk`` of the compressed frame
  (hdf5raw), decode (sum), and for roi the full decode (the ROI-only
  stage's own CPU, roi_stage.partial_image, is in ``note``).
* The bare receive: a bare ZeroMQ PULL loop in a process of its own, over
  the same source and frames (zero-copy, no parsing): what any receiver on
  this machine pays before it can look at a frame, at the maximum rate and,
  for the paced rows, at their pace (below capacity every frame wakes the
  receiver, which costs CPU of its own). The server pays it too; the bare
  loops above do not.
* fed: the StreamHandler fed frames in process (no receive, no source on
  the cores), accumulating with 1 and 2 decode threads: the pipeline's own
  efficiency and scaling.
* efficiency = bare CPU/frame / server CPU/frame (the issue's measure);
  efficiency incl. receive = (bare + bare receive) / server CPU/frame;
  scaling = frames/s with N threads or worker processes / (N x bare frames/s).
* ``half``: accumulation at half the measured accumulation rate (frames the
  source cannot send in time are dropped by it and counted): dropped, the
  result compared with the sum of the frames sent, and how long after the
  source's last frame the count ended.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402

from eiger_server.fakedcu.device.definitions import MODELS  # noqa: E402

MODES = ("accum", "tiff", "hdf5raw", "sum", "roi")
BARE_PAIRS: List[Any] = []      # (model, bits, 1-thread, 2-thread CPU per frame)
RECEIVE: List[Any] = []         # (model, bits, bare PULL loop's CPU per frame)
FED: List[Any] = []             # (model, bits, bare CPU per frame, feed_scaling's result)
CLK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


# ============================================================== the server process
class _Detector:
    """The cached detector configuration a StreamHandler reads (no DCU)."""

    version = "1.8.0"

    def __init__(self, bits: int, version: str) -> None:
        self.config = {("stream", "mode"): "enabled", ("detector", "bit_depth_image"): bits,
                       ("stream", "format"): "cbor" if version == "V2" else "legacy",
                       ("filewriter", "nimages_per_file"): 1000}

    def config_value(self, key: str, subsystem: str = "detector") -> Any:
        from eiger_server.errors import DetectorError
        if (subsystem, key) not in self.config:
            raise DetectorError(f"{key} unknown")
        return self.config[(subsystem, key)]

    def write_config(self, subsystem: str, key: str, value: Any, force: bool = False) -> bool:
        self.config[(subsystem, key)] = value
        return True

    def version_at_least(self, major: int, minor: int) -> bool:
        return True


def _handler(bits: int, version: str, options: Any, outdir: str = "") -> Any:
    """A StreamHandler as the server builds it, over a cached configuration
    and no DCU (its stream status reads fail, as with a DCU that is away)."""
    from types import SimpleNamespace

    from eiger_server.control.settings import Settings
    from eiger_server.errors import DetectorError
    from eiger_server.stream.handler import StreamHandler

    def status(*_: Any) -> Any:
        raise DetectorError("no DCU")
    detector = _Detector(bits, version)
    settings = Settings(detector.write_config)
    if outdir:
        settings.data_directory = outdir
    settings.prefix = "b$id"
    return StreamHandler(detector, SimpleNamespace(host="127.0.0.1", get=status), settings,
                         options, acq_mode=lambda: "SINGLE")


def _encoded(frames: List[np.ndarray]) -> List[Any]:
    """The frames as the stream carries them (bslz4, V1 encoding)."""
    from eiger_server.formats.compression import compress, v1_encoding
    from eiger_server.formats.decode import Encoded
    return [Encoded(compress(f, "bslz4"), v1_encoding("bslz4", f.dtype), f.shape, f.dtype)
            for f in frames]


def _server_main(conn: Any, port: int, version: str, bits: int, threads: int, procs: int,
                 depth: int, outdir: str) -> None:
    from eiger_server.options import ServerOptions
    from eiger_server.stream import kernels

    handler = _handler(bits, version, ServerOptions(
        stream_port=port, stream2_port=port, queue_depth=depth, stream_workers=threads,
        workers=procs), outdir)
    handler.prepare_series()
    kernels.warm_up()           # what the server's background warm-up does, done before timing
    conn.send("up")
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                return
            _, what, nframes, rois = msg
            # The previous counts' files go first (outside the timing): in this VM,
            # memory the guest never touched costs about 1 ms per MB on first use
            # (the host backs it then), which a tmpfs growing by GBs per count pays
            # and the bare loops, rewriting one file, do not.
            for name in os.listdir(outdir):
                os.unlink(os.path.join(outdir, name))
            handler.set_autosave("1" if what in ("tiff", "hdf5raw") else "0")
            handler.set_save_mode("HDF5RAW" if what == "hdf5raw" else "TIFF")
            handler.set_overwrite_images("1")
            for n, bounds in enumerate(rois):
                handler.set_roi(f"r{n}", *bounds)
            pids = handler.worker_pids()
            cpu0 = time.process_time() + sum(_proc_cpu(p) for p in pids)
            dropped0, unsaved0 = handler.get_dropped(), handler.unsaved
            handler.begin_count(nframes, accumulate=what == "accum")
            conn.send("counting")
            ok = handler.wait_count(300)
            done = time.time()
            handler.wait_saved(300)
            cpu1 = time.process_time() + sum(_proc_cpu(p) for p in pids)
            out: Dict[str, Any] = {"ok": ok, "done": done, "cpu": cpu1 - cpu0,
                                   "collected": handler.images_collected(),
                                   "dropped": handler.get_dropped() - dropped0,
                                   "unsaved": handler.unsaved - unsaved0,
                                   "error": handler.get_error()}
            if what == "accum":
                latest = handler.latest()
                out["sum"] = None if latest is None else np.array(latest.raw)
                out["nframes"] = None if latest is None else latest.nframes
            elif what == "roi":
                out["roival"] = handler.get_roival()     # ROI sums only: the next is ROI-only
            elif what in ("sum", "tiff"):
                out["sum"] = handler.get_sum()           # sum asked: no ROI-only count next
            conn.send(out)
    finally:
        handler.close()


class Server:
    def __init__(self, endpoint: str, version: str, bits: int, threads: int, procs: int,
                 depth: int, outdir: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        port = int(endpoint.rsplit(":", 1)[1])
        self.proc = ctx.Process(target=_server_main, daemon=True,
                                args=(child, port, version, bits, threads, procs, depth,
                                      outdir))
        self.proc.start()
        if not self.conn.poll(120) or self.conn.recv() != "up":
            raise RuntimeError("the server process did not start")

    def count(self, source: Any, what: str, nframes: int, rois: List[Any],
              frame_time: Optional[float] = None) -> Dict[str, Any]:
        self.conn.send(("count", what, nframes, rois))
        assert self.conn.recv() == "counting"
        t0 = time.time()
        source.run(nframes, frame_time, frame_time is None)
        src = source.result()
        src_done = time.time()
        if not self.conn.poll(600):
            raise RuntimeError("the count did not end")
        out = self.conn.recv()
        out.update(t0=t0, src=src, src_done=src_done)
        return out

    def close(self) -> None:
        self.conn.send(("stop",))
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()


# ===================================================================== bare loops
def samples(model: str, bits: int) -> List[Any]:
    from eiger_server.fakedcu.sources.synthetic import SyntheticSource
    width, height, _ = MODELS[model]
    source = SyntheticSource()
    return [source.frame(i, width, height, np.dtype(f"u{bits // 8}"),
                         ["threshold_1"])["threshold_1"] for i in range(16)]


def bare_cpu(what: str, frames: List[np.ndarray], outdir: str, seconds: float) -> float:
    """CPU seconds per frame of the bare single-thread loop for ``what``."""
    import h5py
    import hdf5plugin
    import tifffile
    from dectris import compression as dc

    from eiger_server.formats.compression import compress
    blobs = [compress(f, "bslz4") for f in frames]
    size = frames[0].dtype.itemsize
    acc = np.zeros(frames[0].shape, np.uint32 if size <= 2 else np.uint64)
    handle = dataset = None
    if what == "hdf5raw":
        handle = h5py.File(os.path.join(outdir, "bare.h5"), "w")
        dataset = handle.create_dataset("data", shape=(0,) + frames[0].shape,
                                        maxshape=(None,) + frames[0].shape,
                                        chunks=(1,) + frames[0].shape, dtype=frames[0].dtype,
                                        **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))

    def one(n: int) -> None:
        blob = blobs[n % 16]
        if what == "hdf5raw":
            assert dataset is not None
            dataset.resize(n + 1, axis=0)
            dataset.id.write_direct_chunk((n, 0, 0), blob)
            return
        image = np.frombuffer(dc.decompress(blob, "bslz4", elem_size=size),
                              frames[0].dtype).reshape(frames[0].shape)
        if what == "accum":
            np.add(acc, image, out=acc, casting="unsafe")
        elif what == "tiff":
            # a new file each frame, as a saved series is (the server's temporary
            # file renamed over the previous one frees that one's pages too);
            # overwriting one file in place would reuse its pages, which no saver does
            path = os.path.join(outdir, f"bare_{n % 16}.tif")
            if os.path.exists(path):
                os.unlink(path)
            tifffile.imwrite(path, image)
    for n in range(4):
        one(n)
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        one(n)
        n += 1
    cpu = (time.process_time() - c0) / n
    if handle is not None:
        handle.close()
    return cpu


def bare_pair_cpu(frames: List[np.ndarray], seconds: float) -> float:
    """CPU per frame of the bare accumulation loop run by 2 threads at once
    (each its own accumulator): what sharing the memory bandwidth of the 2
    cores costs, the ceiling of any 2-way pipeline on this machine."""
    import threading
    from dectris import compression as dc

    from eiger_server.formats.compression import compress
    blobs = [compress(f, "bslz4") for f in frames]
    size = frames[0].dtype.itemsize
    counts = [0, 0]

    def loop(k: int) -> None:
        acc = np.zeros(frames[0].shape, np.uint32 if size <= 2 else np.uint64)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            image = np.frombuffer(dc.decompress(blobs[counts[k] % 16], "bslz4",
                                                elem_size=size), frames[0].dtype)
            np.add(acc, image.reshape(acc.shape), out=acc, casting="unsafe")
            counts[k] += 1
    c0 = time.process_time()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.process_time() - c0) / max(1, sum(counts))


def _receive_main(conn: Any, endpoint: str, rcvhwm: int) -> None:
    """Child process: a bare ZeroMQ PULL loop (zero-copy frames, no parsing)."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.connect(endpoint)
    conn.send("up")
    messages = nbytes = 0
    cpu0 = None
    while sock.poll(3000 if cpu0 is None else 1000):
        parts = sock.recv_multipart(copy=False)
        if cpu0 is None:
            cpu0 = time.process_time()
        messages += 1
        nbytes += sum(len(part.buffer) for part in parts)
    cpu = time.process_time() - (cpu0 or time.process_time())
    conn.send({"messages": messages, "bytes": nbytes, "cpu": cpu})
    sock.close(0)
    ctx.term()


def bare_receive_cpu(source: Any, nframes: int, depth: int,
                     frame_time: Optional[float] = None) -> float:
    """CPU seconds per frame of a bare PULL loop over the same source, in a
    process of its own (the source's PUSH must have no other peer), at the
    maximum rate or paced at ``frame_time`` (below its capacity a receiver is
    woken for every frame, which costs CPU of its own)."""
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_receive_main, args=(child, source.endpoint, depth), daemon=True)
    proc.start()
    try:
        if not conn.poll(60) or conn.recv() != "up":
            raise RuntimeError("the bare receiver did not start")
        time.sleep(0.5)                     # connected before the series starts
        source.run(nframes, frame_time, frame_time is None)
        sent = int(source.result()["sent"])
        if not conn.poll(120):
            raise RuntimeError("the bare receiver did not finish")
        out = conn.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    return float(out["cpu"]) / max(1, sent)


def roi_decode_cpu(frames: List[np.ndarray], rois: List[Any], seconds: float) -> float:
    """CPU per frame of the ROI-only stage (roi_stage.partial_image: only the
    blocks of the ROI rows decoded, the ROI sums taken), single thread."""
    from eiger_server.formats.stream_events import ImageMessage
    from eiger_server.stream import roi_stage
    events = [ImageMessage(1, n, {"threshold_1": enc}) for n, enc in enumerate(_encoded(frames))]
    roi_stage.partial_image(events[0], rois, {})
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        roi_stage.partial_image(events[n % 16], rois, {})
        n += 1
    return (time.process_time() - c0) / n


def _feed_main(conn: Any, model: str, bits: int, threads: int, nframes: int) -> None:
    """Child process: a StreamHandler fed in process (no receiver, no source
    on the cores) accumulating ``nframes`` frames with ``threads`` threads."""
    from eiger_server.formats.stream_events import ImageMessage, SeriesHeader
    from eiger_server.options import ServerOptions
    from eiger_server.stream import kernels
    encs = _encoded(samples(model, bits))
    handler = _handler(bits, "V1", ServerOptions(stream_workers=threads, queue_depth=64))
    handler.start_pipeline()
    kernels.warm_up()
    out = {}
    for series, n in ((1, 32), (2, nframes)):
        handler.begin_count(n, accumulate=True, series=series)
        handler.feed(SeriesHeader(series, {}, ["threshold_1"]))
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            handler.feed(ImageMessage(series, i, {"threshold_1": encs[i % 16]}))
        handler.wait_count(300)
        out = {"fps": n / (time.perf_counter() - t0), "cpu": (time.process_time() - c0) / n}
    handler.close()
    conn.send(out)


def feed_scaling(model: str, bits: int, nframes: int) -> Dict[int, Dict[str, float]]:
    """Accumulation rate and CPU per frame with 1 and 2 decode threads when the
    frames are fed in process: the pipeline's own scaling, without the source
    and the receive on the same 2 cores."""
    ctx = mp.get_context("spawn")
    result = {}
    for threads in (1, 2):
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_feed_main, args=(child, model, bits, threads, nframes),
                           daemon=True)
        proc.start()
        if not conn.poll(600):
            raise RuntimeError("the fed pipeline did not finish")
        result[threads] = conn.recv()
        proc.join(30)
    return result


def bracket(what: str, frames: List[np.ndarray], bare_dir: str, seconds: float,
            count: Any, *args: Any) -> Dict[str, Any]:
    """``count(*args)``, with the bare loop of ``what`` measured just before and
    just after it: this machine's speed drifts, so the ratio is taken at one time."""
    kind = "sum" if what == "roi" else what
    before = bare_cpu(kind, frames, bare_dir, seconds)
    out = count(*args)
    out["bare"] = (before + bare_cpu(kind, frames, bare_dir, seconds)) / 2
    return out


# ========================================================================== table
def run(models: List[str], bits_list: List[int], quick: bool, depth: int,
        version: str) -> List[Dict[str, Any]]:
    from run import Source, rois_for
    rows: List[Dict[str, Any]] = []
    for model in models:
        width, height, max_rate = MODELS[model]
        per_frame = width * height
        base = 2500 if quick else 6000
        nframes = max(200, int(base * 1_000_000 / per_frame))
        for bits in bits_list:
            frames = samples(model, bits)
            rois = rois_for(height, width)
            source = Source(model, bits, version)
            bare_dir = tempfile.mkdtemp(prefix="bare-", dir="/dev/shm")
            bare_t = 0.6 if quick else 2.0
            # bare loops write where the server does (a tmpfs here): the same medium
            bare = {w: bare_cpu(w, frames, bare_dir, bare_t)
                    for w in ("accum", "tiff", "hdf5raw", "sum")}
            bare["roi"] = bare["sum"]
            roi_cpu = roi_decode_cpu(frames, rois, bare_t)
            pair = bare_pair_cpu(frames, bare_t)
            fed = feed_scaling(model, bits, nframes)
            fed_bare = bare_cpu("accum", frames, bare_dir, bare_t)
            FED.append((model, bits, fed_bare, fed))
            print(f"fed accumulation {model} {bits}-bit: 1 thread {fed[1]['fps']:.0f} fr/s "
                  f"({fed[1]['cpu'] * 1e3:.2f} ms/frame), 2 threads {fed[2]['fps']:.0f} fr/s "
                  f"({fed[2]['cpu'] * 1e3:.2f} ms/frame); bare {fed_bare * 1e3:.2f} ms/frame",
                  flush=True)
            recv = bare_receive_cpu(source, nframes, depth)
            print(f"bare receive {model} {bits}-bit: {recv * 1e3:.3f} ms/frame", flush=True)
            RECEIVE.append((model, bits, recv))
            print(f"bare accumulation {model} {bits}-bit: 1 thread {bare['accum'] * 1e3:.2f} "
                  f"ms/frame, 2 threads at once {pair * 1e3:.2f} ms/frame each", flush=True)
            BARE_PAIRS.append((model, bits, bare["accum"], pair))
            configs = [("threads", 2, 0)] + ([("threads", 1, 0), ("procs", 1, 1),
                                              ("procs", 2, 2)])
            try:
                for kind, n, procs in configs:
                    outdir = tempfile.mkdtemp(prefix="srv-", dir="/dev/shm")
                    server = Server(source.endpoint, version, bits, n if kind == "threads"
                                    else 1, procs, depth, outdir)
                    try:
                        # warm-up: JIT, zmq, workers; the ROI-only decision needs one count
                        server.count(source, "accum", 32, rois)
                        server.count(source, "roi", 32, rois)
                        modes = MODES if (kind, n) == ("threads", 2) else ("accum",)
                        for what in modes:
                            if what == "sum":
                                server.count(source, "sum", 16, rois)   # sum asked once
                            # saving modes at a rate one saver keeps up with (above
                            # it frames are refused, counted in dropped)
                            paced = None
                            if what in ("tiff", "hdf5raw"):
                                paced = 1.0 / min(max_rate, 0.5 / bare[what])
                            out = bracket(what, frames, bare_dir, bare_t / 2, server.count,
                                          source, what, nframes, rois, paced)
                            label = f"{n} {kind}" + (f", {1 / paced:.0f} Hz" if paced else "")
                            # paced: the bare receive at the same pace (2 s of it)
                            row_recv = recv if paced is None else bare_receive_cpu(
                                source, min(nframes, int(2 / paced)), depth, paced)
                            rows.append(_row(model, bits, what, label, nframes, out,
                                             out["bare"], n,
                                             roi_cpu if what == "roi" else None, frames,
                                             row_recv))
                            print(fmt(rows[-1]), flush=True)
                        if (kind, n) == ("threads", 2):
                            fps = rows[-len(modes)]["fps"]
                            half = min(max_rate, fps / 2)
                            nhalf = int(half * (2 if quick else 5))
                            out = bracket("accum", frames, bare_dir, bare_t / 2, server.count,
                                          source, "accum", nhalf, rois, 1.0 / half)
                            row = _row(model, bits, "accum", f"{n} {kind}, half "
                                       f"{half:.0f} Hz", nhalf, out, out["bare"], n, None,
                                       frames, bare_receive_cpu(source, min(nhalf, int(2 * half)),
                                                                depth, 1.0 / half))
                            rows.append(row)
                            print(fmt(row), flush=True)
                    finally:
                        server.close()
                        shutil.rmtree(outdir, ignore_errors=True)
            finally:
                source.close()
                shutil.rmtree(bare_dir, ignore_errors=True)
    return rows


def _row(model: str, bits: int, what: str, config: str, nframes: int, out: Dict[str, Any],
         bare: float, n: int, roi_cpu: Optional[float], frames: List[np.ndarray],
         recv: float) -> Dict[str, Any]:
    # saving modes: CPU per frame saved (frames refused by a full save queue
    # are counted in dropped and cost their receiving, not their writing)
    counted = max(1, int(out["collected"]) - int(out.get("unsaved", 0)))
    cpu = out["cpu"] / counted
    src = out["src"]
    note = []
    if what == "accum" and out.get("sum") is not None:
        sent = int(src["sent"])
        size = frames[0].dtype.itemsize
        wide = np.uint32 if size <= 2 else np.uint64
        want = np.zeros(frames[0].shape, wide)
        masked = np.zeros(frames[0].shape, bool)
        top = np.iinfo(frames[0].dtype).max
        for i in range(min(sent, 16)):
            reps = len(range(i, sent, 16))
            want += frames[i].astype(wide) * wide(reps)
            masked |= frames[i] == top
        want[masked] = np.iinfo(wide).max
        exact = out["nframes"] == sent and np.array_equal(out["sum"], want)
        note.append("exact" if exact else f"NOT exact ({out['nframes']} of {sent} frames)")
    if roi_cpu is not None:
        note.append(f"partial decode {roi_cpu * 1e3:.2f} ms vs full {bare * 1e3:.2f} ms")
    if "half" in config:
        note.append(f"count ended {(out['done'] - out['src_done']) * 1e3:+.0f} ms after the "
                    "source's last frame")
    fps = counted / max(1e-9, out["done"] - out["t0"])
    return {"model": model, "bits": bits, "mode": what, "config": config, "frames": nframes,
            "fps": fps, "cpu_ms": cpu * 1e3, "bare_ms": bare * 1e3, "eff": bare / cpu,
            "recv_ms": recv * 1e3, "eff_rx": (bare + recv) / cpu,
            "dropped": int(out["dropped"]) + int(src["dropped"]),
            "scaling": fps / (n / bare) if what != "roi" else float("nan"),
            "ok": out["ok"], "note": "; ".join(x for x in note if x)}


HEAD = ("| model | bits | mode | config | frames | frames/s | CPU ms/frame | bare ms/frame | "
        "efficiency | bare receive ms/frame | efficiency incl. receive | dropped | scaling | "
        "note |")
SEP = "|" + "---|" * 14


def fmt(r: Dict[str, Any]) -> str:
    return (f"| {r['model']} | {r['bits']} | {r['mode']} | {r['config']} | {r['frames']} | "
            f"{r['fps']:.0f} | {r['cpu_ms']:.2f} | {r['bare_ms']:.2f} | {r['eff']:.2f} | "
            f"{r['recv_ms']:.2f} | {r['eff_rx']:.2f} | {r['dropped']} | {r['scaling']:.2f} | "
            f"{r['note']}{'' if r['ok'] else ' TIMEOUT'} |")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4M 16-bit only, short runs")
    parser.add_argument("--models", default=None, help="comma-separated (default 1M,4M)")
    parser.add_argument("--bits", default="16", help="comma-separated bit depths")
    parser.add_argument("--depth", type=int, default=64, help="--queue-depth of the server")
    parser.add_argument("--stream", default="V1", choices=("V1", "V2"))
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    models = (args.models or ("4M" if args.quick else "1M,4M")).split(",")
    bits = [int(b) for b in args.bits.split(",")]
    started = time.perf_counter()
    print(HEAD + "\n" + SEP, flush=True)
    rows = run(models, bits, args.quick, args.depth, args.stream)
    write(args, rows, time.perf_counter() - started, argv if argv is not None else sys.argv[1:])
    return 0


def write(args: Any, rows: List[Dict[str, Any]], elapsed: float, argv: List[str]) -> None:
    """Put the table into BENCHMARKS.md, replacing the section's earlier table."""
    out = Path(args.output)
    title = "## Pipeline efficiency (eiger_server vs the bare single-core loop)"
    section = [title, "",
               f"Command: `python bench/pipeline.py {' '.join(argv)}`".rstrip() +
               f" — {os.cpu_count()} cores, {elapsed / 60:.1f} min, stream {args.stream}, "
               f"queue depth {args.depth}, bslz4, synthetic frames, lossless at the maximum "
               "rate except the `half` rows and the saving modes (paced at the rate "
               "shown).", "", HEAD, SEP] + [fmt(r) for r in rows] + [
        "", "Columns: see bench/pipeline.py's docstring. config: decode threads "
        "(`--stream-workers`) or worker processes (`--workers`).", ""] + [
        f"* bare accumulation loop, {m} {b}-bit: {one * 1e3:.2f} ms/frame alone, "
        f"{two * 1e3:.2f} ms/frame each when 2 threads run it at once (efficiency "
        f"ceiling of a 2-way pipeline here: {one / two:.2f})" for m, b, one, two in BARE_PAIRS
    ] + [
        f"* bare receive (a PULL loop alone), {m} {b}-bit: {recv * 1e3:.3f} ms/frame"
        for m, b, recv in RECEIVE
    ] + [
        f"* accumulation fed in process (no receive, no source on the cores), {m} {b}-bit: "
        f"1 thread {fed[1]['fps']:.0f} fr/s at {fed[1]['cpu'] * 1e3:.2f} ms/frame "
        f"(efficiency {bare / fed[1]['cpu']:.2f}), 2 threads {fed[2]['fps']:.0f} fr/s at "
        f"{fed[2]['cpu'] * 1e3:.2f} ms/frame (efficiency {bare / fed[2]['cpu']:.2f}, scaling "
        f"{fed[2]['fps'] * bare / 2:.2f}); bare {bare * 1e3:.2f} ms/frame"
        for m, b, bare, fed in FED
    ] + [""]
    notes = ROOT / "bench" / "PIPELINE_NOTES.md"
    if notes.exists():
        section += [notes.read_text().rstrip(), ""]
    text = out.read_text() if out.exists() else "# Stream-path benchmark\n"
    if title in text:
        head, rest = text.split(title, 1)
        tail = rest.split("\n## ", 1)
        text = head + "\n".join(section) + ("\n## " + tail[1] if len(tail) > 1 else "")
    else:
        parts = text.split("\n## ", 1)
        text = parts[0].rstrip() + "\n\n" + "\n".join(section) + (
            "\n## " + parts[1] if len(parts) > 1 else "")
    out.write_text(text)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    sys.exit(main())
