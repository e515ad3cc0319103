"""``make demo``: the fake DCU, eiger_server, and a short session as spec runs it.

Starts ``eiger_server --fake-dcu`` as a separate process, then drives it over
the wire protocol only: configure, count three points with the stream saving
TIFF files, take a 5-image WRITER series and transfer its HDF5 files, and
show what was saved. The server's live view (``--http-port``) runs
meanwhile: the demo prints its address and saves its picture of the last
image (latest.png) beside the files.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from eiger_server.wire.client import WireClient


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"demo: timed out waiting for {what}")


def _say(step: str) -> None:
    print(f"\n== {step}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="demo-data", help="where the demo saves files")
    parser.add_argument("--api", default="1.8.0", choices=["1.6.0", "1.8.0"])
    parser.add_argument("--model", default="500K")
    parser.add_argument("--linger", type=float, default=0.0, metavar="SECONDS",
                        help="keep the server and its live page up this long at the end")
    args = parser.parse_args(argv)

    out = Path(args.dir).resolve() / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    port, http_port = _free_port(), _free_port()
    log = out / "eiger_server.log"
    cmd = [sys.executable, "-m", "eiger_server", "--fake-dcu", "--fake-api", args.api,
           "--fake-model", args.model, "-p", str(port), "-L", str(out / "server.lock"),
           "-l", str(log), "-v", "3", "--http-port", str(http_port), "--bind", "127.0.0.1"]
    print("starting:", " ".join(cmd[2:]))
    live = f"http://127.0.0.1:{http_port}/"
    server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        def up() -> bool:
            if server.poll() is not None:
                raise SystemExit(f"eiger_server exited ({server.returncode}); see {log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False
        _wait(up, 30, "eiger_server to listen")
        print(f"live view: {live}  (status {live}status, metrics {live}metrics)")
        client = WireClient("127.0.0.1", port, timeout=30)
        run_session(client, out)
        _save_picture(live + "latest.png", out / "latest.png")
        if args.linger > 0:
            print(f"\nthe live view stays at {live} for {args.linger:g} s")
            time.sleep(args.linger)
        client.command("exit")
        server.wait(10)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
    _say(f"files saved under {out}")
    for path in sorted(out.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(out)}  ({path.stat().st_size} bytes)")
    return 0


def _save_picture(url: str, path: Path) -> None:
    """The live view's picture of the last image, as the browser gets it."""
    _say(f"the live view's picture of the last image: {path.name}")
    with urllib.request.urlopen(url, timeout=10) as answer:
        path.write_bytes(answer.read())
    print(f"  {url} -> {path}")


def run_session(client: "WireClient", out: Path) -> None:
    def show(*words: str) -> str:
        answer = client.get(*words)
        print(f"  image_par(0, \"{' '.join(words)}\") = {answer}")
        return answer

    def poll_job(what: str) -> None:
        _wait(lambda: client.get("cmd_executing") == "0", 120, what)
        print(f"  {what}: {client.get('get_answer')}")

    _say("connect (spec: config)")
    print(" ", client.command("hello").text)
    print("  config ->", client.command("config").text)
    client.set("initialize")
    poll_job("initialize")
    for name in ("simplon_version", "desc", "state", "temperature", "x_pixels_in_detector",
                 "y_pixels_in_detector", "bit_depth_image"):
        show(name)

    _say("stream mode: three points of 0.1 s, one TIFF each")
    client.set("data_directory", str(out / "tiff"))
    client.set("stream_mode", "1")
    client.set("stream_autosave", "1")
    client.set("stream_prefix", "demo")
    client.set("stream_autoindex", "1")
    client.set("nimages", "1")
    # As eiger_scan_head does: one series with a trigger per point, armed once.
    client.set("ntrigger", "3")
    client.command("set_roi", "center", "200", "300", "400", "600")
    for point in range(3):
        client.command("run", "0.1", "0")
        _wait(lambda: client.command("get_status").text == "0", 30, "the count")
        print(f"  point {point}: images_collected={client.get('images_collected')} "
              f"sum={client.get('sum')} maxval={client.get('maxval')} "
              f"roi={client.command('get_roi', 'center').text} "
              f"file={os.path.basename(client.get('stream_latest_file'))}")
    corner = client.read(0, 3, 0, 3)
    print("  read 4x4 corner of the latest image:", corner.tolist())

    _say("WRITER mode: a 5-image series written by the DCU as HDF5, then transferred")
    client.set("stream_mode", "0")
    client.set("writer_mode", "1")
    client.set("nimages_per_file", "2")
    client.set("prefix", "demo_$id")
    client.set("nimages", "5")
    client.set("ntrigger", "1")
    client.set("count_time", "0.02")
    client.set("data_directory", str(out / "hdf5"))
    client.get("arm")
    client.get("trigger")
    _wait(lambda: client.command("get_status").text == "0", 30, "the series")
    client.get("disarm")
    _wait(lambda: client.get("writer_state") != "acquire", 30, "the DCU's files")
    time.sleep(0.3)
    show("files")
    client.set("auto_delete", "1")
    client.set("transfer", "demo_*")
    poll_job("transfer")
    show("files")


if __name__ == "__main__":
    sys.exit(main())
