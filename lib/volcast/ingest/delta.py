"""Daily appends written as delta files (issue 16): a partition whose files only grew by appended lines (or
gained new ticker files) gets its new rows in one delta file beside its base file, instead of a rewrite.

The delta written holds every row appended since the base was last written: the previous delta's rows, then
this run's (a partition is at most two files). When ``storage.fold_due`` says so (staggered by key and the
run's sequence number), or when there is no base yet, the rows go into a new base file instead (compaction).
Rows are checked against each ticker's last stored Date, read from the partition files' footers, not from
their rows. An appended file that cannot be appended (``append.parse_appended``'s fallbacks) makes the task
rewrite its partition whole (``task._partition_task``: base and deltas folded into a new base).

Each partition's "epoch" (in ``storage.PARTITIONS_FILE``) changes whenever its stored rows may have changed other
than by appended rows; the features stage appends to a partition whose epoch it has seen, and recomputes it
otherwise.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from isal.isal_zlib import crc32  # zlib's CRC-32 with the same values, faster (ISA-L)

from .. import storage
from ..config import TICKER_COLUMNS
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
    seq: int  # this run's sequence number (the delta file's)
    fold: bool  # write a new base (base + delta + new rows) instead of a delta


def new_epoch(seq: int) -> str:
    return f"{seq}-{uuid.uuid4().hex[:8]}"


def last_dates(files: list[Path]) -> dict[str, str]:
    """Each ticker's last stored Date in a partition's files (read in order: later files hold later rows),
    from the footers ``write._RawParquet`` writes; a file without one has its Symbol and Date read."""
    last: dict[str, str] = {}
    for path in files:
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


def delta_task(t: _DeltaTask) -> tuple[str, str, list[dict]]:
    """Write partition ``t.whole.key``'s new rows as its delta (or new base); ``(key, mode, entries)``."""
    task = t.whole
    old_raw_files = storage.partition_members(task.previous_raw) if task.previous_raw else []
    old_q_files = storage.partition_members(task.previous_quarantine) if task.previous_quarantine else []
    last = last_dates(old_raw_files)
    appended, fallback = parse_appended(list(task.append), task.source_path, task.root, last, task.limits)
    if fallback:
        return task.key, REWRITE, _partition_task(task)
    new = {symbol: (name, *_parse_whole(task, rel, symbol, name)) for rel, symbol, name in t.new_files}
    names = {c.symbol: c.name for c in task.append}

    # The rows the written file carries over: the previous delta (base + delta when folding).
    base_name = storage.partition_file(task.key)
    if t.fold:
        out_name, raw_from, q_from = base_name, old_raw_files, old_q_files
    else:
        out_name = storage.delta_file(task.key, t.seq)
        raw_from = [p for p in old_raw_files if p.name != base_name]
        q_from = [p for p in old_q_files if p.name != base_name]
    old_raw, bounds = _old_rows(raw_from, "Symbol", read_dictionary=list(TICKER_COLUMNS))
    old_q, q_bounds = _old_rows(q_from, "symbol", schema=QUARANTINE_SCHEMA)

    raw_out = _RawParquet(Path(t.raw_dir) / out_name)
    q_out = _BufferedParquet(Path(t.quarantine_dir) / out_name, QUARANTINE_SCHEMA)
    entries = []
    for symbol in sorted(set(bounds) | set(q_bounds) | set(appended) | set(new)):
        if symbol in bounds:
            rows = old_raw.slice(*bounds[symbol])
            raw_out.add(rows, symbol, rows["Security Name"][0].as_py())  # as last written
        if symbol in q_bounds:
            q_out.add(old_q.slice(*q_bounds[symbol]))
        if symbol in appended:
            done = appended[symbol]
            raw_out.add(done.table, symbol, names[symbol])
            q_out.add(done.quarantine)
            entries.append({**done.entry, "update": "appended", "rows_parsed": done.rows_read})
        if symbol in new:
            name, entry, parsed = new[symbol]
            raw_out.add(parsed.table, symbol, name)
            q_out.add(parsed.quarantine)
            entries.append(entry)
    raw_out.close()
    q_out.close()
    return task.key, DELTA, entries


def _run_one(item) -> tuple[str, str, list[dict]]:
    if isinstance(item, _DeltaTask):
        return delta_task(item)
    return item.key, REWRITE, _partition_task(item)


def run_tasks(items: list, jobs: int, executor: str, scheduler: str) -> list[tuple[str, str, list[dict]]]:
    """Delta tasks and whole-partition tasks, on the stage's worker processes (or the dask cluster)."""
    from ..executor import map_tasks
    from .workers import _init_worker, start_worker_server

    def local_pool(workers: int):
        from concurrent.futures import ProcessPoolExecutor

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
