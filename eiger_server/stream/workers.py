"""Worker processes: decode and reduce a series' images outside the server.

A DCU's PUSH socket feeds exactly one PULL peer, so the server's receiver
stays the one peer and hands the work on over ZeroMQ:

* every worker connects a DEALER socket to the pool's ROUTER (``PORT``) and a
  PUSH socket to the pool's PULL (``PORT + 1``), says hello, and gets work;
* ``begin`` and ``flush`` messages go to every worker, images round-robin to
  one each (one pipe per worker, so a worker sees its images before the flush);
* a worker adds its images into a partial sum of its own (accumulation) or
  keeps each image's statistics (sum, maximum, ROI sums), and answers the
  flush with them; the pool merges the answers by frame number;
* a worker that dies or does not answer the flush in time: the images handed
  to it in that series are counted as lost and named, the series ends with
  the others' images, and the worker is left out (a local one is restarted).

Each worker process has its own ZeroMQ context. The same code runs on
another host: ``python -m eiger_server.stream.workers tcp://SERVER:PORT``
(the port ``--worker-port`` names), so a pool grows past one machine on the
transport the detector already uses.

Wire format: multipart messages, the first part a small JSON object
(``kind``...), then the image's encoded bytes or the partial sums' bytes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import zmq

from eiger_server.errors import DataError
from eiger_server.formats.decode import DecodeError, Encoded
from eiger_server.formats.stream_events import ImageMessage
from eiger_server.stream import imageproc, kernels

log = logging.getLogger(__name__)

__all__ = ["Merged", "WorkerPool", "main", "run_worker"]

Bounds = Tuple[int, int, int, int]
MODES = ("accum", "stats")


def _header(part: bytes) -> Dict[str, Any]:
    return json.loads(bytes(part).decode())


def _pack(obj: Dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


# ============================================================================ worker
class _Series:
    """A worker's state for one ``begin``..``flush``."""

    def __init__(self, mode: str, rois: Sequence[Bounds]) -> None:
        self.mode = mode
        self.rois = [tuple(int(v) for v in b) for b in rois]
        self.frames: List[int] = []
        self.failed: List[Tuple[int, str]] = []
        self.sums: Dict[str, np.ndarray] = {}
        self.masks: Dict[str, np.ndarray] = {}
        self.stats: Dict[int, List[Any]] = {}

    def add(self, frame: int, channels: Dict[str, Encoded], what: str) -> None:
        """Add (accum) or measure (stats) one image as it arrived."""
        if self.mode == "accum":
            shapes = {name: tuple(int(n) for n in encoded.shape)
                      for name, encoded in channels.items()}
            for name, shape in shapes.items():
                total = self.sums.get(name)
                if total is not None and total.shape != shape:
                    raise DataError(f"accumulation: image {frame} is {shape}, the "
                                    f"first was {total.shape}; the detector geometry changed")
            # several channels: all decoded before any is added (one that cannot
            # be read must not leave the others' sums holding the image)
            arrays = {name: encoded.decode(f"{what}, channel {name}")
                      for name, encoded in channels.items()} if len(channels) > 1 else {}
            for name, encoded in channels.items():
                total = self.sums.get(name)
                if total is None:
                    total = self.sums[name] = np.zeros(
                        shapes[name], imageproc.accumulated_dtype(np.dtype(encoded.dtype)))
                    self.masks[name] = np.zeros(shapes[name], dtype=bool)
                if name in arrays:
                    imageproc.accumulate_array(total, self.masks[name], arrays[name])
                else:
                    # fused decode + add (the frame never goes through memory)
                    imageproc.accumulate_encoded(total, self.masks[name], encoded,
                                                 f"{what}, channel {name}")
        else:
            name, encoded = next(iter(channels.items()))
            image = encoded.decode(f"{what}, channel {name}")
            total, top = imageproc.masked_stats(image)
            rois = [imageproc.roi_sum(image, *b) for b in self.rois]
            self.stats[frame] = [total, top, rois]
        self.frames.append(frame)


