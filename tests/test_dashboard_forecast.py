"""The dashboard's ticker forecast: the API's answer (``Bundle.forecast_one``), shown with the inputs it used."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from serve_helpers import Client, latest_id, tiny_output  # noqa: F401
from volcast import dashboard as dash
from volcast.config import Layout
from volcast.serve import ApiServer, ModelHolder
from volcast.train.forecast import load_bundle


def inputs_table(markup: str) -> pd.DataFrame:
    """The shown inputs table back as numbers: input -> value, shares (thousands separators removed)."""
    cells = re.findall(
        r"<tr><td[^>]*><code>([^<]+)</code></td><td[^>]*>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td></tr>", markup
    )
    num = lambda t: float(t.replace(",", "")) if t not in ("", "–") else float("nan")  # noqa: E731
    return pd.DataFrame([(n, num(v), num(sh)) for n, v, sh in cells], columns=["input", "value", "≈ shares"]).set_index(
        "input"
    )


def test_every_ticker_gets_the_bundles_answer(tiny_output):
    model_dir = Layout.at(tiny_output).models_dir / latest_id(tiny_output)
    bundle = load_bundle(model_dir)  # loaded apart from the dashboard's holder
    holder = ModelHolder(tiny_output)
    assert bundle.symbols
    for symbol in bundle.symbols:
        answer, problem, _ = dash.forecast_for(holder, symbol)
        assert problem is None
        assert answer == dict(bundle.forecast_one(symbol), model_id=latest_id(tiny_output))
        assert answer["interval"]["low"] <= answer["volume"] <= answer["interval"]["high"]
    # A lower-case ticker gets its upper-case answer, as from GET /forecast?symbol=.
    upper = [s for s in bundle.symbols if s.isalpha()][0]
    assert dash.forecast_for(holder, upper.lower())[0] == dash.forecast_for(holder, upper)[0]


def test_the_panel_shows_the_forecast_and_the_inputs_it_used(tiny_output):
    app = dash.Dashboard(tiny_output)
    everything = pd.read_parquet(Layout.at(tiny_output).features_dir)
    for symbol in app.symbols[:4]:
        app.symbol_pick.value = symbol
        answer, _, _ = dash.forecast_for(app.holder, symbol)
        shown = app.forecast_html.value
        assert f'volcast-forecast-volume" style="font-size:1.4em">{answer["volume"]:,}<' in shown
        assert f'volcast-interval-low">{answer["interval"]["low"]:,}<' in shown
        assert f'volcast-interval-high">{answer["interval"]["high"]:,}<' in shown
        rows = everything[everything["Symbol"] == symbol].sort_values("Date")
        assert answer["as_of"] == rows["Date"].iloc[-1]
        assert f'volcast-as-of">{answer["as_of"]}<' in shown
        # The inputs table: the model's values of the last row, and the shares they stand for, against
        # the ticker's own volumes worked out here with pandas.
        table = inputs_table(app.inputs_html.value)
        volume = rows["Volume"].astype(float)
        assert table.loc["vol_lr_0", "≈ shares"] == pytest.approx(volume.iloc[-1], abs=0.5)
        assert table.loc["vol_lr_1", "≈ shares"] == pytest.approx(volume.iloc[-2], abs=0.5)
        assert table.loc["vol_mean5_lr", "≈ shares"] == pytest.approx(volume.iloc[-5:].mean(), abs=0.5)
        assert table.loc["log_vol_mean30", "≈ shares"] == pytest.approx(volume.iloc[-30:].mean(), abs=0.5)
        assert table.loc["weekday", "value"] == pd.Timestamp(answer["as_of"]).weekday()


def test_a_ticker_without_a_forecast_is_explained(tiny_output):
    holder = ModelHolder(tiny_output)
    answer, problem, _ = dash.forecast_for(holder, "NOT-A-TICKER")
    assert answer is None and "NOT-A-TICKER" in problem
    with ApiServer(tiny_output, port=0) as api:  # the API's words for it
        c = Client(api.url)
        status, body = c.get("/forecast?symbol=NOT-A-TICKER")
        c.close()
    assert status == 404 and body["error"] == problem
    app = dash.Dashboard(tiny_output)
    app.symbol_pick.options = [*app.symbols, "<b>x"]
    app.symbol_pick.value = "<b>x"
    assert 'class="volcast-error"' in app.forecast_html.value and "&lt;b&gt;x" in app.forecast_html.value
    assert app.inputs_html.value == ""
