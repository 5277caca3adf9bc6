"""Features of appended rows only (issue 16): the feature columns of a ticker's new rows, computed from its
last ``lookback_rows`` stored rows instead of its whole history.

Every feature reads a bounded number of earlier rows of the same ticker: the task window (``window`` rows,
or an offset of D days, which holds at most D rows since a ticker has one row per date), the forecasting
inputs' windows and lags (``vol_lr_K``, ``vol_meanK_lr``, ``vol_stdK``, the 30-row base) and the 52-week
inputs (``dist_52w_high``, ``days_since_zero_volume``: ``inputs.YEAR_ROWS`` rows). A new row's features
computed on the stored rows' tail therefore equal those of a full recompute (tests/test_daily_features.py).

The stage uses it for a partition whose raw rows only grew (same raw "epoch", ``storage.PARTITIONS_FILE``):
``append_partitions`` finds the new raw rows (dated after each ticker's last features row), computes their
features from the tail table (``TAIL_FILE``: each ticker's last ``lookback_rows`` raw rows, kept in the
features dataset so no partition is read for them) and adds them to the partition's rows in the features
delta (the stage writes it: ``stage._write_delta``, one row group per partition, named as the raw delta); when
the raw partition has no delta rows (ingest folded it), into a new base file.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from .. import config, storage
from ..config import ADJ_CLOSE, CLOSE, DATE, HIGH, LOW, SYMBOL, VOLUME
from .columns import _numeric
from .core import add_features
from .inputs import _PATTERNS, BASE_WINDOW, YEAR_ROWS, _positive_log, check_names
from .window import parse_window

_DAY_NS = 86_400_000_000_000
_COLUMNS = (SYMBOL, DATE, VOLUME, ADJ_CLOSE, HIGH, LOW, CLOSE)
# Inside the features dataset (skipped by dataset readers: leading underscore). High, Low and Close are
# not kept: the one input that reads them (range_hl) reads the current row only. An Arrow IPC file (lz4), not
# Parquet: it is read and rewritten whole by every daily update, and Parquet's encoding and decoding of its
# ~250 rows per ticker cost several times the IPC copy.
TAIL_FILE = "_tail.arrow"
TAIL_SCHEMA = pa.schema([config.RAW_SCHEMA.field(c) for c in (SYMBOL, DATE, VOLUME, ADJ_CLOSE)])


def read_tail(path: str | Path) -> pa.Table:
    """The tail table ``TAIL_FILE`` (``write_tail``)."""
    return feather.read_table(str(path), memory_map=False)


def write_tail(table: pa.Table, path: str | Path) -> None:
    """Write the tail table to ``path`` (inside a staging directory: published with it)."""
    # One run of record batches, not one per partition piece: the next update reads and filters it whole.
    feather.write_feather(table.cast(TAIL_SCHEMA).combine_chunks(), str(path), compression="lz4")


YEAR_INPUTS = ("dist_52w_high", "days_since_zero_volume")  # the inputs that read YEAR_ROWS rows back


def _task_rows(spec) -> int:
    return spec.rows if spec.rows is not None else -(-spec.span_ns // _DAY_NS)


def _window_ks(inputs) -> list[int]:
    return [int(m.group(1)) for name in check_names(inputs) for p in _PATTERNS.values() if (m := p.match(name))]


def lookback_rows(window=config.DEFAULT_WINDOW, min_periods=0, inputs=config.FORECAST_INPUTS) -> int:
    """How many stored rows before a ticker's first new row its new rows' features can read (at most)."""
    spec = parse_window(window, min_periods)
    return max([YEAR_ROWS, BASE_WINDOW, _task_rows(spec), *_window_ks(inputs)])


def short_lookback_rows(window=config.DEFAULT_WINDOW, min_periods=0, inputs=config.FORECAST_INPUTS) -> int:
    """The same for every feature but the 52-week inputs (``YEAR_INPUTS``), which are computed apart."""
    spec = parse_window(window, min_periods)
    return max([BASE_WINDOW, _task_rows(spec), *_window_ks(inputs)])


def _plain(table: pa.Table) -> pa.Table:
    """The columns the features read, as the raw schema types (dictionaries decoded)."""
    present = [c for c in _COLUMNS if c in table.column_names]
    return table.select(present).cast(pa.schema([config.RAW_SCHEMA.field(c) for c in present]))


def features_of_new_rows(
    previous: pa.Table, new: pa.Table, window=config.DEFAULT_WINDOW, min_periods=0, inputs=config.FORECAST_INPUTS
) -> pa.Table:
    """The feature columns (float64) of ``new``'s rows, in ``new``'s row order.

    ``previous``: the stored rows (at least Symbol, Date, Volume, Adj Close; High, Low, Close may be left
    out: ``range_hl`` reads the current row only), sorted by Symbol then Date; only each ticker's last
    ``lookback_rows`` are used. ``new``: the rows appended, each dated after its ticker's stored rows (a
    ticker may be new). Every feature but the 52-week inputs: the full run's kernels over the last
    ``short_lookback_rows`` stored rows and the new ones; the 52-week inputs, whose window is ``lookback_rows``
    long: gathered for the new rows only (``_year_columns``), not computed for every tail row.
    """
    inputs = check_names(inputs)
    previous, new = _plain(previous), _plain(new)
    for name in (HIGH, LOW, CLOSE):
        if name not in previous.column_names and name in new.column_names:
            previous = previous.append_column(name, pa.nulls(previous.num_rows, pa.float64()))
    if previous.num_rows:
        from_end = _from_end(previous[SYMBOL])
        # Per ticker, not per row: its first row stands for its run of rows (the table is sorted by Symbol).
        starts = np.flatnonzero(np.r_[True, from_end[:-1] == 1])
        runs = previous[SYMBOL].combine_chunks().take(pa.array(starts))
        in_new = pc.is_in(runs, value_set=pc.unique(new[SYMBOL].combine_chunks())).to_numpy(zero_copy_only=False)
        wanted = np.repeat(in_new, from_end[starts])
    else:
        from_end, wanted = np.zeros(0, np.int64), np.zeros(0, bool)
        starts, runs = np.zeros(0, np.int64), pa.array([], pa.string())

    def computed(depth: int, names: tuple[str, ...]) -> pa.Table:
        tail = previous.filter(pa.array(wanted & (from_end <= depth)))
        both = pa.concat_tables([tail, new.select(tail.column_names)]) if tail.num_rows else new
        return add_features(both, window, min_periods, inputs=names).slice(tail.num_rows)  # rows in given order

    year = tuple(n for n in inputs if n in YEAR_INPUTS)
    out = computed(short_lookback_rows(window, min_periods, inputs), tuple(n for n in inputs if n not in year))
    columns = {n: out[n] for n in out.column_names}
    if year:
        stored = _Stored(previous, starts, _strings(runs), from_end[starts], lookback_rows(window, min_periods, inputs))
        columns.update({n: pa.array(v) for n, v in _year_columns(stored, new, year).items()})
    names = [config.VOL_FEATURE, config.PRICE_FEATURE, *inputs]
    return pa.table({n: columns[n] for n in names})


class _Stored:
    """The stored rows (sorted by Symbol then Date) as runs, one per ticker: where each starts, its Symbol, its
    length; a new row's window reads at most its ticker's last ``depth`` rows of them."""

    def __init__(self, table: pa.Table, starts: np.ndarray, symbols: pa.Array, lengths: np.ndarray, depth: int):
        self.table, self.starts, self.symbols, self.lengths, self.depth = table, starts, symbols, lengths, depth


def _year_columns(stored: _Stored, new: pa.Table, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The 52-week inputs of ``new``'s rows (in its order), gathered for the new rows only: each new row's window
    is its ticker's ``YEAR_ROWS`` rows up to it (fewer at the ticker's start), taken from its stored rows (at most
    the last ``stored.depth``) and its earlier new rows, one matrix of (new rows x ``YEAR_ROWS``) for all
    tickers. The same rules as ``inputs.forecast_inputs`` (NaN-ignoring maximum of the positive prices; rows
    since the last zero volume, capped), which runs over every row of a partition."""
    order = pc.sort_indices(new, sort_keys=[(SYMBOL, "ascending"), (DATE, "ascending")]).to_numpy()
    symbols = _strings(new[SYMBOL]).take(pa.array(order))
    m = len(order)
    # Each new row's ticker among the stored runs: where its window's stored rows start and how many (a new
    # ticker has none).
    if len(stored.lengths):
        run = pc.fill_null(pc.index_in(symbols, value_set=stored.symbols), -1).to_numpy(zero_copy_only=False)
        run = run.astype(np.int64)
        t_len = np.where(run >= 0, np.minimum(stored.lengths[run], stored.depth), 0)
        t_start = np.where(run >= 0, stored.starts[run] + stored.lengths[run] - t_len, 0)
    else:
        t_len = t_start = np.zeros(m, np.int64)
    change = np.ones(m, bool)
    if m > 1:
        change[1:] = pc.not_equal(symbols.slice(1), symbols.slice(0, m - 1)).to_numpy(zero_copy_only=False)
    first_new = np.maximum.accumulate(np.where(change, np.arange(m), 0))
    back = np.arange(YEAR_ROWS)
    at = (t_len + np.arange(m) - first_new)[:, None] - back  # position in the ticker's rows (tail, then new)
    from_new = at >= t_len[:, None]
    in_tail = (at >= 0) & ~from_new
    new_at = np.where(from_new, first_new[:, None] + at - t_len[:, None], 0)
    tail_at = np.where(in_tail, t_start[:, None] + at, 0)

    def window(tail_values: np.ndarray, new_values: np.ndarray, outside) -> np.ndarray:
        got = np.where(from_new, new_values[new_at], tail_values[tail_at] if len(tail_values) else outside)
        return np.where(from_new | in_tail, got, outside)

    result = {}
    for name in names:
        if name == "dist_52w_high":
            price = _numeric(new[ADJ_CLOSE].combine_chunks().take(pa.array(order)), ADJ_CLOSE)
            before = _numeric(stored.table[ADJ_CLOSE].combine_chunks(), ADJ_CLOSE)
            positive = [np.where(a > 0, a, np.nan) for a in (before, price)]
            with np.errstate(invalid="ignore"):
                high = np.fmax.reduce(window(*positive, np.nan), axis=1)
            values = _positive_log(price) - _positive_log(high)
        elif name == "days_since_zero_volume":
            volume = _numeric(new[VOLUME].combine_chunks().take(pa.array(order)), VOLUME)
            before = _numeric(stored.table[VOLUME].combine_chunks(), VOLUME)
            zero = window(before == 0, volume == 0, False)
            values = np.where(zero.any(axis=1), zero.argmax(axis=1), YEAR_ROWS).astype(np.float64)
        else:
            raise ValueError(f"not a 52-week input: {name}")
        out = np.empty(m)
        out[order] = values
        result[name] = out
    return result