def run_worker(endpoint: str, *, name: str = "", poll_ms: int = 200,
               stop: Optional[threading.Event] = None) -> None:
    """Serve the pool at ``endpoint`` (its ROUTER; results go to port + 1)
    until it says ``quit``, or ``stop`` is set."""
    host, port = endpoint.rsplit(":", 1)
    context = zmq.Context()                   # the worker's own context
    work = context.socket(zmq.DEALER)
    results = context.socket(zmq.PUSH)
    ident = (name or f"{os.uname().nodename}-{os.getpid()}").encode()
    work.setsockopt(zmq.IDENTITY, ident)
    work.setsockopt(zmq.LINGER, 0)
    results.setsockopt(zmq.LINGER, 2000)
    work.connect(endpoint)
    results.connect(f"{host}:{int(port) + 1}")
    kernels.warm_up()                          # compiled (or loaded) before any image
    work.send_multipart([b"", _pack({"kind": "hello", "pid": os.getpid()})])
    series: Dict[str, _Series] = {}
    cpu0 = time.process_time()
    try:
        while stop is None or not stop.is_set():
            if not work.poll(poll_ms):
                continue
            parts = work.recv_multipart(copy=False)
            msg = _header(parts[1].bytes)
            kind = msg["kind"]
            if kind == "quit":
                return
            key = str(msg.get("key"))
            if kind == "begin":
                series[key] = _Series(msg.get("mode", "accum"), msg.get("rois") or [])
            elif kind == "image":
                state = series.get(key)
                if state is None:
                    continue
                try:
                    channels = {cname: Encoded(part.buffer, spec["encoding"],
                                               tuple(spec["shape"]), np.dtype(spec["dtype"]),
                                               int(spec["elem_size"]), bool(spec["v2"]))
                                for (cname, spec), part in zip(msg["channels"], parts[2:])}
                    state.add(int(msg["frame"]), channels,
                              f"frame {msg['frame']} of series {msg.get('series')}")
                except (DecodeError, DataError) as exc:
                    state.failed.append((int(msg["frame"]), str(exc)))
            elif kind == "flush":
                state = series.pop(key, None) or _Series("accum", [])
                names = list(state.sums)
                reply = {"kind": "partial", "key": key, "worker": ident.decode(),
                         "frames": state.frames, "failed": state.failed,
                         "stats": {str(f): v for f, v in state.stats.items()},
                         "channels": [[n, str(state.sums[n].dtype), list(state.sums[n].shape)]
                                      for n in names],
                         "cpu": time.process_time() - cpu0}
                payload: List[Any] = [_pack(reply)]
                for n in names:
                    payload += [state.sums[n], np.packbits(state.masks[n])]
                results.send_multipart(payload, copy=False)
    finally:
        work.close()
        results.close()
        context.term()


# ============================================================================== pool
@dataclass
class Merged:
    """What the workers made of one series, merged by frame number.

    ``frames``: the frames reduced (sorted); ``lost``: frames handed to a
    worker that died or did not answer, ``failed``: (frame, reason) of frames
    that could not be decoded; ``sums``: the accumulated channels and
    ``masks`` their pixels masked in any frame; ``stats``: frame -> (sum,
    max, ROI sums).
    """

    frames: List[int] = field(default_factory=list)
    lost: List[int] = field(default_factory=list)
    failed: List[Tuple[int, str]] = field(default_factory=list)
    sums: Dict[str, np.ndarray] = field(default_factory=dict)
    masks: Dict[str, np.ndarray] = field(default_factory=dict)
    stats: Dict[int, Tuple[Any, Any, List[Any]]] = field(default_factory=dict)
    worker_cpu: float = 0.0
    errors: List[str] = field(default_factory=list)

    def filled(self) -> Dict[str, np.ndarray]:
        """The sums with masked pixels at the type's maximum (copies)."""
        return {name: kernels.finish_accumulation(total.copy(), self.masks[name])
                for name, total in self.sums.items()}


class _Peer:
    def __init__(self, ident: bytes) -> None:
        self.ident = ident
        self.alive = True
        self.sent: Dict[str, List[int]] = {}


