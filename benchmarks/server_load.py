"""What `mnist-cnn serve` spends under attack: memory for a burst of huge uploads, and slow clients.

Run: .venv/bin/python benchmarks/server_load.py [--burst 8] [--serve-args "--max-concurrent 2"]
It starts `python -m mnist_cnn serve` (an untrained `simple` network: the cost is in the image, not
the weights) on a free loopback port, with one thread, and measures:
  - the server's resident memory (VmRSS) after start-up, its peak (VmHWM) during a burst of
    concurrent uploads of a 25-megapixel PNG that is a few tens of KB, and its RSS 2 s after the
    burst: whether the memory goes back;
  - each upload's status and time;
  - slow clients: sockets that send a header byte per second; how long until the server hangs up,
    and whether a normal request gets its answer meanwhile.
Takes about half a minute on two cores.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import free_port
from PIL import Image, ImageDraw

from mnist_cnn.models.checkpoint import save_checkpoint
from mnist_cnn.models.registry import build_model, recipe_for
from mnist_cnn.runtime.environment import format_environment


def huge_png(side: int = 5000) -> bytes:
    """side x side RGB (25 MP for 5000): a thick "1" on white paper; compresses to ~40 KB."""
    image = Image.new("RGB", (side, side), "white")
    ImageDraw.Draw(image).rectangle([side // 2 - side // 40, side // 5, side // 2 + side // 40,
                                     side * 4 // 5], fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def post(url: str, body: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    request = urllib.request.Request(url, data=body, headers={"content-type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0  # connection refused or reset
    return status, time.perf_counter() - start


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not start: {server.stderr.read() if server.stderr else ''}")


def slow_clients(port: int, count: int, url: str, limit_s: float = 60) -> tuple[float, int, float]:
    """`count` sockets trickling a header byte a second: (seconds until the last was dropped,
    status of a normal request sent meanwhile, its seconds)."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        sockets.append(s)
    start = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        normal = pool.submit(lambda: post_get(url))
        line = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        i, open_ = 0, set(range(count))
        while open_ and time.monotonic() - start < limit_s:
            for k in list(open_):
                try:
                    sockets[k].send(line[i % len(line): i % len(line) + 1])
                    if sockets[k].recv(1024) == b"":
                        open_.discard(k)
                except BlockingIOError:
                    pass
                except OSError:
                    open_.discard(k)
            i += 1
            time.sleep(1.0)
        dropped_after = time.monotonic() - start
        status, seconds = normal.result()
    for s in sockets:
        s.close()
    return dropped_after, status, seconds


def post_get(url: str) -> tuple[int, float]:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, time.perf_counter() - start
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - start
    except OSError:
        return 0, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=8, help="concurrent huge uploads")
    parser.add_argument("--side", type=int, default=5000, help="the upload's side in pixels")
    parser.add_argument("--slow", type=int, default=50, help="slow clients")
    parser.add_argument("--serve-args", default="", help="extra `serve` flags, quoted")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)

    body = huge_png(args.side)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "simple.safetensors"
        recipe = recipe_for("simple")
        save_checkpoint(checkpoint, build_model(recipe), {"recipe": recipe.to_dict()})
        port = free_port()
        command = [sys.executable, "-m", "mnist_cnn", "serve", str(checkpoint), "--port", str(port),
                   "--threads", "1", *shlex.split(args.serve_args)]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{base}/api/model", server)
            post(f"{base}/api/predict", huge_png(200))  # warm-up: the first inference allocates
            before = status_kib(server.pid)["VmRSS"]
            start = time.perf_counter()
            with ThreadPoolExecutor(args.burst) as pool:
                results = list(pool.map(lambda _: post(f"{base}/api/predict", body),
                                        range(args.burst)))
            burst_s = time.perf_counter() - start
            peak = status_kib(server.pid)["VmHWM"]
            time.sleep(2.0)
            after = status_kib(server.pid)["VmRSS"]
            statuses = collections.Counter(status for status, _ in results)
            ok = sorted(seconds for status, seconds in results if status == 200)
            print(f"upload: {args.side}x{args.side} PNG, {len(body) / 1024:.0f} KB; "
                  f"burst of {args.burst} at once: {burst_s:.1f} s")
            print(f"statuses: {dict(sorted(statuses.items()))}")
            if ok:
                print(f"answered in {ok[0]:.2f} .. {ok[-1]:.2f} s")
            print(f"server RSS: {before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB, "
                  f"{after / 1024:.0f} MiB 2 s after")
            if args.slow:
                dropped, status, seconds = slow_clients(port, args.slow, f"{base}/api/model")
                print(f"{args.slow} slow clients: all dropped after {dropped:.0f} s; a normal "
                      f"request meanwhile: {status} in {seconds:.2f} s")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
