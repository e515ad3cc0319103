"""Image orientation end to end: eiger_server started with -r / --rotate180 /
--rotate270 / --flipv / --fliph against the fake DCU, spoken to over the wire.

spec sees the oriented image: ``config`` gives its rows and columns, ``read``
its pixels. The expected pixels are the fake DCU's own frame, oriented with
numpy: rotation (clockwise) first, then the vertical flip, then the
horizontal flip.
"""
from __future__ import annotations

from typing import Callable, List

import numpy as np
import pytest

from eiger_server.wire.client import WireClient
from helpers import ServerProcess, server_args_for, wait_for

WIDTH, HEIGHT = 1030, 514            # the fake 500K


def cw(k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.rot90(a, -k)   # k quarter turns clockwise


CASES = [
    ([], lambda a: a),
    (["-r"], cw(1)),
    (["--rotate90"], cw(1)),
    (["--rotate180"], cw(2)),
    (["--rotate270"], cw(3)),
    (["--flipv"], np.flipud),
    (["--fliph"], np.fliplr),
    # rotation first, then the flip: not the same as flipping first
    (["-r", "--flipv"], lambda a: np.flipud(np.rot90(a, -1))),
    (["--rotate270", "--fliph"], lambda a: np.fliplr(np.rot90(a, -3))),
    (["--flipv", "--fliph"], lambda a: np.fliplr(np.flipud(a))),
]


def sent_frame(dcu, image_id: int) -> np.ndarray:
    """The frame the fake DCU sends as image ``image_id`` of a series."""
    return dcu.model.source.frame(image_id, WIDTH, HEIGHT, np.uint16,
                                  ["threshold_1"])["threshold_1"]


@pytest.mark.parametrize("options,orient", CASES, ids=[" ".join(c[0]) or "none" for c in CASES])
def test_read_gives_the_oriented_frame(dcu, tmp_path, options: List[str], orient):
    server = ServerProcess(server_args_for(dcu) + options, tmp_path)
    try:
        with WireClient("127.0.0.1", server.port, 30) as c:
            sent = sent_frame(dcu, 0)
            expected = orient(sent)
            if options:                             # else the comparison proves nothing
                assert expected.shape != sent.shape or not np.array_equal(expected, sent)
            rows, cols = expected.shape
            assert c.command("config", "127.0.0.1", check=True).text == f"ushort {rows} {cols}"
            if rows != HEIGHT:                      # a quarter turn swaps them
                assert (rows, cols) == (WIDTH, HEIGHT)
            c.set("data_directory", str(tmp_path / "data"))
            c.set("stream_mode", 1)
            c.set("nimages", 1)
            c.command("run", 0.01, check=True)
            wait_for(lambda: c.command("get_status", check=True).text == "0", 30,
                     what="the count to end")
            assert c.get("images_collected") == "1"
            image = c.read(0, rows - 1, 0, cols - 1)
            assert image.dtype == np.uint16 and image.shape == (rows, cols)
            np.testing.assert_array_equal(image, expected)
            # a sub-image is the same part of the oriented frame
            part = c.read(5, 40, 100, 300)
            np.testing.assert_array_equal(part, expected[5:41, 100:301])
    finally:
        server.stop()
