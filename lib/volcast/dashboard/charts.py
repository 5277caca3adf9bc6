"""The dashboard's charts (pure: data in, a figure or PNG bytes out).

The symbol explorer, the chart people explore, is a plotly figure (``app.show_figure``): zoom (drag;
double-click resets) and values on hover. Text from data (a ticker, a security name) is
HTML-escaped before it becomes its title: plotly renders a subset of HTML tags in titles and turns
entities back into the literal characters. The model card's two charts are static PNGs (matplotlib's
object API, no pyplot state): the card's tables already carry their numbers.
"""

from __future__ import annotations

import io

import numpy as np
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
    fig.update_layout(
        title=dict(text=title, x=0.01),
        height=height,
        margin=dict(l=60, r=20, t=50, b=40),
        hovermode="x unified",
        legend=dict(orientation="h", y=-0.12),
        template="plotly_white",
    )
    return fig


def explorer_title(symbol: str, name: str | None, days: int) -> str:
    return f"{esc(symbol)}{' · ' + esc(name) if name else ''}: {days:,} trading days"


def explorer_figure(frame: pd.DataFrame, forecasts: pd.DataFrame, symbol: str, name: str | None = None) -> go.Figure:
    """Price and its 30-day median above; below, Volume, vol_moving_avg and the out-of-sample forecasts
    (P50 line inside the P10-P90 band) on the days they forecast."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.4, 0.6])
    x = frame[DATE] if len(frame) else []
    lines = (  # column, row, line style, hover format
        ("Adj Close", 1, dict(width=1), "%{y:,.2f}"),
        (PRICE_FEATURE, 1, dict(width=1.6), "%{y:,.2f}"),
        ("Volume", 2, dict(width=0.8, color="#7f7f7f"), "%{y:,.0f}"),
        (VOL_FEATURE, 2, dict(width=1.6), "%{y:,.0f}"),
    )
    for column, row, line, hover in lines:
        fig.add_trace(
            go.Scatter(x=x, y=frame.get(column, []), name=column, line=line, hovertemplate=hover), row=row, col=1
        )
    fx = forecasts[DATE] if len(forecasts) else []
    fig.add_trace(
        go.Scatter(
            x=fx,
            y=forecasts.get("p10", []),
            name="P10",
            line=dict(width=0),
            mode="lines",
            showlegend=False,
            hovertemplate="%{y:,.0f}",
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=fx,
            y=forecasts.get("p90", []),
            name="P90",
            line=dict(width=0),
            mode="lines",
            fill="tonexty",
            fillcolor=BAND,
            legendgroup="band",
            showlegend=True,
            hovertemplate="%{y:,.0f}",
        ),
        row=2,
        col=1,
    )
    fig.data[-1].name = "P10–P90 interval"
    fig.add_trace(
        go.Scatter(
            x=fx,
            y=forecasts.get("p50", []),
            name="P50 forecast (out of sample)",
            line=dict(width=1.4, color=FORECAST),
            hovertemplate="%{y:,.0f}",
        ),
        row=2,
        col=1,
    )
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


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def comparison_png(frame: pd.DataFrame | None) -> bytes | None:
    """Every predictor's MAE and median APE as a ratio to the vol_moving_avg reference (1 = as good)."""
    from matplotlib.figure import Figure

    if frame is None or "mae_ratio" not in frame:
        return None
    cols = [c for c in ("mae_ratio", "medape_ratio") if c in frame]
    fig = Figure(figsize=(7.5, 0.45 * len(frame) * len(cols) + 1.2))
    ax = fig.subplots()
    pos = np.arange(len(frame))
    height = 0.8 / len(cols)
    for k, (col, label) in enumerate(zip(cols, ("MAE", "median APE"))):
        bars = ax.barh(pos + k * height, frame[col], height=height, label=label)
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    ax.set_yticks(pos + height * (len(cols) - 1) / 2, list(frame.index))  # labels are text, never markup
    ax.invert_yaxis()
    ax.axvline(1.0, ls=":", c="#555")
    ax.set_xlabel("ratio to 'tomorrow = vol_moving_avg' (lower is better)")
    ax.set_title("every predictor on the same test rows")
    ax.legend(loc="lower right")
    return png(fig)


def learning_curve_png(curves: dict[str, pd.DataFrame]) -> bytes | None:
    """Train and validation loss by iteration, one panel per model (their losses differ in kind and scale)."""
    from matplotlib.figure import Figure

    if not curves:
        return None
    fig = Figure(figsize=(5 * len(curves), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(curves)))
    for ax, (model, curve) in zip(axes, curves.items()):
        metric = str(curve["metric"].iloc[0]) if "metric" in curve and len(curve) else "loss"
        for col, part in (("train_loss", "train (fitted rows)"), ("validation_loss", "validation (later dates)")):
            if col in curve and curve[col].notna().any():
                ax.plot(curve["iteration"], curve[col], label=part)
        ax.set_title(predictor_label(model), fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric.split(":")[0])
        ax.legend()
    return png(fig)


__all__ = [
    "EXPLORER_TRACES",
    "PERIODS",
    "clip_period",
    "comparison_png",
    "explorer_figure",
    "explorer_title",
    "learning_curve_png",
    "png",
]
