"""Issue 14, finding 6: text from data (tickers, security names, error texts) never reaches the page as markup.

The browser half (the same output dir in headless Chromium, no alert) is in test_dashboard_browser.py.
"""

from __future__ import annotations

import html

import pytest

from dashboard_helpers import HOSTILE_MARKERS, HOSTILE_NAME, HOSTILE_SYMBOL, build_hostile_output
from volcast import dashboard as dash


@pytest.fixture(scope="module")
def hostile_output(tmp_path_factory):
    return build_hostile_output(tmp_path_factory.mktemp("hostile"))


def page_texts(widget) -> list[str]:
    """Every string a widget tree hands the browser as HTML or as chart text."""
    import ipywidgets as w

    out = []
    if isinstance(widget, (w.HTML, w.HTMLMath, w.Label)):
        out.append(widget.value)
    if getattr(widget, "description_allow_html", False):
        out.append(widget.description)
    if isinstance(widget, w.Output):  # the explorer's plotly figure: title, trace names, hover templates
        out.append(repr(widget.outputs))
    for child in getattr(widget, "children", ()):
        out.extend(page_texts(child))
    return out


def assert_inert(texts) -> None:
    for text in texts:
        for marker in HOSTILE_MARKERS:
            assert marker not in text, (marker, text[:300])


def test_the_hostile_files_went_through_the_pipeline(hostile_output):
    # The probe is only meaningful if the hostile ticker really is in the data the dashboard reads.
    assert HOSTILE_SYMBOL in dash.list_symbols(hostile_output)


def test_dashboard_shows_a_hostile_ticker_and_name_as_text(hostile_output):
    app = dash.Dashboard(hostile_output)
    app.symbol_pick.value = HOSTILE_SYMBOL
    panels = [app.forecast, app.explorer, app.model_card, app.predictor]
    texts = [t for panel in panels for t in page_texts(panel)]
    assert_inert(texts)
    assert any(html.escape(HOSTILE_SYMBOL) in t for t in texts)  # still shown, as literal text
    assert html.escape(HOSTILE_NAME) in app.forecast_html.value  # its security name too
    assert app.explorer_fig.layout.title.text.startswith(
        html.escape(HOSTILE_SYMBOL) + " · " + html.escape(HOSTILE_NAME)
    )


def test_render_functions_escape_what_they_are_given():
    hostile = "<img src=x onerror=alert(1)>"
    bad = dash.outcome_html(dash.PredictOutcome(False, f"unknown symbol {hostile}"))
    ok = dash.outcome_html(dash.PredictOutcome(True, "", 5, hostile))
    card = {
        "metrics": {hostile: {"mae": 1.0, "rmse": 2.0, "r2": 0.5, "medape": 0.1}},
        "created": hostile,
        "target": {"description": hostile},
        "split": {"kind": hostile, "test_start": hostile},
    }
    table = dash.metrics_html(card)
    for text in (bad, ok, table):
        assert_inert([text])
        assert html.escape(hostile) in text
