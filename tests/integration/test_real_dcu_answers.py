"""eiger_server against a DCU that answers exactly like a real EIGER 500K on SIMPLON 1.6.6.

The answers have the real DCU's odd shapes (SIMPLON.md, "Odd but real
answers"): darrays as [height, width], ``allowed_values`` a bare string,
booleans with integer min/max, status values with ``state`` and
``critical_limits``, and PUTs answering unrelated names or ``null``.
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from eiger_server.options import ServerOptions
from eiger_server.errors import ParameterError

WIDTH, HEIGHT = 1030, 514


def _darray(array: np.ndarray) -> Dict[str, Any]:
    return {"__darray__": [1, 0, 0], "type": array.dtype.str, "shape": list(array.shape),
            "filters": ["base64"], "data": base64.b64encode(array.tobytes()).decode()}


class Real166:
    """The recorded answers' shapes, and what was PUT."""

    def __init__(self) -> None:
        mask = np.zeros((HEIGHT, WIDTH), np.uint32)
        mask[:, 256:258] = 1                     # a chip gap, not symmetric in x/y
        mask[3, 1000] = 8
        flat = np.linspace(0.9, 1.1, WIDTH * HEIGHT, dtype=np.float32).reshape(HEIGHT, WIDTH)
        self.state = "idle"
        self.version = "1.6.0"
        self.config: Dict[str, Dict[str, Any]] = {
            "x_pixels_in_detector": {"value": WIDTH, "value_type": "uint", "access_mode": "r"},
            "y_pixels_in_detector": {"value": HEIGHT, "value_type": "uint", "access_mode": "r"},
            "pixel_mask": {"value": _darray(mask), "value_type": "uint", "access_mode": "rw"},
            "flatfield": {"value": _darray(flat), "value_type": "float", "access_mode": "rw"},
            "roi_mode": {"value": "disabled", "value_type": "string", "access_mode": "rw",
                         "allowed_values": "disabled"},
            "pixel_mask_applied": {"value": True, "value_type": "bool", "access_mode": "rw",
                                   "min": 0, "max": 1},
            "detector_number": {"value": "E-01-0000", "value_type": "string",
                                "access_mode": "r"},
        }
        self.mask, self.flat = mask, flat
        self.puts: List[Tuple[str, Any]] = []

    def status(self, name: str) -> Dict[str, Any]:
        values = {"state": self.state, "link_0": "up", "link_1": "down"}
        if name == "board_000/th0_temp":
            return {"value": 31.2, "value_type": "float", "access_mode": "r", "unit": "degC",
                    "state": "normal", "critical_limits": [5, 50],
                    "critical_values": [False, False], "time": "2017-07-03T11:38:53"}
        return {"value": values[name], "value_type": "string", "access_mode": "r",
                "state": "normal", "critical_limits": [], "critical_values": [],
                "time": "2017-07-03T11:38:53"}


def _handler(dcu: Real166) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            parts = [p for p in self.path.split("/") if p]
            if parts == ["detector", "api", "version"]:
                return self._answer(200, {"value": dcu.version, "value_type": "string"})
            task, name = parts[3], "/".join(parts[4:])
            if name == "keys":
                return self._answer(200, list(dcu.config if task == "config"
                                              else ["state", "link_0", "link_1"]))
            try:
                return self._answer(200, dcu.config[name] if task == "config"
                                    else dcu.status(name))
            except KeyError:
                return self._answer(404, b"not found")

        def do_PUT(self) -> None:  # noqa: N802
            parts = [p for p in self.path.split("/") if p]
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            task, name = parts[3], "/".join(parts[4:])
            dcu.puts.append((f"{task}/{name}", body))
            if task == "command":
                if name == "arm":
                    dcu.state = "ready"
                    return self._answer(200, {"sequence id": 1})
                dcu.state = "idle"
                return self._answer(200, b"")
            if dcu.config[name].get("access_mode") == "r":
                return self._answer(400, b"parameter is read-only")
            dcu.config[name] = dict(dcu.config[name], value=body["value"])
            # unrelated names, or null, as real firmware answers
            return self._answer(200, None if name == "roi_mode" else ["auto_summation",
                                                                      "count_time"])
    return Handler


@pytest.fixture
def real_dcu():
    dcu = Real166()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(dcu))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    dcu.port = server.server_address[1]
    yield dcu
    server.shutdown()
    server.server_close()


@pytest.fixture
def ctrl(real_dcu, tmp_path):
    from eiger_server.control.controller import EigerController
    controller = EigerController(ServerOptions(dcu_host="127.0.0.1", dcu_port=real_dcu.port))
    controller.set("data_directory", [str(tmp_path / "data")])
    yield controller
    controller.close()


def test_mask_and_flatfield_of_a_real_1_6_6_dcu(ctrl, real_dcu, tmp_path):
    saved = ctrl.get("pixelmask_save", ["mask"])
    mask = np.load(saved)
    assert mask.shape == (HEIGHT, WIDTH)                  # (y, x), never a shape error
    np.testing.assert_array_equal(mask, real_dcu.mask)
    flat = np.load(ctrl.get("flatfield_save", ["flat"]))
    np.testing.assert_array_equal(flat, real_dcu.flat)

    mask[100:110, 7] |= 2
    np.save(tmp_path / "data" / "edited.npy", mask)
    answer = ctrl.get("pixelmask_load", ["edited"])
    assert "into the pixel mask" in answer and "armed and disarmed once" in answer
    put = [body for what, body in real_dcu.puts if what == "config/pixel_mask"][-1]
    assert put["value"]["shape"] == [HEIGHT, WIDTH]       # back in the DCU's own order
    sent = np.frombuffer(base64.b64decode(put["value"]["data"]), np.uint32)
    np.testing.assert_array_equal(sent.reshape(HEIGHT, WIDTH), mask)
    commands = [what for what, _ in real_dcu.puts if what.startswith("command/")]
    assert commands == ["command/arm", "command/disarm"]


def test_odd_answers_of_a_real_1_6_6_dcu(ctrl, real_dcu):
    assert ctrl.get("roi_mode") == "disabled"
    assert ctrl.set("roi_mode", ["disabled"]) == "disabled"   # PUT answered null
    with pytest.raises(ParameterError, match="choose one of disabled"):
        ctrl.set("roi_mode", ["dis"])          # a bare string is no list of substrings
    assert ctrl.get("link/0") == "up" and ctrl.get("link/1") == "down"
    assert float(ctrl.get("temperature")) == pytest.approx(31.2)
    assert ctrl.get("pixel_mask_applied") == "1"               # bool with min 0 / max 1
    assert ctrl.set("pixel_mask_applied", ["0"]) == "0"
    assert ("config/pixel_mask_applied", {"value": False}) in real_dcu.puts
    with pytest.raises(ParameterError, match="the detector does not allow writing"):
        ctrl.set("detector_number", ["E-99"])
    assert not [what for what, _ in real_dcu.puts if what == "config/detector_number"]


def test_an_eiger1_on_1_8_falls_back_to_board_000(ctrl, real_dcu):
    # an EIGER1 running SIMPLON 1.8 may only serve board_000/th0_temp
    real_dcu.version = "1.8.0"
    assert float(ctrl.get("temperature")) == pytest.approx(31.2)
    assert ctrl.version == "1.8.0"          # it asked for "temperature" first, and was refused
