"""The Voilà dashboard in headless Chromium, served by `serve()` exactly as `run_pipeline.py serve` does.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Set
VOLCAST_DASHBOARD_SCREENSHOT=docs/dashboard.png to also write the README's screenshot.
"""

from __future__ import annotations

import io
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dashboard_helpers import HOSTILE_NAME, HOSTILE_SYMBOL, build_hostile_output, kernel_id, wait_for_kernels
from serve_helpers import Client, ServeProcess, build_output, copy_output, latest_id, publish_models_from, tiny_output  # noqa: F401

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
VOILA_TIMEOUT = 180  # first render: kernel start + imports + model load, on a busy 2-core CI box


@pytest.fixture(scope="module")
def served(tiny_output):
    sp = ServeProcess(tiny_output, dashboard=True)
    yield sp
    assert sp.stop() == 0, "".join(sp.log)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "headless browser tests need Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(VOILA_TIMEOUT)
    yield driver
    driver.quit()


def _status_after_redirects(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.parametrize(
    "path",
    [
        "/api/contents",
        "/api/contents/",
        "/terminals",
        "/api/terminals",
        "/api/sessions",
        "/tree",
        "/lab",
        "/voila/files/dashboard.ipynb",
        "/voila/files/dashboard.py",
    ],
)
def test_no_jupyter_contents_terminals_or_sources(served, path):
    # Voilà serves one notebook: other paths redirect to its static-file handler, whose allowlist
    # only has images, so every one of these ends in 403/404 and never lists or returns files.
    status, body = _status_after_redirects(served.dashboard_url + path)
    assert status in (403, 404), (path, status)
    assert b'"type": "directory"' not in body and b'"content"' not in body and b"nbformat" not in body


def _wait(driver, css: str, timeout: float = VOILA_TIMEOUT, text: bool = False):
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        if found and (not text or found[0].text.strip()):
            return found[0]
        time.sleep(0.25)
    raise AssertionError(
        f"{css!r} did not appear within {timeout:.0f} s; page text:\n"
        f"{driver.find_element(By.TAG_NAME, 'body').text[:2000]}"
    )


def _type(driver, css: str, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = _wait(driver, css)
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(value, Keys.TAB)  # leaving the box sends its value to the kernel


def _predict(driver, vol: str, price: str, result_css: str) -> str:
    from selenium.webdriver.common.by import By

    _type(driver, ".volcast-vol input", vol)
    _type(driver, ".volcast-price input", price)
    # Blank the shown answer so we wait for the *new* one (the widget rewrites this element's content).
    for old in driver.find_elements(By.CSS_SELECTOR, ".volcast-output .widget-html-content"):
        driver.execute_script("arguments[0].innerHTML = ''", old)
    _wait(driver, ".volcast-predict").click()
    return _wait(driver, result_css, timeout=60, text=True).text.strip()


def test_dashboard_predicts_the_same_integer_as_the_api(served, browser):
    browser.get(served.dashboard_url + "/")
    _wait(browser, ".volcast-predict")
    api = Client(served.api_url)

    shown = _predict(browser, "2500000", "37.5", ".volcast-volume")
    status, body = api.get("/predict?vol_moving_avg=2500000&adj_close_rolling_med=37.5")
    assert status == 200
    assert shown == f"{body['volume']:,}"  # formatted like 1,234,567
    assert int(shown.replace(",", "")) == body["volume"]
    assert _wait(browser, ".volcast-model-id", text=True).text == body["model_id"]

    # Bad input: the dashboard explains it in the API's words.
    shown_error = _predict(browser, "12,345", "25", ".volcast-error")
    status, body = api.get("/predict?vol_moving_avg=12,345&adj_close_rolling_med=25")
    assert status == 400 and shown_error == body["error"]
    api.close()

    # The other panels rendered: metrics table, the explorer's plotly chart, the card's two PNG charts.
    _wait(browser, "table.volcast-metrics")
    page = browser.find_element("tag name", "body").text
    assert "reference: tomorrow = vol_moving_avg" in page and "forecast model" in page and "median APE" in page
    _wait(browser, ".js-plotly-plot")
    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('img')).filter(i => i.naturalWidth > 100).length"
    )
    assert images >= 2  # comparison + learning curves

    _predict(browser, "1000000", "25", ".volcast-volume")  # a friendly state for the screenshot
    png = _screenshot(browser)
    assert png.startswith(b"\x89PNG") and len(png) < 600_000
    target = os.environ.get("VOLCAST_DASHBOARD_SCREENSHOT")
    if target:
        Path(target).write_bytes(png)


