"""Daily appends (issue 16): a partition whose files only grew by appended lines (or gained new ticker files)
gets its new rows added to the dataset's ONE shared delta file (``storage.shared_delta_file``: one row group
per partition key) instead of a rewrite.

A task (in a worker) parses the appended lines and returns the new rows; the stage writes the delta
(``write_delta``): for each partition, its rows already in the previous delta, then the new ones. A partition
chosen to fold (``storage.keys_to_fold``: the delta would carry more than ``storage.DELTA_FRACTION`` of the
dataset's rows; or it has no base yet, or legacy per-partition delta files) gets its base, delta rows and new
rows written as a new base by the task instead (compaction). Rows are checked against each ticker's last
stored Date, read from the footers (the bases' and the delta's), not from the rows. An appended file that
cannot be appended (``append.parse_appended``'s fallbacks) makes the task rewrite its partition whole
(``task._partition_task``: base and delta rows folded into a new base).

Each partition's "epoch" (in ``storage.PARTITIONS_FILE``) changes whenever its stored rows may have changed other
than by appended rows; the features stage appends to a partition whose epoch it has seen, and recomputes it
otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from isal.isal_zlib import crc32  # zlib's CRC-32 with the same values, faster (ISA-L)

from .. import storage
from ..config import RAW_DICTIONARY_SCHEMA, RAW_SCHEMA, TICKER_COLUMNS
from .append import parse_appended
from .limits import Refused
from .lines import data_lines
from .parse import _reject, parse_csv
from .quarantine import QUARANTINE_SCHEMA
from .read import _open_regular, _read_rest
from .task import _account, _partition_task, _symbol_bounds, _Task
from .write import SUMMARY_KEY, _BufferedParquet, _RawParquet

DELTA, REWRITE = "delta", "rewrite"


class _DeltaTask(NamedTuple):
    whole: _Task  # the partition rewritten whole: what runs when an appended file cannot be appended
    new_files: tuple[tuple[str, str, str | None], ...]  # (rel, symbol, security name): files not seen before
    raw_dir: str  # the staging directories written to
    quarantine_dir: str
    seq: int  # this run's sequence number
    fold: bool  # write a new base (base + delta rows + new rows) instead of returning the new rows
    delta_last: dict  # {symbol: last Date} of the partition's tickers in the shared delta (its footer)


def new_epoch(seq: int) -> str:
    return storage.new_stamp(seq)


def last_dates(files: list[Path]) -> dict[str, str]:
    """Each ticker's last stored Date in a partition's files (read in order: later files hold later rows),
    from the footers ``write._RawParquet`` writes; a file without one has its Symbol and Date read."""
    last: dict[str, str] = {}
    for path in files:
        if isinstance(path, storage.DeltaPart):
            raise TypeError("last_dates reads files; a delta part's dates come from the delta's footer")
        meta = (pq.read_metadata(path).metadata or {}).get(SUMMARY_KEY.encode())
        summary = json.loads(meta) if meta else {}
        if isinstance(summary.get("last_date"), dict):
            last.update(summary["last_date"])
            continue
        table = pq.read_table(path, columns=["Symbol", "Date"])
        grouped = table.group_by("Symbol").aggregate([("Date", "max")])
        last.update(zip(grouped["Symbol"].to_pylist(), grouped["Date_max"].to_pylist()))
    return last


def _parse_whole(task: _Task, rel: str, symbol: str, name: str | None):
    """A new file read and parsed whole, as the partition task does it: (entry, ParsedFile)."""
    entry = {"file": rel[len(task.root) :], "symbol": symbol}
    data = b""
    try:
        fd, _ = _open_regular(os.path.join(task.source_path, rel), task.limits)
        try:
            data = _read_rest(fd, 0, task.limits.max_file_bytes)
        finally:
            os.close(fd)
        entry["crc32"] = f"{crc32(data):08x}"
        parsed = parse_csv(data, symbol, name, entry["file"], task.limits)
    except Refused as exc:
        parsed = _reject(str(exc))
    except Exception as exc:  # never let one file stop the run
        parsed = _reject(f"unreadable: {type(exc).__name__}: {exc}")
    entry.update(parsed.counts)
    if parsed.error:
        entry["error"] = parsed.error
    else:
        _account(entry, data_lines(data, accounted=parsed.counts["rows_read"]))
    return entry, parsed


def _old_rows(files: list[Path], column: str, **kwargs) -> tuple[pa.Table | None, dict[str, tuple[int, int]]]:
    if not files:
        return None, {}
    table = storage.read_partition(files, **kwargs)
    if column not in table.column_names or not table.num_rows:
        return table, {}
    table = storage.sort_by_symbol(table.unify_dictionaries(), column)
    return table, _symbol_bounds(table, column)


def delta_task(t: _DeltaTask) -> tuple[str, str, list[dict], tuple | None]:
    """Parse partition ``t.whole.key``'s new rows: ``(key, mode, entries, new rows)``. The new rows are
    ``([(symbol, security name, rows)], [quarantined rows])`` for the shared delta, or None when the task wrote
    the partition's new base itself (a fold, or a rewrite: mode REWRITE)."""
    task = t.whole
    old_raw_files = list(task.old_raw or ())
    old_q_files = list(task.old_q or ())
    last = last_dates([p for p in old_raw_files if not isinstance(p, storage.DeltaPart)])
    last.update(t.delta_last)
    appended, fallback = parse_appended(list(task.append), task.source_path, task.root, last, task.limits)
    if fallback:
        return task.key, REWRITE, _partition_task(task), None
    new = {symbol: (name, *_parse_whole(task, rel, symbol, name)) for rel, symbol, name in t.new_files}
    names = {c.symbol: c.name for c in task.append}
    entries, pieces, q_pieces = [], [], []
    for symbol in sorted(set(appended) | set(new)):
        if symbol in appended:
            done = appended[symbol]
            pieces.append((symbol, names[symbol], done.table))
            q_pieces.append(done.quarantine)
            entries.append({**done.entry, "update": "appended", "rows_parsed": done.rows_read})
        if symbol in new:
            name, entry, parsed = new[symbol]
            pieces.append((symbol, name, parsed.table))
            q_pieces.append(parsed.quarantine)
            entries.append(entry)
    q_pieces = [q for q in q_pieces if q is not None and q.num_rows]
    if not t.fold:
        return task.key, DELTA, entries, (pieces, q_pieces)

    # Fold: the partition's stored rows (base, legacy deltas, its delta rows) and the new ones, as a new base.
    out_name = storage.partition_file(task.key)
    old_raw, bounds = _old_rows(old_raw_files, "Symbol", read_dictionary=list(TICKER_COLUMNS))
    old_q, q_bounds = _old_rows(old_q_files, "symbol", schema=QUARANTINE_SCHEMA)
    new_by_symbol: dict[str, list] = {}
    for symbol, name, table in pieces:
        new_by_symbol.setdefault(symbol, []).append((name, table))
    q_new = storage.sort_by_symbol(pa.concat_tables(q_pieces), "symbol") if q_pieces else None
    q_new_bounds = _symbol_bounds(q_new, "symbol")
    raw_out = _RawParquet(Path(t.raw_dir) / out_name)
    q_out = _BufferedParquet(Path(t.quarantine_dir) / out_name, QUARANTINE_SCHEMA)
    for symbol in sorted(set(bounds) | set(q_bounds) | set(new_by_symbol) | set(q_new_bounds)):
        if symbol in bounds:
            rows = old_raw.slice(*bounds[symbol])
            raw_out.add(rows, symbol, rows["Security Name"][0].as_py())  # as last written
        for name, table in new_by_symbol.get(symbol, ()):
            raw_out.add(table, symbol, name)
        if symbol in q_bounds:
            q_out.add(old_q.slice(*q_bounds[symbol]))
        if symbol in q_new_bounds:
            q_out.add(q_new.slice(*q_new_bounds[symbol]))
    raw_out.close()
    q_out.close()
    return task.key, DELTA, entries, None


