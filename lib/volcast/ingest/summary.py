"""Reading the raw dataset back: ``load_raw`` and ``summarize_raw`` (from partition footers when present)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage
from ..config import RAW_SCHEMA, Layout
from .write import SUMMARY_KEY


def load_raw(output_dir: str | os.PathLike, columns: list[str] | None = None, **kwargs):
    """The raw dataset as a pandas DataFrame sorted by Symbol then Date (what ``pandas.read_parquet`` of
    ``data/raw`` gives once a stable sort by Symbol is applied: daily appends sit in the delta file, read after
    every base). ``kwargs`` (``filters``, ...) go to ``pyarrow.parquet.read_table``."""
    raw_dir = Layout.at(output_dir).raw_dir
    return storage.read_dataset(raw_dir.resolve(), columns=columns, **kwargs).to_pandas()


def _raw_files(output_dir) -> list[Path]:
    raw_dir = Layout.at(output_dir).raw_dir
    # Base and delta files alike: the footers' counts add up.
    return sorted(raw_dir.glob("part-*.parquet")) if raw_dir.exists() else []


def _summarize_row_group(path: Path, i: int) -> tuple[dict[str, int], np.ndarray, int | None, int | None]:
    """(rows per Symbol, rows per year as a 10000-slot count, first day, last day) of one row group."""
    # Symbol read as dictionary indices (no string per row); Date as calendar days (a valid raw Date is
    # exactly YYYY-MM-DD, so the day prints back as the same text).
    part = pq.ParquetFile(path, read_dictionary=["Symbol"]).read_row_group(i, columns=["Symbol", "Date"])
    tickers = storage.dictionary_value_counts(part["Symbol"])
    days = pc.drop_null(pc.cast(part["Date"], pa.date32()))
    years = np.bincount(pc.year(days).to_numpy(), minlength=10000) if len(days) else np.zeros(10000, np.int64)
    mm = pc.min_max(days.cast(pa.int32())).as_py()
    return tickers, years, mm["min"], mm["max"]


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def _footer_summary(meta: pq.FileMetaData) -> dict | None:
    """The summary ingest wrote in a raw partition's footer, or None (a file written otherwise)."""
    value = (meta.metadata or {}).get(SUMMARY_KEY.encode())
    if value is None:
        return None
    try:
        summary = json.loads(value)
        if sum(summary["rows_per_symbol"].values()) == sum(summary["rows_per_year"].values()) == meta.num_rows:
            summary["days"] = [
                dt.date.fromisoformat(summary[k]).toordinal() - _EPOCH_ORDINAL for k in ("date_min", "date_max")
            ]
            return summary
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return None  # unreadable or not about these rows: count them


def summarize_raw(output_dir: str | os.PathLike, head: int = 3) -> dict:
    """Counts and a peek at the raw dataset without loading it (memory: two row groups of two columns).

    Returns ``rows`` (from the Parquet footers), ``files``, ``tickers``, ``date_min``, ``date_max``,
    ``schema`` (``{column: Arrow type}`` from the Parquet schema), ``head`` (first rows of the first
    partition file, a pandas DataFrame), ``rows_per_ticker`` (pandas Series indexed by Symbol, in
    Symbol order) and ``rows_per_year`` (Series indexed by the year as int, ascending). Only the
    Symbol and Date columns are read, a row group at a time on two threads, and counted with Arrow.

    Partitions written by ``run`` carry these counts in their footer (``SUMMARY_KEY``), counted as
    their rows were written: then only footers are read.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    files = _raw_files(output_dir)
    groups, rows = [], 0
    tickers: dict[str, int] = {}  # a ticker can span row groups: add up
    years = np.zeros(10000, np.int64)
    first = last = None
    for path in files:
        meta = pq.read_metadata(path)
        rows += meta.num_rows
        footer = _footer_summary(meta)
        if footer is None:  # a file written without the summary: count its rows
            groups += [(path, i) for i in range(meta.num_row_groups)]
            continue
        for name, c in footer["rows_per_symbol"].items():
            tickers[name] = tickers.get(name, 0) + c
        for year, c in footer["rows_per_year"].items():
            years[int(year)] += c
        lo, hi = footer["days"]
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
    with ThreadPoolExecutor(max_workers=2) as pool:  # Arrow releases the GIL while decoding
        for t, y, lo, hi in pool.map(lambda g: _summarize_row_group(*g), groups):
            for name, c in t.items():
                tickers[name] = tickers.get(name, 0) + c
            years += y
            if lo is not None:
                first = lo if first is None else min(first, lo)
                last = hi if last is None else max(last, hi)
    if files:
        schema = pq.read_schema(files[0])
        batch = next(pq.ParquetFile(files[0]).iter_batches(batch_size=max(head, 1)), None)
        head_table = pa.Table.from_batches([batch]) if batch is not None else schema.empty_table()
        head_df = head_table.slice(0, head).to_pandas()
    else:
        schema = RAW_SCHEMA
        head_df = RAW_SCHEMA.empty_table().to_pandas()
    day = lambda d: None if d is None else (dt.date(1970, 1, 1) + dt.timedelta(days=d)).isoformat()  # noqa: E731
    names = sorted(tickers)
    year_idx = np.flatnonzero(years)
    return {
        "rows": rows,
        "files": len(files),
        "tickers": len(tickers),
        "date_min": day(first),
        "date_max": day(last),
        "schema": {f.name: str(f.type) for f in schema},
        "head": head_df,
        "rows_per_ticker": pd.Series(
            [tickers[n] for n in names], index=pd.Index(names, name="Symbol"), name="rows", dtype="int64"
        ),
        "rows_per_year": pd.Series(years[year_idx], index=pd.Index(year_idx.tolist(), name="year"), name="rows"),
    }
