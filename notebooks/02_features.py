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
# # 02 · Features: rolling Volume mean and Adj Close median per ticker
#
# Reads `DIR/data/raw/`, writes `DIR/data/features/` (the raw columns plus `vol_moving_avg` and `adj_close_rolling_med`, float64, same partition files) and `DIR/reports/features.json`.
#
# - Per Symbol, ordered by Date: `vol_moving_avg` = mean of **Volume** and `adj_close_rolling_med` = median of **Adj Close** over the current row and the `window - 1` rows before it **of the same ticker** (a window never reaches into the previous ticker). Exact values: integer sums for the mean, exact medians ((a + b) / 2 for an even count), equal to pandas `groupby(...).rolling(...)`.
# - **window**: rows (`30`) or a fixed calendar offset (`"30D"`: the rows dated in the 30 days ending at the current row, `(t - 30 days, t]`).
# - **min_periods**: NaN until this many rows are in the window; `0` means the whole window for a row count and 1 for an offset (pandas' defaults).
# - Re-running recomputes only the partitions whose raw file changed (same parameters and code).
# - **symbol**: the ticker to chart below; `""` = the ticker with the most rows.

# %% tags=["parameters"]
output_dir = "../outputs/demo"
window = 30
min_periods = 0
jobs = 0
incremental = True
executor = "local"
scheduler = ""
symbol = ""

# %%
import matplotlib.pyplot as plt
import pandas as pd

from volcast import features

# Figures drawn once, at their size (no "tight" bounding box: a second draw); tight_layout sets the margins.
# %config InlineBackend.print_figure_kwargs = {"bbox_inches": None}
plt.rcParams.update({"figure.dpi": 80})

report = features.run(output_dir, window=window, min_periods=min_periods, jobs=jobs,
                      incremental=incremental, executor=executor, scheduler=scheduler)
print(f"{report['seconds']} s: {report['partitions_recomputed']} partitions computed, "
      f"{report['partitions_reused']} carried over unchanged")

# %% [markdown]
# ## Report

# %%
# NBVAL_CHECK_OUTPUT
shown = ["rows", "tickers", "window", "min_periods", "rows_with_full_window", "rows_with_features",
         "tickers_shorter_than_window"]
pd.Series({k: report[k] for k in shown}, name="value").astype(str).to_frame()

# %%
# NBVAL_CHECK_OUTPUT
short = report["tickers_shorter_than_window_list"]
print(f"{len(short)} tickers shorter than the window:", ", ".join(short[:20]) + (" ..." if len(short) > 20 else ""))

# %% [markdown]
# ## One ticker
#
# The rows where the window fills up: before it, both features are NaN.

# %%
# NBVAL_CHECK_OUTPUT
symbol = symbol or features.most_rows_symbol(output_dir)
rows = features.load_features(output_dir, symbol)
print(f"{symbol}: {len(rows):,} rows, {rows['Date'].iloc[0]} to {rows['Date'].iloc[-1]}")
first = int(rows["vol_moving_avg"].notna().to_numpy().argmax())
cols = ["Symbol", "Date", "Adj Close", "Volume", "vol_moving_avg", "adj_close_rolling_med"]
rows[cols].iloc[max(first - 2, 0): first + 3].round(4)

# %%
dates = pd.to_datetime(rows["Date"])
fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
top.plot(dates, rows["Adj Close"], lw=0.6, color="0.6", label="Adj Close")
top.plot(dates, rows["adj_close_rolling_med"], lw=1, label=f"rolling median ({report['window']})")
top.set_ylabel("price"); top.legend(loc="upper left", fontsize=8)
bottom.plot(dates, rows["Volume"], lw=0.4, color="0.6", label="Volume")
bottom.plot(dates, rows["vol_moving_avg"], lw=1, label=f"moving average ({report['window']})")
bottom.set_ylabel("volume"); bottom.legend(loc="upper left", fontsize=8)
fig.suptitle(f"{symbol}: {rows['Security Name'].fillna('').iloc[0]}")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Forecasting inputs (the same ticker, its last rows)
#
# From the current and earlier rows of the ticker only: volumes as log ratios to the 30-row mean (`vol_lr_K`: K rows back; `vol_meanK_lr`: K-row means), `vol_std30`, `return_1d`, `range_hl`, `weekday`, the price level `log_price_med` (log of `adj_close_rolling_med`) and `dist_52w_high` (see `volcast.features.inputs`). The `next_*` columns describe the NEXT trading day, known in advance from the date alone (`volcast.features.calendar`: weekdays minus the regular NYSE holidays): its weekday, the calendar days to it, whether it is an options expiration (1 monthly, 2 quarterly), a month or quarter end (1, 2), or the day before a holiday. The market's volume ratio (`market_vol_lr`) is cross-ticker: the train stage computes it.

# %%
# NBVAL_CHECK_OUTPUT
from volcast import config

rows[["Date", *config.FORECAST_INPUTS]].tail(5).round(3)

# %% [markdown]
# ## The latest-row table (one row per ticker: what `/forecast` answers from)

# %%
# NBVAL_CHECK_OUTPUT
latest = features.load_latest(output_dir)
print(f"{len(latest):,} tickers; {int((latest['rows'] < 30).sum())} with fewer than 30 rows (no forecast)")
latest[["Symbol", "Date", "rows", "Volume", "vol_moving_avg", "vol_lr_0"]].head().round(3)

