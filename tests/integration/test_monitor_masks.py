"""Monitor images and pixel mask / flatfield files, end to end against the fake DCU."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from helpers import acquire, wait_for
from eiger_server.formats.darray import decode_darray
from eiger_server.errors import DataError, NotSupported, ParameterError


def wait_job(ctrl, timeout: float = 30.0) -> str:
    wait_for(lambda: ctrl.get("cmd_executing") == "0", timeout, what="the background command")
    return ctrl.get("get_answer")


def source_frame(app, index: int, channels=("threshold_1",), channel="threshold_1"):
    w = int(app.model.config_value("detector", "x_pixels_in_detector"))
    h = int(app.model.config_value("detector", "y_pixels_in_detector"))
    dtype = np.dtype(f"uint{int(app.model.config_value('detector', 'bit_depth_image'))}")
    return app.model.source.frame(index, w, h, dtype, list(channels))[channel]


def dcu_array(ctrl, key: str) -> np.ndarray:
    return decode_darray(ctrl.simplon.get("detector", "config", key))


# -- monitor ------------------------------------------------------------
@pytest.mark.parametrize("api", ["1.6.0", "1.8.0"])
def test_monitor_images_save_and_pop(controller, fake_dcu, tmp_path):
    ctrl, app = controller, fake_dcu
    ctrl.set("prefix", ["mon_$id"])
    ctrl.set("monitor_mode", ["1"])
    ctrl.set("buffer_size", ["5"])
    seqid = acquire(ctrl, 3)
    wait_for(lambda: ctrl.get("monitor_images") == f"[[{seqid}, [0, 1, 2]]]", 10,
             what="three images in the monitor")

    first = ctrl.get("monitor_pop")
    assert first == str(tmp_path / "data" / f"mon_{seqid}_s{seqid}_i0.tif")
    np.testing.assert_array_equal(tifffile.imread(first), source_frame(app, 0))
    assert ctrl.get("monitor_images") == f"[[{seqid}, [1, 2]]]"

    given = ctrl.get("monitor_save", [f"{seqid} 1"])
    assert Path(given).name == f"mon_{seqid}_s{seqid}_i1.tif"
    np.testing.assert_array_equal(tifffile.imread(given), source_frame(app, 1))
    # Saving the same image again never overwrites: a new name.
    again = ctrl.get("monitor_save", [str(seqid), "1"])
    assert Path(again).name == f"mon_{seqid}_s{seqid}_i1-img001.tif"

    latest = ctrl.get("monitor_save")
    assert Path(latest).name == f"mon_{seqid}_monitor.tif"
    np.testing.assert_array_equal(tifffile.imread(latest), source_frame(app, 2))
    threshold = ctrl.get("monitor_save_threshold", ["1"])
    assert Path(threshold).name == f"mon_{seqid}_monitor_th1.tif"
    np.testing.assert_array_equal(tifffile.imread(threshold), source_frame(app, 2))
    assert not list((tmp_path / "data").glob(".*"))            # no temporary files left

    with pytest.raises(DataError, match=f"image 7 of series {seqid} is not available"):
        ctrl.get("monitor_save", [f"{seqid} 7"])
    with pytest.raises(ParameterError, match="monitor_save takes no argument"):
        ctrl.get("monitor_save", ["1"])
    with pytest.raises(ParameterError, match="monitor_save_threshold needs"):
        ctrl.get("monitor_save_threshold")
    ctrl.get("monitor_pop")
    ctrl.get("monitor_pop")
    # An empty monitor makes the DCU answer HTTP 408 after 500 ms: a clear error.
    with pytest.raises(DataError, match="the oldest monitor image is not available: the "
                                        "monitor holds no such image"):
        ctrl.get("monitor_pop")
    # The latest image of one threshold is asked by series and id, never images/monitor/<n>.
    paths = [entry[1] for entry in list(app.http.request_log) if "/images/" in entry[1]]
    assert f"/monitor/api/{app.model.api}/images/{seqid}/2/1" in paths
    assert not [p for p in paths if "/images/monitor/" in p]


@pytest.mark.parametrize("api", ["1.6.0", "1.8.0"])
def test_monitor_status_has_each_versions_keys(controller, fake_dcu):
    ctrl = controller
    assert ctrl.get("monitor_mode") == "0" and ctrl.get("buffer_size") == "100"
    ctrl.set("monitor_mode", ["1"])
    seqid = acquire(ctrl, 2)
    wait_for(lambda: ctrl.get("monitor_images") == f"[[{seqid}, [0, 1]]]", 10,
             what="two images in the monitor")
    assert ctrl.get("buffer_fill_level") == "2 100"
    keys = set(ctrl.simplon.keys("monitor", "status"))
    status = {key: ctrl.simplon.get_value("monitor", "status", key) for key in keys}
    if fake_dcu.model.api == "1.6.0":
        assert "buffer_free" not in keys
        # images/next would hand out image 0, images/monitor image 1
        assert (status["next_image_number"], status["monitor_image_number"]) == (0, 1)
    else:
        assert "next_image_number" not in keys and "monitor_image_number" not in keys
        assert status["buffer_free"] == 98


# -- pixel mask and flatfield -------------------------------------------------
@pytest.mark.parametrize("api", ["1.6.0", "1.8.0"])
def test_pixelmask_save_load_round_trip(controller, tmp_path):
    ctrl = controller
    data = tmp_path / "data"
    saved = ctrl.get("pixelmask_save", ["mask_a"])
    assert saved == str(data / "mask_a.npy")
    original = np.load(saved, allow_pickle=False)
    assert original.dtype == np.uint32
    np.testing.assert_array_equal(original, dcu_array(ctrl, "pixel_mask"))
    assert original.shape == (int(ctrl.get("y_pixels_in_detector")),
                              int(ctrl.get("x_pixels_in_detector")))

    # A mask with every bit pattern in odd places, not symmetric in x/y.
    rng = np.random.default_rng(7)
    mask = original.copy()
    mask[rng.integers(0, mask.shape[0], 500), rng.integers(0, mask.shape[1], 500)] = \
        rng.integers(1, 2 ** 32, 500, dtype=np.uint64).astype(np.uint32)
    mask[0, -1] = 0xFFFFFFFF
    np.save(data / "edited.npy", mask)
    answer = ctrl.get("pixelmask_load", [str(data / "edited.npy")])
    assert answer.startswith(f"pixel mask loaded from {data / 'edited.npy'}")
    np.testing.assert_array_equal(dcu_array(ctrl, "pixel_mask"), mask)
    back = np.load(ctrl.get("pixelmask_save", ["mask_b.npy"]), allow_pickle=False)
    assert back.dtype == mask.dtype and back.tobytes() == mask.tobytes()

    # The documented default lives in /tmp.
    assert ctrl.get("pixelmask_save") == "/tmp/pixelmask.npy"
    np.testing.assert_array_equal(np.load("/tmp/pixelmask.npy"), mask)


@pytest.mark.parametrize("api", ["1.8.0"])
def test_pixelmask_files_are_checked(controller, tmp_path):
    ctrl = controller
    data = tmp_path / "data"
    for name in ("/etc/mask.npy", "../outside.npy", "/var/tmp/x.npy"):
        with pytest.raises(DataError, match="outside"):
            ctrl.get("pixelmask_save", [name])
    with pytest.raises(DataError, match="outside"):
        ctrl.get("pixelmask_load", ["/etc/passwd"])
    np.save(data / "small.npy", np.zeros((3, 4), np.uint32))
    with pytest.raises(DataError, match=r"shape \(3, 4\); this detector needs"):
        ctrl.get("pixelmask_load", ["small"])
    h, w = int(ctrl.get("y_pixels_in_detector")), int(ctrl.get("x_pixels_in_detector"))
    np.save(data / "float.npy", np.zeros((h, w), np.float32))
    with pytest.raises(DataError, match="holds float32 values"):
        ctrl.get("pixelmask_load", ["float.npy"])
    (data / "text.npy").write_text("not numpy")
    with pytest.raises(DataError, match="is not a numpy .npy array file"):
        ctrl.get("pixelmask_load", ["text.npy"])
    with pytest.raises(DataError, match="does not exist"):
        ctrl.get("pixelmask_load", ["missing.npy"])


@pytest.mark.parametrize("api", ["1.8.0"])
def test_flatfield_save(controller, tmp_path):
    path = controller.get("flatfield_save", ["ff"])
    assert path == str(tmp_path / "data" / "ff.npy")
    flat = np.load(path)
    assert flat.dtype == np.float32
    np.testing.assert_array_equal(flat, dcu_array(controller, "flatfield"))
    assert controller.get("flatfield_save") == "/tmp/flatfield.npy"


@pytest.mark.parametrize("api", ["1.6.0", "1.8.0"])
def test_pixelmask_calibrate_flags_counting_pixels(controller, fake_dcu, monkeypatch, tmp_path):
    ctrl = controller
    on_1_8 = fake_dcu.model.api == "1.8.0"
    old = dcu_array(ctrl, "pixel_mask")
    dark = np.zeros(old.shape, np.uint16)
    dark[10, 20] = 3                      # hot pixels in a dark image
    dark[-1, 5] = 1
    dark[0, 0] = 65535                    # a gap/masked value: not a hot pixel
    already = np.argwhere(old & 8)
    if on_1_8:
        # threshold 2's mask already knows one of the hot pixels: it gains one only
        second = old.copy()
        second[10, 20] |= 8
        np.save(tmp_path / "data" / "second.npy", second)
        ctrl.get("pixelmask_load", ["2", "second"])
    monkeypatch.setattr(ctrl.stream, "latest", lambda: None)
    assert ctrl.set("pixelmask_calibrate") == "started"
    assert wait_job(ctrl) == ("error: no image yet: take a dark image with the stream "
                              "enabled first")
    monkeypatch.setattr(ctrl.stream, "latest", lambda: SimpleNamespace(raw=dark))
    ctrl.set("pixelmask_calibrate")
    answer = wait_job(ctrl)
    expected = old.copy()
    expected[10, 20] |= 8
    expected[-1, 5] |= 8
    assert ctrl.get("get_command") == "pixelmask_calibrate"
    if on_1_8:
        assert answer == ("pixel mask calibrated from the latest image into thresholds 1, 2 "
                          "(each one's mask): newly flagged pixels: 2 in threshold 1, "
                          "1 in threshold 2; old masks kept in /tmp/pixelmask.bck, "
                          "/tmp/pixelmask_2.bck")
        for key in ("threshold/1/pixel_mask", "threshold/2/pixel_mask"):
            np.testing.assert_array_equal(dcu_array(ctrl, key), expected)
        np.testing.assert_array_equal(np.load("/tmp/pixelmask_2.bck", allow_pickle=False),
                                      second)
    else:
        assert answer == ("pixel mask calibrated from the latest image into the pixel mask: "
                          "2 newly flagged pixels; old mask kept in /tmp/pixelmask.bck")
    np.testing.assert_array_equal(dcu_array(ctrl, "pixel_mask"), expected)
    np.testing.assert_array_equal(np.load("/tmp/pixelmask.bck", allow_pickle=False), old)
    assert len(already) == 0 or (dcu_array(ctrl, "pixel_mask")[tuple(already.T)] & 8).all()

    if on_1_8:
        # one threshold: only its mask, and the answer names it
        dark[3, 4] = 2
        ctrl.set("pixelmask_calibrate", ["2"])
        assert wait_job(ctrl) == ("pixel mask calibrated from the latest image into "
                                  "threshold 2 (its mask): 1 newly flagged pixel; old mask "
                                  "kept in /tmp/pixelmask.bck")
        assert dcu_array(ctrl, "threshold/2/pixel_mask")[3, 4] & 8
        assert not dcu_array(ctrl, "threshold/1/pixel_mask")[3, 4] & 8


@pytest.mark.parametrize("api", ["1.8.0"])
def test_pixelmask_calibrate_on_a_streamed_image(controller):
    ctrl = controller
    ctrl.set("stream_mode", ["1"])
    acquire(ctrl, 1)
    wait_for(lambda: ctrl.stream.latest() is not None, 10, what="a streamed image")
    raw = ctrl.stream.latest().raw
    old = dcu_array(ctrl, "pixel_mask")
    ctrl.set("pixelmask_calibrate")
    answer = wait_job(ctrl)
    counted = (raw != 0) & (raw != np.iinfo(raw.dtype).max)
    expected = old | np.where(counted, np.uint32(8), np.uint32(0))
    flagged = int(np.count_nonzero(expected != old))
    assert flagged > 0
    assert f"newly flagged pixels: {flagged} in threshold 1, {flagged} in threshold 2;" \
        in answer
    np.testing.assert_array_equal(dcu_array(ctrl, "pixel_mask"), expected)


# -- collection mode -------------------------------------------------------------
@pytest.mark.parametrize("api", ["1.8.0"])
def test_collection_mode_is_refused_clearly(controller):
    for name in ("collection_start", "collection_get", "is_collecting"):
        with pytest.raises(NotSupported, match="collection mode is not supported"):
            controller.get(name)


# -- per-threshold masks (SIMPLON 1.8) ----------------------------------------------
@pytest.mark.parametrize("api", ["1.8.0"])
def test_pixelmask_reaches_every_threshold_on_1_8(controller, fake_dcu, tmp_path):
    ctrl, data = controller, tmp_path / "data"
    mask = dcu_array(ctrl, "threshold/1/pixel_mask")
    mask[5, 9] |= 16
    np.save(data / "both.npy", mask)
    before = len(fake_dcu.http.request_log)
    answer = ctrl.get("pixelmask_load", ["both"])
    # without a threshold: every threshold's mask, and the answer says so
    assert "into thresholds 1, 2 (each one's mask)" in answer
    assert "armed and disarmed once" in answer
    for key in ("pixel_mask", "threshold/1/pixel_mask", "threshold/2/pixel_mask"):
        np.testing.assert_array_equal(dcu_array(ctrl, key), mask)
    asked = [(m, p) for m, p, _ in list(fake_dcu.http.request_log)[before:]]
    commands = [p.rsplit("/", 1)[1] for m, p in asked if "/command/" in p]
    assert commands == ["arm", "disarm"]
    assert ctrl.get("state") == "idle"

    other = mask.copy()
    other[7, 7] |= 2
    np.save(data / "two.npy", other)
    assert "into threshold 2 (its mask)" in ctrl.get("pixelmask_load", ["2", "two"])
    np.testing.assert_array_equal(dcu_array(ctrl, "threshold/1/pixel_mask"), mask)
    np.testing.assert_array_equal(dcu_array(ctrl, "threshold/2/pixel_mask"), other)
    # save: threshold 1's by default (the pixel_mask), a given threshold's on request
    np.testing.assert_array_equal(np.load(ctrl.get("pixelmask_save", ["one"])), mask)
    np.testing.assert_array_equal(np.load(ctrl.get("pixelmask_save", ["2 second"])), other)
    with pytest.raises(ParameterError, match="threshold 3 has no pixel mask of its own"):
        ctrl.get("pixelmask_save", ["3", "x"])


@pytest.mark.parametrize("api", ["1.8.0"])
def test_each_channel_carries_its_own_thresholds_mask_over_the_v2_stream(controller, fake_dcu,
                                                                        tmp_path):
    ctrl, app, data = controller, fake_dcu, tmp_path / "data"
    channels = ("threshold_1", "threshold_2", "difference")
    for key in ("threshold/1/mode", "threshold/2/mode", "threshold/difference/mode"):
        ctrl.set(key, ["1"])
    one, two = (100, 200), (300, 400)               # pixels the factory mask leaves alone
    factory = dcu_array(ctrl, "threshold/1/pixel_mask")
    assert factory[one] == factory[two] == 0
    for threshold, pixel, name in (("1", one, "m1"), ("2", two, "m2")):
        mask = factory.copy()
        mask[pixel] |= 2                            # flagged noisy
        np.save(data / f"{name}.npy", mask)
        ctrl.get("pixelmask_load", [threshold, name])
    ctrl.set("stream_version", ["V2"])
    ctrl.set("stream_mode", ["1"])
    acquire(ctrl, 1)
    wait_for(lambda: ctrl.stream.latest() is not None, 10, what="a streamed image")
    received = ctrl.stream.latest().channels
    assert sorted(received) == sorted(channels)
    top = np.iinfo(received["threshold_1"].dtype).max
    masked_by = {"threshold_1": [one], "threshold_2": [two], "difference": [one, two]}
    for channel in channels:
        expected = source_frame(app, 0, channels, channel).copy()
        assert expected[one] != top and expected[two] != top
        for pixel in masked_by[channel]:
            expected[pixel] = top
        np.testing.assert_array_equal(received[channel], expected, err_msg=channel)


@pytest.mark.parametrize("api", ["1.6.0"])
def test_pixelmask_threshold_on_1_6_is_refused_clearly(controller):
    with pytest.raises(ParameterError, match="SIMPLON 1.6.0 has one mask"):
        controller.get("pixelmask_save", ["2", "x"])
    assert "into the pixel mask" in controller.get(
        "pixelmask_load", [controller.get("pixelmask_save", ["m"])])


# -- stream initialize (SIMPLON 1.8 leaves the stream disabled) -------------------------
@pytest.mark.parametrize("api", ["1.6.0", "1.8.0"])
def test_stream_initialize_leaves_the_1_8_stream_disabled(controller, fake_dcu):
    controller.set("stream_mode", ["1"])
    assert controller.get("stream_mode") == "1"
    controller.set("stream_initialize")
    expected = "0" if fake_dcu.model.api == "1.8.0" else "1"
    assert controller.get("stream_mode") == expected
    assert fake_dcu.model.config_value("stream", "mode") == (
        "disabled" if expected == "0" else "enabled")
