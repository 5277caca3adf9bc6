# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # volcast · next-day trading volume
#
# Pick a ticker and see how many shares it will trade on the next trading day, with a P10–P90 interval and the inputs the forecast used; explore its history with the model's out-of-sample forecasts of the test period; compare both models with every reference; or predict from the two 30-day features. The JSON API serves the same model and the same numbers (`GET /forecast?symbol=…`, `GET /predict?vol_moving_avg=…&adj_close_rolling_med=…`). Charts zoom (drag; double-click resets) and show values on hover.

# %% tags=["parameters"]
output_dir = "../outputs/demo"

# %%
from volcast.dashboard import Dashboard, output_dir_from_env

# `serve` passes its --output-dir in VOLCAST_OUTPUT_DIR (Voilà takes no notebook parameters).
output_dir = output_dir_from_env(output_dir)
app = Dashboard(output_dir)

# %%
# All four panels (ticker forecast, symbol explorer, model card, predictor) as ONE widget output: in Voilà,
# a page with several widget outputs could lose the later ones under load ("model not found", see
# volcast/dashboard/app.py).
app.page
