"""The live page in a real headless browser (Debian's chromium + chromedriver).

eiger_server runs as a process with --http-port; the browser loads the page,
sees the image, a count runs over the wire and the page follows it. Without
chromium the test is skipped, saying so loudly; .ci/run installs it so CI
always runs it.
"""
from __future__ import annotations

import shutil
import tempfile

import pytest

from helpers import ServerProcess, free_port, server_args_for, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def _browser_missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (make venv installs it: the test extra in pyproject.toml)"
    if not CHROMIUM:
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if not shutil.which(CHROMEDRIVER):
        return f"chromedriver is not installed at {CHROMEDRIVER} (apt-get install chromium-driver)"
    return ""


@pytest.fixture
def browser(tmp_path):
    missing = _browser_missing()
    if missing:
        pytest.skip(f"LIVE PAGE BROWSER TEST NOT RUN: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # the system chromedriver given explicitly: selenium downloads nothing
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _count(client, nimages: int) -> None:
    client.set("nimages", nimages)
    client.set("trigger")
    wait_for(lambda: client.command("get_status").text == "0", 30, what="the count")


@pytest.mark.parametrize("api", ["1.8.0"])
def test_page_shows_the_image_and_follows_a_count(fake_dcu, tmp_path, browser):
    from eiger_server.wire.client import WireClient
    http_port = free_port()
    server = ServerProcess(server_args_for(fake_dcu) + ["--http-port", str(http_port),
                                                        "--bind", "127.0.0.1"], tmp_path)
    try:
        with WireClient("127.0.0.1", server.port) as client:
            client.set("initialize")
            wait_for(lambda: client.get("cmd_executing") == "0", 20, what="initialize")
            client.set("data_directory", str(tmp_path / "data"))
            client.set("stream_mode", 1)
            client.set("trigger_mode", "ints")
            client.set("count_time", 0.005)
            client.set("frame_time", 0.005)
            _count(client, 2)
            first_series = client.get("seqid")

            browser.get(f"http://127.0.0.1:{http_port}/")
            image = browser.find_element("id", "live")

            def shown():
                ident = image.get_attribute("data-image-id")
                loaded = browser.execute_script(
                    "const i = arguments[0]; return i.complete && i.naturalWidth > 0;", image)
                return ident if loaded else None
            before = wait_for(shown, 20, what="the page to show the image")
            wait_for(lambda: browser.find_element("id", "series").text == first_series, 10,
                     what="the page to show the series")
            assert browser.find_element("id", "images_collected").text == "2"
            assert "frame 1 of series" in browser.find_element("id", "imageinfo").text
            width = browser.execute_script("return arguments[0].naturalWidth;", image)
            assert width == int(client.get("x_pixels_in_detector")) // 2   # downscaled 500K

            _count(client, 3)                  # a new series, over the wire
            series = client.get("seqid")
            assert series != first_series
            wait_for(lambda: browser.find_element("id", "series").text == series, 15,
                     what="the page to show the new series")
            wait_for(lambda: shown() not in (None, before), 15,
                     what="the page to show the new image")
            wait_for(lambda: browser.find_element("id", "images_collected").text == "3", 10,
                     what="the page to show the new count")
            assert f"frame 2 of series {series}" in browser.find_element("id", "imageinfo").text
            # zoom: a click shows a region at full resolution
            image.click()
            wait_for(lambda: "rows" in browser.find_element("id", "imageinfo").text, 10,
                     what="the zoomed region")
    finally:
        server.stop()