def _run_one(item) -> tuple[str, str, list[dict], tuple | None]:
    if isinstance(item, _DeltaTask):
        return delta_task(item)
    return item.key, REWRITE, _partition_task(item), None


def run_tasks(items: list, jobs: int, executor: str, scheduler: str) -> list[tuple]:
    """Delta tasks and whole-partition tasks, on the stage's worker processes (or the dask cluster). A daily
    update whose tasks are all delta tasks runs them in threads: each parses a few appended lines per file, and
    starting worker processes would cost more than the work (Arrow's CSV reader, file reads and ISA-L's CRC
    release the GIL)."""
    from ..executor import map_tasks
    from .workers import _init_worker, start_worker_server

    only_deltas = all(isinstance(i, _DeltaTask) for i in items)

    def local_pool(workers: int):
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        if only_deltas:
            return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-delta")
        ctx = start_worker_server()
        return ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(None, os.getpid())
        )

    items = sorted(items, key=lambda i: -(i.whole.bytes if isinstance(i, _DeltaTask) else i.bytes))
    return map_tasks(
        _run_one, items, jobs=jobs, executor=executor, scheduler=scheduler, local_pool=local_pool, name="ingest"
    )


def eligible_keys(plan: dict, catalog, previous: dict, incremental_folder: bool) -> dict[str, list]:
    """Partitions the delta path can take: ``{key: [new files (SourceFile)]}``. Each of its files is unchanged,
    appended to (``plan["append"]``) or new (never seen, its ticker not stored), and none was removed."""
    if not incremental_folder:
        return {}
    stored_symbols = {old["symbol"] for old in previous.values()}
    current = {f.rel for f in catalog.files}
    blocked = {storage.partition_key(old["symbol"]) for rel, old in previous.items() if rel not in current}
    keys: dict[str, list] = {}
    for f in catalog.files:
        key = storage.partition_key(f.symbol)
        if key not in plan["rewrite"] or key in blocked:
            continue
        keys.setdefault(key, [])
        if f.rel in plan["read"]:
            if f.rel in previous or f.symbol in stored_symbols:
                blocked.add(key)
            else:
                keys[key].append(f)
    return {k: v for k, v in keys.items() if k not in blocked}


