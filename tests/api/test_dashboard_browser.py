"""The ops dashboard (``GET /ops``) in a real headless Chromium, keys on.

What it proves: a person who opens the page sees nothing until they sign in
(the page's own unsigned calls are refused); once they type an ops key into the
form, the page signs its calls itself (WebCrypto HMAC, the grid's
``OG1-HMAC-SHA256``) and shows the live figures of the channels that carried
traffic: rows in the "now (last 60 s)" table and each channel's line drawn on
the charts. The secret never reaches a URL. A screenshot is kept
(``build/test-artifacts/dashboard.png``) and its pixels are checked: the rate
chart holds each driven channel's line, in the legend's colour.

The grid is the in-process app (tests/inprocess.py) served by uvicorn on a free
local port: no Ray. Chromium and its driver are Debian's (``chromium``,
``chromium-driver``), installed by the fixture below when missing.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import matplotlib.image
import numpy as np
import pytest
import uvicorn
from numpy.typing import NDArray
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from omnigrid.api.client import GridAuth
from omnigrid.api.http.app import GridApp
from tests.api.test_auth import make_key
from tests.conftest import free_port, write_headers
from tests.inprocess import in_process_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The machine has no internet: every flag past --disable-gpu keeps Chromium from
# reaching out (updates, sync, QUIC probes) and stalling or logging on the way.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # a small /dev/shm would crash the renderer
    "--window-size=1280,1000",  # the whole page in one viewport: one screenshot
    "--force-device-scale-factor=1",  # CSS pixels are screenshot pixels
)
ARTIFACT = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "dashboard.png"
WAIT_S = 20.0
APP, POS = "app", "pos"  # the two channels the test drives
REFUSED = "sign in with an ops key"  # the page's status when its calls are refused


# -- Chromium, installed by the test setup -------------------------------------------


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]  # -n: fail, never prompt
    return subprocess.run(
        [*sudo, "apt-get", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )


def _missing() -> list[str]:
    return [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium and its driver: installed when missing; a failure, never a skip
    (a test that skips where the browser is absent proves nothing anywhere)."""
    if not _missing():
        return CHROMIUM
    install = ("install", "-y", "--no-install-recommends", "chromium", "chromium-driver")
    done = _apt(*install)
    if done.returncode != 0:  # a stale package list: refresh it once, then try again
        _apt("update")
        done = _apt(*install)
    if done.returncode != 0 or _missing():
        tail = (done.stdout + done.stderr)[-3000:]
        pytest.fail(
            f"cannot install chromium and chromium-driver (apt-get exited "
            f"{done.returncode}; missing {_missing()}):\n{tail}",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # a fresh profile: no session storage, cache or key left by an earlier run
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    # the driver's path given: Selenium Manager never tries to download one
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


# -- the grid, over real HTTP ------------------------------------------------------


class LiveServer:
    """An ASGI app served by uvicorn on a free local port, in a thread of its own."""

    def __init__(self, app: GridApp) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan="off", access_log=False,
            log_level="warning",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped before it listened"
            assert time.monotonic() < deadline, f"uvicorn did not listen on {self.url}"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Traffic:
    """Two channels' requests, on and on until stopped, so the page has live figures.

    ``app`` sends three requests a round and ``pos`` one, so their lines on the
    rate chart lie apart (the same rate would draw one line over the other). The
    cart adds run past the stock: refusals (409 insufficient_stock) among them.
    """

    def __init__(self, url: str, auth: GridAuth) -> None:
        self.url, self.auth = url, auth
        self.statuses: dict[int, int] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sku, uid = "sku-dash", "u-dash"
        try:
            with httpx.Client(base_url=self.url, auth=self.auth, timeout=10) as c:
                c.put(f"/v1/skus/{sku}/stock", json={"on_hand": 3}, headers=write_headers(POS))
                while not self._stop.is_set():
                    line = {"sku": sku, "qty": 1}
                    for r in (
                        c.post(f"/v1/carts/{uid}/lines", json=line, headers=write_headers(APP)),
                        c.get(f"/v1/carts/{uid}", headers=write_headers(APP)),
                        c.get(f"/v1/skus/{sku}/stock", headers=write_headers(APP)),
                        c.get(f"/v1/skus/{sku}/stock", headers=write_headers(POS)),
                    ):
                        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                    time.sleep(0.05)
        except BaseException as e:  # raised by check(): a thread's own exception is lost
            self.errors.append(e)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def check(self) -> None:
        assert not self.errors, self.errors
        assert self.statuses.get(200, 0) > 0 and self.statuses.get(409, 0) > 0, self.statuses
        assert set(self.statuses) <= {200, 409}, self.statuses  # nothing refused by the keys


def wait_for_seconds(c: httpx.Client, ops: GridAuth, seconds: int) -> None:
    """Until each driven channel has points in ``seconds`` distinct seconds: a chart
    line needs two points at least, and a longer one is easier to find in pixels."""
    deadline = time.monotonic() + WAIT_S
    while True:
        r = c.get("/v1/ops/series", params={"window_s": 300}, auth=ops)
        assert r.status_code == 200, r.text
        points = r.json()["points"]
        held = {ch: {p["t"] for p in points if p["channel"] == ch} for ch in (APP, POS)}
        if all(len(ts) >= seconds for ts in held.values()):
            return
        assert time.monotonic() < deadline, held
        time.sleep(0.2)


# -- reading the page ------------------------------------------------------------


def rows(driver: webdriver.Chrome) -> dict[str, list[str]]:
    """The "now" table: channel -> its cells (req/s, success, p99 ms, lag p99 ms)."""
    cells = cast(
        list[list[str]],
        driver.execute_script(
            "return [...document.querySelectorAll('#now tr')]"
            ".map(r => [...r.cells].map(c => c.textContent.trim()))"
        ),
    )
    return {row[0]: row[1:] for row in cells if row}


def live_rows(driver: webdriver.Chrome) -> dict[str, list[str]]:
    """The table once both driven channels show requests and a latency, else nothing
    (falsy: WebDriverWait waits on)."""
    shown = rows(driver)
    for ch in (APP, POS):
        if ch not in shown or shown[ch][2] == "-" or float(shown[ch][0]) <= 0:
            return {}
    return shown


def status(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.ID, "status").text)


