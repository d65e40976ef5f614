"""The demo page of `scripts/serve.py`, in a real headless browser and at the HTTP level.

The browser tests drive Debian's Chromium (`apt-get install chromium`; .ci/run installs it)
with playwright (dev extra; `playwright install` is never needed: the system browser is used).
Each starts `scripts/serve.py` on a free loopback port with a tiny 5-class model and generic
labels (PASCAL VOC colours: class 0 black, so drawn transparent), uploads a CamVid-like street
image made here, and checks the overlay the page draws against the predict API's class ids for
the same image:

    page pixel == visualize.overlay(image, class_ids, palette, alpha)
               == round_half_even((1 - w) * pixel + w * palette[class_id]),
    w = alpha (0.5 by default), w = 0 for black classes and ids past the palette.

A screenshot of the page is kept in the test's tmp_path (its path is printed; `pytest -s`).
Without chromium or playwright these tests are skipped, except under CI=true, where they fail.
"""

import base64
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from export_helpers import tiny_segmenter
from PIL import Image

from keras_fusionseg.data.registry import default_palette
from keras_fusionseg.export import export_saved_model
from keras_fusionseg.export.serving import STATIC_DIR, DemoPage, RestApplication
from keras_fusionseg.export.visualize import overlay

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = "street"
NUM_CLASSES = 5
PALETTE = default_palette(NUM_CLASSES)  # what serve.py --num_classes=5 gives the page
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def camvid_like_image(rng, height=90, width=120):
    """A street scene in CamVid's 3:4 shape: sky, buildings with windows, a pole, pavement,
    road with lane marks, a car; sensor noise on top."""
    image = np.zeros((height, width, 3), np.float32)
    rows = np.arange(height)[:, None, None]
    image[:] = [150, 180, 225] + (rows / height) * [40, 30, 10]  # sky, lighter near horizon
    horizon = int(0.45 * height)
    x = 0
    while x < width:  # buildings of random width and height
        w = int(rng.integers(width // 8, width // 4))
        top = int(rng.integers(height // 10, horizon - 5))
        image[top:horizon, x : x + w] = rng.integers(90, 200, 3)
        for wy in range(top + 3, horizon - 4, 7):
            for wx in range(x + 3, x + w - 3, 6):
                image[wy : wy + 3, wx : wx + 3] = [40, 50, 70]
        x += w
    image[horizon : horizon + height // 10] = [170, 160, 150]  # pavement
    image[horizon + height // 10 :] = [85, 80, 90]  # road
    lane = int(0.8 * height)
    image[lane : lane + 2, ::12] = 235
    pole = int(0.8 * width)
    image[height // 6 : horizon + 4, pole : pole + 2] = [60, 60, 60]
    car_top, car_left = int(0.6 * height), int(0.2 * width)
    image[car_top : car_top + height // 6, car_left : car_left + width // 4] = [160, 20, 30]
    image[car_top + height // 6 - 2 : car_top + height // 6 + 2, car_left + 2 : car_left + 8] = 15
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _http(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _api_class_ids(base, png):
    status, _, body = _http(
        f"{base}/v1/models/{MODEL}:predict",
        {"instances": [{"b64": base64.b64encode(png).decode()}]},
    )
    assert status == 200, body
    return np.asarray(json.loads(body)["predictions"][0], np.int64)


# --- the page at the HTTP level (no browser) --------------------------------------------------


class _Service:  # what RestApplication's page routes read from a PredictionService
    model_name = MODEL
    max_pixels = 500 * 500


def _call(app, path, method="GET"):
    captured = {}

    def start_response(status, headers):
        captured["status"] = int(status.split(" ", 1)[0])
        captured["headers"] = dict(headers)

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(b"")}
    body = b"".join(app(environ, start_response))
    assert int(captured["headers"]["Content-Length"]) == len(body)
    return captured["status"], captured["headers"], body


def test_page_files_config_and_headers():
    names = ["sky", "road", "car"]
    app = RestApplication(_Service(), max_body_bytes=1 << 20, demo=DemoPage(names, PALETTE[:3]))
    status, headers, body = _call(app, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert b'src="demo/demo.js"' in body and b'href="demo/demo.css"' in body
    for path, kind in (("/demo/demo.js", "text/javascript"), ("/demo/demo.css", "text/css")):
        status, headers, _ = _call(app, path)
        assert status == 200 and headers["Content-Type"].startswith(kind)
    status, headers, body = _call(app, "/demo/config.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    config = json.loads(body)
    assert config == {
        "model_name": MODEL,
        "class_names": names,
        "palette": PALETTE[:3].tolist(),
        "alpha": 0.5,
        "page_max_pixels": 500 * 500,  # the service's limit is below the page's 2**20
        "max_body_bytes": 1 << 20,
    }
    assert _call(app, "/", method="POST")[0] == 405
    assert _call(app, "/demo/other.js")[0] == 404
    # Without a demo page the server is the REST API alone.
    assert _call(RestApplication(_Service()), "/")[0] == 404


def test_page_uses_no_external_assets():
    for path in pathlib.Path(STATIC_DIR).iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text), path.name


def test_demo_page_rejects_bad_palettes():
    with pytest.raises(ValueError, match="palette"):
        DemoPage(["a"], [[0, 0, 300]])
    with pytest.raises(ValueError, match="palette"):
        DemoPage(["a"], [[0.5, 0, 0]])
    with pytest.raises(ValueError, match="alpha"):
        DemoPage(["a"], [[0, 0, 0]], alpha=2)


def test_serve_script_chooses_the_page_labels(load_script, tmp_path):
    from absl import flags

    serve = load_script("serve")
    saved_model = tmp_path / "export" / "saved_model"
    saved_model.mkdir(parents=True)
    flags.FLAGS(["serve.py", f"--saved_model={saved_model}", "--num_classes=4"])
    names, palette = serve.page_labels(str(saved_model))  # nothing recorded: generic
    assert names == ["class 0", "class 1", "class 2", "class 3"]
    np.testing.assert_array_equal(palette, default_palette(4))
    # The dataset recorded by scripts/export.py next to the SavedModel.
    (tmp_path / "export" / "export_config.json").write_text(json.dumps({"dataset": "camvid"}))
    names, palette = serve.page_labels(str(saved_model))
    assert names[:2] == ["Sky", "Building"] and len(palette) == 11
    preset = (["road", "car"], np.array([[1, 2, 3], [4, 5, 6]]))
    assert serve.page_labels(str(saved_model), preset) is preset  # a preset's own labels
    flags.FLAGS["dataset"].value = "pascal_voc"  # --dataset wins over both
    names, _ = serve.page_labels(str(saved_model), preset)
    assert names[0] == "background" and len(names) == 21


# --- the page in Chromium ---------------------------------------------------------------------


def _need(reason):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("waitress")
    export_dir = tmp_path_factory.mktemp("demo_page") / "sm"
    export_saved_model(tiny_segmenter(num_classes=NUM_CLASSES, seed=3), export_dir)
    command = [
        sys.executable,
        str(ROOT / "scripts" / "serve.py"),
        f"--saved_model={export_dir}",
        f"--model_name={MODEL}",
        f"--num_classes={NUM_CLASSES}",
        "--max_pixels=10800",  # 120 x 90: larger images are shrunk by the page
        "--port=0",
        "--stop_after_seconds=900",  # a leftover process cannot outlive the test run by much
    ]
    log = export_dir.parent / "serve.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=os.environ
        )
    try:
        line = process.stdout.readline()  # printed only after the warm-up predict
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert match, f"serve.py did not start: {line!r}; its log ends {log.read_text()[-2000:]}"
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed (pip install playwright; dev extra)")
    if not os.access(CHROMIUM, os.X_OK):
        _need(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page at the demo, ready; records every request URL and any script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.requests, page.errors = [], []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on(
        "console",
        lambda message: page.errors.append(message.text) if message.type == "error" else None,
    )
    page.goto(f"{server}/")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    yield page
    context.close()


def _wait_for_answer(page, timeout=60_000):
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=timeout)
    return page.evaluate("document.body.dataset.state"), page.inner_text("#status")


def _overlay_pixels(page):
    width, height, data = page.evaluate(
        """() => {
            const canvas = document.getElementById("overlay");
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
            let text = "";
            for (const byte of data.data) text += String.fromCharCode(byte);
            return [canvas.width, canvas.height, btoa(text)];
        }"""
    )
    pixels = np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)
    assert (pixels[..., 3] == 255).all()
    return pixels[..., :3]


def _legend(page):
    return page.eval_on_selector_all(
        "#legend li",
        """items => items.map(item => ({
            id: Number(item.dataset.classId),
            pixels: Number(item.dataset.pixels),
            name: item.querySelector(".name").textContent,
            share: item.querySelector(".share").textContent,
            clear: item.querySelector(".swatch").classList.contains("clear"),
            colour: getComputedStyle(item.querySelector(".swatch")).backgroundColor,
        }))""",
    )


def _check_legend(rows, ids):
    counts = np.bincount(ids.ravel(), minlength=NUM_CLASSES)
    present = [k for k in np.argsort(-counts, kind="stable") if counts[k]]
    assert [row["id"] for row in rows] == present  # largest area first
    for row in rows:
        k = row["id"]
        assert row["pixels"] == counts[k]
        assert row["name"] == f"class {k}"
        assert row["share"].endswith("%")  # one decimal, rounded
        assert abs(float(row["share"][:-1]) - 100 * counts[k] / ids.size) <= 0.05 + 1e-9
        assert row["clear"] == (not PALETTE[k].any())  # black: a transparent swatch
        if not row["clear"]:
            assert row["colour"] == "rgb({}, {}, {})".format(*PALETTE[k])


@pytest.mark.slow  # a server subprocess and a browser
def test_chosen_image_overlay_matches_the_api_class_ids(page, server, tmp_path):
    started = time.perf_counter()
    image = camvid_like_image(np.random.default_rng(7))
    png = _png(image)
    ids = _api_class_ids(server, png)
    assert ids.shape == image.shape[:2]
    present = set(np.unique(ids).tolist())
    assert 0 in present and len(present) >= 3, present  # a transparent class and colours

    page.set_input_files(
        "#file", files=[{"name": "street.png", "mimeType": "image/png", "buffer": png}]
    )
    state, status = _wait_for_answer(page)
    assert state == "done", status
    assert "street.png: 120x90" in status
    pixels = _overlay_pixels(page)
    np.testing.assert_array_equal(pixels, overlay(image, ids, PALETTE, alpha=0.5))
    assert (pixels[ids == 0] == image[ids == 0]).all()  # class 0 (black) left as it is
    _check_legend(_legend(page), ids)

    shot = tmp_path / "demo_page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot} ({time.perf_counter() - started:.1f} s since the test started)")
    assert shot.stat().st_size > 0

    # Full opacity: the palette colours themselves (class 0 still transparent).
    page.evaluate(
        """() => {
            const slider = document.getElementById("alpha");
            slider.value = "100";
            slider.dispatchEvent(new Event("input"));
        }"""
    )
    opaque = _overlay_pixels(page)
    np.testing.assert_array_equal(opaque, overlay(image, ids, PALETTE, alpha=1.0))
    np.testing.assert_array_equal(
        opaque[ids == 1], np.broadcast_to(PALETTE[1], opaque[ids == 1].shape)
    )

    assert not page.errors, page.errors
    assert all(url.startswith(f"{server}/") for url in page.requests), page.requests


@pytest.mark.slow  # a server subprocess and a browser
def test_dropped_images_a_large_one_shrunk_and_a_file_that_is_not_an_image(page, server):
    rng = np.random.default_rng(11)
    # Each drop replaces the previous result. The server's --max_pixels is 120 * 90, so the
    # page shrinks the 150x100 image to 127x84 before sending it; the overlay must then match
    # the API's answer for the pixels the page shows (read from the page: its resampling is
    # the browser's).
    for height, width, shown in ((48, 64, (48, 64)), (70, 40, (70, 40)), (100, 150, (84, 127))):
        image = camvid_like_image(rng, height, width)
        page.evaluate("document.body.dataset.state = 'ready'")  # not the previous 'done'
        page.evaluate(
            """([b64, name]) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], name, {type: "image/png"}));
                const drop = document.getElementById("drop");
                drop.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
            }""",
            [base64.b64encode(_png(image)).decode(), f"street_{width}x{height}.png"],
        )
        state, status = _wait_for_answer(page)
        assert state == "done", status
        if shown != (height, width):
            assert f"{shown[1]}x{shown[0]} (shrunk from {width}x{height})" in status, status
            shown_pixels = page.evaluate("Array.from(state.pixels.data)")
            image = np.asarray(shown_pixels, np.uint8).reshape(*shown, 4)[..., :3]
        else:
            assert f"{width}x{height}," in status, status
        ids = _api_class_ids(server, _png(image))
        np.testing.assert_array_equal(_overlay_pixels(page), overlay(image, ids, PALETTE))
        _check_legend(_legend(page), ids)

    page.evaluate("document.body.dataset.state = 'ready'")
    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}]
    )
    state, status = _wait_for_answer(page)
    assert state == "error" and "not an image" in status, status
    assert not page.errors, page.errors
