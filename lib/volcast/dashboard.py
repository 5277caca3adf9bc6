"""The Voilà dashboard's logic; ``notebooks/dashboard.ipynb`` only calls ``Dashboard(output_dir)``.

Three panels, each usable (and tested) without a browser:

* predictor: two text boxes and a Predict button. Input is checked by ``volcast.serve``'s own
  validation and predicted by the same ``ModelHolder``/``Predictor`` code as the JSON API, so the
  dashboard and the API give the same integer and explain bad input in the same words;
* model card: the test metrics of the model against both naive baselines, and the learning curve;
* symbol explorer: one ticker's Adj Close, Volume and both features over time, from
  ``DIR/data/features``.

Every panel says what to do when its input does not exist yet (no model, no features).
Charts are drawn with matplotlib's object API (no pyplot state) into PNG ``Image`` widgets.
"""
from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from volcast.config import PRICE_FEATURE, VOL_FEATURE, Layout
from volcast.serve import NO_MODEL_ERROR, InputError, ModelHolder, Predictor, bounds_text, parse_predict_params

# A mid-size stock: 1 M shares a day at $25.
DEFAULT_VOL_TEXT = "1000000"
DEFAULT_PRICE_TEXT = "25"
NO_FEATURES = "no features yet: run `python run_pipeline.py` first"
METRIC_LABELS = {"mae": "MAE (shares)", "rmse": "RMSE (shares)", "r2": "R²", "medape": "median APE"}
ROW_LABELS = {
    "model": "model",
    "baseline_vol_moving_avg": "baseline: tomorrow = vol_moving_avg",
    "baseline_today_volume": "baseline: tomorrow = today's Volume",
}
PERIODS = {"1 year": 365, "5 years": 5 * 365, "all": None}


def format_volume(volume: int) -> str:
    """1234567 -> '1,234,567'."""
    return f"{int(volume):,}"


# ---------------------------------------------------------------------------------------------
# Predictor


@dataclass(frozen=True)
class PredictOutcome:
    ok: bool
    message: str  # the sentence to show
    volume: int | None = None
    model_id: str | None = None
    field: str | None = None


def predict_text(holder: ModelHolder, vol_text: str, price_text: str) -> PredictOutcome:
    """The form's two texts -> a prediction or the reason there is none (the API's own words)."""
    try:
        vol, price = parse_predict_params({VOL_FEATURE: [vol_text], PRICE_FEATURE: [price_text]})
    except InputError as err:
        return PredictOutcome(False, str(err), field=err.field)
    predictor = holder.get()
    if predictor is None:
        return PredictOutcome(False, NO_MODEL_ERROR + (f" ({holder.error})" if holder.error else ""))
    volume = predictor.predict_one(vol, price)
    return PredictOutcome(True, f"{format_volume(volume)} shares", volume, predictor.model_id)


def outcome_html(outcome: PredictOutcome) -> str:
    if outcome.ok:
        return (
            '<div class="volcast-result">Predicted next-day volume: '
            f'<b><span class="volcast-volume" style="font-size:1.4em">{format_volume(outcome.volume)}</span></b> shares'
            f'<br><small>model <code class="volcast-model-id">{html.escape(outcome.model_id)}</code></small></div>'
        )
    return f'<div class="volcast-error" style="color:#b00020">{html.escape(outcome.message)}</div>'


# ---------------------------------------------------------------------------------------------
# Model card


def metrics_frame(card: dict) -> pd.DataFrame | None:
    """card["metrics"] ({"model": {...}, "baseline_...": {...}}) -> rows model/baselines, metric columns."""
    metrics = card.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        return None
    frame = pd.DataFrame({ROW_LABELS.get(name, name): values for name, values in metrics.items()}).T
    return frame[[c for c in METRIC_LABELS if c in frame.columns]].astype(float)


def metrics_html(card: dict) -> str:
    frame = metrics_frame(card)
    if frame is None:
        return "<p>This model's card has no test metrics.</p>"
    shown = pd.DataFrame(index=frame.index)
    for col in frame.columns:
        fmt = (lambda v: f"{v:,.0f}") if col in ("mae", "rmse") else (lambda v: f"{v:.3f}")
        shown[METRIC_LABELS[col]] = [("–" if pd.isna(v) else fmt(v)) for v in frame[col]]
    style = ("<style>.volcast-metrics td, .volcast-metrics th {padding: 3px 14px; text-align: right}"
             " .volcast-metrics tbody th {text-align: left}</style>")
    return style + shown.to_html(classes="volcast-metrics", border=0, escape=True)


