"""``eiger_client``: talk to eiger_server the way spec does.

Examples::

    eiger_client get state            # -> idle
    eiger_client set nimages 10
    eiger_client arm                  # a bare parameter name X means "get X"
    eiger_client read 0 511 0 1029    # prints shape, type and sum of the image
    eiger_client                      # interactive prompt

:class:`WireClient` is the same thing as a Python class for tests, demos and
scripts.
"""
from __future__ import annotations

import argparse
import shlex
import socket
import sys
import time
from typing import Any, List, Optional, Sequence

from eiger_server.wire.protocol import TYPES, ClientConnection, ExpectPayload, Response

#: Commands of the wire protocol; any other first word X means ``get X``.
WIRE_COMMANDS = frozenset({
    "hello", "config", "exit", "clear", "run", "halt", "get_status", "set", "get", "read",
    "write", "xfer_done", "set_roi", "get_roi", "goodbye",
})


class WireError(Exception):
    """The server answered with an error line."""

    def __init__(self, response: Response, request: str = "") -> None:
        super().__init__(f"{request}: {response.text}" if request else response.text)
        self.response = response


class WireClient:
    """A blocking client of eiger_server (one connection).

    ``command`` returns the :class:`~eiger_server.wire.protocol.Response`;
    ``get``/``set`` return the reply text and raise :class:`WireError` on an
    error reply; ``read`` returns a numpy array.
    """

    def __init__(self, host: str = "localhost", port: int = 5000, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = ClientConnection()
        self._ready: List[Response] = []

    # -- plumbing -------------------------------------------------------------
    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> "WireClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (e.g. ``write`` data)."""
        self.sock.sendall(data)

    def wait_reply(self, cmdno: int, timeout: Optional[float] = None) -> Response:
        """The reply to request ``cmdno`` (other replies are kept for later)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, resp in enumerate(self._ready):
                if resp.cmdno == cmdno:
                    return self._ready.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to request {cmdno} from {self.host}:{self.port} "
                                   f"within {self.timeout if timeout is None else timeout:g} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError(f"{self.host}:{self.port} closed the connection while "
                                      f"request {cmdno} was waiting for its reply")
            self._ready.extend(self.conn.receive_data(data))

    # -- requests -------------------------------------------------------------
    def command(self, cmd: str, *args: Any, check: bool = False,
                expect_payload: ExpectPayload = None, timeout: Optional[float] = None) -> Response:
        """Send one request and wait for its reply; raise :class:`WireError`
        on an error reply only if ``check``."""
        data = self.conn.send(cmd, *args, expect_payload=expect_payload)
        cmdno = self.conn.last_cmdno
        self.sock.sendall(data)
        resp = self.wait_reply(cmdno, timeout)
        if check and not resp.ok:
            raise WireError(resp, " ".join([cmd] + [str(a) for a in args]))
        return resp

    def hello(self, name: str = "eiger_client") -> str:
        """The server's ``hello back V2 ...`` line."""
        return self.command("hello", name, check=True).text

    def get(self, name: str, *args: Any, timeout: Optional[float] = None) -> str:
        """``image_par(unit, name)``: the value as text."""
        return self.command("get", name, *args, check=True, timeout=timeout).text

    def set(self, name: str, *args: Any, timeout: Optional[float] = None) -> str:
        """``image_par(unit, name, value)``: the reply text."""
        return self.command("set", name, *args, check=True, timeout=timeout).text

    def read(self, r0: int, r1: int, c0: int, c1: int, timeout: Optional[float] = None) -> Any:
        """Image rows r0..r1 and columns c0..c1 (inclusive) as a numpy array."""
        resp = self.command("read", r0, r1, c0, c1, check=True, timeout=timeout)
        return response_array(resp, (r1 - r0 + 1, c1 - c0 + 1))


def response_array(resp: Response, shape: Optional[Sequence[int]] = None) -> Any:
    """The array of a 2-D ``read`` reply (``<npoints> <type>`` + data)."""
    import numpy as np

    parts = resp.text.split()
    if len(parts) != 2 or parts[1] not in TYPES:
        raise ValueError(f"reply {resp.text!r} is not a data header '<npoints> <type>'")
    n = int(parts[0])
    arr = np.frombuffer(resp.payload, dtype=TYPES[parts[1]].dtype, count=n)
    if shape is not None and int(np.prod(shape)) == n:
        arr = arr.reshape(tuple(shape))
    return arr


# ---------------------------------------------------------------- command line

def _describe_array(arr: Any) -> str:
    if arr.size == 0:
        return f"shape {arr.shape} {arr.dtype} (empty)"
    return (f"shape {arr.shape} {arr.dtype} sum {arr.sum(dtype='float64'):.17g} "
            f"min {arr.min()} max {arr.max()}")


def run_words(client: WireClient, words: List[str], out: Any = sys.stdout,
              save: Optional[str] = None) -> int:
    """Run one command line (a list of words); print the answer; 0 if ok."""
    if not words:
        return 0
    cmd, args = words[0], words[1:]
    if cmd not in WIRE_COMMANDS:
        cmd, args = "get", words
    if cmd == "read":
        if len(args) not in (2, 4):
            print("read needs row_beg row_end col_beg col_end (or first last)", file=sys.stderr)
            return 2
        resp = client.command("read", *args)
        if not resp.ok:
            print(f"error: {resp.text}", file=sys.stderr)
            return 1
        if not resp.payload:
            print(resp.text, file=out)   # "busy", "not ready", 1-D header...
            return 0
        r0, r1, c0, c1 = (int(a) for a in args) if len(args) == 4 else (0, 0, 0, 0)
        arr = response_array(resp, (r1 - r0 + 1, c1 - c0 + 1) if len(args) == 4 else None)
        print(_describe_array(arr), file=out)
        if save:
            import numpy as np

            np.save(save, arr)
            print(f"saved to {save}", file=out)
        return 0
    resp = client.command(cmd, *args)
    if resp.ok:
        print(resp.text, file=out)
        return 0
    print(f"error: {resp.text}", file=sys.stderr)
    return 1


def interactive(client: WireClient) -> int:
    """A prompt sending each line; ``quit`` or end of input leaves."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print(client.hello())
    print("commands as on the command line; 'quit' leaves ('exit' stops the server)")
    while True:
        try:
            line = input(f"{client.host}:{client.port}> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            print(f"cannot parse the line: {exc}", file=sys.stderr)
            continue
        if words in (["quit"], ["q"]):
            return 0
        try:
            run_words(client, words)
        except (TimeoutError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
        except (ConnectionError, OSError) as exc:
            print(f"connection lost: {exc}", file=sys.stderr)
            return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``eiger_client [-H host] [-p port] [command args...]``."""
    p = argparse.ArgumentParser(
        prog="eiger_client",
        description="Send commands to eiger_server over spec's server_hdw protocol. "
                    "A first word that is not a protocol command is a parameter name "
                    "and means 'get NAME'. Without a command, read commands from a prompt.")
    p.add_argument("-H", "--host", default="localhost", help="server host (default localhost)")
    p.add_argument("-p", "--port", type=int, default=5000, help="server port (default 5000)")
    p.add_argument("-t", "--timeout", type=float, default=30.0,
                   help="seconds to wait for a reply (default 30)")
    p.add_argument("-o", "--save", metavar="FILE.npy", help="with read: save the data with numpy")
    p.add_argument("words", nargs=argparse.REMAINDER, help="command and its arguments")
    ns = p.parse_args(argv)
    try:
        client = WireClient(ns.host, ns.port, ns.timeout)
    except OSError as exc:
        print(f"eiger_client: cannot connect to {ns.host}:{ns.port}: {exc}; "
              f"is eiger_server running there?", file=sys.stderr)
        return 1
    with client:
        try:
            if not ns.words:
                return interactive(client)
            return run_words(client, ns.words, save=ns.save)
        except (TimeoutError, ConnectionError, OSError, ValueError) as exc:
            print(f"eiger_client: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
