"""What the train stage writes beside the models, and reading it back: each ticker's test forecasts (the
explorer's band), the latest-row table with the stage's own inputs, the test sample, report and card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import config, storage
from ..config import DATE, SYMBOL, VOLUME
from .params import MARKET_INPUT, STAGE
from .rows import TEST_FORECAST_DATES, market_at
from .task_model import TEST_SAMPLE_FILE


def _test_forecasts(data, forecaster) -> pd.DataFrame | pa.Table:
    """Each ticker's last TEST_FORECAST_DATES test rows with their forecasts and the actual next-day Volume.

    A warm start from a row store (``data.band_from``) forecasts only the rows added since its parent: the
    parent's forecasts of the test dates it scored (out of sample for it) are kept. That table is merged in
    Arrow (millions of rows at x3), in Symbol then Date order as the parent's."""
    if data.band_from is None:
        return _band_table(data, forecaster)
    new = _band_frame(data, forecaster)
    old = pq.read_table(data.band_from, read_dictionary=[SYMBOL])  # Symbol as codes: no string per row
    # The parent's rows still in the test period, as positions: every column is copied once, by the last take.
    start = np.datetime64(data.split_info["test_start"], "D").astype(np.int64)
    old_day = _days_of(old[DATE])
    kept = np.flatnonzero(old_day >= start)
    old_day = old_day[kept]
    if old.num_rows:
        codes = old[SYMBOL].combine_chunks()  # one dictionary
        old_names = np.asarray(codes.dictionary.to_pylist(), dtype=str)
        old_codes = codes.indices.to_numpy(zero_copy_only=False)[kept]
    else:
        old_names, old_codes = np.zeros(0, str), np.zeros(0, np.int64)
    names = np.union1d(old_names, np.asarray(new[SYMBOL], dtype=str))
    old_rank = np.searchsorted(names, old_names)[old_codes]
    new_rank = np.searchsorted(names, np.asarray(new[SYMBOL], dtype=str))
    new_day = _days_of(pa.array(new[DATE]))
    # The parent's rows are in Symbol, Date order and a ticker's new rows date after its old ones: each new
    # row goes in after its ticker's old rows (checked; anything else is sorted).
    at = np.searchsorted(old_rank, new_rank, side="right")
    prev = np.clip(at - 1, 0, None)
    in_order = bool(np.all(old_rank[1:] >= old_rank[:-1])) and not bool(
        np.any((at > 0) & (old_rank[prev] == new_rank) & (old_day[prev] >= new_day))
    )
    n_old, n = len(old_rank), len(old_rank) + len(new_rank)
    rank, day = np.concatenate([old_rank, new_rank]), np.concatenate([old_day, new_day])
    if in_order and bool(np.all(np.diff(new_rank) >= 0)):
        is_new = np.zeros(n, bool)
        is_new[at + np.arange(len(new_rank))] = True
        order = np.empty(n, np.int64)
        order[~is_new], order[is_new] = np.arange(n_old), n_old + np.arange(len(new_rank))
    else:
        order = np.lexsort((day, rank))
    ticker = rank[order]
    ends = np.append(np.flatnonzero(ticker[1:] != ticker[:-1]) + 1, len(ticker))
    from_end = np.repeat(ends, np.diff(np.append(0, ends))) - np.arange(len(ticker))
    take = order[from_end <= TEST_FORECAST_DATES]
    source = take - n_old + old.num_rows  # positions in the parent's whole table with the new rows after it
    from_old = take < n_old
    source[from_old] = kept[take[from_old]]
    # Symbol from the codes (a string per row only at the end); the other columns taken as numbers.
    schema = pq.read_schema(data.band_from)  # the parent's, Symbol's string type included
    symbol = pa.DictionaryArray.from_arrays(pa.array(rank[take].astype(np.int32)), pa.array(names))
    symbol = symbol.cast(schema.field(SYMBOL).type)
    new = pa.Table.from_pandas(new, preserve_index=False)
    columns = {SYMBOL: symbol}
    positions = pa.array(source)
    for name in old.column_names:
        if name != SYMBOL:
            both = pa.chunked_array([*old[name].chunks, *new[name].cast(old[name].type).chunks], old[name].type)
            columns[name] = both.take(positions)
    return pa.table([columns[name] for name in schema.names], schema=schema)


BAND_ROW_GROUP = 1 << 16  # rows per row group of the band: a reader of one ticker decodes about this many


