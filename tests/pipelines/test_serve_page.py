"""The query service's web page and thumbnails (``GET /``, ``GET /thumbnail``), driven by a real browser.

A headless Chromium (the Debian package ``chromium``, installed by ``make setup``) opens the page of a
running service on 127.0.0.1 (2 partitions) through the Chrome DevTools protocol, submits searches
through the form, and the test compares what the page shows with the JSON API: the same keys, distances
and labels in the same order, and in the screenshot each tile's pixels are the served thumbnail's.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import stop_process_group

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--no-first-run", "--force-device-scale-factor=1",
                  "--window-size=1200,900", "--remote-debugging-port=0"]
WAIT_S = 60


def _get(url: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.fixture(scope="module")
def service(model_registry, ray_local) -> Iterator[dict]:
    """An IDHN champion with code shards, served on a free port of 127.0.0.1 with 2 partitions."""
    from ray import serve

    from hashing.serving_app import plan_service, start_service
    from tests.conftest import free_port

    model = model_registry.register("idhn", seed=3, alias="champion")
    model_registry.encode(model)
    plan = plan_service(model_registry.config(), partitions=2, num_cpus=0.25)
    try:
        yield {"url": start_service(plan, host="127.0.0.1", port=free_port()), "model": model}
    finally:
        serve.shutdown()


def _stored_png(dataset: str, split: str, index: int) -> tuple[str, bytes]:
    """(key, PNG bytes) of the ``index``-th image of ``split``'s first shard, read with tarfile."""
    from hashing.data.schema import load_manifest

    shard = load_manifest(dataset).split(split).shards[0]
    with tarfile.open(f"{dataset}/{shard.path}") as tar:
        name = [n for n in tar.getnames() if n.endswith(".png")][index]
        return name.removesuffix(".png"), tar.extractfile(name).read()


def test_page_and_thumbnails_over_http(model_registry, service) -> None:
    status, body, kind = _get(f"{service['url']}/")
    assert status == 200 and kind.startswith("text/html")
    page = body.decode()
    assert 'id="search-form"' in page and "thumbnail?key=" in page
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere

    for split, index in (("database", 0), ("query", 5)):
        key, stored = _stored_png(model_registry.dataset_uri, split, index)
        status, body, kind = _get(f"{service['url']}/thumbnail?key={key}")
        assert (status, kind, body) == (200, "image/png", stored), key

    for target, expected, words in (("thumbnail?key=no-such-key", 404, "no-such-key"),
                                    ("thumbnail", 400, "give a key")):
        status, body, _ = _get(f"{service['url']}/{target}")
        assert status == expected and words in json.loads(body)["error"], (target, body)


class DevTools:
    """A Chrome DevTools protocol session with one page target (``send`` waits for the answer)."""

    def __init__(self, websocket_url: str) -> None:
        from websockets.sync.client import connect

        self.socket = connect(websocket_url, max_size=64 << 20, open_timeout=WAIT_S)
        self.ids = itertools.count(1)

    def send(self, method: str, **params: object) -> dict:
        sent = next(self.ids)
        self.socket.send(json.dumps({"id": sent, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=WAIT_S))
            if message.get("id") == sent:
                assert "error" not in message, (method, message["error"])
                return message["result"]

    def evaluate(self, expression: str) -> object:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str) -> object:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + WAIT_S
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)
        return value

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """Headless Chromium with a fresh profile; the DevTools session of its first page."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make setup installs the Debian package chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = (profile.parent / "chromium.log").open("wb")
    proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT_S
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        targets = json.loads(_get(f"http://127.0.0.1:{port}/json/list")[1])
        page = next(t for t in targets if t["type"] == "page")
        session = DevTools(page["webSocketDebuggerUrl"])
        yield session
        session.socket.close()
    finally:
        stop_process_group(proc)
        log.close()


def _open(browser: DevTools, url: str) -> None:
    browser.send("Page.enable")
    browser.send("Page.navigate", url=f"{url}/")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('search-form')",
                     "the page")


def _submit(browser: DevTools, mode: str, k: int, **fields: str) -> None:
    """Choose ``mode``, fill ``fields`` (input id -> value) and k, click the form's search button."""
    sets = "".join(f"document.getElementById({name!r}).value = {value!r};" for name, value in fields.items())
    browser.evaluate(f"""document.querySelector('input[name=mode][value={mode}]').click();
        {sets} document.getElementById('k').value = '{k}';
        document.getElementById('results').replaceChildren();
        document.getElementById('submit').click(); true""")


