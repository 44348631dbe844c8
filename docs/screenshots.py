"""Screenshots of TensorBoard showing handprop runs, for the docs: docs/screenshots/*.png.

    python docs/screenshots.py LOGDIR [--prefix default] [--out docs/screenshots]

Serves LOGDIR with TensorBoard (as ``make tensorboard`` serves outputs/), opens each tab
in headless Chromium (``apt-get install chromium``) and saves what a browser shows:
the landing page (Time Series), Custom Scalars, Images and HParams.
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


if __name__ == "__main__":
    main()