def write_band(table: pd.DataFrame | pa.Table, path: Path) -> None:
    """``test_forecasts.parquet``, in row groups of ``BAND_ROW_GROUP`` rows: its Symbol statistics let a reader of
    one ticker (``load_test_forecasts(model_dir, symbol)``: the notebook's chart, the explorer) skip the rest."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=BAND_ROW_GROUP, **storage.parquet_options(table.schema))
    tmp.replace(path)


def _band_table(data, forecaster) -> pa.Table:
    """``_band_frame`` built in Arrow from the arrays (its schema, pandas metadata included): millions of rows at
    x10, and no pandas copy beside the table."""
    from .evaluation import forecast_rows

    rows = data.band
    schema = pa.Schema.from_pandas(
        _band_frame(data, forecaster, rows[:1]), preserve_index=False
    )  # one row: types known
    p10, p50, p90 = forecast_rows(forecaster, data.x, rows)
    symbol = pa.DictionaryArray.from_arrays(pa.array(data.ticker[rows], pa.int32()), pa.array(data.tickers))
    epoch = np.datetime64("1970-01-01", "s")
    nxt = data.next_day[rows]
    next_date = np.where(nxt >= 0, epoch + np.maximum(nxt, 0).astype("timedelta64[D]"), np.datetime64("NaT", "s"))
    columns = [
        symbol.cast(schema.field(SYMBOL).type),
        pa.array(epoch + data.day[rows].astype("timedelta64[D]"), schema.field(DATE).type),
        pa.array(next_date, schema.field("target_date").type, from_pandas=True),
        *(pa.array(v, pa.float64()) for v in (data.volume[rows], data.target[rows], p10, p50, p90)),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _band_frame(data, forecaster, rows=None) -> pd.DataFrame:
    from .evaluation import forecast_rows

    rows = data.band if rows is None else rows
    p10, p50, p90 = forecast_rows(forecaster, data.x, rows)
    epoch = np.datetime64("1970-01-01")
    nxt = data.next_day[rows]
    return pd.DataFrame(
        {
            SYMBOL: np.asarray(data.tickers, dtype=object)[data.ticker[rows]],
            DATE: epoch + data.day[rows].astype("timedelta64[D]"),
            "target_date": pd.to_datetime(
                np.where(nxt >= 0, epoch + np.maximum(nxt, 0).astype("timedelta64[D]"), np.datetime64("NaT"))
            ),
            VOLUME: data.volume[rows],
            "actual_next": data.target[rows],
            "p10": p10,
            "p50": p50,
            "p90": p90,
        }
    )


def _write_latest(src: Path, path: Path, inputs, market) -> None:
    """The latest-row table of the features dataset, plus the inputs computed here (the market ratio)."""
    if not src.exists():
        return
    if MARKET_INPUT not in inputs:
        shutil.copyfile(src, path)
        return
    table = pq.read_table(src)
    days = _days_of(table[DATE])
    column = pa.array(market_at(market, days), pa.float64())
    if MARKET_INPUT in table.column_names:
        table = table.set_column(table.column_names.index(MARKET_INPUT), MARKET_INPUT, column)
    else:
        table = table.append_column(MARKET_INPUT, column)
    storage.write_parquet(table, path)


def _days_of(dates) -> np.ndarray:
    """Days since 1970-01-01 of a Date column (chunked or not), as int64 (``data._day_numbers``)."""
    from .data import _day_numbers

    return _day_numbers(dates.combine_chunks() if isinstance(dates, pa.ChunkedArray) else dates).astype(np.int64)


def load_test_sample(model_dir) -> pd.DataFrame:
    """The seeded sample of a model's test rows saved by ``run``, with its predictions.

    Columns: Date, Volume (today), vol_moving_avg, adj_close_rolling_med, target, prediction,
    baseline (= vol_moving_avg).
    """
    return pd.read_parquet(Path(model_dir) / TEST_SAMPLE_FILE)


def metrics_table(report: dict, digits: int = 3) -> pd.DataFrame:
    """The report's metrics as a table (rows: model and baselines), rounded for display."""
    table = pd.DataFrame(report["metrics"]).T[["mae", "rmse", "r2", "medape"]].astype(float)
    base = table.loc["baseline_vol_moving_avg"]
    table["mae_vs_vol_moving_avg"] = table["mae"] / base["mae"]
    table["medape_vs_vol_moving_avg"] = table["medape"] / base["medape"]
    table[["mae", "rmse"]] = table[["mae", "rmse"]].round(0)
    return table.round(digits)


def read_report(output_dir) -> dict | None:
    return storage.read_json(config.Layout.at(output_dir).report(STAGE))


def load_learning_curve(model_dir) -> pd.DataFrame:
    return pd.read_csv(Path(model_dir) / "learning_curve.csv")


def load_card(model_dir) -> dict:
    return json.loads((Path(model_dir) / "card.json").read_text(encoding="utf-8"))
