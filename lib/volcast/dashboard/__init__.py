"""The Voilà dashboard's logic; ``notebooks/dashboard.ipynb`` only calls ``Dashboard(output_dir)``.

Four panels, each usable (and tested) without a browser:

* ticker forecast: pick a ticker, see tomorrow's volume (P50) with its P10-P90 interval and the inputs
  it used; the answer is the API's own (``volcast.serve``'s ``Predictor.forecast_json``, the bytes
  ``GET /forecast?symbol=`` answers with), on the model a ``ModelHolder`` serves;
* symbol explorer: the ticker's price, volume and both features, with the model's out-of-sample
  forecasts of the test period and their band drawn over actual volume (plotly: zoom, values on hover);
* model card: both models (task, forecast) and every reference on the same test rows, the interval's
  coverage, the learning curves;
* predictor: the two-feature form, checked and predicted by ``volcast.serve``'s own code, so it gives
  the same integer as ``/predict`` and explains bad input in the same words.

Files: ``render`` (HTML; every text from data is escaped there), ``charts`` (the explorer's plotly
figure, the card's PNGs), ``data`` (reading features and the model directory), ``app`` (the widgets).
"""

from __future__ import annotations

import os

from .app import (
    DEFAULT_PRICE_TEXT,
    DEFAULT_VOL_TEXT,
    NO_FEATURES,
    Dashboard,
    forecast_for,
    predict_text,
)
from .charts import (
    PERIODS,
    clip_period,
    comparison_png,
    explorer_figure,
    learning_curve_png,
)
from .data import (
    align_forecasts,
    bundle_of,
    default_symbol,
    interval_coverage,
    learning_curves,
    list_symbols,
    load_symbol,
    symbol_rows,
    test_forecasts,
)
from .render import (
    METRIC_LABELS,
    PREDICTOR_LABELS,
    PredictOutcome,
    breakdown_frame,
    breakdown_html,
    card_summary_html,
    coverage_html,
    esc,
    forecast_html,
    format_volume,
    inputs_frame,
    inputs_html,
    metrics_frame,
    metrics_html,
    outcome_html,
    symbol_note_html,
)


def output_dir_from_env(default: str) -> str:
    """The notebook's output dir: ``VOLCAST_OUTPUT_DIR`` (set by ``serve``) or the parameter cell's value."""
    return os.environ.get("VOLCAST_OUTPUT_DIR") or default


__all__ = [
    "DEFAULT_PRICE_TEXT",
    "DEFAULT_VOL_TEXT",
    "METRIC_LABELS",
    "NO_FEATURES",
    "PERIODS",
    "PREDICTOR_LABELS",
    "Dashboard",
    "PredictOutcome",
    "align_forecasts",
    "breakdown_frame",
    "breakdown_html",
    "bundle_of",
    "card_summary_html",
    "clip_period",
    "comparison_png",
    "coverage_html",
    "default_symbol",
    "esc",
    "explorer_figure",
    "forecast_for",
    "forecast_html",
    "format_volume",
    "inputs_frame",
    "inputs_html",
    "interval_coverage",
    "learning_curve_png",
    "learning_curves",
    "list_symbols",
    "load_symbol",
    "metrics_frame",
    "metrics_html",
    "outcome_html",
    "output_dir_from_env",
    "predict_text",
    "symbol_note_html",
    "symbol_rows",
    "test_forecasts",
]
