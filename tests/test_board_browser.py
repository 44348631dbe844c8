"""The Backprop tab in a real TensorBoard process, and in a real browser (headless Chromium).

The browser test needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package (the test extra); nothing is downloaded. Without them it is skipped, saying why --
except under ``CI=true``, where .ci/run has installed them and a missing browser fails.
"""

import json
import os
import re
import shutil
import urllib.request

import pytest
from board import TensorBoard

from board_runs import LESSON, make_run

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers.get("Content-Type"), response.read()


def post(url: str, body: dict):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """Two TensorBoards, started together: one over a logdir with a run, one over an empty one."""
    with_run, empty = tmp_path_factory.mktemp("with_run"), tmp_path_factory.mktemp("empty")
    make_run(with_run / "2026-01-01" / "12-00-00", LESSON, epochs=2)
    started = [TensorBoard(with_run), TensorBoard(empty)]
    try:
        yield [b.ready() for b in started]
    finally:
        for b in started:
            b.stop()


def test_tensorboard_lists_the_tab_and_serves_it(boards):
    with_run, empty = boards
    listing = json.loads(get(with_run.url + "/data/plugins_listing")[2])["backprop"]
    assert listing["enabled"] and listing["tab_name"] == "Backprop"
    assert listing["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/backprop/index.js"}
    assert not json.loads(get(empty.url + "/data/plugins_listing")[2])["backprop"]["enabled"]
    status, kind, module = get(with_run.url + "/data/plugin/backprop/index.js")
    assert status == 200 and kind.startswith("text/javascript") and b"export function render()" in module
    # relative URLs only: nothing from another host, nor from this one's root (--path_prefix)
    urls = re.findall(rb"""(?:fetch\(|href: )\s*["'`]?([^"'`),]*)""", module) + re.findall(rb'call\("(\w+)"', module)
    assert len(urls) >= 6 and not [u for u in urls if u.startswith((b"/", b"http:", b"https:"))], urls
    runs = json.loads(get(with_run.url + "/data/plugin/backprop/runs")[2])["runs"]
    assert [(r["run"], [s["epoch"] for s in r["snapshots"]]) for r in runs] == [("2026-01-01/12-00-00", [0, 1, 2])]
    with pytest.raises(urllib.error.HTTPError) as refused:
        post(with_run.url + "/data/plugin/backprop/explain", {"run": "../..", "snapshot": 0, "digit": 0})
    assert refused.value.code == 400 and "without '..'" in json.loads(refused.value.read())["error"]
    answer = post(with_run.url + "/data/plugin/backprop/explain", {"run": runs[0]["run"], "snapshot": 2, "digit": 0})
    assert answer["snapshot"]["epoch"] == 2  # and it keeps serving


def browser():
    if not (CHROMIUM and DRIVER):
        missing = "Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    else:
        try:
            from selenium import webdriver  # noqa: PLC0415 -- only this test drives a browser
            from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
        except ImportError:
            missing = "the selenium package (pip install -e '.[test]')"
        else:
            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1800"):
                options.add_argument(flag)
            return webdriver.Chrome(service=Service(DRIVER), options=options)
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and no browser to test the Backprop tab in: {missing} is not installed")
    pytest.skip(f"no browser to test the Backprop tab in: install {missing}")


def test_a_stroke_drawn_in_a_real_browser_is_read_as_the_api_reads_it(boards):
    from selenium.webdriver.common.action_chains import ActionChains  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    board = boards[0]
    driver = browser()
    try:
        driver.get(board.url + "/#backprop")  # TensorBoard itself, on the Backprop tab
        wait = WebDriverWait(driver, 60)
        driver.switch_to.frame(wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"))[0])
        wait.until(lambda d: d.find_element(By.ID, "read").get_attribute("data-source") == "digit")
        pad = driver.find_element(By.ID, "pad")
        stroke = ActionChains(driver).move_to_element_with_offset(pad, -30, -90).click_and_hold()
        for dx, dy in [(20, 5), (25, 20), (0, 30), (-30, 30), (-20, 10), (40, 10), (20, 20), (0, 30), (-30, 20)]:
            stroke.move_by_offset(dx, dy)  # several pointer moves between down and up
        stroke.release().perform()
        wait.until(lambda d: d.find_element(By.ID, "read").get_attribute("data-source") == "canvas")
        read = int(driver.find_element(By.ID, "read").text)
        nudges = [float(b.get_attribute("data-value")) for b in driver.find_elements(By.CSS_SELECTOR, ".nudge-out")]
        pixels = json.loads(driver.find_element(By.ID, "read-image").get_attribute("data-pixels"))
        grey = driver.execute_script(
            "const c = document.createElement('canvas'); c.width = c.height = 140;"
            "const x = c.getContext('2d'); x.drawImage(document.getElementById('pad'), 0, 0, 140, 140);"
            "const d = x.getImageData(0, 0, 140, 140).data, g = [];"
            "for (let i = 0; i < d.length; i += 4) g.push(Math.round((d[i] + d[i + 1] + d[i + 2]) / 3)); return g;"
        )
        snapshot = int(driver.find_element(By.ID, "scrubber").get_attribute("value"))
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()
    run = {"run": "2026-01-01/12-00-00", "snapshot": [0, 1, 2][snapshot]}
    api = post(
        board.url + "/data/plugin/backprop/explain", {**run, "canvas": {"width": 140, "height": 140, "grey": grey}}
    )
    assert sum(pixels) > 10 and api["pixels"] == pixels  # the server read the drawing the page shows
    assert read == api["read"] == post(board.url + "/data/plugin/backprop/explain", {**run, "pixels": pixels})["read"]
    assert nudges == api["layers"][-1]["nudge"] and len(nudges) == 10