def _forecast_shown(driver, symbol: str) -> dict:
    """Pick ``symbol`` in the dashboard's ticker list and read the forecast panel once it shows that ticker."""
    from selenium.webdriver.support.ui import Select

    Select(_wait(driver, ".volcast-symbol select")).select_by_visible_text(symbol)
    deadline = time.monotonic() + 60
    while True:
        shown = driver.execute_script("""
            const q = (c) => {
                const e = document.querySelector('.volcast-forecast-output ' + c);
                return e ? e.textContent : null;
            };
            return {symbol: q('.volcast-forecast-symbol'), as_of: q('.volcast-as-of'),
                    volume: q('.volcast-forecast-volume'), low: q('.volcast-interval-low'),
                    high: q('.volcast-interval-high'), model_id: q('.volcast-forecast-model-id')};""")
        if shown["symbol"] == symbol:
            return shown
        assert time.monotonic() < deadline, f"the forecast of {symbol} did not appear: {shown}"
        time.sleep(0.25)


def test_dashboard_forecasts_a_picked_ticker_like_the_api(served, browser, tiny_output):
    browser.get(served.dashboard_url + "/")
    default = _wait(browser, ".volcast-forecast-symbol", text=True).text
    api = Client(served.api_url)
    status, body = api.get("/health")
    assert status == 200
    from volcast.train import latest_model_dir
    from volcast.train.forecast import load_bundle

    symbols = load_bundle(latest_model_dir(tiny_output)).symbols
    picked = [s for s in symbols if s != default][:2]  # not the default: the pick must take effect
    assert picked
    for symbol in picked:
        shown = _forecast_shown(browser, symbol)
        status, body = api.get(f"/forecast?symbol={symbol}")
        assert status == 200, body
        assert shown == {
            "symbol": body["symbol"],
            "as_of": body["as_of"],
            "volume": f"{body['volume']:,}",
            "low": f"{body['interval']['low']:,}",
            "high": f"{body['interval']['high']:,}",
            "model_id": body["model_id"],
        }
    api.close()
    # The explorer chart shows values on hover: a mouse move over its volume panel brings plotly's label.
    hover = """
        const drag = document.querySelectorAll('.js-plotly-plot .nsewdrag');
        const area = drag[drag.length - 1].getBoundingClientRect();
        drag[drag.length - 1].dispatchEvent(new MouseEvent('mousemove', {bubbles: true,
            clientX: area.left + area.width * 0.8, clientY: area.top + area.height / 2}));
        return document.querySelector('.hoverlayer').textContent;"""
    deadline = time.monotonic() + 10
    while not browser.execute_script(hover):
        assert time.monotonic() < deadline, "no hover label on the explorer chart"
        time.sleep(0.3)
    assert "Volume" in browser.execute_script(hover)