class WorkerPool:
    """The server's side: a ROUTER at ``port`` (0 = any free one) and a PULL at
    ``port + 1``, ``local`` worker processes started on this host.

    ``submit`` and ``begin``/``finish`` are called from one thread (the
    receiver's); nothing here is shared with other threads but the peer list.
    """

    def __init__(self, local: int = 2, *, host: str = "127.0.0.1", port: int = 0,
                 queue_depth: int = 64, send_timeout: float = 5.0) -> None:
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, max(1, int(queue_depth)))
        self.router.setsockopt(zmq.LINGER, 0)
        self.pull = self.context.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.host = host
        self.port = self._bind_pair(host, int(port))
        self.endpoint = f"tcp://{host}:{self.port}"
        self.send_timeout = float(send_timeout)
        self.peers: List[_Peer] = []
        self._next = 0
        self._procs: List[subprocess.Popen] = []
        self.local = int(local)
        self.lost_total = 0

    def _bind_pair(self, host: str, port: int) -> int:
        for _ in range(50):
            try:
                if port:
                    self.router.bind(f"tcp://{host}:{port}")
                    chosen = port
                else:
                    chosen = self.router.bind_to_random_port(f"tcp://{host}", 20000, 60000)
                self.pull.bind(f"tcp://{host}:{chosen + 1}")
                return chosen
            except zmq.ZMQError:
                if port:
                    raise DataError(f"workers: cannot listen on {host}:{port} and "
                                    f"{port + 1}; choose a free --worker-port") from None
                self.router.unbind(self.router.getsockopt_string(zmq.LAST_ENDPOINT))
        raise DataError("workers: no free pair of ports")

    # -- life ----------------------------------------------------------------
    def start(self, timeout: float = 60.0, wait_for: Optional[int] = None) -> None:
        """Start the local workers and wait until ``wait_for`` (default: all
        local) workers said hello."""
        for _ in range(self.local):
            self._spawn()
        self.wait_workers(self.local if wait_for is None else wait_for, timeout)

    def _spawn(self) -> None:
        self._procs.append(subprocess.Popen(
            [sys.executable, "-m", "eiger_server.stream.workers", self.endpoint],
            stdin=subprocess.DEVNULL))

    def wait_workers(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_count() < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DataError(f"workers: {self.alive_count()} of {n} worker processes "
                                f"connected to {self.endpoint} within {timeout:.0f} s")
            self._accept(int(min(left, 0.2) * 1000))

    def _accept(self, timeout_ms: int = 0) -> None:
        """Take the hellos waiting on the ROUTER."""
        while self.router.poll(timeout_ms):
            ident, _, body = self.router.recv_multipart()
            if _header(body).get("kind") == "hello":
                self.peers = [p for p in self.peers if p.ident != ident] + [_Peer(ident)]
                log.info("stream worker %s connected", ident.decode(errors="replace"))
            timeout_ms = 0

    def alive_count(self) -> int:
        return sum(1 for p in self.peers if p.alive)

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self._procs]

    def close(self) -> None:
        for peer in self.peers:
            if peer.alive:
                try:
                    self.router.send_multipart([peer.ident, b"", _pack({"kind": "quit"})],
                                               flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.router.close()
        self.pull.close()
        self.context.term()

    # -- work ------------------------------------------------------------------
    def _send(self, peer: _Peer, parts: List[Any]) -> bool:
        """Send to one worker, waiting while its pipe is full (back-pressure);
        False (and the peer marked dead) when it is gone."""
        deadline = time.monotonic() + self.send_timeout
        while True:
            try:
                self.router.send_multipart([peer.ident, b""] + parts, flags=zmq.NOBLOCK,
                                           copy=False)
                return True
            except zmq.Again:
                if self._dead(peer) or time.monotonic() > deadline:
                    self._mark_dead(peer, "does not take work")
                    return False
                time.sleep(0.0005)
            except zmq.ZMQError:                     # EHOSTUNREACH: disconnected
                self._mark_dead(peer, "disconnected")
                return False

    def _dead(self, peer: _Peer) -> bool:
        for proc in self._procs:
            if proc.poll() is not None and peer.ident.endswith(f"-{proc.pid}".encode()):
                return True
        return False

    def _mark_dead(self, peer: _Peer, why: str) -> None:
        if peer.alive:
            peer.alive = False
            log.error("stream worker %s %s; its images of this series are counted lost",
                      peer.ident.decode(errors="replace"), why)

    def begin(self, key: Any, mode: str = "accum", rois: Sequence[Bounds] = ()) -> None:
        """Start series ``key`` on every worker."""
        if mode not in MODES:
            raise ValueError(f"worker mode {mode!r} is not one of {MODES}")
        self._accept()
        self._restart_dead()
        body = _pack({"kind": "begin", "key": str(key), "mode": mode,
                      "rois": [list(b) for b in rois]})
        for peer in self.peers:
            if peer.alive:
                peer.sent[str(key)] = []
                self._send(peer, [body])

    def _restart_dead(self) -> None:
        for peer in [p for p in self.peers if not p.alive]:
            self.peers.remove(peer)
        for proc in list(self._procs):
            if proc.poll() is not None:
                self._procs.remove(proc)
                self._spawn()
        missing = len(self._procs) - self.alive_count()
        if missing > 0:
            try:
                self.wait_workers(self.alive_count() + missing, 30)
            except DataError as exc:
                log.error("%s", exc)

    def submit(self, key: Any, event: ImageMessage) -> bool:
        """Hand one image to the next live worker; False when none takes it."""
        key = str(key)
        for _ in range(len(self.peers)):
            peer = self.peers[self._next % len(self.peers)]
            self._next += 1
            if not peer.alive or key not in peer.sent:
                continue
            spec = [[name, {"encoding": enc.encoding, "shape": list(enc.shape),
                            "dtype": enc.dtype.str, "elem_size": enc.elem_size,
                            "v2": enc.v2}] for name, enc in event.channels.items()]
            head = _pack({"kind": "image", "key": key, "series": event.series,
                          "frame": event.frame, "channels": spec})
            if self._send(peer, [head] + [enc.data for enc in event.channels.values()]):
                peer.sent[key].append(event.frame)
                return True
        return False

    def finish(self, key: Any, timeout: float = 10.0) -> Merged:
        """Flush series ``key`` on every worker and merge what they answer."""
        key = str(key)
        merged = Merged()
        waiting: Dict[str, _Peer] = {}
        for peer in self.peers:
            if key not in peer.sent:
                continue
            if peer.alive and self._send(peer, [_pack({"kind": "flush", "key": key})]):
                waiting[peer.ident.decode()] = peer
            else:
                merged.lost += peer.sent.pop(key)
        masks = merged.masks
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            for peer in list(waiting.values()):
                if self._dead(peer):
                    self._mark_dead(peer, "died")
            dead = [n for n, p in waiting.items() if not p.alive]
            if left <= 0 or dead:
                for name in (list(waiting) if left <= 0 else dead):
                    peer = waiting.pop(name)
                    self._mark_dead(peer, "did not answer in time")
                    merged.lost += peer.sent.pop(key, [])
                continue
            if not self.pull.poll(int(min(left, 0.2) * 1000)):
                continue
            parts = self.pull.recv_multipart(copy=False)
            reply = _header(parts[0].bytes)
            peer_or_none = waiting.pop(reply.get("worker", ""), None)
            if reply.get("key") != key or peer_or_none is None:
                continue                              # a late answer of a past series
            peer_or_none.sent.pop(key, None)
            self._merge(merged, masks, reply, parts[1:])
        merged.frames.sort()
        merged.lost.sort()
        self.lost_total += len(merged.lost)
        if merged.lost:
            merged.errors.append(f"{len(merged.lost)} images lost with a stream worker "
                                 f"(frames {_ranges(merged.lost)})")
        return merged

    @staticmethod
    def _merge(merged: Merged, masks: Dict[str, np.ndarray], reply: Dict[str, Any],
               blobs: Sequence[Any]) -> None:
        merged.frames += reply["frames"]
        merged.failed += [tuple(f) for f in reply["failed"]]
        merged.worker_cpu += float(reply.get("cpu", 0.0))
        for frame, value in reply["stats"].items():
            merged.stats[int(frame)] = (value[0], value[1], value[2])
        for (name, dtype, shape), total_part, mask_part in zip(
                reply["channels"], blobs[0::2], blobs[1::2]):
            total = np.frombuffer(total_part.buffer, dtype=np.dtype(dtype)).reshape(shape)
            mask = np.unpackbits(np.frombuffer(mask_part.buffer, np.uint8),
                                 count=int(np.prod(shape))).reshape(shape).astype(bool)
            if name in merged.sums:
                np.add(merged.sums[name], total, out=merged.sums[name])
                masks[name] |= mask
            else:
                merged.sums[name] = total.copy()
                masks[name] = mask


def _ranges(frames: Sequence[int]) -> str:
    out: List[str] = []
    for frame in frames:
        if out and out[-1].split("-")[-1] == str(frame - 1):
            out[-1] = out[-1].split("-")[0] + f"-{frame}"
        else:
            out.append(str(frame))
    return ", ".join(out[:10]) + (" ..." if len(out) > 10 else "")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eiger_server.stream.workers",
        description="A stream worker of eiger_server: connects to the server's worker port "
                    "(and port + 1) and decodes/reduces the images it is given.")
    parser.add_argument("endpoint", help="the server's worker endpoint, tcp://HOST:PORT")
    parser.add_argument("--name", default="", help="worker name (default host-pid)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run_worker(args.endpoint, name=args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