def rgb(css: str) -> tuple[int, int, int]:
    """``rgb(31, 119, 180)`` (a computed colour) as a triple."""
    r, g, b = (int(x) for x in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return r, g, b


def pixels_of(image: NDArray[np.uint8], box: dict[str, float], colour: tuple[int, int, int]) -> int:
    """How many pixels inside ``box`` (a canvas's rectangle) are ``colour`` drawn on the
    card's white: a thin line is anti-aliased, so its pixels are the colour blended
    with white (``white + a * (colour - white)``); half coverage or more counts."""
    x0, y0 = int(box["x"]), int(box["y"])
    x1, y1 = int(box["x"] + box["width"]), int(box["y"] + box["height"])
    region = image[y0:y1, x0:x1, :3].astype(np.float64) - 255.0
    towards = np.array(colour, dtype=np.float64) - 255.0
    cover = region @ towards / float(towards @ towards)  # the best blend, per pixel
    off = np.abs(region - cover[..., None] * towards).max(axis=-1)
    # a grey (the axis labels) or another line's colour is far off the blend
    return int(((cover >= 0.5) & (off <= 16)).sum())


def read_png(path: Path) -> NDArray[np.uint8]:
    """The PNG as 8-bit RGB(A) (matplotlib reads PNGs as floats in 0..1)."""
    data: Any = matplotlib.image.imread(str(path))
    return cast(NDArray[np.uint8], (np.asarray(data) * 255).round().astype(np.uint8))


# -- the test --------------------------------------------------------------------


def test_the_dashboard_shows_live_figures_to_a_signed_in_ops_key(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    with LiveServer(in_process_app()) as server, httpx.Client(base_url=server.url) as c:
        admin = make_key(c, scopes=["admin"])  # the first key: from now on, keys are on
        ops = make_key(c, admin, scopes=["ops"])
        assert c.get("/v1/ops/series").status_code == 401  # the page's data is not public
        with Traffic(server.url, admin) as traffic:
            wait_for_seconds(c, ops, 6)

            browser.get(server.url + "/ops")
            # Not signed in: the page's own (unsigned) calls are refused, it says so
            # and shows no figure.
            try:
                WebDriverWait(browser, WAIT_S).until(lambda d: status(d) == REFUSED)
            except TimeoutException:
                pytest.fail(f"the page did not ask to sign in; its status: {status(browser)!r}")
            assert rows(browser) == {}

            browser.find_element(By.ID, "kid").send_keys(ops.key_id)
            browser.find_element(By.ID, "secret").send_keys(ops.secret)
            browser.find_element(By.CSS_SELECTOR, "#signin button").click()
            try:
                shown = WebDriverWait(browser, WAIT_S).until(live_rows)
            except TimeoutException:
                pytest.fail(f"no live figures: status {status(browser)!r}, rows {rows(browser)}")
        traffic.check()

        # The figures are the traffic's: requests, full success (a 409 is an
        # answer, not a failure), a latency; no stream open, so no sync lag.
        for ch in (APP, POS):
            req_s, success, p99_ms, lag_ms = shown[ch]
            assert float(req_s) > 0 and success == "100.00%", shown
            assert float(p99_ms) > 0 and lag_ms == "-", shown
        assert float(shown[APP][0]) > float(shown[POS][0]), shown  # app sent three to one
        assert status(browser).startswith("live: ")
        alerts = browser.find_element(By.ID, "alerts").text
        assert alerts == "none", alerts  # rendered, and nothing is failing

        # The secret stays in the tab: typed, kept in session storage, used to sign;
        # in no URL the page opened, and not left in the form.
        assert browser.current_url == server.url + "/ops"
        opened = cast(
            list[str],
            browser.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            ),
        )
        assert any("/v1/ops/series" in u for u in opened), opened
        assert not [u for u in [browser.current_url, *opened] if ops.secret in u]
        assert browser.find_element(By.ID, "secret").get_attribute("value") == ""
        assert browser.execute_script("return sessionStorage.getItem('kid')") == ops.key_id

        # The screenshot, kept, and checked for each channel's line on the charts.
        png = browser.get_screenshot_as_png()
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        for path in (tmp_path / "dashboard.png", ARTIFACT):
            path.write_bytes(png)
        legend = cast(
            list[list[str]],
            browser.execute_script(
                "return [...document.querySelectorAll('#legend span')]"
                ".map(s => [s.textContent.trim(), getComputedStyle(s).color])"
            ),
        )
        colours = {text.split()[-1]: rgb(css) for text, css in legend}
        assert {APP, POS} <= colours.keys(), colours
        assert colours[APP] != colours[POS]
        boxes = cast(
            dict[str, dict[str, float]],
            browser.execute_script(
                "const out = {};"
                "for (const c of document.querySelectorAll('canvas')) {"
                "  const r = c.getBoundingClientRect();"
                "  out[c.id] = {x: r.x, y: r.y, width: r.width, height: r.height}; }"
                "return out;"
            ),
        )
        image = read_png(ARTIFACT)  # the kept file itself, not the bytes in memory
        for box in boxes.values():  # every chart within the screenshot
            assert box["y"] + box["height"] <= image.shape[0], (box, image.shape)
        found = {
            chart: {ch: pixels_of(image, boxes[chart], colours[ch]) for ch in (APP, POS)}
            for chart in ("rate", "success", "latency", "lag")
        }
        # Rates differ (three to one): both lines show. Success is 100 % for both:
        # one line over the other, so at least one shows; so on the latency chart.
        assert all(n >= 5 for n in found["rate"].values()), found
        assert max(found["success"].values()) >= 5, found
        assert max(found["latency"].values()) >= 5, found
        # No stream is open, so no change was delivered: the lag chart holds no line
        # (and the check finds no line where none is drawn).
        assert found["lag"] == {APP: 0, POS: 0}, found
