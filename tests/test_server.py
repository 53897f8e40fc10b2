"""The drawing page and its API: the same answers as `mnist-cnn predict`, and clear refusals."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from trained import trained

from mnist_cnn.ensemble import ensemble_proba, load_members
from mnist_cnn.imaging import load_and_preprocess, to_tensor
from mnist_cnn.predict import load_models, predict_images
from mnist_cnn.server import create_app


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained(tmp_path_factory)


@pytest.fixture(scope="module")
def client(models, runtime):
    return TestClient(create_app([models.checkpoint], runtime))


def paper_png(digit: np.ndarray, size: int = 120) -> bytes:
    """An MNIST digit as dark ink on white paper, upscaled, as PNG bytes."""
    image = Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))))


def test_the_page_is_served(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in response.text


def test_model_description(client):
    info = client.get("/api/model").json()
    assert info["models"] == ["simple"] and info["dataset"] == "mnist"
    assert info["classes"] == [str(d) for d in range(10)]
    assert len(info["validation_accuracy"]) == 1 and 0.9 < info["validation_accuracy"][0] <= 1


def test_answers_match_the_command_line(client, models, runtime, tmp_path):
    networks, classes = load_models([models.checkpoint])
    for n in range(8):
        body = paper_png(models.data.test.images[n, 0].numpy())
        path = tmp_path / f"digit{n}.png"
        path.write_bytes(body)
        response = client.post("/api/predict", content=body, headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        answer = response.json()
        [expected] = predict_images(networks, [path], 10, classes, runtime)
        assert answer["digit"] == expected.digit
        assert answer["probability"] == pytest.approx(expected.probability, abs=1e-6)
        assert [t["class"] for t in answer["top_k"]] == [t["class"] for t in expected.top_k]
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert answer["inverted"] is True
        seen = decode_data_url(answer["preprocessed"])
        assert np.array_equal(seen, load_and_preprocess(path).final)


def test_an_ensemble_averages_its_members(models, runtime):
    client = TestClient(create_app([models.checkpoint, models.other], runtime))
    assert client.get("/api/model").json()["models"] == ["simple", "simple"]
    body = paper_png(models.data.test.images[3, 0].numpy())
    answer = client.post("/api/predict", content=body).json()
    members = [m for m, _ in load_members([models.checkpoint, models.other])]
    final = load_and_preprocess(body).final
    expected = ensemble_proba(members, to_tensor(final)[None], runtime=runtime)[0]
    assert answer["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)


@pytest.mark.parametrize(("body", "message"), [
    (b"", "empty upload"),
    (b"this is not a picture", "not an image"),
    (paper_png(np.zeros((28, 28), np.uint8)), "no ink"),  # blank paper
    (paper_png(np.full((28, 28), 255, np.uint8))[:60], "truncated or corrupt"),
])
def test_bad_uploads_get_a_400_with_the_reason(client, body, message):
    response = client.post("/api/predict", content=body)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert response.json()["detail"].startswith(("the upload: ", "empty upload"))
    assert "Traceback" not in response.text


def test_too_large_uploads_are_refused(models, runtime):
    client = TestClient(create_app([models.checkpoint], runtime, max_upload_bytes=1000,
                                   max_pixels=400))
    response = client.post("/api/predict", content=b"x" * 2000)
    assert response.status_code == 413 and "too large" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(5):
            yield b"y" * 300

    response = client.post("/api/predict", content=chunks())
    assert response.status_code == 413
    response = client.post("/api/predict", content=paper_png(np.zeros((28, 28), np.uint8), 30))
    assert response.status_code == 400 and "too many pixels" in response.json()["detail"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            fetch(url)
            return
        except OSError:  # not listening yet
            time.sleep(0.2)
    raise TimeoutError(url)


def test_serve_command(models):
    port = free_port()
    command = Path(sys.executable).parent / "mnist-cnn"
    server = subprocess.Popen([str(command), "serve", str(models.checkpoint), "--port", str(port),
                               "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/model")
        assert '<canvas id="pad"' in fetch(f"http://127.0.0.1:{port}/")
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out


def test_serve_refuses_a_bad_checkpoint(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint")
    result = subprocess.run([str(Path(sys.executable).parent / "mnist-cnn"), "serve", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("mnist-cnn: error: ") and "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# A real browser: drawing on the page


def chromium() -> str | None:
    return next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser"))), None)


@pytest.fixture(scope="module")
def live_server(models, runtime):
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app([models.checkpoint], runtime), port=port,
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(f"http://127.0.0.1:{port}/api/model")
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=30)


def test_drawing_in_a_browser(live_server, client):
    executable = chromium()
    if executable is None:
        if os.environ.get("MNIST_CNN_REQUIRE_BROWSER"):
            pytest.fail("no chromium for the browser test (.ci/run installs Debian's)")
        pytest.skip("no chromium here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(live_server)
        page.wait_for_selector("body[data-ready=true]")
        assert "simple network" in page.text_content("#model")
        box = page.locator("#pad").bounding_box()

        def stroke(points):
            page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
            page.mouse.down()
            for x, y in points[1:]:
                page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
            page.mouse.up()

        stroke([(140, 40), (140, 240)])  # a "1"
        page.wait_for_function("document.getElementById('answer').textContent !== ''")
        shown = page.text_content("#answer")
        # the page shows what the API says about the canvas it drew
        canvas = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
        body = base64.b64decode(canvas.split(",", 1)[1])
        assert shown == client.post("/api/predict", content=body).json()["digit"] == "1"
        assert page.locator("#bars tr").count() == 10
        assert page.get_attribute("#seen", "src").startswith("data:image/png;base64,")

        page.click("#clear")
        assert page.text_content("#answer") == ""
        # an upload that is not an image: the server's reason is shown, nothing else breaks
        page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png",
                                              "buffer": b"not a picture"}])
        page.wait_for_function("document.getElementById('status').textContent !== ''")
        assert "not an image" in page.text_content("#status")
        browser.close()

