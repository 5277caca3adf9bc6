"""GET/POST /forecast and the /predict bounds over real HTTP (issue 13): answers worked out from the
model files by a second route (the forecast model's quantiles on latest.parquet, rounded here)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from serve_helpers import Client, copy_output, expected_volumes, latest_id, tiny_output  # noqa: F401
from volcast import train
from volcast.config import Layout
from volcast.serve import ApiServer
from volcast.storage import atomic_write_json, atomic_write_text

VOL, PRICE = "vol_moving_avg", "adj_close_rolling_med"


def expected_forecasts(model_dir) -> dict[str, dict]:
    """Each ticker's answer from the files: P50 rounded, P10 down, P90 up, dated at its latest row."""
    from volcast.train.forecast_model import ForecastModel

    card = json.loads((model_dir / "card.json").read_text())
    forecaster = ForecastModel.load(model_dir, card["models"]["forecast"])
    latest = pd.read_parquet(model_dir / "latest.parquet")
    low, mid, high = forecaster.predict(latest[list(forecaster.inputs)].to_numpy(np.float32))
    return {
        s: {
            "symbol": s,
            "as_of": str(d)[:10],
            "volume": int(round(m)),
            "interval": {"low": math.floor(lo), "high": math.ceil(hi)},
            "model_id": card["model_id"],
        }
        for s, d, lo, m, hi in zip(latest["Symbol"], latest["Date"], low, mid, high)
        if np.isfinite(m)
    }


@pytest.fixture(scope="module")
def api(tiny_output):
    with ApiServer(tiny_output, port=0) as server:
        c = Client(server.url)
        yield server, c
        c.close()


def test_get_and_post_forecast_equal_the_model_files(api, tiny_output):
    _, c = api
    want = expected_forecasts(train.latest_model_dir(tiny_output))
    assert len(want) == 12
    for symbol, answer in want.items():
        assert c.get(f"/forecast?symbol={symbol}") == (200, answer)
        assert answer["interval"]["low"] <= answer["volume"] <= answer["interval"]["high"]
    assert c.get(f"/forecast?symbol={symbol.lower()}") == (200, answer)  # case-insensitive look-up
    symbols = sorted(want)[::-1]
    assert c.post("/forecast", symbols) == (200, [want[s] for s in symbols])
    assert c.post("/forecast", [symbols[0]] * 3) == (200, [want[symbols[0]]] * 3)


@pytest.mark.parametrize(
    "query, field, words",
    [
        ("", "symbol", "symbol is missing"),
        ("symbol=", "symbol", "got an empty string"),
        ("symbol=A&symbol=B", "symbol", "given 2 times"),
        ("ticker=AAPL", "ticker", "unknown parameter"),
        ("symbol=" + "A" * 21, "symbol", "1 to 20 characters"),
        ("symbol=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", "symbol", "1 to 20 characters"),
        ("symbol=AA%20PL", "symbol", "1 to 20 characters"),
        ("symbol=%EF%BC%A1", "symbol", "ASCII letters"),  # fullwidth A
    ],
)
def test_forecast_symbols_are_validated_before_lookup(api, query, field, words):
    server, c = api
    status, body, resp = c.request("GET", "/forecast?" + query)
    assert status == 400 and body["field"] == field and words in body["error"]
    raw = json.dumps(body)
    assert len(raw) < 400
    assert server.app is not None


def test_echoed_markup_is_escaped_in_the_json(api):
    server, _ = api
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/forecast?symbol=%3Cb%3E")
    raw = conn.getresponse().read()
    conn.close()
    assert b"<" not in raw and b"\\u003cb\\u003e" in raw
    assert "'<b>'" in json.loads(raw)["error"]  # the same text once parsed


def test_post_forecast_refusals(api):
    _, c = api
    assert c.post("/forecast", "AAPL")[0] == 400
    assert c.post("/forecast", [])[0] == 400
    status, body = c.post("/forecast", ["CEGE", 7])
    assert status == 400 and body["index"] == 1 and "JSON string" in body["error"]
    status, body = c.post("/forecast", ["X"] * 10_001)
    assert status == 400 and "the most is 10000" in body["error"]


