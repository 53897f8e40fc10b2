"""How long a user waits: each command as a whole process, and the drawing page's answer.

Run: .venv/bin/python benchmarks/startup.py [--runs 7] [--no-page]
  - `mnist-cnn --help`, `mnist-cnn models` (targets: 0.5 s) and `mnist-cnn predict photo.jpg`
    with the shipped model (target: 1.5 s), each run --runs times from a fresh process, as from
    the shell; `import torch` alone shows the floor any command that runs a network pays;
  - the page (`mnist-cnn serve`, the shipped model, headless Chromium driven by Playwright): from
    lifting the pen to the answer on the screen (target: 150 ms), over --strokes strokes.
Wall time is what the user waits; CPU time (user + system) is what the same start-up would take
on an idle core, so compare the two: on a busy machine wall time grows, CPU time much less.
The first lines say which CPU and how busy it was.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import free_port
from PIL import Image, ImageDraw

from mnist_cnn.runtime.environment import format_environment

BIN = Path(sys.executable).parent
TARGETS = {"--help": 0.5, "models": 0.5, "predict photo.jpg": 1.5}
# the pen-up-to-answer timer, shared with the browser test
TIMING = (Path(__file__).parent / "answer_timing.js").read_text()


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `argv` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def photo(folder: Path) -> Path:
    """A hand-drawn 7 as a phone photo would hold it: dark ink on light paper, as JPEG."""
    image = Image.new("RGB", (480, 560), (236, 232, 225))
    ImageDraw.Draw(image).line([(110, 110), (370, 110), (200, 470)], fill=(30, 30, 40), width=30)
    path = folder / "photo.jpg"
    image.save(path, quality=90)
    return path


def commands(runs: int, folder: Path) -> None:
    picture = str(photo(folder))
    cases = [("import torch (the floor)", [sys.executable, "-c", "import torch"]),
             ("--help", [str(BIN / "mnist-cnn"), "--help"]),
             ("models", [str(BIN / "mnist-cnn"), "models"]),
             ("predict photo.jpg", [str(BIN / "mnist-cnn"), "predict", picture])]
    print("| command | wall median (min-max) | CPU median | target | met (wall / CPU) |")
    print("|---|---|---|---|---|")
    for name, argv in cases:
        timed(argv)  # warm the file cache and Python's bytecode cache
        results = [timed(argv) for _ in range(runs)]
        walls, cpus = [w for w, _ in results], [c for _, c in results]
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        target = TARGETS.get(name)
        met = "" if target is None else (f"{'yes' if wall <= target else 'no'} / "
                                         f"{'yes' if cpu <= target else 'no'}")
        print(f"| `{name}` | {wall:.2f} s ({min(walls):.2f}-{max(walls):.2f}) | {cpu:.2f} s | "
              f"{'' if target is None else f'{target} s'} | {met} |", flush=True)


def page(strokes: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("\npage: no chromium here (apt-get install chromium); not measured")
        return
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([str(BIN / "mnist-cnn"), "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            tab = browser.new_page(viewport={"width": 1280, "height": 800})
            tab.goto(f"http://127.0.0.1:{port}/")
            tab.wait_for_selector("body[data-ready=true]")
            tab.evaluate(TIMING)
            box = tab.locator("#pad").bounding_box()
            waits = []
            for n in range(strokes):
                tab.click("#clear")
                tab.evaluate("delete document.body.dataset.answeredIn")
                x = box["x"] + 100 + 8 * (n % 10)  # strokes a little apart
                tab.mouse.move(x, box["y"] + 40)
                tab.mouse.down()
                tab.mouse.move(x + 10, box["y"] + 240, steps=8)
                tab.mouse.up()
                tab.wait_for_selector("body[data-answered-in]", state="attached")
                waits.append(float(tab.get_attribute("body", "data-answered-in")))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"\npage, lifting the pen to the answer shown ({strokes} strokes): median "
          f"{statistics.median(waits):.0f} ms, max {max(waits):.0f} ms (target 150 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--strokes", type=int, default=20, help="strokes on the page (default 20)")
    parser.add_argument("--no-page", action="store_true", help="skip the page")
    args = parser.parse_args()
    print(format_environment())
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    with tempfile.TemporaryDirectory() as folder:
        commands(args.runs, Path(folder))
    if not args.no_page:
        page(args.strokes)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