def write_delta(
    raw_dir: Path,
    q_dir: Path,
    seq: int,
    previous_raw: dict,
    previous_q: dict,
    dropped: set[str],
    new_rows: dict[str, tuple],
) -> None:
    """Write this version's shared delta files (raw and quarantine) into the staging directories.

    ``previous_raw`` / ``previous_q``: ``{key: DeltaPart}`` of the previous version's deltas; ``dropped``: the keys
    whose delta rows went into a new base (rewritten or folded); ``new_rows``: ``{key: (pieces, q pieces)}`` from
    the delta tasks. Each key's group: its previous delta rows, then its new rows (per ticker: old, then new).
    Built as one table (the previous delta is small: read whole, once) and written one row group per key."""
    name = storage.shared_delta_file(seq)
    stamp = storage.new_stamp(seq)
    pieces = [p for key in sorted(new_rows) for p in new_rows[key][0] if p[2] is not None and p[2].num_rows]
    raw = _merged(_whole(previous_raw, read_dictionary=list(TICKER_COLUMNS)), _new_raw(pieces), "Symbol", dropped)
    if raw is not None:
        raw = raw.cast(RAW_DICTIONARY_SCHEMA)
        writer = storage.DeltaWriter(
            Path(raw_dir) / name, RAW_DICTIONARY_SCHEMA, arrow_schema=False, options=storage.parquet_options(RAW_SCHEMA)
        )
        grown = {storage.partition_key(s) for s, _, _ in pieces}
        for key, (start, length) in _key_runs(raw["Symbol"]).items():
            writer.add(key, raw.slice(start, length), stamp if key in grown else previous_raw[key].stamp)
        writer.close({SUMMARY_KEY: json.dumps(_summary(raw))})
    q_new = [q for key in sorted(new_rows) for q in new_rows[key][1]]
    q_new = pa.concat_tables([q.cast(QUARANTINE_SCHEMA) for q in q_new]) if q_new else None
    q = _merged(_whole(previous_q, schema=QUARANTINE_SCHEMA), q_new, "symbol", dropped)
    if q is not None:
        writer = storage.DeltaWriter(Path(q_dir) / name, QUARANTINE_SCHEMA)
        grown = set(_key_runs(q_new["symbol"])) if q_new is not None else set()
        for key, (start, length) in _key_runs(q["symbol"]).items():
            writer.add(key, q.slice(start, length), stamp if key in grown else previous_q[key].stamp)
        writer.close()


def _whole(parts: dict, read_dictionary=None, schema=None) -> pa.Table | None:
    """The previous delta file read whole: it is small, and one read beats one per key."""
    if not parts:
        return None
    path = next(iter(parts.values())).path
    table = pq.ParquetFile(path, read_dictionary=read_dictionary).read()
    return table.cast(schema) if schema is not None else table


