"""The web page in headless Chromium: upload, masks drawn, slider and class filter, download.

The server runs a fake predictor with known detections (``servers.FAKE_DETECTIONS``)
on a uniform grey image, so what must be drawn, and where, is known exactly.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'maskrcnn[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install selenium")

from selenium.webdriver.common.by import By  # noqa: E402

from maskrcnn.serve.app import create_app  # noqa: E402

from .servers import FAKE_DETECTIONS, FAKE_SIZE, FakePredictor, live_server, png_bytes  # noqa: E402

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
GREY = 128
MASK_ALPHA = 0.5  # the page's
# The page's palette, by class in order of first appearance: thing0, thing1, thing2.
COLORS = {"thing0": (230, 25, 75), "thing1": (60, 180, 75), "thing2": (0, 130, 200)}


def _browser() -> tuple[str, str]:
    binary = next((path for name in CHROMIUM if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("headless Chromium is needed for the web page's test: apt-get install chromium "
                    "chromium-driver (or make test, which installs them where apt-get is usable)")
    return binary, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    binary, driver_path = _browser()
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,800"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def fake() -> FakePredictor:
    return FakePredictor()


@pytest.fixture(scope="module")
def server(fake: FakePredictor) -> Iterator[str]:
    with live_server(create_app(fake, weights_name="fake.pt")) as url:
        yield url


@pytest.fixture(scope="module")
def grey_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "grey.png"
    path.write_bytes(png_bytes(np.full((*FAKE_SIZE, 3), GREY, dtype=np.uint8)))
    return path


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pixel(driver: Any, x: int, y: int) -> tuple[int, int, int]:
    return tuple(driver.execute_script(
        "return Array.from(document.getElementById('view').getContext('2d')"
        ".getImageData(arguments[0], arguments[1], 1, 1).data.slice(0, 3));", x, y))


def tinted(category: str) -> tuple[int, int, int]:
    return tuple(int((1 - MASK_ALPHA) * GREY + MASK_ALPHA * c + 0.5) for c in COLORS[category])  # JS rounding


def drawn(driver: Any) -> int:
    return int(driver.find_element(By.ID, "view").get_attribute("data-drawn-count"))


def set_slider(driver: Any, value: float) -> None:
    driver.execute_script("const s = document.getElementById('score'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'));", str(value))


def expected_count(threshold: float, hidden: frozenset[str] = frozenset()) -> int:
    names = ["thing0", "thing1", "thing2"]
    return sum(1 for c, s, _ in FAKE_DETECTIONS if s > threshold and names[c] not in hidden)


def requests_served(server: str) -> int:
    with urllib.request.urlopen(f"{server}/health") as response:
        return json.loads(response.read())["requests"]


def test_the_page_draws_filters_and_downloads_without_new_requests(
    browser: Any, server: str, grey_image: Path
) -> None:
    browser.get(f"{server}/")
    wait_for(lambda: "fake.pt" in browser.find_element(By.ID, "model").text, "the model's name")
    browser.find_element(By.ID, "file").send_keys(str(grey_image))
    canvas = browser.find_element(By.ID, "view")
    wait_for(lambda: canvas.get_attribute("data-state") in ("drawn", "error"), "the drawing")
    assert canvas.get_attribute("data-state") == "drawn", browser.find_element(By.ID, "status").text
    result = browser.execute_script("return window.lastResult;")
    assert (result["width"], result["height"]) == (FAKE_SIZE[1], FAKE_SIZE[0])
    assert len(result["detections"]) == expected_count(0.05)
    assert requests_served(server) == 1

    # Slider at 0.5: the 0.9 thing0 and the 0.7 thing1 are drawn, the 0.4 thing0 is not.
    assert drawn(browser) == expected_count(0.5) == 2
    assert pixel(browser, 16, 18) == tinted("thing0")  # inside the 0.9 mask, below its label
    assert pixel(browser, 47, 28) == tinted("thing1")
    assert pixel(browser, 19, 35) == (GREY, GREY, GREY)  # the 0.4 mask: below the slider
    assert pixel(browser, 32, 2) == (GREY, GREY, GREY)  # no detection here

    set_slider(browser, 0.3)
    assert drawn(browser) == expected_count(0.3) == 3
    assert pixel(browser, 19, 35) == tinted("thing0")
    set_slider(browser, 0.8)
    assert drawn(browser) == expected_count(0.8) == 1
    assert pixel(browser, 47, 28) == (GREY, GREY, GREY)

    set_slider(browser, 0.1)
    assert drawn(browser) == 4
    browser.find_element(By.CSS_SELECTOR, "#classes input[value='thing0']").click()
    assert drawn(browser) == expected_count(0.1, frozenset({"thing0"})) == 2
    assert pixel(browser, 16, 18) == (GREY, GREY, GREY)
    assert pixel(browser, 47, 28) == tinted("thing1")
    assert requests_served(server) == 1  # every redraw came from the answer held by the page

    browser.find_element(By.ID, "download").click()
    text = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('download-link').href).then(r => r.text()).then(done);")
    assert json.loads(text) == result
    saved = wait_for(lambda: list(browser.downloads.glob("grey.detections.json")), "the downloaded file")
    assert json.loads(saved[0].read_text()) == result


def test_the_pages_rle_decoder_matches_pycocotools(browser: Any, server: str) -> None:
    """COCO compressed RLE of irregular masks (long runs, runs shorter than the one two before) decoded
    in the page equals the mask pycocotools encoded."""
    browser.get(f"{server}/")
    rng = np.random.default_rng(0)
    for h, w in [(7, 5), (61, 47), (300, 2)]:
        mask = (rng.random((h, w)) < 0.3).astype(np.uint8)
        mask[: h // 2, : w // 2] = 1  # a long run as well
        rle = mask_util.encode(np.asfortranarray(mask))
        decoded = browser.execute_script(
            "return Array.from(decodeMask({size: arguments[0], counts: arguments[1]}));",
            [h, w], rle["counts"].decode("ascii"))
        assert np.array_equal(np.array(decoded, dtype=np.uint8).reshape(h, w), mask)


def test_the_page_shows_the_servers_error(browser: Any, server: str, tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_bytes(b"not an image at all")
    browser.get(f"{server}/")
    browser.find_element(By.ID, "file").send_keys(str(path))
    canvas = browser.find_element(By.ID, "view")
    wait_for(lambda: canvas.get_attribute("data-state") == "error", "the error")
    assert "not an image" in browser.find_element(By.ID, "status").text
