"""`config` tells the truth about `read` (issue 11 item 3), on a DCU whose
bit depth follows the count time as an EIGER2 on SIMPLON 1.8 does."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tifffile

from helpers import wait_for

WIRE = {"ubyte": np.uint8, "ushort": np.uint16, "ulong": np.uint32, "ulong64": np.uint64}


@pytest.mark.parametrize("api", ["1.8.0"])
def test_config_follows_acq_mode_and_bit_depth_between_counts(server, fake_dcu, tmp_path):
    from eiger_server.wire.client import WireClient
    fake_dcu.model.bit_depth_follows_count_time = True
    data = tmp_path / "truth"
    with WireClient("127.0.0.1", server.port) as client:
        client.set("initialize")
        wait_for(lambda: client.get("cmd_executing") == "0", 20, what="initialize")
        client.set("data_directory", str(data))
        client.set("stream_mode", 1)
        client.set("trigger_mode", "ints")
        client.set("nimages", 1)
        client.set("stream_autosave", 1)
        client.set("stream_autoindex", 1)
        width = int(client.get("x_pixels_in_detector"))
        height = int(client.get("y_pixels_in_detector"))

        def count(prefix: str, count_time: float, mode: str) -> str:
            client.set("stream_prefix", prefix)
            client.set("acq_mode", mode)
            client.set("frame_time", 0.2)
            client.set("count_time", count_time)         # EIGER2: the bit depth follows
            announced = client.command("config", check=True).text
            client.command("run", count_time, check=True)
            wait_for(lambda: client.command("get_status").text == "0", 30, what="count end")
            kind, rows, cols = announced.split()
            assert (int(rows), int(cols)) == (height, width)
            image = client.read(0, height - 1, 0, width - 1)
            assert image.dtype == WIRE[kind], (prefix, announced)
            files = wait_for(lambda: glob.glob(os.path.join(data, f"{prefix}_[0-9]*.tif")), 20,
                             what=f"the TIFF of {prefix}")
            assert tifffile.imread(sorted(files)[-1]).dtype == WIRE[kind]
            return kind

        assert count("c20ms", 0.02, "SINGLE") == "ushort"     # 16 bits at 20 ms
        assert client.get("bit_depth_image") == "16"
        assert count("c10ms", 0.01, "SINGLE") == "ubyte"      # 8 bits at 10 ms
        assert client.get("bit_depth_image") == "8"
        assert count("c100ms", 0.1, "SINGLE") == "ulong"      # 32 bits at 100 ms
        # ACCUM: the accumulated type of the current depth, then back
        client.set("acc_nimages", 1)
        assert count("acc100", 0.1, "ACCUM") == "ulong64"
        assert count("acc10", 0.01, "ACCUM") == "ulong"
        assert count("single10", 0.01, "SINGLE") == "ubyte"
