"""One partition task: read its files, parse them (jointly where clean), check every line is accounted for,
write its raw and quarantine files."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal.isal_zlib import crc32  # zlib's CRC-32 with the same values, faster (ISA-L)

from .. import storage
from ..config import TICKER_COLUMNS
from .append import Appended, Candidate, parse_appended
from .batch import BATCH_BYTES, parse_csv_batch
from .limits import DEFAULT_LIMITS, Limits, Refused
from .lines import count_lines, data_lines
from .parse import ParsedFile, _reject, parse_csv
from .quarantine import QUARANTINE_SCHEMA
from .read import _JoinedBodies, _read_zip_member
from .write import _BufferedParquet, _RawParquet

_PROGRESS = None  # a multiprocessing queue in worker processes (set by workers._init_worker): files done


class _Task(NamedTuple):
    key: str
    source_path: str
    root: str
    parse: list[tuple[str, str, str | None]]  # (rel, symbol, security name) to read, in Symbol order
    keep_symbols: list[str]  # symbols whose rows come from the previous version unchanged
    previous_raw: str | None  # previous partition files (incremental runs)
    previous_quarantine: str | None
    raw_out: str
    quarantine_out: str
    bytes: int
    limits: Limits = DEFAULT_LIMITS
    append: tuple[Candidate, ...] = ()  # files expected to have grown by appended lines (append.py)
    # The partition's previous members (``storage.partition_groups`` of the previous version: base, legacy
    # deltas, its part of the shared delta); None: found from ``previous_raw`` / ``previous_quarantine``.
    old_raw: tuple | None = None
    old_q: tuple | None = None


def _old_members(members: tuple | None, base: str | None) -> list:
    if members is not None:
        return list(members)
    return storage.partition_members(base) if base else []


# One per process (per thread: a daily update's delta tasks run in threads, and may fall back to this task),
# reused by every partition task it runs.
_JOINED = threading.local()


def _partition_task(task: _Task) -> list[dict]:
    """Parse a partition's files and write its raw and quarantine Parquet files. Returns per-file entries."""
    old_raw = old_q = None
    carried = [*task.keep_symbols, *(c.symbol for c in task.append)]  # symbols whose stored rows stay
    old_bounds: dict[str, tuple[int, int]] = {}
    old_q_bounds: dict[str, tuple[int, int]] = {}
    # A partition's previous rows: its base file and its delta rows (daily appends), sorted by Symbol.
    old_raw_files = _old_members(task.old_raw, task.previous_raw) if carried else []
    old_q_files = _old_members(task.old_q, task.previous_quarantine) if carried else []
    if old_raw_files:
        # The ticker columns as dictionaries (the writer takes them per ticker, not per row): no string per row.
        old_raw = storage.read_partition(old_raw_files, read_dictionary=list(TICKER_COLUMNS))
        old_raw, old_bounds = _carried(old_raw, "Symbol", carried)
    if old_q_files:
        old_q = storage.read_partition(old_q_files, schema=QUARANTINE_SCHEMA)
        old_q, old_q_bounds = _carried(storage.sort_by_symbol(old_q, "symbol"), "symbol", carried)
    raw_out = _RawParquet(Path(task.raw_out))
    q_out = _BufferedParquet(Path(task.quarantine_out), QUARANTINE_SCHEMA)

    # Grown files: parse their appended lines only; a file that cannot be appended is read whole.
    appended: dict[str, Appended] = {}
    parse = list(task.parse)
    if task.append:
        last_dates = {s: old_raw["Date"][o + n - 1].as_py() for s, (o, n) in old_bounds.items()}
        appended, fallback = parse_appended(list(task.append), task.source_path, task.root, last_dates, task.limits)
        for c in task.append:
            if c.symbol in fallback:
                parse.append((c.rel, c.symbol, c.name))
                old_bounds.pop(c.symbol, None)
                old_q_bounds.pop(c.symbol, None)
        fell_back = {c.rel[len(task.root) :]: fallback[c.symbol] for c in task.append if c.symbol in fallback}
    else:
        fell_back = {}

    # Merge previous rows of unchanged tickers with freshly parsed ones, in Symbol order.
    keep = sorted(task.keep_symbols)
    pieces: list[tuple[str, Any]] = [(s, None) for s in keep] + [(sym, (rel, name)) for rel, sym, name in parse]
    pieces += [(s, "appended") for s in appended]
    pieces.sort(key=lambda p: p[0])
    entries = []
    # (entry, the file's bytes, symbol, security name, result so far, index of its body in `joined`)
    batch: list[tuple[dict, bytes | None, str, str | None, ParsedFile | None, int | None]] = []
    batch_bytes = 0
    joined = None
    if os.path.isdir(task.source_path):  # zip members are read as bytes
        joined = getattr(_JOINED, "bodies", None)
        if joined is None:
            joined = _JOINED.bodies = _JoinedBodies()
        joined.clear()

    def flush() -> None:
        """Parse the batch (jointly where files are clean, else file by file) and write it in order."""
        nonlocal batch, batch_bytes
        fast: dict[int, ParsedFile | None] = {}
        readable = [k for k, b in enumerate(batch) if b[1] is not None]
        if len(readable) > 1:
            try:
                fast.update(
                    zip(
                        readable,
                        parse_csv_batch(
                            [batch[k][1:4] for k in readable],
                            ticker_columns=False,
                            max_line_bytes=task.limits.max_line_bytes,
                        ),
                    )
                )
            except Exception:  # the file-by-file path below decides, and reports what is wrong
                pass
        in_buffer = [k for k, b in enumerate(batch) if b[5] is not None]
        if len(in_buffer) > 1:  # one file alone: parse_csv is as fast
            try:
                fast.update(zip(in_buffer, joined.parse([batch[k][2:4] for k in in_buffer])))
            except Exception:
                pass
        for k, (entry, data, symbol, name, parsed, body) in enumerate(batch):
            if parsed is None:
                parsed = fast.get(k)
            if parsed is None:
                try:
                    parsed = parse_csv(
                        data if body is None else joined.body(body), symbol, name, entry["file"], task.limits
                    )
                except Exception as exc:  # never let one file stop the run
                    parsed = _reject(f"unreadable: {type(exc).__name__}: {exc}")
            counted = entry.pop("physical_lines", None)
            entry.update(parsed.counts)
            if parsed.error:
                entry["error"] = parsed.error
            else:
                _account(
                    entry,
                    joined.lines(body, parsed.counts["rows_read"])
                    if body is not None
                    else data_lines(data, accounted=parsed.counts["rows_read"], counted=counted),
                )
            raw_out.add(parsed.table, symbol, name)
            q_out.add(parsed.quarantine)
            entries.append(entry)
        if _PROGRESS is not None and batch:
            _PROGRESS.put(len(batch))
        batch, batch_bytes = [], 0
        if joined is not None:
            joined.clear()

    for symbol, item in pieces:
        if item == "appended":
            flush()  # keep Symbol order: earlier files first
            done = appended[symbol]
            if symbol in old_bounds:
                old = old_raw.slice(*old_bounds[symbol])
                raw_out.add(old, symbol, old["Security Name"][0].as_py())
            raw_out.add(done.table, symbol, next(c.name for c in task.append if c.symbol == symbol))
            if symbol in old_q_bounds:
                q_out.add(old_q.slice(*old_q_bounds[symbol]))
            q_out.add(done.quarantine)
            entries.append({**done.entry, "update": "appended", "rows_parsed": done.rows_read})
            continue
        if item is None:
            flush()  # keep Symbol order: earlier files first
            if symbol in old_bounds:
                old = old_raw.slice(*old_bounds[symbol])
                raw_out.add(old, symbol, old["Security Name"][0].as_py())  # as last written
            if symbol in old_q_bounds:
                q_out.add(old_q.slice(*old_q_bounds[symbol]))
            continue
        rel, name = item
        entry: dict[str, Any] = {"file": rel[len(task.root) :], "symbol": symbol}
        if entry["file"] in fell_back:
            entry["update_reason"] = fell_back[entry["file"]]
        try:
            if joined is not None:
                crc, data = joined.read(os.path.join(task.source_path, rel), task.limits)
                body = None if data is not None else len(joined.spans) - 1
                size = len(data) if data is not None else joined.spans[-1][1] - joined.spans[-1][0]
            else:
                data = _read_zip_member(task.source_path, rel)
                crc, body, size = crc32(data), None, len(data)
                entry["physical_lines"] = count_lines(data)  # now, while the bytes are in cache
            entry["crc32"] = f"{crc:08x}"
            batch.append((entry, data, symbol, name, None, body))
            batch_bytes += size
        except Refused as exc:
            batch.append((entry, None, symbol, name, _reject(str(exc)), None))
        except Exception as exc:  # never let one file stop the run
            batch.append((entry, None, symbol, name, _reject(f"unreadable: {type(exc).__name__}: {exc}"), None))
        if batch_bytes >= BATCH_BYTES:
            flush()
    flush()
    raw_out.close()
    q_out.close()
    return entries