def _strings(column) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column


def _from_end(symbols: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Per row of a table sorted by Symbol: 1 for a ticker's last row, 2 for the one before, ..."""
    symbols = symbols.combine_chunks() if isinstance(symbols, pa.ChunkedArray) else symbols
    if pa.types.is_dictionary(symbols.type):
        symbols = symbols.cast(pa.string())
    n = len(symbols)
    if not n:
        return np.zeros(0, np.int64)
    change = np.ones(n, bool)
    change[1:] = pc.not_equal(symbols.slice(1), symbols.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    run = np.cumsum(change) - 1
    ends = np.append(np.flatnonzero(change)[1:], n)
    return ends[run] - np.arange(n)


def tail_rows(table: pa.Table, back: int) -> pa.Table:
    """Each ticker's last ``back`` rows of a table sorted by Symbol then Date, as ``TAIL_SCHEMA``."""
    table = table.select(TAIL_SCHEMA.names)
    return table.filter(pa.array(_from_end(table[SYMBOL]) <= back)).cast(TAIL_SCHEMA)


def key_ranges(symbols) -> dict[str, tuple[int, int]]:
    """``{partition key: (offset, length)}`` of a table sorted by Symbol (a partition's tickers are
    contiguous there: partition-key order is Symbol order)."""
    column = symbols.combine_chunks() if isinstance(symbols, pa.ChunkedArray) else symbols
    if not len(column):
        return {}
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    key_of = np.array([storage.partition_key(s) for s in column.dictionary.to_pylist()])
    keys = key_of[column.indices.to_numpy(zero_copy_only=False)]
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.append(change, len(keys))
    return {str(keys[a]): (int(a), int(b - a)) for a, b in zip(starts, ends)}


def _read_raw(path: Path) -> pa.Table:
    return _raw_columns(storage.read_file(path, read_dictionary=list(config.TICKER_COLUMNS)))


def _raw_columns(table: pa.Table) -> pa.Table:
    return table.select(list(config.RAW_COLUMNS)).cast(config.RAW_DICTIONARY_SCHEMA)


def _new_rows(files: list, last: tuple[pa.Array, pa.Array], parts: dict) -> pa.Table:
    """The rows of ``files`` (files, or ``DeltaPart``s read already: ``parts``) dated after their ticker's
    last date (``last``: Symbols and their last Dates; all rows of a ticker not in it)."""
    tables = [_raw_columns(parts[p]) if p in parts else _read_raw(p) for p in files]
    table = pa.concat_tables(tables).unify_dictionaries() if len(tables) > 1 else tables[0]
    if not table.num_rows:
        return table
    symbols = table[SYMBOL].combine_chunks()
    names, dates = last
    bound = pc.fill_null(pc.take(dates, pc.index_in(_strings(symbols.dictionary), value_set=names)), "")
    after = pc.greater(table[DATE], pc.take(bound, symbols.indices))
    return storage.sort_by_symbol(table.filter(after))


class Appended:
    """What ``append_partitions`` did to one partition: its stats, latest rows and tail rows (all its tickers)."""

    def __init__(self, stats: dict, latest: pa.Table, tail: pa.Table, delta: pa.Table | None = None):
        self.stats, self.latest, self.tail = stats, latest, tail
        self.delta = delta  # the partition's rows for the features delta (None: it was folded into its base)


def _stats(old: dict, new: pa.Table, prev_rows: dict[str, int], window_rows: int) -> dict:
    """The partition's report counts after appending ``new`` (features included) to it."""
    symbols = new[SYMBOL].cast(pa.string()).to_pylist()
    added: dict[str, int] = {}
    for s in symbols:
        added[s] = added.get(s, 0) + 1
    full = 0
    short = set(old["short_tickers"])
    for s, k in added.items():
        before = prev_rows.get(s, 0)
        full += max(before + k - (window_rows - 1), 0) - max(before - (window_rows - 1), 0)
        (short.add if before + k < window_rows else short.discard)(s)
    vol, med = (new[c].to_numpy() for c in (config.VOL_FEATURE, config.PRICE_FEATURE))  # NaN, never null
    return {
        "rows": old["rows"] + new.num_rows,
        "tickers": old["tickers"] + sum(1 for s in added if s not in prev_rows),
        "rows_with_full_window": old["rows_with_full_window"] + full,
        "rows_with_features": old["rows_with_features"] + int((~np.isnan(vol) & ~np.isnan(med)).sum()),
        "short_tickers": sorted(short),
    }


def append_partitions(
    todo: dict[str, tuple[list[Path], list[Path], dict]],
    staging: Path,
    old_latest: pa.Table,
    old_tail: pa.Table,
    write_schema: pa.Schema,
    window,
    min_periods,
    jobs: int = 1,
    old_members: dict | None = None,
) -> dict[str, Appended]:
    """Append each partition's new raw rows to the features dataset being staged.

    ``todo``: ``{key: (changed raw files, the raw partition's files, its stats at the last run)}``;
    ``staging`` holds the current features files (hard links); ``old_latest`` / ``old_tail``: the latest-row
    and tail tables of the current version; ``old_members``: each partition's features members in the current
    version (``storage.partition_groups``). Only a row-count window (``spec.rows``) takes this path.
    """
    spec = parse_window(window, min_periods)
    back = lookback_rows(window, min_periods)
    last = (_strings(old_latest[SYMBOL]), _strings(old_latest[DATE]))
    prev_rows = dict(zip(old_latest[SYMBOL].to_pylist(), old_latest["rows"].to_pylist()))
    keys = sorted(todo)
    old_members = old_members or {}
    # The delta files' parts, each file's footer parsed once (not once per partition).
    raw_parts = storage.read_parts(
        [p for k in keys for p in todo[k][0] if isinstance(p, storage.DeltaPart)],
        read_dictionary=list(config.TICKER_COLUMNS),
    )
    mine_parts = storage.read_parts(
        [p for k in keys for p in old_members.get(k, []) if isinstance(p, storage.DeltaPart)],
        read_dictionary=list(config.TICKER_COLUMNS),
    )
    with ThreadPoolExecutor(max_workers=max(jobs, 1), thread_name_prefix="features-append") as pool:
        new = dict(zip(keys, pool.map(lambda k: _new_rows(todo[k][0], last, raw_parts), keys)))
    sizes = [new[k].num_rows for k in keys]
    both = pa.concat_tables([_plain(new[k]) for k in keys]) if keys else None
    cols = features_of_new_rows(old_tail, both, window, min_periods) if keys else None
    tail_at = key_ranges(old_tail[SYMBOL])
    latest_at = key_ranges(old_latest[SYMBOL])
    legacy = storage.legacy_deltas_by_key(staging)  # legacy per-partition deltas: one listing, not one per partition

    def write(i: int) -> Appended:
        key = keys[i]
        start = sum(sizes[:i])
        rows = new[key]
        for name in cols.column_names:
            rows = rows.append_column(name, cols[name].slice(start, sizes[i]))
        rows = rows.cast(write_schema)
        base = staging / storage.partition_file(key)
        mine = old_members.get(key) or storage.partition_members(base)
        # A partition with raw delta rows keeps its features delta rows (the current ones + the new); one that
        # ingest folded (no raw delta rows) is folded here too: base + delta rows + new rows, a new base.
        raw_in_delta = any(isinstance(p, storage.DeltaPart) for p in todo[key][1])
        carried = [p for p in mine if Path(p).name != base.name] if raw_in_delta else mine
        if carried:
            old = [
                mine_parts[p] if p in mine_parts else storage.read_file(p, read_dictionary=list(config.TICKER_COLUMNS))
                for p in carried
            ]
            old = pa.concat_tables([t.cast(write_schema) for t in old]) if len(old) > 1 else old[0].cast(write_schema)
            table = storage.sort_by_symbol(pa.concat_tables([old, rows]).unify_dictionaries())
        else:
            table = rows
        delta = None
        if raw_in_delta:
            delta = table
        else:
            storage.write_parquet(table, base, arrow_schema=False)
        for p in legacy.get(key, []):  # legacy per-partition deltas: their rows are in the table
            p.unlink()
        ends = np.flatnonzero(_from_end(rows[SYMBOL]) == 1)
        latest = rows.take(pa.array(ends)).cast(config.FEATURES_SCHEMA)
        counts = [prev_rows.get(s, 0) + int(n) for s, n in zip(latest[SYMBOL].to_pylist(), _run_lengths(rows))]
        latest = latest.append_column("rows", pa.array(counts, pa.int64()))
        if key in latest_at:  # the partition's other tickers keep their latest rows
            kept = old_latest.slice(*latest_at[key])
            kept = kept.filter(pc.invert(pc.is_in(kept[SYMBOL], value_set=latest[SYMBOL])))
            latest = storage.sort_by_symbol(pa.concat_tables([kept.cast(latest.schema), latest]))
        old_tail_rows = old_tail.slice(*tail_at[key]) if key in tail_at else TAIL_SCHEMA.empty_table()
        tail = pa.concat_tables([old_tail_rows, tail_rows(rows, back)])
        tail = tail_rows(storage.sort_by_symbol(tail), back)
        return Appended(_stats(todo[key][2], rows, prev_rows, spec.rows), latest, tail, delta)

    with ThreadPoolExecutor(max_workers=max(jobs, 1), thread_name_prefix="features-append") as pool:
        return dict(zip(keys, pool.map(write, range(len(keys)))))


def _run_lengths(table: pa.Table) -> list[int]:
    """Rows per ticker of a table sorted by Symbol, in order."""
    ends = np.flatnonzero(_from_end(table[SYMBOL]) == 1)
    return np.diff(np.concatenate([[-1], ends])).tolist()
