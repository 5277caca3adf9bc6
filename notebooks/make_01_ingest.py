"""Writes 01_ingest.ipynb (run it, then execute the notebook to store outputs:
`python -c "from volcast import pipeline; pipeline.refresh_notebooks(['01_ingest.ipynb'])"`)."""
from nbformat.v4 import new_code_cell, new_markdown_cell

from _nbgen import write_notebook

cells = [
    new_markdown_cell(
        "# 01 · Ingest: Kaggle-layout CSVs to the raw Parquet dataset\n\n"
        "Reads a source in the Kaggle layout (`stocks/*.csv`, `etfs/*.csv`, `symbols_valid_meta.csv`) and "
        "writes `DIR/data/raw/` (one Parquet file per two-letter ticker prefix), `DIR/data/quarantine/` "
        "(rows that cannot take the schema, with file, line and reason) and `DIR/reports/ingest.json`.\n\n"
        "- **source**: a folder or `.zip` in the Kaggle layout, `\"kaggle\"` (download with your Kaggle "
        "credentials) or `\"demo\"` (a market generated on the spot, labelled as generated).\n"
        "- Columns are matched by header name. A row with a missing, non-numeric or non-finite value, a Volume "
        "that is not a whole non-negative int64, a bad or duplicate date goes to quarantine; a file that cannot "
        "be read is set aside with its reason. Zero volumes and non-positive prices are kept and counted.\n"
        "- Re-running on the same source rereads only the files that changed."
    ),
    new_code_cell(
        'output_dir = "../outputs/demo"\n'
        'source = "demo"\n'
        "jobs = 0\n"
        "demo_seed = 42\n"
        "demo_tickers = 200\n"
        "demo_years = 10\n"
        "incremental = True",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import pandas as pd\n\n"
        "from volcast import ingest\n\n"
        'plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.2)})\n\n'
        "report = ingest.run(output_dir, source=source, jobs=jobs, demo_seed=demo_seed,\n"
        "                    demo_tickers=demo_tickers, demo_years=demo_years, incremental=incremental)\n"
        'print(f"{report[\'seconds\']} s, {report[\'rows_per_second\'] or 0:,} rows/s; "\n'
        '      f"{\'incremental\' if report[\'incremental\'] else \'full\'} run ({report[\'incremental_reason\']}), "\n'
        '      f"{len(report[\'changed_partitions\'])} partitions written")'
    ),
    new_markdown_cell("## Source"),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        'src = report["source"]\n'
        'if src["generated"]:\n'
        '    print("Source:", src["label"], "-- NOT real market data")\n'
        "else:\n"
        '    print(f"Source ({src[\'kind\']}):", src["label"])'
    ),
    new_markdown_cell("## Totals\n\nRows read = rows kept + rows quarantined, per file and in total."),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        't = report["totals"]\n'
        'assert t["rows_read"] == t["rows_kept"] + t["rows_quarantined"]\n'
        'pd.Series(t, name="count").to_frame()'
    ),
    new_markdown_cell("## Files set aside (not readable as a ticker CSV)"),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        'rejected = pd.DataFrame(report["rejected_files"], columns=["file", "symbol", "reason"])\n'
        'print(f"{len(rejected)} files set aside")\n'
        "rejected"
    ),
    new_markdown_cell("## Quarantine: rows set aside, by kind, and a sample"),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "quarantine = ingest.load_quarantine(output_dir)\n"
        'print(f"{len(quarantine):,} rows in quarantine")\n'
        'quarantine["kind"].value_counts().rename_axis("kind").to_frame("rows")'
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        'quarantine.sort_values(["file", "line"]).head(10)[["file", "line", "kind", "reason", "text"]]'
    ),
    new_markdown_cell(
        "## Tickers without metadata\n\n"
        "Their rows are kept with a null `Security Name` (matched on the meta's `NASDAQ Symbol`)."
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        'print(len(report["tickers_without_metadata"]), "tickers without metadata:",\n'
        '      ", ".join(report["tickers_without_metadata"][:30]))'
    ),
    new_markdown_cell(
        "## The raw dataset\n\n"
        "Summarised without loading it (the full dataset is ~28 M rows): the rows per ticker and per year, "
        "and the first and last date, are counted by ingest as it writes each partition and kept in the "
        "partition's Parquet footer (`ingest.summarize_raw`)."
    ),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        "summary = ingest.summarize_raw(output_dir)\n"
        'print(f"{summary[\'rows\']:,} rows, {summary[\'tickers\']:,} tickers, "\n'
        '      f"{summary[\'date_min\']} to {summary[\'date_max\']}")\n'
        'print(pd.Series(summary["schema"], name="type").to_string())\n'
        'summary["head"]'
    ),
    new_code_cell(
        'per_ticker, per_year = summary["rows_per_ticker"], summary["rows_per_year"]\n'
        "fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))\n"
        "a.hist(per_ticker, bins=30)\n"
        'a.set_xlabel("rows (trading days) per ticker"); a.set_ylabel("tickers")\n'
        "b.bar(per_year.index, per_year.values)\n"
        'b.set_xlabel("year"); b.set_ylabel("rows"); b.tick_params(axis="x", labelrotation=90)\n'
        'fig.suptitle("generated demo data" if report["source"]["generated"] else report["source"]["label"])\n'
        "plt.tight_layout(); plt.show()"
    ),
]

write_notebook(cells, "01_ingest.ipynb")