def _wait_for_grid(browser: DevTools, k: int) -> list[dict]:
    """Wait until the grid has ``k`` tiles with loaded images; per tile its key, caption text and the
    image's box in CSS pixels."""
    return browser.wait_for(f"""(() => {{
        const tiles = [...document.querySelectorAll('#results figure.hit')];
        if (tiles.length !== {k} || !tiles.every(t => t.querySelector('img').complete
                                                    && t.querySelector('img').naturalWidth > 0)) {{
          return null;
        }}
        return tiles.map(t => {{
          const box = t.querySelector('img').getBoundingClientRect();
          return {{key: t.dataset.key, caption: t.querySelector('figcaption').innerText,
                   box: [box.left, box.top, box.right, box.bottom]}};
        }});
    }})()""", f"{k} result tiles")


def _check_tiles_show_their_thumbnails(browser: DevTools, tiles: list[dict], url: str) -> None:
    """In the screenshot, every tile's image box holds its served thumbnail (scaled, nearest neighbour)
    much more closely than any other tile's thumbnail, and is not blank."""
    shot = np.asarray(browser.screenshot(), np.float32)
    crops, served = [], []
    for tile in tiles:
        left, top, right, bottom = (round(v) for v in tile["box"])
        crop = shot[top + 2: bottom - 2, left + 2: right - 2]  # a margin for the box's sub-pixel edges
        status, png, _ = _get(f"{url}/thumbnail?key={tile['key']}")
        assert status == 200, tile["key"]
        thumbnail = Image.open(io.BytesIO(png)).convert("RGB").resize((right - left, bottom - top),
                                                                       Image.Resampling.NEAREST)
        crops.append(crop)
        served.append(np.asarray(thumbnail, np.float32)[2:-2, 2:-2])
    for i, crop in enumerate(crops):
        assert crop.std() > 5, f"tile {i} ({tiles[i]['key']}) is blank"
        errors = [float(np.abs(crop - s).mean()) for s in served]
        assert errors[i] < 4, (tiles[i]["key"], errors[i])
        assert all(errors[i] < e for j, e in enumerate(errors) if j != i and not np.array_equal(
            served[j], served[i])), (tiles[i]["key"], errors)


def test_key_search_through_the_form_shows_the_api_results(model_registry, service, browser) -> None:
    from hashing.code_shards import load_split

    model = service["model"]
    codes = load_split(f"{model_registry.root}/codes/{model.name}/v{model.version}/query")
    key, k = str(codes.keys[4]), 7
    _open(browser, service["url"])

    _submit(browser, "key", k, key=key)
    tiles = _wait_for_grid(browser, k)

    status, body, _ = _get(f"{service['url']}/search?key={key}&k={k}")
    assert status == 200
    expected = json.loads(body)["results"]
    assert [t["key"] for t in tiles] == [r["key"] for r in expected]
    for tile, hit in zip(tiles, expected, strict=True):
        assert tile["caption"].split("\n") == [hit["key"], f"distance {hit['distance']}",
                                               ", ".join(hit["labels"])]
    status_line = browser.evaluate("document.getElementById('status').textContent")
    assert status_line == f"{k} results from {model.name} v{model.version}"
    _check_tiles_show_their_thumbnails(browser, tiles, service["url"])


def test_image_upload_through_the_form(model_registry, service, browser, tmp_path: Path) -> None:
    key, png = _stored_png(model_registry.dataset_uri, "database", 3)
    (tmp_path / "upload.png").write_bytes(png)
    _open(browser, service["url"])
    document = browser.send("DOM.getDocument")["root"]["nodeId"]
    node = browser.send("DOM.querySelector", nodeId=document, selector="#image")["nodeId"]
    browser.send("DOM.setFileInputFiles", nodeId=node, files=[str(tmp_path / "upload.png")])

    _submit(browser, "image", 5)
    tiles = _wait_for_grid(browser, 5)

    request = urllib.request.Request(f"{service['url']}/search/image?k=5", data=png, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        expected = json.loads(response.read())["results"]
    assert [t["key"] for t in tiles] == [r["key"] for r in expected]
    assert key in [t["key"] for t in tiles] and expected[0]["distance"] == 0


def test_errors_are_shown_in_the_page(service, browser) -> None:
    _open(browser, service["url"])
    _submit(browser, "key", 3, key="no-such-key")
    shown = browser.wait_for("document.getElementById('error').textContent", "the error line")
    status, body, _ = _get(f"{service['url']}/search?key=no-such-key&k=3")
    assert status == 404 and shown == json.loads(body)["error"]
    assert browser.evaluate("document.querySelectorAll('#results figure').length") == 0

    _open(browser, service["url"])
    _submit(browser, "text", 3, text="shirt")
    shown = browser.wait_for("document.getElementById('error').textContent", "the error line")
    status, body, _ = _get(f"{service['url']}/search/text?q=shirt&k=3")
    assert status == 400 and shown == json.loads(body)["error"]  # IDHN has no text network