def _new_raw(pieces: list) -> pa.Table | None:
    """The delta tasks' new rows ``(symbol, security name, rows)`` as one table with dictionary ticker columns
    (built per piece, not hashed per row), in ``RAW_DICTIONARY_SCHEMA``."""
    if not pieces:
        return None
    counts = np.array([t.num_rows for _, _, t in pieces], np.int64)
    bodies = [t.select(_BODY_SCHEMA.names) for _, _, t in pieces]
    try:  # the parser's tables share one schema: no cast per piece
        body = pa.concat_tables(bodies).cast(_BODY_SCHEMA)
    except pa.ArrowInvalid:
        body = pa.concat_tables([t.cast(_BODY_SCHEMA) for t in bodies])
    columns = {}
    for pos, column in enumerate(TICKER_COLUMNS):
        values = [p[pos] for p in pieces]
        unique = list(dict.fromkeys(v for v in values if v is not None))
        code = {v: i for i, v in enumerate(unique)}
        idx = np.repeat(np.array([code.get(v, -1) for v in values], np.int32), counts)
        columns[column] = pa.DictionaryArray.from_arrays(pa.array(idx, mask=idx < 0), pa.array(unique, pa.string()))
    return pa.table({**columns, **{c: body[c] for c in body.column_names}}, schema=RAW_DICTIONARY_SCHEMA)


_BODY_SCHEMA = pa.schema([f for f in RAW_SCHEMA if f.name not in TICKER_COLUMNS])


def _merged(old: pa.Table | None, new: pa.Table | None, column: str, dropped: set[str]) -> pa.Table | None:
    """The previous delta's rows (sorted by key, Symbol, Date) and the new ones (each dated after its ticker's
    stored rows), without the ``dropped`` partitions, stably sorted by Symbol (so by partition key too:
    key order is Symbol order): per ticker its old rows, then its new ones. None when no row is left."""
    tables = [t for t in (old, new) if t is not None and t.num_rows]
    if not tables:
        return None
    if len(tables) > 1 and pa.types.is_dictionary(tables[0].schema.field(column).type):
        tables = [t.cast(tables[0].schema) for t in tables]
    table = pa.concat_tables(tables)
    if pa.types.is_dictionary(table.schema.field(column).type):
        table = table.unify_dictionaries()
    if dropped:
        keys = _row_keys(table[column])
        table = table.filter(pa.array(~np.isin(keys, list(dropped))))
    table = storage.sort_by_symbol(table, column).combine_chunks()
    return table if table.num_rows else None


def _row_keys(values: pa.ChunkedArray) -> np.ndarray:
    """Each row's partition key (computed once per distinct Symbol)."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not pa.types.is_dictionary(array.type):
        array = pc.dictionary_encode(array)
    key_of = np.array([storage.partition_key(s) for s in array.dictionary.to_pylist()] or [""], dtype=object)
    return key_of[array.indices.to_numpy(zero_copy_only=False)]


def _key_runs(values) -> dict[str, tuple[int, int]]:
    """``{key: (offset, length)}`` of a table sorted by Symbol (a key's rows are contiguous)."""
    keys = _row_keys(values)
    if not len(keys):
        return {}
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.append(change, len(keys))
    return {str(keys[a]): (int(a), int(b - a)) for a, b in zip(starts, ends)}


def _summary(table: pa.Table) -> dict:
    """The raw footer's summary (``write.SUMMARY_KEY``, as ``_RawParquet`` writes it) of a table sorted by Symbol
    then Date: rows per Symbol and per year, first and last Date, each Symbol's last Date."""
    symbols = table["Symbol"].combine_chunks()
    names = symbols.dictionary.to_pylist()
    codes = symbols.indices.to_numpy(zero_copy_only=False)
    ends = np.append(np.flatnonzero(codes[1:] != codes[:-1]), len(codes) - 1)
    dates = table["Date"].combine_chunks()
    years = pc.value_counts(pc.utf8_slice_codeunits(dates, 0, 4))
    bounds = pc.min_max(dates).as_py()
    return {
        "rows_per_symbol": storage.dictionary_value_counts(symbols),
        "rows_per_year": dict(zip(years.field("values").to_pylist(), years.field("counts").to_pylist())),
        "date_min": bounds["min"],
        "date_max": bounds["max"],
        "last_date": {names[codes[e]]: d for e, d in zip(ends.tolist(), dates.take(pa.array(ends)).to_pylist())},
    }
