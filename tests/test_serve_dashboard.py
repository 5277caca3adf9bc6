"""The dashboard's logic without a browser: same numbers and words as the API, card, explorer, notebook."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from serve_helpers import (  # noqa: F401
    Client,
    copy_output,
    expected_volumes,
    latest_id,
    publish_models_from,
    tiny_output,
)
from volcast import dashboard as dash
from volcast.config import NOTEBOOKS_DIR, Layout
from volcast.serve import NO_MODEL_ERROR, ApiServer, ModelHolder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_format_volume():
    assert dash.format_volume(1234567) == "1,234,567"
    assert dash.format_volume(0) == "0"
    assert dash.format_volume(999) == "999"


def test_predict_text_gives_the_api_numbers_and_the_api_words(tiny_output):
    holder = ModelHolder(tiny_output)
    with ApiServer(tiny_output, port=0) as api:
        c = Client(api.url)
        for vol, price in [("1000000", "25"), ("12345.5", "0.75"), ("0", "0"), ("1", "1e9")]:
            outcome = dash.predict_text(holder, vol, price)
            status, body = c.get(f"/predict?vol_moving_avg={vol}&adj_close_rolling_med={price}")
            assert status == 200 and outcome.ok
            assert (outcome.volume, outcome.model_id) == (body["volume"], body["model_id"])
            assert outcome.volume == expected_volumes(tiny_output, [float(vol)], [float(price)])[0]
            assert outcome.extrapolated == body.get("extrapolated", False)
        for vol, price in [("abc", "25"), ("1,000", "25"), ("-5", "25"), ("1", "nan"), ("1", "inf"), ("", "25")]:
            outcome = dash.predict_text(holder, vol, price)
            status, body = c.get(f"/predict?vol_moving_avg={vol}&adj_close_rolling_med={price}")
            assert status == 400 and not outcome.ok
            assert (outcome.message, outcome.field) == (body["error"], body["field"])
        c.close()


def test_outcome_html():
    ok = dash.outcome_html(dash.PredictOutcome(True, "", 1234567, "m<1>"))
    assert '<span class="volcast-volume" style="font-size:1.4em">1,234,567</span>' in ok
    assert "m&lt;1&gt;" in ok
    bad = dash.outcome_html(dash.PredictOutcome(False, "vol_moving_avg must be <= 1"))
    assert 'class="volcast-error"' in bad and "&lt;=" in bad
    assert "volcast-extrapolated" not in ok
    assert "volcast-extrapolated" in dash.outcome_html(dash.PredictOutcome(True, "", 1, "m", extrapolated=True))


def test_no_model_and_no_features_are_explained(tmp_path):
    app = dash.Dashboard(tmp_path / "empty")
    assert NO_MODEL_ERROR in app.result.value
    assert NO_MODEL_ERROR in app.card_html.value
    assert dash.NO_FEATURES in app.symbol_note.value and dash.NO_FEATURES in app.forecast_html.value
    assert app.symbols == [] and app.symbol_pick.value is None
    outcome = app.predict()
    assert not outcome.ok and outcome.message.startswith(NO_MODEL_ERROR)
    app.vol_box.value = "oops"
    assert "vol_moving_avg must be a plain number" in app.predict().message  # input is checked first


def test_model_card_compares_both_models_with_every_reference(tiny_output):
    model_dir = Layout.at(tiny_output).models_dir / latest_id(tiny_output)
    card = json.loads((model_dir / "card.json").read_text())
    frame = dash.metrics_frame(card)
    assert list(frame.columns[:4]) == ["mae", "rmse", "r2", "medape"]
    # Both models and every reference, each on its own row.
    assert set(card["metrics"]) >= {"model", "forecast", "har", "baseline_vol_moving_avg", "baseline_today_volume"}
    assert list(frame.index) == [dash.PREDICTOR_LABELS[k] for k in dash.PREDICTOR_LABELS if k in card["metrics"]]
    base = card["metrics"]["baseline_vol_moving_avg"]
    for key, values in card["metrics"].items():
        row = frame.loc[dash.PREDICTOR_LABELS[key]]
        assert row["mae"] == pytest.approx(values["mae"])
        assert row["medape_ratio"] == pytest.approx(values["medape"] / base["medape"])
    html = dash.metrics_html(card)
    assert f"{card['metrics']['forecast']['mae']:,.0f}" in html and "reference: HAR" in html
    app = dash.Dashboard(tiny_output)
    # The chart and the learning curves (both models, one panel each) are PNGs.
    assert bytes(app.compare_image.value).startswith(PNG_MAGIC)
    assert bytes(app.curve_image.value).startswith(PNG_MAGIC)
    assert set(dash.learning_curves(model_dir)) == {"model", "forecast"}
    curves = pd.read_csv(model_dir / "learning_curve_forecast.csv")
    pd.testing.assert_frame_equal(dash.learning_curves(model_dir)["forecast"], curves)
    # By year and by decile: each predictor's MAE over the reference's, worked out from the card's records.
    year = card["by_year"][-1]
    ratio = year["mae_forecast"] / year["mae_baseline_vol_moving_avg"]
    frame_year = dash.breakdown_frame(card["by_year"], "year").set_index("year")
    assert frame_year.loc[year["year"], dash.PREDICTOR_LABELS["forecast"]] == pytest.approx(ratio)
    assert (
        f"<td>{year['year']}</td>" in app.breakdown_html.value and f"<td>{ratio:.3f}</td>" in app.breakdown_html.value
    )
    assert len(dash.breakdown_frame(card["by_decile"], "decile")) == len(card["by_decile"])
    # Coverage of the interval, as the card measured it.
    coverage = card["models"]["forecast"]["test_coverage_p10_p90"]
    assert f"<b>{coverage:.1%}</b>" in app.card_html.value


def test_symbol_explorer_reads_the_features_dataset(tiny_output):
    everything = pd.read_parquet(Layout.at(tiny_output).features_dir)  # independent read of all rows
    assert dash.list_symbols(tiny_output) == sorted(everything["Symbol"].unique())
    counts = everything["Symbol"].value_counts()
    assert dash.default_symbol(dash.symbol_rows(tiny_output)) == min(counts.index, key=lambda s: (-counts[s], s))
    symbol = sorted(everything["Symbol"].unique())[3]
    got = dash.load_symbol(tiny_output, symbol)
    want = everything[everything["Symbol"] == symbol].sort_values("Date")
    assert got["Date"].dt.strftime("%Y-%m-%d").tolist() == want["Date"].tolist()
    for col in ["Adj Close", "Volume", "vol_moving_avg", "adj_close_rolling_med"]:
        pd.testing.assert_series_equal(
            got[col].reset_index(drop=True), want[col].reset_index(drop=True), check_names=False, check_dtype=False
        )


def test_explorer_draws_out_of_sample_forecasts_on_the_day_they_forecast(tiny_output):
    model_dir = Layout.at(tiny_output).models_dir / latest_id(tiny_output)
    stored = pd.read_parquet(model_dir / "test_forecasts.parquet")
    app = dash.Dashboard(tiny_output)
    app.period_pick.value = "all"
    symbol = app.symbol_pick.value
    frame = dash.load_symbol(tiny_output, symbol)
    traces = {t.name: t for t in app.explorer_fig.data}
    assert list(traces["Volume"].y) == frame["Volume"].tolist()
    p50 = traces["P50 forecast (out of sample)"]
    assert len(p50.x) > 0
    volume_on = dict(zip(frame["Date"], frame["Volume"]))
    mine = stored[stored["Symbol"] == symbol]
    # Each forecast sits on the day whose Volume it forecast: the stored actual equals that day's Volume.
    by_p50 = dict(zip(mine["p50"], mine["actual_next"]))
    for day, value in zip(pd.to_datetime(list(p50.x)), p50.y):
        assert volume_on[day] == by_p50[value]
    low, high = traces["P10"], traces["P10–P90 interval"]
    assert all(lo <= mid <= hi for lo, mid, hi in zip(low.y, p50.y, high.y))
    app.period_pick.value = "test period"
    shown = pd.to_datetime(list(app.explorer_fig.data[2].x))
    assert shown.min() >= pd.to_datetime(list(p50.x)).min() - pd.Timedelta(days=7)
    assert shown.max() == frame["Date"].max()


def test_dashboard_widgets_and_a_new_model_without_reload(tiny_output, tmp_path):
    out = copy_output(tiny_output, tmp_path / "out")
    app = dash.Dashboard(out, holder=ModelHolder(out, check_interval=0))
    first = app.predict()
    assert first.ok and "volcast-volume" in app.result.value
    app.period_pick.value = "all"
    before = len(app.explorer_fig.data[0].x)
    assert app.symbols and before == len(dash.load_symbol(out, app.symbol_pick.value))
    app.period_pick.value = "1 year"
    assert 0 < len(app.explorer_fig.data[0].x) < before
    other = tmp_path / "other"
    from serve_helpers import build_output

    build_output(other, seed=5)
    new_id = publish_models_from(other, out)
    again = app.predict()
    assert again.model_id == new_id != first.model_id
    app.render_card()
    assert new_id in app.card_html.value
    app.render_forecast()
    assert new_id in app.forecast_html.value


def test_notebook_is_thin_and_runs_with_the_env_output_dir(tiny_output):
    path = NOTEBOOKS_DIR / "dashboard.ipynb"
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].source.strip() == 'output_dir = "../outputs/demo"'
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import ipywidgets" not in code and "def " not in code  # logic lives in volcast.dashboard
    import nbclient

    old = os.environ.get("VOLCAST_OUTPUT_DIR")
    os.environ["VOLCAST_OUTPUT_DIR"] = str(tiny_output)
    try:
        nbclient.NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
        ).execute()
    finally:
        if old is None:
            os.environ.pop("VOLCAST_OUTPUT_DIR")
        else:
            os.environ["VOLCAST_OUTPUT_DIR"] = old
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    widget_views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    # One widget output for the whole page (Dashboard.page): in Voilà each widget output waits for its
    # model on its own, and under load the later ones of several gave up with "model not found".
    assert len(widget_views) == 1


def test_the_page_is_one_widget_holding_the_four_panels_in_order(tiny_output):
    app = dash.Dashboard(tiny_output)
    panels = [c for c in app.page.children if c in (app.forecast, app.explorer, app.model_card, app.predictor)]
    assert panels == [app.forecast, app.explorer, app.model_card, app.predictor]
    headings = [c.value for c in app.page.children if c not in panels]
    assert len(headings) == 4 and all(h.startswith("<h2>") for h in headings)
    assert "Predict from the two features" in headings[3] and "Symbol explorer" in headings[1]


def test_output_dir_from_env(monkeypatch):
    monkeypatch.delenv("VOLCAST_OUTPUT_DIR", raising=False)
    assert dash.output_dir_from_env("../outputs/demo") == "../outputs/demo"
    monkeypatch.setenv("VOLCAST_OUTPUT_DIR", "/x/y")
    assert dash.output_dir_from_env("../outputs/demo") == "/x/y"
    assert Path(dash.output_dir_from_env("a")).is_absolute()
