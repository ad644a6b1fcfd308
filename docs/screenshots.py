"""The screenshots of docs/views.md, taken from a real browser on a finished search.

Serves the search's folder with TensorBoard and its study with optuna-dashboard, each on a free
loopback port, opens them in headless Chromium (Playwright, on the Chromium given by --chromium)
and writes one PNG per view into --out: the front's figure, the hparams table, the hypervolume
curve, a trial's curves and the dashboard's Pareto front. What it started, it stops.

    pip install -e '.[screenshots]'         # playwright and optuna-dashboard
    apt-get install chromium                # or any Chromium; name it with --chromium
    python docs/screenshots.py runs/default [--out docs/img] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VIEWPORT = {"width": 1400, "height": 900}
READY_S = 60  # a server that does not answer within this is reported, not waited on


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search", type=Path, help="a finished search's folder (runs/default)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder for PNGs")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser to drive")
    args = parser.parse_args()
    study = args.search / "study.db"
    if not study.is_file():
        print(f"{study}: no such file; give the folder of a finished search", file=sys.stderr)
        return 2
    if not Path(args.chromium).is_file():
        print(
            f"{args.chromium}: no such browser; install chromium or give --chromium",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    board = ["tensorboard", "--logdir", str(args.search), "--host", "127.0.0.1", "--port"]
    dashboard = ["optuna-dashboard", f"sqlite:///{study}", "--host", "127.0.0.1", "--port"]
    with serving(board) as tensorboard, serving(dashboard) as optuna:
        shoot(args.chromium, tensorboard, optuna, args.out)
    return 0


@contextmanager
def serving(command: list[str]) -> Iterator[str]:
    """`command` with a free loopback port appended, running until the block ends; its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(BIN / command[0]), *command[1:], str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{command[0]} did not start on {url}") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def shoot(chromium: str, tensorboard: str, optuna: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport=VIEWPORT)

        def snap(url: str, name: str, text: str, settle_s: float = 3.0) -> None:
            page.goto(url)
            page.get_by_text(text).first.wait_for(state="attached", timeout=READY_S * 1000)
            time.sleep(settle_s)  # plots draw after their data arrives
            partial = out / f".{name}.partial.png"
            page.screenshot(path=str(partial))
            partial.replace(out / f"{name}.png")
            print(f"wrote {out / name}.png")

        snap(
            f"{tensorboard}/?darkMode=false#images&tagFilter=pareto",
            "tensorboard-front",
            "pareto/front",
        )
        snap(f"{tensorboard}/?darkMode=false#hparams", "tensorboard-hparams", "trial/map")
        scalars = f"{tensorboard}/?darkMode=false#scalars&_smoothingWeight=0&tagFilter="
        snap(f"{scalars}pareto%2Fhypervolume", "tensorboard-hypervolume", "pareto/hypervolume")
        snap(f"{scalars}progress%2Fmap", "tensorboard-curves", "progress/map")
        snap(f"{optuna}/dashboard/studies/1", "optuna-dashboard", "map")
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
