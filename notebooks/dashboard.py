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
# Predict a ticker's next-day volume from its 30-day features, see how the current model compares with the naive baselines, and explore the data it was trained on. The JSON API serves the same model (`GET /predict?vol_moving_avg=…&adj_close_rolling_med=…`).

# %% tags=["parameters"]
output_dir = "../outputs/demo"

# %%
from volcast.dashboard import Dashboard, output_dir_from_env

# `serve` passes its --output-dir in VOLCAST_OUTPUT_DIR (Voilà takes no notebook parameters).
output_dir = output_dir_from_env(output_dir)
app = Dashboard(output_dir)

# %% [markdown]
# ## Predict

# %%
app.predictor

# %% [markdown]
# ## Model card: test metrics against the baselines, learning curve

# %%
app.model_card

# %% [markdown]
# ## Symbol explorer: price, volume and both features over time

# %%
app.explorer