def make_run_with_new_and_short_tickers(out, tmp_path) -> tuple[str, dict]:
    """A second model dir: the same models, and a latest-row table with a ticker of 5 rows (no 30-day
    mean yet) and without one old ticker; published under a new id (LATEST last)."""
    layout = Layout.at(out)
    old_id = latest_id(out)
    new_id = "20991231T000000-catboost-newrun"
    new_dir = layout.models_dir / new_id
    shutil.copytree(layout.models_dir / old_id, new_dir)
    card = json.loads((new_dir / "card.json").read_text())
    card["model_id"] = new_id
    atomic_write_json(new_dir / "card.json", card)
    latest = pd.read_parquet(new_dir / "latest.parquet")
    gone = latest["Symbol"].iloc[0]
    short = latest.iloc[[1]].copy()
    short["Symbol"], short["rows"], short["log_vol_mean30"] = "NEWCO", 5, np.nan
    latest = pd.concat([latest.iloc[1:], short], ignore_index=True)
    latest["Symbol"] = latest["Symbol"].astype(str)
    latest.to_parquet(new_dir / "latest.parquet", index=False)
    return new_id, {"gone": gone, "dir": new_dir}


def test_latest_rows_swap_with_the_model_404_and_422(tiny_output, tmp_path):
    out = copy_output(tiny_output, tmp_path / "out")
    old_id = latest_id(out)
    with ApiServer(out, port=0, check_interval=0.05) as server:
        c = Client(server.url)
        status, body = c.get("/forecast?symbol=NEWCO")
        assert status == 404 and "NEWCO" in body["error"] and body["symbol"] == "NEWCO"
        new_id, info = make_run_with_new_and_short_tickers(out, tmp_path)
        gone = info["gone"]
        assert c.get(f"/forecast?symbol={gone}")[0] == 200
        atomic_write_text(Layout.at(out).latest_file, new_id + "\n")
        import time

        deadline = time.monotonic() + 30
        while c.get("/health")[1]["model_id"] != new_id and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = c.get("/forecast?symbol=NEWCO")
        assert status == 422 and "5 rows of history" in body["error"] and "30" in body["error"]
        status, body = c.get(f"/forecast?symbol={gone}")  # left the table with the new model
        assert status == 404 and gone in body["error"]
        assert "NEWCO" not in expected_forecasts(info["dir"])
        status, body = c.post("/forecast", [sorted(expected_forecasts(info["dir"]))[0], "NEWCO"])
        assert status == 422 and body["index"] == 1
        for symbol, answer in expected_forecasts(info["dir"]).items():
            assert c.get(f"/forecast?symbol={symbol}") == (200, answer)
        assert old_id != new_id
        c.close()


def test_predict_accepts_real_magnitudes_and_flags_extrapolation(api, tiny_output):
    _, c = api
    card = json.loads((train.latest_model_dir(tiny_output) / "card.json").read_text())
    (vlo, vhi), (plo, phi) = card["input_ranges"][VOL], card["input_ranges"][PRICE]
    inside = (math.sqrt(vlo * vhi), math.sqrt(plo * phi))
    cases = [
        (inside, False),
        ((vlo, plo), False),  # the range's own ends are inside
        ((vhi, phi), False),
        ((7.4e9, inside[1]), True),  # real Volume reaches 7.4e9
        ((inside[0], 1.0e10), True),  # real split-adjusted Adj Close reaches 1e10 (CEI)
        ((2.09961e8, 2.09961e8), True),  # the row /predict refused before
        ((vlo / 2, inside[1]), True),
        ((0.0, 0.0), True),
    ]
    want = expected_volumes(tiny_output, [v for (v, _), _ in cases], [p for (_, p), _ in cases])
    for ((vol, price), outside), volume in zip(cases, want):
        status, body = c.get(f"/predict?vol_moving_avg={vol!r}&adj_close_rolling_med={price!r}")
        assert status == 200 and body["volume"] == volume
        assert body.get("extrapolated", False) is outside and ("extrapolated" in body) == outside
    status, body = c.post("/predict", [{VOL: v, PRICE: p} for (v, p), _ in cases])
    assert status == 200
    assert [b["volume"] for b in body] == want
    assert [b.get("extrapolated", False) for b in body] == [o for _, o in cases]
    status, body = c.post("/predict", {VOL: 7.4e9, PRICE: 1e10})
    assert status == 200 and body["extrapolated"] is True
    status, body = c.get("/predict?vol_moving_avg=-1e-300&adj_close_rolling_med=1")
    assert status == 400 and "negative" in body["error"]
