"""Writes 02_features.ipynb (run it, then execute the notebook to store outputs:
`python -c "from volcast import pipeline; pipeline.refresh_notebooks(['02_features.ipynb'])"`)."""
from nbformat.v4 import new_code_cell, new_markdown_cell

from _nbgen import write_notebook

cells = [
    new_markdown_cell(
        "# 02 · Features: rolling Volume mean and Adj Close median per ticker\n\n"
        "Reads `DIR/data/raw/`, writes `DIR/data/features/` (the raw columns plus `vol_moving_avg` and "
        "`adj_close_rolling_med`, float64, same partition files) and `DIR/reports/features.json`.\n\n"
        "- Per Symbol, ordered by Date: `vol_moving_avg` = mean of **Volume** and `adj_close_rolling_med` = "
        "median of **Adj Close** over the current row and the `window - 1` rows before it **of the same "
        "ticker** (a window never reaches into the previous ticker). Exact values: integer sums for the mean, "
        "exact medians ((a + b) / 2 for an even count), equal to pandas `groupby(...).rolling(...)`.\n"
        "- **window**: rows (`30`) or a fixed calendar offset (`\"30D\"`: the rows dated in the 30 days ending at "
        "the current row, `(t - 30 days, t]`).\n"
        "- **min_periods**: NaN until this many rows are in the window; `0` means the whole window for a row "
        "count and 1 for an offset (pandas' defaults).\n"
        "- Re-running recomputes only the partitions whose raw file changed (same parameters and code).\n"
        "- **symbol**: the ticker to chart below; `\"\"` = the ticker with the most rows."
    ),
    new_code_cell(
        'output_dir = "../outputs/demo"\n'
        "window = 30\n"
        "min_periods = 0\n"
        "jobs = 0\n"
        "incremental = True\n"
        'symbol = ""',
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import pandas as pd\n\n"
        "from volcast import features\n\n"
        'plt.rcParams.update({"figure.dpi": 80})\n\n'
        "report = features.run(output_dir, window=window, min_periods=min_periods, jobs=jobs,\n"
        "                      incremental=incremental)\n"
        'print(f"{report[\'seconds\']} s: {report[\'partitions_recomputed\']} partitions computed, "\n'
        '      f"{report[\'partitions_reused\']} carried over unchanged")'
    ),
    new_markdown_cell("## Report"),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        'shown = ["rows", "tickers", "window", "min_periods", "rows_with_full_window", "rows_with_features",\n'
        '         "tickers_shorter_than_window"]\n'
        'pd.Series({k: report[k] for k in shown}, name="value").astype(str).to_frame()'
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        'short = report["tickers_shorter_than_window_list"]\n'
        'print(f"{len(short)} tickers shorter than the window:", ", ".join(short[:20]) + (" ..." if len(short) > 20 else ""))'
    ),
    new_markdown_cell(
        "## One ticker\n\nThe rows where the window fills up: before it, both features are NaN."
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "symbol = symbol or features.most_rows_symbol(output_dir)\n"
        "rows = features.load_features(output_dir, symbol)\n"
        'print(f"{symbol}: {len(rows):,} rows, {rows[\'Date\'].iloc[0]} to {rows[\'Date\'].iloc[-1]}")\n'
        'first = int(rows["vol_moving_avg"].notna().to_numpy().argmax())\n'
        'cols = ["Symbol", "Date", "Adj Close", "Volume", "vol_moving_avg", "adj_close_rolling_med"]\n'
        "rows[cols].iloc[max(first - 2, 0): first + 3].round(4)"
    ),
    new_code_cell(
        'dates = pd.to_datetime(rows["Date"])\n'
        "fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)\n"
        'top.plot(dates, rows["Adj Close"], lw=0.6, color="0.6", label="Adj Close")\n'
        'top.plot(dates, rows["adj_close_rolling_med"], lw=1, label=f"rolling median ({report[\'window\']})")\n'
        'top.set_ylabel("price"); top.legend(loc="upper left", fontsize=8)\n'
        'bottom.plot(dates, rows["Volume"], lw=0.4, color="0.6", label="Volume")\n'
        'bottom.plot(dates, rows["vol_moving_avg"], lw=1, label=f"moving average ({report[\'window\']})")\n'
        'bottom.set_ylabel("volume"); bottom.legend(loc="upper left", fontsize=8)\n'
        'fig.suptitle(f"{symbol}: {rows[\'Security Name\'].fillna(\'\').iloc[0]}")\n'
        "plt.tight_layout(); plt.show()"
    ),
]

write_notebook(cells, "02_features.ipynb")
