"""The explorer's band, ``test_forecasts.parquet``: each ticker's last ``TEST_FORECAST_DATES`` test rows with their
forecasts (P10, P50, P90) and the actual next-day Volume.

A full read forecasts every band row. A warm start from a row store (``data.band_from``: the parent's store)
forecasts only the rows added since its parent and keeps the parent's forecasts of the dates it scored (out of
sample for it). The parent's band is kept in its row store as arrays (``band_<column>.npy``, ``ARRAYS``), read
memory-mapped: the merge reads no Parquet, and each column is copied once, by one gather of the rows kept. The
band's own arrays go into the row store for the next warm start (``Evaluation.band``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..config import DATE, SYMBOL, VOLUME
from .rows import TEST_FORECAST_DATES

BAND_ROW_GROUP = 1 << 16  # rows per row group of the band: a reader of one ticker decodes about this many
FLOATS = (VOLUME, "actual_next", "p10", "p50", "p90")
ARRAYS = ("ticker", "day", "next_day", *FLOATS)  # ticker: index into the rows' ``tickers``; days since 1970


def arrays_of(data, forecaster, rows) -> dict:
    """The band's columns for these rows, as arrays (``ARRAYS``), their forecasts predicted here."""
    from .evaluation import forecast_rows

    p10, p50, p90 = forecast_rows(forecaster, data.x, rows)
    return {
        "ticker": data.ticker[rows].astype(np.int32),
        "day": data.day[rows].astype(np.int32),
        "next_day": data.next_day[rows].astype(np.int32),
        VOLUME: data.volume[rows],
        "actual_next": data.target[rows],
        "p10": p10,
        "p50": p50,
        "p90": p90,
    }


def build(data, forecaster) -> tuple[pa.Table, dict]:
    """The band as a table, and as arrays (for the row store)."""
    arrays = arrays_of(data, forecaster, data.band)
    if data.band_from is not None:
        arrays = merge(load(data.band_from), arrays, data.tickers, _day(data.split_info["test_start"]))
    return table(arrays, data.tickers), arrays


def merge(old: dict, new: dict, tickers, test_start: int) -> dict:
    """Each ticker's last ``TEST_FORECAST_DATES`` rows of the parent's band still in the test period (``old``,
    in Symbol then Date order) followed by its new rows (``new``), in Symbol then Date order."""
    names = np.asarray(tickers, dtype=str)
    rank_of = np.empty(len(names), np.int64)
    rank_of[np.argsort(names, kind="stable")] = np.arange(len(names))
    kept = np.flatnonzero(np.asarray(old["day"]) >= test_start)
    old_rank, old_day = rank_of[np.asarray(old["ticker"])[kept]], np.asarray(old["day"])[kept]
    new_rank, new_day = rank_of[new["ticker"]], new["day"]
    # A ticker's new rows date after its old ones: each goes in after its ticker's old rows (checked; anything
    # else is sorted).
    at = np.searchsorted(old_rank, new_rank, side="right")
    prev = np.clip(at - 1, 0, None)
    in_order = bool(np.all(old_rank[1:] >= old_rank[:-1])) and not bool(
        np.any((at > 0) & (old_rank[prev] == new_rank) & (old_day[prev] >= new_day))
    )
    n_old, n = len(old_rank), len(old_rank) + len(new_rank)
    rank = np.concatenate([old_rank, new_rank])
    if in_order and bool(np.all(np.diff(new_rank) >= 0)):
        is_new = np.zeros(n, bool)
        is_new[at + np.arange(len(new_rank))] = True
        order = np.empty(n, np.int64)
        order[~is_new], order[is_new] = np.arange(n_old), n_old + np.arange(len(new_rank))
    else:
        order = np.lexsort((np.concatenate([old_day, new_day]), rank))
    ticker = rank[order]
    ends = np.append(np.flatnonzero(ticker[1:] != ticker[:-1]) + 1, len(ticker))
    from_end = np.repeat(ends, np.diff(np.append(0, ends))) - np.arange(len(ticker))
    take = order[from_end <= TEST_FORECAST_DATES]
    new_at = np.flatnonzero(take >= n_old)
    new_rows = take[new_at] - n_old
    if not n_old:
        return {key: np.asarray(new[key])[new_rows] for key in ARRAYS}
    # One gather per column from the parent's arrays (the new rows' places get any old row), then the new rows.
    source = kept[np.minimum(take, n_old - 1)]
    out = {}
    for key in ARRAYS:
        column = np.take(np.asarray(old[key]), source)
        column[new_at] = new[key][new_rows]
        out[key] = column
    return out


def table(arrays: dict, tickers) -> pa.Table:
    """The band's table from its arrays (the schema a pandas frame of it has: pandas metadata included)."""
    schema = _schema()
    epoch = np.datetime64("1970-01-01", "s")
    nxt = arrays["next_day"]
    next_date = np.where(nxt >= 0, epoch + np.maximum(nxt, 0).astype("timedelta64[D]"), np.datetime64("NaT", "s"))
    symbol = pa.DictionaryArray.from_arrays(pa.array(arrays["ticker"], pa.int32()), pa.array(list(tickers)))
    columns = [
        symbol.cast(schema.field(SYMBOL).type),
        pa.array(epoch + arrays["day"].astype("timedelta64[D]"), schema.field(DATE).type),
        pa.array(next_date, schema.field("target_date").type, from_pandas=True),
        *(pa.array(arrays[name], pa.float64()) for name in FLOATS),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _schema() -> pa.Schema:
    """What ``pa.Schema.from_pandas`` gives for the band as a pandas frame (one row of it, built as a frame)."""
    epoch = np.datetime64("1970-01-01")
    one = np.zeros(1)
    frame = pd.DataFrame(
        {
            SYMBOL: np.asarray(["A"], dtype=object),
            DATE: epoch + np.zeros(1, np.int32).astype("timedelta64[D]"),
            "target_date": pd.to_datetime(epoch + np.zeros(1, np.int32).astype("timedelta64[D]")),
            **{name: one for name in FLOATS},
        }
    )
    return pa.Schema.from_pandas(frame, preserve_index=False)


def save(directory: Path, arrays: dict) -> None:
    """Keep the band's arrays in a row store being written."""
    for key in ARRAYS:
        np.save(Path(directory) / f"band_{key}.npy", np.ascontiguousarray(arrays[key]))


def saved(home: Path) -> bool:
    return all((Path(home) / f"band_{key}.npy").exists() for key in ARRAYS)


def load(home: Path) -> dict:
    from .store_reads import npy_map

    return {key: npy_map(Path(home) / f"band_{key}.npy") for key in ARRAYS}


def write(table: pd.DataFrame | pa.Table, path: Path) -> None:
    """``test_forecasts.parquet``, in row groups of ``BAND_ROW_GROUP`` rows: its Symbol statistics let a reader of
    one ticker (``load_test_forecasts(model_dir, symbol)``: the notebook's chart, the explorer) skip the rest."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=BAND_ROW_GROUP, **storage.parquet_options(table.schema))
    tmp.replace(path)


def _day(iso) -> int:
    return int((np.datetime64(iso, "D") - np.datetime64("1970-01-01", "D")).astype(int))