def test_a_pre_heated_kernel_never_opens_a_page_on_a_replaced_model(tmp_path, tiny_output, browser):
    """serve() heats a kernel at start, while LATEST names model A; LATEST then names model B. The page
    opened next shows B, and from another kernel: the one heated on A was dropped, not served (whether
    it had finished running the notebook or not: that is what the kernel id checks)."""
    out = copy_output(tiny_output, tmp_path / "out")
    other = build_output(tmp_path / "other", seed=5)
    old = latest_id(out)
    sp = ServeProcess(out, dashboard=True)
    try:
        pooled = wait_for_kernels(sp, 1)  # the pool's kernel, heated on A from the start
        assert len(pooled) == 1
        heated_on_old = kernel_id(pooled[0])
        new = publish_models_from(other, out)
        assert new != old
        browser.get(sp.dashboard_url + "/")
        card = _wait(browser, ".volcast-card", text=True).text
        assert new in card and old not in card
        # B was trained on another generated market: the forecast panel names B, forecasting or refusing.
        forecast = _wait(browser, ".volcast-forecast-output", text=True).text
        assert new in forecast and old not in forecast
        given = browser.execute_script(
            "return JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"
        )
        assert given != heated_on_old
        api = Client(sp.api_url)
        assert api.get("/health")[1]["model_id"] == new
        api.close()
    finally:
        browser.get("about:blank")
        assert sp.stop() == 0, "".join(sp.log)


def _screenshot(driver) -> bytes:
    """The whole page, as a palette PNG (small enough for the README)."""
    from PIL import Image, ImageOps

    # Voilà scrolls an inner container, not the body: back to the top of each, then the tallest height.
    driver.execute_script("document.querySelectorAll('*').forEach(e => { if (e.scrollTop) e.scrollTop = 0; })")
    height = driver.execute_script(
        "return Math.max(...Array.from(document.querySelectorAll('*')).map(e => e.scrollHeight))"
    )
    driver.set_window_size(1200, min(int(height) + 120, 6000))
    time.sleep(0.5)
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    # The window is as tall as the tallest scroll container: cut the empty page below the content.
    box = ImageOps.invert(image).getbbox()
    if box:
        image = image.crop((0, 0, image.width, min(image.height, box[3] + 24)))
    buf = io.BytesIO()
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# Counts calls to alert/confirm/prompt instead of opening a dialog; installed before any page script runs.
ALERT_HOOK = """
window.__volcastAlerts = [];
for (const name of ['alert', 'confirm', 'prompt']) {
  window[name] = (msg) => { window.__volcastAlerts.push(name + ': ' + String(msg)); };
}
"""


def test_a_hostile_ticker_runs_no_script_and_shows_as_text(tmp_path_factory, browser):
    """Issue 14, finding 6: a ticker file named like an <img onerror> tag, ingested and served."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.support.ui import Select

    out = build_hostile_output(tmp_path_factory.mktemp("hostile-browser"))
    sp = ServeProcess(out, dashboard=True)
    hook = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ALERT_HOOK})
    try:
        browser.get(sp.dashboard_url + "/")
        pick = Select(_wait(browser, ".volcast-symbol select"))
        assert HOSTILE_SYMBOL in [o.text for o in pick.options]  # an option's text, not markup
        pick.select_by_visible_text(HOSTILE_SYMBOL)
        _wait(browser, ".volcast-symbol-note", timeout=60, text=True)
        time.sleep(2.0)  # let the chosen ticker's panels (note, charts, forecast) render
        assert browser.execute_script("return window.__volcastAlerts") == []
        assert (
            browser.execute_script("return document.querySelectorAll('img[src=\"x\"], svg[onload], [onerror]').length")
            == 0
        )
        with pytest.raises(NoAlertPresentException):
            _ = browser.switch_to.alert.text  # the hook aside, no real dialog is open either
        note = _wait(browser, ".volcast-symbol-note", text=True).text
        assert HOSTILE_SYMBOL in note  # the ticker is shown, literally
        forecast = _wait(browser, ".volcast-forecast-output", text=True).text
        assert HOSTILE_SYMBOL in forecast and HOSTILE_NAME in forecast  # and its security name
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": hook["identifier"]})
        browser.get("about:blank")
        assert sp.stop() == 0, "".join(sp.log)