class LinesNotAccounted(RuntimeError):
    """A file's data lines differ from its kept plus quarantined rows: rows would be lost silently."""


def _account(entry: dict, lines: int) -> None:
    """Record the file's non-blank data lines, counted apart from the parser; stop the run if any is
    neither kept nor quarantined (the stage then publishes nothing)."""
    entry["lines"] = lines
    if lines != entry["rows_kept"] + entry["rows_quarantined"]:
        raise LinesNotAccounted(
            f"ingest lost rows of {entry['file']}: {lines:,} data lines, but {entry['rows_kept']:,} kept + "
            f"{entry['rows_quarantined']:,} quarantined; nothing was published (a bug in ingest: please report "
            "it with that file)"
        )


def _carried(table: pa.Table, column: str, carried: list[str]) -> tuple[pa.Table, dict[str, tuple[int, int]]]:
    """The rows of the ``carried`` symbols of a table sorted by ``column``, and their bounds (no copy when
    every symbol is carried, the daily case)."""
    table = table.unify_dictionaries()
    bounds = _symbol_bounds(table, column)
    if set(bounds) - set(carried):
        table = table.filter(pc.is_in(table[column].cast(pa.string()), pa.array(carried, pa.string())))
        bounds = _symbol_bounds(table, column)
    return table, bounds


def _symbol_bounds(table: pa.Table, column: str = "Symbol") -> dict[str, tuple[int, int]]:
    """{symbol: (offset, length)} of a table sorted by that column (plain strings or a dictionary)."""
    if table is None or not table.num_rows:
        return {}
    values = table[column].combine_chunks()
    if pa.types.is_dictionary(values.type):
        codes = values.indices.to_numpy(zero_copy_only=False)
        ends = np.append(np.flatnonzero(codes[1:] != codes[:-1]) + 1, len(codes))
        names = values.dictionary.to_pylist()
        values = [names[codes[e - 1]] for e in ends]
        starts = np.concatenate([[0], ends[:-1]])
        return {v: (int(s), int(e - s)) for v, s, e in zip(values, starts, ends)}
    ree = pc.run_end_encode(values)
    ends = ree.run_ends.to_numpy()
    values = ree.values.to_pylist()
    starts = np.concatenate([[0], ends[:-1]])
    return {v: (int(s), int(e - s)) for v, s, e in zip(values, starts, ends)}
