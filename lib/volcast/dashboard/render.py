"""The dashboard's HTML: pure functions from values to markup.

Every text that comes from data or from an error (tickers, security names, model ids, card fields,
messages) goes through ``esc`` before it reaches markup: a ticker file may be named like a tag
(issue 14, finding 6). Numbers are formatted here, never taken as text.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from volcast.config import LOG_VOL_MEAN30, PRICE_FEATURE, VOL_FEATURE

METRIC_LABELS = {"mae": "MAE (shares)", "rmse": "RMSE (shares)", "r2": "R²", "medape": "median APE"}
# Card names of the predictors, in the order the comparison lists them.
PREDICTOR_LABELS = {
    "forecast": "forecast model (P50, all inputs)",
    "model": "task model (the two API features)",
    "har": "reference: HAR (log 1-, 5-, 22-day means)",
    "ewma": "reference: EWMA of log volume",
    "baseline_today_volume": "reference: tomorrow = today's Volume",
    "baseline_vol_moving_avg": "reference: tomorrow = vol_moving_avg",
}
TABLE_STYLE = (
    "<style>.volcast-table td, .volcast-table th {padding: 3px 14px; text-align: right}"
    " .volcast-table tbody th, .volcast-table td.volcast-left {text-align: left}</style>"
)


def esc(value) -> str:
    """Any value as inert HTML text (quotes too: the result may sit in an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def format_volume(volume) -> str:
    """1234567 -> '1,234,567'."""
    return f"{int(volume):,}"


def predictor_label(name: str) -> str:
    return PREDICTOR_LABELS.get(name, name)


# ---------------------------------------------------------------------------------------------
# Predictor form


@dataclass(frozen=True)
class PredictOutcome:
    ok: bool
    message: str  # the sentence to show
    volume: int | None = None
    model_id: str | None = None
    field: str | None = None
    extrapolated: bool = False


def outcome_html(outcome: PredictOutcome) -> str:
    if outcome.ok:
        note = (
            (
                '<br><small class="volcast-extrapolated">an input lies outside the range the model was '
                "trained on: this answer is an extrapolation</small>"
            )
            if outcome.extrapolated
            else ""
        )
        return (
            '<div class="volcast-result">Predicted next-day volume: '
            f'<b><span class="volcast-volume" style="font-size:1.4em">{format_volume(outcome.volume)}</span></b> shares'
            f'<br><small>model <code class="volcast-model-id">{esc(outcome.model_id)}</code></small>{note}</div>'
        )
    return f'<div class="volcast-error" style="color:#b00020">{esc(outcome.message)}</div>'


def message_html(text: str, error: bool = False) -> str:
    style = ' style="color:#b00020"' if error else ""
    return f'<p class="{"volcast-error" if error else "volcast-note"}"{style}>{esc(text)}</p>'


# ---------------------------------------------------------------------------------------------
# Ticker forecast


def _describe_input(name: str) -> str:
    if name == LOG_VOL_MEAN30:
        return "log1p of the mean Volume of the last 30 days"
    if m := re.fullmatch(r"vol_lr_(\d+)", name):
        k = int(m.group(1))
        return "today's Volume" if k == 0 else f"Volume {k} trading day{'s' if k > 1 else ''} back"
    if m := re.fullmatch(r"vol_mean(\d+)_lr", name):
        return f"mean Volume of the last {m.group(1)} days"
    if m := re.fullmatch(r"vol_med(\d+)_lr", name):
        return f"median Volume of the last {m.group(1)} days"
    if m := re.fullmatch(r"vol_std(\d+)", name):
        return f"std. dev. of log Volume over the last {m.group(1)} days"
    return {
        "return_1d": "daily return, log(Adj Close / previous)",
        "range_hl": "(High - Low) / Close",
        "weekday": "weekday (0 = Monday)",
        "dist_52w_high": "log(Adj Close / 52-week high)",
        "days_since_zero_volume": "trading days since the last zero-volume day",
        "next_weekday": "weekday of the day forecast (0 = Monday)",
        "next_gap_days": "calendar days until the day forecast",
        "next_expiration": "the day forecast is an options expiration (1 monthly, 2 quarterly)",
        "next_month_end": "the day forecast ends a month (1) or a quarter (2)",
        "next_pre_holiday": "a holiday follows the day forecast (1 = yes)",
        "log_price_med": "log of the 30-day median Adj Close (price level)",
        "market_vol_lr": "the market's total Volume that day, log ratio to its 30-day mean",
        VOL_FEATURE: "mean Volume of the last 30 days",
        PRICE_FEATURE: "median Adj Close of the last 30 days",
    }.get(name, "")


def _is_volume_ratio(name: str) -> bool:
    return bool(re.fullmatch(r"vol_lr_\d+|vol_mean\d+_lr|vol_med\d+_lr", name))


def inputs_frame(row: dict, inputs) -> pd.DataFrame:
    """The inputs one forecast used: name, meaning, the model's value and, for a volume given as a log
    ratio to the 30-day mean, the shares it stands for (``expm1(value + log_vol_mean30)``)."""
    base = row.get(LOG_VOL_MEAN30)
    rows = []
    for name in inputs:
        value = row.get(name)
        value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        shares = None
        if value is not None and base is not None and np.isfinite(base):
            if _is_volume_ratio(name):
                shares = float(np.expm1(value + base))
            elif name == LOG_VOL_MEAN30:
                shares = float(np.expm1(value))
        rows.append({"input": name, "meaning": _describe_input(name), "value": value, "shares": shares})
    return pd.DataFrame(rows, columns=["input", "meaning", "value", "shares"])


def inputs_html(frame: pd.DataFrame) -> str:
    body = []
    for r in frame.itertuples(index=False):
        value = "–" if r.value is None or pd.isna(r.value) else f"{r.value:,.4g}"
        shares = "" if r.shares is None or pd.isna(r.shares) else f"{r.shares:,.0f}"
        body.append(
            f'<tr><td class="volcast-left"><code>{esc(r.input)}</code></td>'
            f'<td class="volcast-left">{esc(r.meaning)}</td><td>{value}</td><td>{shares}</td></tr>'
        )
    return (
        TABLE_STYLE + '<table class="volcast-table volcast-inputs"><thead><tr><th>input</th><th>meaning</th>'
        "<th>value</th><th>≈ shares</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
    )


def forecast_html(answer: dict, security_name: str | None, model_id: str, coverage: float | None = None) -> str:
    """One ticker's forecast (the API's answer, unchanged) as a short card."""
    low, high = answer["interval"]["low"], answer["interval"]["high"]
    name = f" · {esc(security_name)}" if security_name else ""
    cov = f" (test coverage of this interval: {coverage:.1%})" if coverage is not None else ""
    return (
        f'<div class="volcast-forecast"><b class="volcast-forecast-symbol">{esc(answer["symbol"])}</b>{name}<br>'
        f'Next trading day after <span class="volcast-as-of">{esc(answer["as_of"])}</span>: '
        f'<b><span class="volcast-forecast-volume" style="font-size:1.4em">{format_volume(answer["volume"])}</span></b>'
        f' shares (P50)<br>P10–P90 interval: <span class="volcast-interval-low">{format_volume(low)}</span> – '
        f'<span class="volcast-interval-high">{format_volume(high)}</span> shares{cov}<br>'
        f'<small>model <code class="volcast-forecast-model-id">{esc(model_id)}</code></small></div>'
    )


# ---------------------------------------------------------------------------------------------
# Model card


def metrics_frame(card: dict) -> pd.DataFrame | None:
    """card["metrics"] ({predictor: {mae, rmse, r2, medape}}) -> one row per predictor (labelled, in
    PREDICTOR_LABELS order, others after), metric columns."""
    metrics = card.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        return None
    metrics = {k: v for k, v in metrics.items() if isinstance(v, dict) and "mae" in v}
    if not metrics:
        return None
    order = [k for k in PREDICTOR_LABELS if k in metrics] + [k for k in metrics if k not in PREDICTOR_LABELS]
    frame = pd.DataFrame({predictor_label(name): metrics[name] for name in order}).T
    frame = frame[[c for c in METRIC_LABELS if c in frame.columns]].astype(float)
    base = (
        frame.loc[predictor_label("baseline_vol_moving_avg")]
        if predictor_label("baseline_vol_moving_avg") in frame.index
        else None
    )
    if base is not None:
        for col in ("mae", "medape"):
            if col in frame and base[col]:
                frame[f"{col}_ratio"] = frame[col] / base[col]
    return frame


def metrics_html(card: dict) -> str:
    frame = metrics_frame(card)
    if frame is None:
        return "<p>This model's card has no test metrics.</p>"
    labels = dict(METRIC_LABELS, mae_ratio="MAE / vol_moving_avg", medape_ratio="median APE / vol_moving_avg")
    shown = pd.DataFrame(index=frame.index)
    for col in frame.columns:
        fmt = (lambda v: f"{v:,.0f}") if col in ("mae", "rmse") else (lambda v: f"{v:.3f}")
        shown[labels[col]] = [("–" if pd.isna(v) else fmt(v)) for v in frame[col]]
    # to_html escapes index and cells (escape=True): predictor names from a card are data too.
    return TABLE_STYLE + shown.to_html(classes="volcast-table volcast-metrics", border=0, escape=True)


def card_summary_html(model_id: str, card: dict) -> str:
    target = (card.get("target") or {}).get("description", "")
    split = card.get("split") or {}
    rows = card.get("rows") or {}
    parts = [f"<b>model</b> <code>{esc(model_id)}</code>"]
    if card.get("created"):
        parts.append(f"trained {esc(card['created'])}")
    if target:
        parts.append(f"target: {esc(target)}")
    if split.get("kind"):
        parts.append(
            f"split: {esc(split['kind'])}"
            + (f", test from {esc(split['test_start'])}" if split.get("test_start") else "")
        )
    if isinstance(rows.get("test"), (int, float)):
        parts.append(f"{int(rows['test']):,} test rows")
    return "<p>" + " · ".join(parts) + "</p>"


def breakdown_frame(records, key: str) -> pd.DataFrame | None:
    """card["by_year"] / card["by_decile"] -> per group: rows, each predictor's MAE as a ratio to the
    vol_moving_avg reference's MAE in that group, and the interval's coverage when the card has it."""
    if not isinstance(records, list) or not records:
        return None
    frame = pd.DataFrame(records)
    base = "mae_baseline_vol_moving_avg"
    if key not in frame or base not in frame:
        return None
    out = pd.DataFrame({key: frame[key], "rows": frame["rows"]})
    names = [k for k in PREDICTOR_LABELS if f"mae_{k}" in frame and k != "baseline_vol_moving_avg"]
    for name in names:
        out[predictor_label(name)] = frame[f"mae_{name}"] / frame[base].where(frame[base] > 0)
    if "coverage_p10_p90" in frame:
        out["P10–P90 coverage"] = frame["coverage_p10_p90"]
    return out


def breakdown_html(card: dict) -> str:
    """The tables by year and by volume decile (MAE / vol_moving_avg per predictor)."""
    parts = []
    for records, key, title in (
        (card.get("by_year"), "year", "by year"),
        (card.get("by_decile"), "decile", "by decile of the actual volume (1 = lowest)"),
    ):
        frame = breakdown_frame(records, key)
        if frame is None:
            continue
        shown = pd.DataFrame({key: frame[key].astype(str), "rows": [f"{int(v):,}" for v in frame["rows"]]})
        for col in frame.columns[2:]:
            fmt = "{:.1%}" if col == "P10–P90 coverage" else "{:.3f}"
            shown[col] = ["–" if pd.isna(v) else fmt.format(v) for v in frame[col]]
        parts.append(
            f"<p><small>MAE / vol_moving_avg's MAE, {esc(title)}:</small></p>"
            + shown.to_html(classes="volcast-table volcast-breakdown", border=0, escape=True, index=False)
        )
    return TABLE_STYLE + "".join(parts) if parts else ""


def coverage_html(coverage: float | None, nominal: float | None = 0.8) -> str:
    if coverage is None:
        return "<p><small>This model has no prediction interval (no forecast model in its card).</small></p>"
    return (
        f'<p class="volcast-coverage">P10–P90 interval of the forecast model: <b>{coverage:.1%}</b> of the '
        f"test rows fell inside it (nominal {nominal:.0%}).</p>"
    )


def symbol_note_html(symbol: str, n_symbols: int, complete: int, total: int, forecasts: int | None) -> str:
    fc = (
        f"; {forecasts:,} out-of-sample forecasts of the test period"
        if forecasts
        else "; no out-of-sample forecasts for it in this model"
        if forecasts == 0
        else ""
    )
    return (
        f"<small>{n_symbols:,} tickers; {esc(symbol)}: {complete:,} of {total:,} days have both features "
        f"(a ticker's first days have none: the window is not full yet){fc}.</small>"
    )


__all__ = [
    "METRIC_LABELS",
    "PREDICTOR_LABELS",
    "PredictOutcome",
    "breakdown_frame",
    "breakdown_html",
    "card_summary_html",
    "coverage_html",
    "esc",
    "forecast_html",
    "format_volume",
    "inputs_frame",
    "inputs_html",
    "message_html",
    "metrics_frame",
    "metrics_html",
    "outcome_html",
    "predictor_label",
    "symbol_note_html",
]
