"""``Dashboard``: the widgets of the four panels and what happens when someone clicks (the only part
that needs ipywidgets). Each panel says what to do when its input does not exist yet.
"""

from __future__ import annotations

import html
import json

import pandas as pd

from volcast.config import PRICE_FEATURE, SYMBOL, VOL_FEATURE, Layout
from volcast.serve import (
    NO_MODEL_ERROR,
    InputError,
    ModelHolder,
    bounds_text,
    parse_predict_params,
)

from . import charts, data, render
from .render import PredictOutcome, esc, format_volume

# A mid-size stock: 1 M shares a day at $25.
DEFAULT_VOL_TEXT = "1000000"
DEFAULT_PRICE_TEXT = "25"
NO_FEATURES = "no features yet: run `python run_pipeline.py` first"
DEFAULT_PERIOD = "test period"


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
    extrapolated = bool(predictor.extrapolated_one(vol, price))  # the API's own range check
    return PredictOutcome(
        True, f"{format_volume(volume)} shares", volume, predictor.model_id, extrapolated=extrapolated
    )


def forecast_for(holder: ModelHolder, symbol: str) -> tuple[dict | None, str | None, object]:
    """(GET /forecast?symbol='s answer, or None; the reason there is none; the model bundle).

    The answer is the API's own bytes for the symbol (``Predictor.forecast_json``: the same lookup, the
    same upper-case retry, the same model_id), decoded; a refusal carries the API's message."""
    from volcast.serve.model import ForecastRefused

    predictor = holder.get()
    if predictor is None:
        return None, NO_MODEL_ERROR + (f" ({holder.error})" if holder.error else ""), None
    bundle = data.bundle_of(predictor)
    try:
        return json.loads(predictor.forecast_json(symbol)), None, bundle
    except ForecastRefused as err:
        return None, err.message, bundle


