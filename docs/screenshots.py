"""Screenshots of TensorBoard showing handprop runs, for the docs: docs/screenshots/*.png.

    python docs/screenshots.py LOGDIR [--prefix default] [--out docs/screenshots]
    python docs/screenshots.py LOGDIR --backprop

Serves LOGDIR with TensorBoard (as ``make tensorboard`` serves outputs/), opens each tab
in headless Chromium (``apt-get install chromium``) and saves what a browser shows:
the landing page (Time Series), Custom Scalars, Images and HParams. With ``--backprop``:
the Backprop tab, driven as a learner uses it (``apt-get install chromium-driver`` and the
selenium package, the test extra): a 3 drawn on the untrained and on the trained network
of LOGDIR's newest run of the lesson's network, a validation digit it reads wrong, one
step on it, and the scrubber part-way through the run.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TABS = {  # file name -> (URL fragment, window width, height)
    "landing": ("", 1400, 1300),
    "custom_scalars": ("#custom_scalars", 1400, 1500),
    "images": ("#images", 1400, 1500),
    "hparams": ("#hparams", 1900, 700),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir")
    parser.add_argument("--prefix", default="default", help="the screenshots' file names start with this")
    parser.add_argument("--out", default=str(Path(__file__).parent / "screenshots"))
    parser.add_argument("--backprop", action="store_true", help="the Backprop tab's screenshots instead")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("error: no Chromium found; install it (apt-get install chromium)")
    port = free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(tensorboard), "--logdir", args.logdir, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "data/runs", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)  # the first load of the event files
        Path(args.out).mkdir(parents=True, exist_ok=True)
        if args.backprop:
            backprop_tab(url, Path(args.out))
            return
        for name, (fragment, width, height) in TABS.items():
            target = Path(args.out) / f"{args.prefix}_{name}.png"
            subprocess.run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    f"--window-size={width},{height}",
                    "--virtual-time-budget=30000",
                    f"--screenshot={target}",
                    url + fragment,
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            print(target)
    finally:
        server.terminate()
        server.wait(timeout=30)


# A 3, as a learner draws it on the 280 x 280 canvas: strokes of pointer moves (dx, dy) from a start
THREE = [
    ((-60, -90), [(30, -15), (40, 5), (15, 30), (-25, 30), (-30, 5)]),
    ((-10, -5), [(40, 10), (20, 35), (-15, 35), (-40, 15), (-40, -5)]),
]


def backprop_tab(url: str, out: Path) -> None:
    from selenium import webdriver  # noqa: PLC0415 -- only this mode drives a browser
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
    from selenium.webdriver.common.action_chains import ActionChains  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1240,3600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    wait = WebDriverWait(driver, 60)

    def settle(source: str) -> None:
        wait.until(lambda d: d.find_element(By.ID, "read").get_attribute("data-source") == source)
        time.sleep(1.0)

    def scrub(index: int, source: str) -> None:
        driver.execute_script(
            "const s = document.getElementById('scrubber'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input'));",
            index,
        )
        time.sleep(0.5)
        settle(source)

    def draw() -> None:
        pad = driver.find_element(By.ID, "pad")
        driver.find_element(By.ID, "clear").click()
        for (x, y), moves in THREE:
            stroke = ActionChains(driver).move_to_element_with_offset(pad, x, y).click_and_hold()
            for dx, dy in moves:
                stroke.move_by_offset(dx, dy)
            stroke.release().perform()
        settle("canvas")

    def shot(name: str, *panels: str) -> None:
        target = out / f"backprop_{name}.png"
        body = driver.find_element(By.TAG_NAME, "main")
        top = driver.find_element(By.ID, panels[0]).location["y"] if panels else 0
        bottom = driver.find_element(By.ID, panels[-1]) if panels else body
        height = bottom.location["y"] + bottom.size["height"] + 12
        driver.execute_script("window.scrollTo(0, 0)")
        body.screenshot(str(target))
        from PIL import Image  # noqa: PLC0415

        with Image.open(target) as image:
            image.crop((0, max(0, top - 8), image.width, min(image.height, height))).save(target)
        print(target)

    try:
        driver.get(url + "data/plugin_entry.html?name=backprop")  # the tab's own page, as TensorBoard frames it
        settle("digit")
        last = int(driver.find_element(By.ID, "scrubber").get_attribute("max"))
        scrub(0, "digit")
        draw()
        Select(driver.find_element(By.ID, "target")).select_by_value("3")  # the cost wants the 3 it is
        settle("canvas")
        shot("3_untrained", "run-panel", "change-panel")
        scrub(last, "canvas")
        shot("3_trained", "run-panel", "change-panel")
        Select(driver.find_element(By.ID, "target")).select_by_value("")  # back to each digit's own label
        driver.find_element(By.CSS_SELECTOR, "#gallery canvas.wrong").click()
        settle("digit")
        shot("mistake", "digit-panel", "nudge-panel")
        driver.find_element(By.ID, "take-step").click()
        time.sleep(1.5)
        shot("step", "step-panel")
        scrub(last // 3, "digit")
        shot("scrubber", "run-panel", "output-panel")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
