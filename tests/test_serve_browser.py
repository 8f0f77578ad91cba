"""The web page in a real browser: Debian's headless Chromium, driven by Selenium, against uvicorn.

Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (apt: chromium chromium-driver); skipped
when Chromium is absent. Screenshots are saved in the test's tmp folder.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import uvicorn

from imageblocks.learn.loading import load_learner
from imageblocks.serve.app import create_app
from tests.serve_models import (
    VOCAB,
    export_multilabel,
    export_points,
    with_thresholds,
    write_images,
)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1100,760",
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)


@contextlib.contextmanager
def running(model_dir: Path) -> Iterator[str]:
    """Serve `model_dir` with uvicorn on a free local port, in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(model_dir), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def upload(driver, url: str, path: Path) -> str:
    """Open the page, pick `path` in its file input, wait for the answer; the final state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 20).until(lambda d: "model ·" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "file").send_keys(str(path))
    result = driver.find_element(By.ID, "result")
    WebDriverWait(driver, 30).until(
        lambda d: result.get_attribute("data-state") in ("done", "error")
    )
    return result.get_attribute("data-state")


def test_page_shows_labels_no_known_object_points_and_errors(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images = write_images(tmp_path / "images")
    ml = export_multilabel(images, tmp_path / "ml")
    some = with_thresholds(ml, tmp_path / "some", [0.0, 1.0, 0.0])
    none = with_thresholds(ml, tmp_path / "none", [1.0, 1.0, 1.0])
    pts = export_points(images, tmp_path / "pts")
    photo = images[0]

    with running(some) as url:
        assert upload(browser, url, photo) == "done"
        rows = browser.find_elements(By.CSS_SELECTOR, "li.row")
        shown = {
            r.get_attribute("data-label"): float(r.get_attribute("data-probability")) for r in rows
        }
        hits = {r.get_attribute("data-label") for r in rows if "hit" in r.get_attribute("class")}
        probs = load_learner(some).predict(photo)[2]
        assert list(shown) == sorted(VOCAB, key=shown.get, reverse=True) and hits == {"car", "dog"}
        assert torch.allclose(torch.tensor([shown[v] for v in VOCAB]), probs, atol=1e-6)
        assert browser.find_element(By.ID, "verdict").text == "Found: car, dog"
        assert all(f"{100 * p:.1f}%" in browser.page_source for p in shown.values())
        browser.save_screenshot(str(tmp_path / "multilabel.png"))

        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        assert upload(browser, url, bad) == "error"
        error = browser.find_element(By.ID, "error").text
        assert "Error 415 · Not a supported image" in error and "JPEG, PNG" in error
        browser.save_screenshot(str(tmp_path / "error.png"))

    with running(none) as url:
        assert upload(browser, url, photo) == "done"
        assert browser.find_element(By.ID, "verdict").text.startswith("No known object")
        assert not browser.find_elements(By.CSS_SELECTOR, "li.row.hit")
        assert len(browser.find_elements(By.CSS_SELECTOR, "li.row")) == len(VOCAB)
        browser.save_screenshot(str(tmp_path / "no_known_object.png"))
        # Drag and drop: a PNG drawn in the page, dropped on the drop zone.
        browser.execute_script(
            """const c = Object.assign(document.createElement('canvas'), {width: 40, height: 30});
               c.getContext('2d').fillRect(5, 5, 10, 10);
               c.toBlob((blob) => {
                 const dt = new DataTransfer();
                 dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
                 document.getElementById('drop').dispatchEvent(
                     new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
               }, 'image/png');"""
        )
        WebDriverWait(browser, 30).until(
            lambda d: (
                "dropped.png" in d.find_element(By.ID, "filename").text
                and d.find_element(By.ID, "result").get_attribute("data-state") == "done"
            )
        )
        assert browser.find_element(By.ID, "verdict").text.startswith("No known object")

    with running(pts) as url:
        assert upload(browser, url, images[-1]) == "done"
        ((x, y),) = load_learner(pts).predict(images[-1])[0].tolist()
        # The overlay has the marker's centre at the point, scaled to the displayed size.
        alpha = browser.execute_script(
            """const img = document.getElementById('preview');
               const c = document.getElementById('overlay');
               const sx = c.width / 64, sy = c.height / 48;
               const px = c.getContext('2d').getImageData(
                   Math.round(arguments[0] * sx), Math.round(arguments[1] * sy), 1, 1).data;
               return [img.clientWidth > 64, c.clientWidth === img.clientWidth, px[3]];""",
            x,
            y,
        )
        assert alpha[0] and alpha[1] and alpha[2] > 0, alpha
        assert "Predicted point" in browser.find_element(By.ID, "verdict").text
        browser.save_screenshot(str(tmp_path / "points.png"))
    print(f"screenshots in {tmp_path}")