class Dashboard:
    """The panels for one output dir: ``.forecast``, ``.explorer``, ``.model_card``, ``.predictor``, and
    ``.page``: the four under their headings, the one widget the notebook shows."""

    def __init__(self, output_dir, holder: ModelHolder | None = None):
        import ipywidgets as w

        self.output_dir = Layout.at(output_dir).output_dir
        self.holder = holder or ModelHolder(self.output_dir)
        self.holder.refresh()
        rows = data.symbol_rows(self.output_dir)
        self.symbols = sorted(rows)
        self._frames: dict[str, pd.DataFrame] = {}

        # One ticker picker, shown in the forecast and explorer panels (two views of one widget).
        self.symbol_pick = w.Dropdown(
            options=self.symbols, value=data.default_symbol(rows), description="ticker", layout=w.Layout(width="320px")
        )
        self.symbol_pick.add_class("volcast-symbol")

        # Ticker forecast
        self.forecast_html = w.HTML()
        self.forecast_html.add_class("volcast-forecast-output")
        self.inputs_html = w.HTML()
        self.inputs_html.add_class("volcast-inputs-output")
        self.forecast = w.VBox([self.symbol_pick, self.forecast_html, self.inputs_html])

        # Symbol explorer
        self.period_pick = w.ToggleButtons(options=list(charts.PERIODS), value=DEFAULT_PERIOD, description="period")
        self.symbol_note = w.HTML()
        self.symbol_note.add_class("volcast-symbol-note")
        self.explorer_chart = w.Output()
        self.explorer_chart.add_class("volcast-explorer-chart")
        self.explorer_fig = None  # the go.Figure shown in explorer_chart
        self.explorer = w.VBox([w.HBox([self.symbol_pick, self.period_pick]), self.symbol_note, self.explorer_chart])

        # Model card
        self.card_html = w.HTML()
        self.card_html.add_class("volcast-card")
        self.compare_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.curve_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.card_refresh = w.Button(description="Reload model card", icon="refresh")
        self.card_refresh.on_click(lambda _: self.render_card())
        self.breakdown_html = w.HTML()
        self.breakdown_html.add_class("volcast-breakdown-output")
        self.model_card = w.VBox(
            [self.card_html, self.compare_image, self.breakdown_html, self.curve_image, self.card_refresh]
        )

        # Predictor form (the task contract: /predict)
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
            f"({esc(bounds_text(VOL_FEATURE))}); {PRICE_FEATURE}: median adjusted close of the same days "
            f"({esc(bounds_text(PRICE_FEATURE))}).</small>"
        )
        self.predictor = w.VBox([self.vol_box, self.price_box, help_text, self.button, self.result])
        if self.holder.current is None:
            self.result.value = render.outcome_html(PredictOutcome(False, NO_MODEL_ERROR))

        # The whole dashboard is ONE widget, displayed by the notebook in one cell. In Voilà each widget
        # output asks the page's widget manager for its model before the kernel has sent the models, and
        # ipywidgets 8.1.9 (jupyterlab-manager 5.0.16) polls for it for 2 s of wall-clock time; a main
        # thread busy longer than that (plotly drawing the explorer on a loaded machine) made the outputs
        # still polling give up with "model not found" although their models had arrived. With one output
        # there is one look-up, and nothing draws until it has succeeded.
        sections = (
            ("Tomorrow's volume for a ticker: forecast, interval and the inputs it used", self.forecast),
            (
                "Symbol explorer: price, volume, both features, and the out-of-sample forecasts of the test period",
                self.explorer,
            ),
            (
                "Model card: both models against every reference on the same test rows, interval coverage, "
                "learning curves",
                self.model_card,
            ),
            ("Predict from the two features (the task's <code>/predict</code> contract)", self.predictor),
        )
        self.page = w.VBox([part for title, panel in sections for part in (w.HTML(f"<h2>{title}</h2>"), panel)])
        self.page.add_class("volcast-page")

        self.symbol_pick.observe(lambda _: self.render_symbol(), names="value")
        self.period_pick.observe(lambda _: self.render_explorer(), names="value")
        self.render_card()
        self.render_symbol()

    # -- predictor ---------------------------------------------------------------------------

    def predict(self) -> PredictOutcome:
        outcome = predict_text(self.holder, self.vol_box.value, self.price_box.value)
        self.result.value = render.outcome_html(outcome)
        return outcome

    # -- ticker: forecast + explorer ---------------------------------------------------------

    def _frame(self, symbol: str) -> pd.DataFrame:
        if symbol not in self._frames:
            if len(self._frames) > 32:
                self._frames.clear()
            self._frames[symbol] = data.load_symbol(self.output_dir, symbol)
        return self._frames[symbol]

    def render_symbol(self) -> None:
        self.render_forecast()
        self.render_explorer()

    def render_forecast(self) -> dict | None:
        symbol = self.symbol_pick.value
        if symbol is None:
            self.forecast_html.value = render.message_html(NO_FEATURES)
            self.inputs_html.value = ""
            return None
        answer, problem, bundle = forecast_for(self.holder, symbol)
        if answer is None:
            self.forecast_html.value = render.message_html(problem, error=True)
            self.inputs_html.value = ""
            return None
        name = data.security_name(self._frame(symbol))
        self.forecast_html.value = render.forecast_html(
            answer, name, answer["model_id"], data.interval_coverage(bundle.card)
        )
        latest = bundle.latest[bundle.latest[SYMBOL] == answer["symbol"]]
        inputs = list(bundle.forecaster.inputs) if bundle.forecaster is not None else []
        if len(latest) and inputs:
            self.inputs_html.value = (
                f"<small>The inputs of this forecast: {esc(symbol)}'s row of {esc(answer['as_of'])}, the last "
                "in the data (volumes as log ratios to the 30-day mean, and the shares they stand for).</small>"
                + render.inputs_html(render.inputs_frame(latest.iloc[0].to_dict(), inputs))
            )
        else:
            self.inputs_html.value = ""
        return answer

    def render_explorer(self) -> None:
        symbol = self.symbol_pick.value
        if symbol is None:
            self.symbol_note.value = render.message_html(NO_FEATURES)
            return
        frame = self._frame(symbol)
        predictor = self.holder.get()
        model_dir = getattr(predictor, "model_dir", None) if predictor is not None else None
        forecasts = data.align_forecasts(frame, data.test_forecasts(model_dir, symbol))
        self.symbol_note.value = render.symbol_note_html(
            symbol,
            len(self.symbols),
            int(frame[VOL_FEATURE].notna().sum()),
            len(frame),
            len(forecasts) if model_dir is not None else None,
        )
        shown, shown_fc = charts.clip_period(frame, forecasts, self.period_pick.value)
        fig = charts.explorer_figure(shown, shown_fc, symbol, data.security_name(frame))
        self.explorer_fig = fig
        show_figure(self.explorer_chart, fig)

    # -- model card --------------------------------------------------------------------------

    def render_card(self) -> None:
        predictor = self.holder.get()
        card = predictor.card if predictor is not None else None
        if predictor is None:
            self.card_html.value = f"<p>{html.escape(NO_MODEL_ERROR)}</p>"
            self.breakdown_html.value = ""
        else:
            self.card_html.value = (
                render.card_summary_html(predictor.model_id, card)
                + render.metrics_html(card)
                + render.coverage_html(data.interval_coverage(card))
            )
            self.breakdown_html.value = render.breakdown_html(card)
        show_png(self.compare_image, charts.comparison_png(render.metrics_frame(card)) if card else None)
        show_png(
            self.curve_image,
            charts.learning_curve_png(data.learning_curves(predictor.model_dir)) if predictor else None,
        )


def show_figure(output, fig) -> None:
    """A plotly figure in an Output widget, drawn by plotly's own mime renderer (the jupyterlab-plotly
    extension that ships with plotly): zoom and values on hover, plotly.js loaded once as a static file.
    Not a FigureWidget: in Voilà its trace updates did not reach the page, and each one sends plotly's
    5 MB bundle over the kernel's websocket on every page load."""
    bundle = {"application/vnd.plotly.v1+json": json.loads(fig.to_json()), "text/plain": "<plotly figure>"}
    output.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


def show_png(image, png: bytes | None) -> None:
    """A PNG in an Image widget at its own pixel width (the default stretches it), or hide the widget."""
    if not png:
        image.layout.display = "none"
        return
    image.value = png
    image.layout.width = f"{int.from_bytes(png[16:20], 'big')}px"  # IHDR width
    image.layout.display = None


__all__ = [
    "DEFAULT_PRICE_TEXT",
    "DEFAULT_VOL_TEXT",
    "NO_FEATURES",
    "Dashboard",
    "forecast_for",
    "predict_text",
    "show_figure",
    "show_png",
]
