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
# # 01 · Ingest: Kaggle-layout CSVs to the raw Parquet dataset
#
# Reads a source in the Kaggle layout (`stocks/*.csv`, `etfs/*.csv`, `symbols_valid_meta.csv`) and writes `DIR/data/raw/` (one Parquet file per two-letter ticker prefix), `DIR/data/quarantine/` (rows that cannot take the schema, with file, line and reason) and `DIR/reports/ingest.json`.
#
# - **source**: a folder or `.zip` in the Kaggle layout, `"kaggle"` (download with your Kaggle credentials) or `"demo"` (a market generated on the spot, labelled as generated).
# - Columns are matched by header name. A row with a missing, non-numeric or non-finite value, a Volume that is not a whole non-negative int64, a bad or duplicate date goes to quarantine; a file that cannot be read is set aside with its reason. Zero volumes and non-positive prices are kept and counted.
# - Re-running on the same source rereads only the files that changed.

# %% tags=["parameters"]
output_dir = "../outputs/demo"
source = "demo"
jobs = 0
demo_seed = 42
demo_tickers = 200
demo_years = 10
incremental = True
executor = "local"
scheduler = ""
max_file_bytes = 1073741824  # limits (volcast.ingest.limits): a file over one is set aside, a line quarantined
max_compression_ratio = 100.0
max_line_bytes = 1048576
max_header_bytes = 65536
max_columns = 1000
allow_links = False

# %%
import matplotlib.pyplot as plt
import pandas as pd

from volcast import ingest

# Figures drawn once, at their size (no "tight" bounding box: a second draw); tight_layout sets the margins.
# %config InlineBackend.print_figure_kwargs = {"bbox_inches": None}
plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.2)})

report = ingest.run(output_dir, source=source, jobs=jobs, demo_seed=demo_seed,
                    demo_tickers=demo_tickers, demo_years=demo_years, incremental=incremental,
                    executor=executor, scheduler=scheduler, max_file_bytes=max_file_bytes,
                    max_compression_ratio=max_compression_ratio, max_line_bytes=max_line_bytes,
                    max_header_bytes=max_header_bytes, max_columns=max_columns, allow_links=allow_links)
print(f"{report['seconds']} s, {report['rows_per_second'] or 0:,} rows/s; "
      f"{'incremental' if report['incremental'] else 'full'} run ({report['incremental_reason']}), "
      f"{len(report['changed_partitions'])} partitions written")

# %% [markdown]
# ## Source

# %%
# NBVAL_CHECK_OUTPUT
src = report["source"]
if src["generated"]:
    print("Source:", src["label"], "-- NOT real market data")
else:
    print(f"Source ({src['kind']}):", src["label"])

# %% [markdown]
# ## Totals
#
# Every non-blank data line of a file read ends as a row kept or a row quarantined: `lines`, counted from
# the files' bytes apart from the CSV parser, = rows kept + rows quarantined, per file and in total (the
# stage stops, publishing nothing, if a file disagrees).

# %%
# NBVAL_CHECK_OUTPUT
t = report["totals"]
assert t["lines"] == t["rows_read"] == t["rows_kept"] + t["rows_quarantined"]
pd.Series(t, name="count").to_frame()

# %% [markdown]
# ## Files set aside (not readable as a ticker CSV)

# %%
# NBVAL_CHECK_OUTPUT
rejected = pd.DataFrame(report["rejected_files"], columns=["file", "symbol", "reason"])
print(f"{len(rejected)} files set aside")
rejected

# %% [markdown]
# ## Quarantine: rows set aside, by kind, and a sample

# %%
# NBVAL_CHECK_OUTPUT
quarantine = ingest.load_quarantine(output_dir)
print(f"{len(quarantine):,} rows in quarantine")
quarantine["kind"].value_counts().rename_axis("kind").to_frame("rows")

# %%
# NBVAL_CHECK_OUTPUT
quarantine.sort_values(["file", "line"]).head(10)[["file", "line", "kind", "reason", "text"]]

# %% [markdown]
# ## Tickers without metadata
#
# Their rows are kept with a null `Security Name` (matched on the meta's `NASDAQ Symbol`).

# %%
# NBVAL_CHECK_OUTPUT
print(len(report["tickers_without_metadata"]), "tickers without metadata:",
      ", ".join(report["tickers_without_metadata"][:30]))

# %% [markdown]
# ## The raw dataset
#
# Summarised without loading it (the full dataset is ~28 M rows): counts come from the Parquet footers and from the Symbol and Date columns read one row group at a time (`ingest.summarize_raw`).

# %%
# NBVAL_CHECK_OUTPUT
summary = ingest.summarize_raw(output_dir)
print(f"{summary['rows']:,} rows, {summary['tickers']:,} tickers, "
      f"{summary['date_min']} to {summary['date_max']}")
print(pd.Series(summary["schema"], name="type").to_string())
summary["head"]

# %%
per_ticker, per_year = summary["rows_per_ticker"], summary["rows_per_year"]
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
a.hist(per_ticker, bins=30)
a.set_xlabel("rows (trading days) per ticker"); a.set_ylabel("tickers")
b.bar(per_year.index, per_year.values)
b.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # whole years, a label every few (not one per year)
b.set_xlabel("year"); b.set_ylabel("rows"); b.tick_params(axis="x", labelrotation=90)
fig.suptitle("generated demo data" if report["source"]["generated"] else report["source"]["label"])
plt.tight_layout(); plt.show()
