"""The dashboard's charts as plotly figures (pure: data in, ``go.Figure`` out).

The app shows them as ``go.FigureWidget``s, so people can zoom (drag, double-click to reset) and read
values on hover. Text from data (a ticker, a security name) is HTML-escaped before it becomes a title:
plotly renders a subset of HTML tags in titles and turns entities back into the literal characters.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from volcast.config import DATE, PRICE_FEATURE, VOL_FEATURE

from .render import esc, predictor_label

BAND = "rgba(214, 39, 40, 0.16)"
FORECAST = "#d62728"
# Explorer traces, in a fixed order, so a new ticker only replaces their x and y.
EXPLORER_TRACES = ("Adj Close", PRICE_FEATURE, "Volume", VOL_FEATURE, "P10", "P90", "P50 forecast")
PERIODS = {"1 year": 365, "5 years": 5 * 365, "test period": "test", "all": None}


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01), height=height, margin=dict(l=60, r=20, t=50, b=40),
                      hovermode="x unified", legend=dict(orientation="h", y=-0.12), template="plotly_white")
    return fig


def explorer_title(symbol: str, name: str | None, days: int) -> str:
    return f"{esc(symbol)}{' · ' + esc(name) if name else ''}: {days:,} trading days"


def explorer_figure(frame: pd.DataFrame, forecasts: pd.DataFrame, symbol: str, name: str | None = None) -> go.Figure:
    """Price and its 30-day median above; below, Volume, vol_moving_avg and the out-of-sample forecasts
    (P50 line inside the P10-P90 band) on the days they forecast."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.4, 0.6])
    x = frame[DATE] if len(frame) else []
    fig.add_trace(go.Scatter(x=x, y=frame.get("Adj Close", []), name="Adj Close", line=dict(width=1),
                             hovertemplate="%{y:,.2f}"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=frame.get(PRICE_FEATURE, []), name=PRICE_FEATURE, line=dict(width=1.6),
                             hovertemplate="%{y:,.2f}"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=frame.get("Volume", []), name="Volume", line=dict(width=0.8, color="#7f7f7f"),
                             hovertemplate="%{y:,.0f}"), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=frame.get(VOL_FEATURE, []), name=VOL_FEATURE, line=dict(width=1.6),
                             hovertemplate="%{y:,.0f}"), row=2, col=1)
    fx = forecasts[DATE] if len(forecasts) else []
    fig.add_trace(go.Scatter(x=fx, y=forecasts.get("p10", []), name="P10", line=dict(width=0), mode="lines",
                             showlegend=False, hovertemplate="%{y:,.0f}"), row=2, col=1)
    fig.add_trace(go.Scatter(x=fx, y=forecasts.get("p90", []), name="P90", line=dict(width=0), mode="lines",
                             fill="tonexty", fillcolor=BAND, legendgroup="band", showlegend=True,
                             hovertemplate="%{y:,.0f}"), row=2, col=1)
    fig.data[-1].name = "P10–P90 interval"
    fig.add_trace(go.Scatter(x=fx, y=forecasts.get("p50", []), name="P50 forecast (out of sample)",
                             line=dict(width=1.4, color=FORECAST), hovertemplate="%{y:,.0f}"), row=2, col=1)
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="shares", row=2, col=1)
    return _layout(fig, explorer_title(symbol, name, len(frame)), 560)


def clip_period(frame: pd.DataFrame, forecasts: pd.DataFrame, period: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows a period button shows: the last year, 5 years, the test period (from the first
    out-of-sample forecast; everything when there is none) or all. Charts get only these rows, so the
    y axes fit what is shown; zooming goes further within them."""
    days = PERIODS[period]
    if days is None or not len(frame):
        return frame, forecasts
    if days == "test":
        if not len(forecasts):
            return frame, forecasts
        start = forecasts[DATE].min() - pd.Timedelta(days=7)
    else:
        start = frame[DATE].max() - pd.Timedelta(days=days)
    keep = frame[frame[DATE] >= start].reset_index(drop=True)
    return keep, forecasts[forecasts[DATE] >= start].reset_index(drop=True) if len(forecasts) else forecasts


def comparison_figure(frame: pd.DataFrame | None) -> go.Figure:
    """Every predictor's MAE and median APE as a ratio to the vol_moving_avg reference (1 = as good)."""
    fig = go.Figure()
    if frame is not None:
        for col, label in (("mae_ratio", "MAE"), ("medape_ratio", "median APE")):
            if col in frame:
                fig.add_trace(go.Bar(y=[esc(i) for i in frame.index], x=frame[col], name=label, orientation="h",
                                     hovertemplate="%{x:.3f}"))
    fig.add_vline(x=1.0, line_dash="dot", line_color="#555")
    fig.update_layout(barmode="group", xaxis_title="ratio to 'tomorrow = vol_moving_avg' (lower is better)")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "every predictor on the same test rows", 360)


def learning_curve_figure(curves: dict[str, pd.DataFrame]) -> go.Figure:
    """Train and validation loss by iteration, one panel per model (their losses differ in kind and scale)."""
    names = list(curves) or ["model"]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[esc(predictor_label(n)) for n in names])
    for i, model in enumerate(curves, start=1):
        curve = curves[model]
        metric = str(curve["metric"].iloc[0]) if "metric" in curve and len(curve) else "loss"
        for col, part, colour in (("train_loss", "train", "#1f77b4"), ("validation_loss", "validation", "#ff7f0e")):
            if col in curve and curve[col].notna().any():
                fig.add_trace(go.Scatter(x=curve["iteration"], y=curve[col], mode="lines", name=part,
                                         line=dict(color=colour), legendgroup=part, showlegend=i == 1,
                                         hovertemplate="%{y:.4g}"), row=1, col=i)
        fig.update_yaxes(title_text=esc(metric.split(":")[0]), row=1, col=i)
        fig.update_xaxes(title_text="iteration", row=1, col=i)
    return _layout(fig, "learning curves (validation = later dates, not fitted on)", 340)


__all__ = [
    "EXPLORER_TRACES",
    "PERIODS",
    "clip_period",
    "comparison_figure",
    "explorer_figure",
    "explorer_title",
    "learning_curve_figure",
]