def card_summary_html(predictor: Predictor) -> str:
    card = predictor.card
    target = (card.get("target") or {}).get("description", "")
    split = card.get("split") or {}
    rows = card.get("rows") or {}
    parts = [f"<b>model</b> <code>{html.escape(predictor.model_id)}</code>"]
    if card.get("created"):
        parts.append(f"trained {html.escape(str(card['created']))}")
    if target:
        parts.append(f"target: {html.escape(target)}")
    if split.get("kind"):
        parts.append(
            f"split: {html.escape(str(split['kind']))}"
            + (f", test from {html.escape(str(split['test_start']))}" if split.get("test_start") else "")
        )
    if rows.get("test"):
        parts.append(f"{int(rows['test']):,} test rows")
    return "<p>" + " · ".join(parts) + "</p>"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def learning_curve_png(model_dir: Path) -> bytes | None:
    from matplotlib.figure import Figure

    path = Path(model_dir) / "learning_curve.csv"
    if not path.exists():
        return None
    curve = pd.read_csv(path)
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    for col, label in (("train_loss", "train (fitted rows)"), ("validation_loss", "validation (later dates)")):
        if col in curve and curve[col].notna().any():
            ax.plot(curve["iteration"], curve[col], label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(str(curve["metric"].iloc[0]) if "metric" in curve and len(curve) else "loss")
    ax.set_title("learning curve")
    ax.legend()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Symbol explorer


def list_symbols(output_dir) -> list[str]:
    """Tickers in DIR/data/features (sorted), or [] when there are none yet."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    features = Layout.at(output_dir).features_dir
    if not features.is_dir():
        return []
    symbols: set[str] = set()
    for part in sorted(features.glob("*.parquet")):
        column = pq.read_table(part, columns=["Symbol"]).column("Symbol")
        symbols.update(pc.unique(column).to_pylist())
    return sorted(s for s in symbols if s is not None)


def load_symbol(output_dir, symbol: str) -> pd.DataFrame:
    """One ticker's rows (Date as datetime, Adj Close, Volume, both features), sorted by Date."""
    from .features import load_features

    frame = load_features(output_dir, symbol, columns=["Date", "Adj Close", "Volume", VOL_FEATURE, PRICE_FEATURE])
    frame["Date"] = pd.to_datetime(frame["Date"])
    return frame.sort_values("Date").reset_index(drop=True)


def symbol_png(frame: pd.DataFrame, symbol: str, days: int | None = None) -> bytes:
    from matplotlib.figure import Figure

    if days is not None and len(frame):
        frame = frame[frame["Date"] >= frame["Date"].max() - pd.Timedelta(days=days)]
    fig = Figure(figsize=(8, 5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(frame["Date"], frame["Adj Close"], lw=0.8, label="Adj Close")
    top.plot(frame["Date"], frame[PRICE_FEATURE], lw=1.4, label=PRICE_FEATURE)
    top.set_ylabel("price")
    top.set_title(f"{symbol}: {len(frame):,} trading days")
    top.legend(loc="upper left")
    bottom.plot(frame["Date"], frame["Volume"], lw=0.6, alpha=0.7, label="Volume")
    bottom.plot(frame["Date"], frame[VOL_FEATURE], lw=1.4, label=VOL_FEATURE)
    bottom.set_ylabel("shares")
    bottom.legend(loc="upper left")
    fig.autofmt_xdate()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Widgets (the only part that needs ipywidgets)


def _show_png(image, png: bytes) -> None:
    """Put a PNG in an Image widget at its own pixel width (the default stretches it to the page)."""
    image.value = png
    image.layout.width = f"{int.from_bytes(png[16:20], 'big')}px"  # IHDR width
    image.layout.display = None


class Dashboard:
    """All three panels for one output dir: ``.predictor``, ``.model_card``, ``.explorer`` widgets."""

    def __init__(self, output_dir, holder: ModelHolder | None = None):
        import ipywidgets as w

        self.output_dir = Layout.at(output_dir).output_dir
        self.holder = holder or ModelHolder(self.output_dir)
        self.holder.refresh()

        # Predictor form
        # continuous_update=False: a box sends its value once, when it loses focus (which clicking
        # Predict does first), so the click can never overtake a throttled stream of keystrokes.
        box = dict(continuous_update=False, style={"description_width": "170px"}, layout=w.Layout(width="380px"))
        self.vol_box = w.Text(value=DEFAULT_VOL_TEXT, description=VOL_FEATURE, placeholder="e.g. 1000000", **box)
        self.price_box = w.Text(value=DEFAULT_PRICE_TEXT, description=PRICE_FEATURE, placeholder="e.g. 25", **box)
        self.vol_box.add_class("volcast-vol")
        self.price_box.add_class("volcast-price")
        self.button = w.Button(description="Predict", button_style="primary", icon="chart-line")
        self.button.add_class("volcast-predict")
        self.result = w.HTML(value="")
        self.result.add_class("volcast-output")
        self.button.on_click(lambda _: self.predict())
        help_text = w.HTML(
            f"<small>{VOL_FEATURE}: mean daily volume of the last 30 trading days, in shares "
            f"({bounds_text(VOL_FEATURE)}); {PRICE_FEATURE}: median adjusted close of the same days "
            f"({bounds_text(PRICE_FEATURE)}).</small>"
        )
        self.predictor = w.VBox([self.vol_box, self.price_box, help_text, self.button, self.result])
        if self.holder.current is None:
            self.result.value = outcome_html(PredictOutcome(False, NO_MODEL_ERROR))

        # Model card
        self.card_html = w.HTML()
        self.curve_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.card_refresh = w.Button(description="Reload model card", icon="refresh")
        self.card_refresh.on_click(lambda _: self.render_card())
        self.model_card = w.VBox([self.card_html, self.curve_image, self.card_refresh])
        self.render_card()

        # Symbol explorer
        self.symbols = list_symbols(self.output_dir)
        self.symbol_pick = w.Dropdown(options=self.symbols, description="ticker", value=self.symbols[0] if self.symbols else None)
        self.symbol_pick.add_class("volcast-symbol")
        self.period_pick = w.ToggleButtons(options=list(PERIODS), value="5 years", description="period")
        self.symbol_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.symbol_note = w.HTML()
        self.symbol_note.add_class("volcast-symbol-note")
        self.symbol_pick.observe(lambda _: self.render_symbol(), names="value")
        self.period_pick.observe(lambda _: self.render_symbol(), names="value")
        self.explorer = w.VBox([w.HBox([self.symbol_pick, self.period_pick]), self.symbol_note, self.symbol_image])
        self.render_symbol()

    def predict(self) -> PredictOutcome:
        outcome = predict_text(self.holder, self.vol_box.value, self.price_box.value)
        self.result.value = outcome_html(outcome)
        return outcome

    def render_card(self) -> None:
        predictor = self.holder.get()
        if predictor is None:
            self.card_html.value = f"<p>{html.escape(NO_MODEL_ERROR)}</p>"
            self.curve_image.layout.display = "none"
            return
        self.card_html.value = card_summary_html(predictor) + metrics_html(predictor.card)
        png = learning_curve_png(predictor.model_dir) if predictor.model_dir else None
        if png:
            _show_png(self.curve_image, png)
        else:
            self.curve_image.layout.display = "none"

    def render_symbol(self) -> None:
        if not self.symbols:
            self.symbol_note.value = f"<p>{html.escape(NO_FEATURES)}</p>"
            self.symbol_image.layout.display = "none"
            return
        symbol = self.symbol_pick.value
        frame = load_symbol(self.output_dir, symbol)
        complete = frame[VOL_FEATURE].notna()
        self.symbol_note.value = (
            f"<small>{len(self.symbols):,} tickers; "
            f"{html.escape(symbol)}: {int(complete.sum()):,} of {len(frame):,} days have both features "
            "(a ticker's first days have none: the window is not full yet).</small>"
        )
        _show_png(self.symbol_image, symbol_png(frame, symbol, PERIODS[self.period_pick.value]))


def output_dir_from_env(default: str) -> str:
    """The notebook's output dir: ``VOLCAST_OUTPUT_DIR`` (set by ``serve``) or the parameter cell's value."""
    return os.environ.get("VOLCAST_OUTPUT_DIR") or default


__all__ = [
    "Dashboard",
    "PredictOutcome",
    "predict_text",
    "outcome_html",
    "format_volume",
    "metrics_frame",
    "metrics_html",
    "learning_curve_png",
    "list_symbols",
    "load_symbol",
    "symbol_png",
    "output_dir_from_env",
]
