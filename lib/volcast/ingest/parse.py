"""Ingest: a Kaggle-layout source (folder, .zip, ``kaggle`` download or generated ``demo``) to the raw dataset.

Layers, from pure to I/O:

* ``parse_csv`` / ``parse_meta``: bytes in, Arrow tables and counts out. Columns are matched by header
  name; every row either takes ``config.RAW_SCHEMA`` or goes to quarantine with its line and reason.
  Vectorised with pyarrow; Python loops run only over rows that failed.
* sources: ``resolve_source``, ``scan_source``, ``download_kaggle``, ``generate_demo_market``.
* ``run``: parses files in parallel, one task per storage partition (two-letter ticker prefix),
  each writing its Parquet file into the staging directory of ``storage.publish_dir``; incremental
  when the same source was ingested before (only partitions whose files changed are rewritten).
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import multiprocessing as mp
import os
import queue as queue_mod
import re
import time
import zipfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from isal.isal_zlib import crc32  # zlib's CRC-32, same values, ~6x faster (ISA-L): x3 checksums 1.05 -> 0.18 s CPU

from .. import config, storage
from ..config import CSV_COLUMNS, PRICE_COLUMNS, RAW_DICTIONARY_SCHEMA, RAW_SCHEMA, TICKER_COLUMNS, Layout
from ..errors import UserError

STAGE = "ingest"
SUMMARY_KEY = "volcast.summary"  # a raw partition's footer: rows per Symbol and per year, first and last Date
STATE_FILE = "_ingest_state.json"  # inside the raw dataset version: published atomically with the data
STATE_VERSION = 1
BOM = b"\xef\xbb\xbf"
INT64_MAX = 2**63 - 1
ROW_GROUP_ROWS = 1 << 20
QUARANTINE_TEXT_CHARS = 300

QUARANTINE_SCHEMA = pa.schema(
    [
        ("file", pa.string()),  # path inside the source, e.g. stocks/BEP.csv
        ("symbol", pa.string()),
        ("line", pa.int64()),  # 1-based physical line of the CSV (the header is line 1)
        ("kind", pa.string()),  # short category: missing, non-numeric, bad-date, duplicate-date...
        ("reason", pa.string()),
        ("text", pa.string()),  # the raw line (truncated), decoded leniently
    ]
)

# Arrow's float parser accepts these forms (checked against pyarrow 26); the regex only splits
# "can be cast" from "cannot" in the slow path, the cast itself decides the value.
_FLOAT_RE = r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)$"
_FLOAT_PY = re.compile(_FLOAT_RE, re.IGNORECASE)
_DATE_RE = r"^\d{4}-\d{2}-\d{2}$"


# =============================================================================================
# Parsing core (pure: bytes in, tables out)


class ParsedFile(NamedTuple):
    table: pa.Table | None  # RAW_SCHEMA rows kept, sorted by Date (None when the file is rejected)
    quarantine: pa.Table | None  # QUARANTINE_SCHEMA rows set aside (None when there are none)
    counts: dict  # rows_read, rows_kept, rows_quarantined, zero_volume_rows, nonpositive_price_rows
    error: str | None  # why the whole file was rejected


def _zero_counts() -> dict:
    return {"rows_read": 0, "rows_kept": 0, "rows_quarantined": 0, "zero_volume_rows": 0,
            "nonpositive_price_rows": 0}


def _reject(reason: str) -> ParsedFile:
    return ParsedFile(None, None, _zero_counts(), reason)


def _header_fields(line: bytes) -> list[str]:
    text = line.rstrip(b"\r").decode("utf-8", errors="replace")
    try:
        return next(csv.reader([text]), [])
    except csv.Error:  # e.g. a stray carriage return: no header we could match anyway
        return text.split(",")


def _match_columns(fields: list[str]) -> tuple[dict[str, int] | None, str | None]:
    """Required column -> its index in the header (case and surrounding spaces ignored)."""
    normal = [f.strip().lower() for f in fields]
    found, missing, twice = {}, [], []
    for name in CSV_COLUMNS:
        hits = [i for i, n in enumerate(normal) if n == name.lower()]
        if not hits:
            missing.append(name)
        elif len(hits) > 1:
            twice.append(name)
        else:
            found[name] = hits[0]
    if missing or twice:
        shown = ",".join(fields)[:120]
        parts = []
        if missing:
            parts.append("missing required column" + ("s " if len(missing) > 1 else " ") + ", ".join(missing))
        if twice:
            parts.append("column appears twice: " + ", ".join(twice))
        hint = " (header has non-UTF-8 bytes)" if "\ufffd" in shown else ""
        return None, f"{'; '.join(parts)}; header is '{shown}'{hint}"
    return found, None


def _bad_utf8_lines(body: bytes) -> set[int]:
    """0-based body lines that are not valid UTF-8 (only called when the file is not ASCII)."""
    try:
        body.decode("utf-8")
        return set()
    except UnicodeDecodeError:
        pass
    bad = set()
    for i, (start, end) in enumerate(_all_line_spans(body).tolist()):
        try:
            body[start:end].decode("utf-8")
        except UnicodeDecodeError:
            bad.add(i)
    return bad


def _read_body(body: pa.Buffer, n_fields: int, cols: dict[str, int], typed: bool):
    """Read the data lines (no header) with Arrow; rows with a wrong field count are collected."""
    invalid: list[tuple[int, int]] = []  # (1-based ordinal among non-blank lines, fields found)

    def on_invalid(row):
        invalid.append((row.number, row.actual_columns))
        return "skip"

    names = [f"c{i}" for i in range(n_fields)]
    if typed:
        types = {f"c{cols['Date']}": pa.string(), f"c{cols['Volume']}": pa.int64()}
        types.update({f"c{cols[c]}": pa.float64() for c in PRICE_COLUMNS})
    else:
        types = {f"c{cols[c]}": pa.string() for c in CSV_COLUMNS}
    table = pcsv.read_csv(
        pa.BufferReader(body),
        read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 22),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(
            column_types=types, include_columns=[f"c{cols[c]}" for c in CSV_COLUMNS],
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True, check_utf8=False,
        ),
    )
    table = table.rename_columns(list(CSV_COLUMNS))
    return table, invalid


def _np_bool(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _texts(arr, rows=None) -> list[str | None]:
    """Python strings of (some) values; lenient: columns are read without UTF-8 checks."""
    if rows is not None:
        arr = arr.take(pa.array(rows, pa.int64()))
    return [None if v is None else v.decode("utf-8", errors="replace") for v in arr.cast(pa.binary()).to_pylist()]


def _cast_float(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """string -> float64, unparseable values -> null (vectorised; Python only if Arrow and the regex disagree)."""
    try:
        return pc.cast(col, pa.float64())
    except pa.ArrowInvalid:
        pass
    ok = pc.match_substring_regex(col, _FLOAT_RE, ignore_case=True)
    try:
        return pc.cast(pc.if_else(ok, col, pa.scalar(None, pa.string())), pa.float64())
    except pa.ArrowInvalid:
        out = []
        for v in _texts(col):
            try:
                out.append(float(v) if v is not None and _FLOAT_PY.match(v) else None)
            except ValueError:
                out.append(None)
        return pa.chunked_array([pa.array(out, pa.float64())])


def _volume_text_value(text: str) -> tuple[int | None, str | None]:
    """One Volume text that the vectorised path could not take -> (value, None) or (None, problem)."""
    if not _FLOAT_PY.match(text):
        return None, "non-numeric"
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None, "non-numeric"
    if not value.is_finite():
        return None, "non-finite"
    if value != value.to_integral_value():
        return None, "non-integral"
    if value < 0:
        return None, "negative"
    if value > INT64_MAX:
        return None, "beyond int64"
    return int(value), None


def _cast_volume(col: pa.ChunkedArray) -> tuple[pa.Array, dict[int, str]]:
    """string -> int64; ``5254.0`` is 5254. Returns values (null where bad) and {row: problem}."""
    try:
        return pc.cast(col, pa.int64()).combine_chunks(), {}
    except pa.ArrowInvalid:
        pass
    col = col.combine_chunks()
    # Plain digits, optionally "+" and a ".000" tail, at most 18 digits: exact in int64, vectorised.
    stripped = pc.replace_substring_regex(col, r"^\+?(\d{1,18})(\.0*)?$", r"\1")
    easy = pc.match_substring_regex(stripped, r"^\d{1,18}$")
    values = pc.cast(pc.if_else(easy, stripped, pa.scalar(None, pa.string())), pa.int64())
    rest = np.flatnonzero(~_np_bool(easy) & _np_bool(pc.is_valid(col)))
    if not len(rest):
        return values, {}
    problems, fixed = {}, {}
    texts = _texts(col, rest)
    for row, text in zip(rest.tolist(), texts):
        value, problem = _volume_text_value(text)
        if problem:
            problems[row] = problem
        else:
            fixed[row] = value
    if fixed:
        mask = _np_bool(pc.is_null(values))
        filled = np.array(pc.fill_null(values, 0).to_numpy(zero_copy_only=False), dtype=np.int64)  # exact
        for row, value in fixed.items():
            filled[row] = value
            mask[row] = False
        values = pa.array(filled, pa.int64(), mask=mask)
    return values, problems


def _valid_dates(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(ok mask, day numbers) for YYYY-MM-DD strings that are real calendar dates."""
    try:
        days = pc.cast(col, pa.date32())
        ok = _np_bool(pc.is_valid(days))
    except pa.ArrowInvalid:
        shape = pc.match_substring_regex(col, _DATE_RE)
        candidate = pc.if_else(shape, col, pa.scalar(None, pa.string()))
        parsed = pc.strptime(candidate, format="%Y-%m-%d", unit="s", error_is_null=True)
        # strptime rolls 2021-02-30 over to March: a real date prints back as the same text.
        back = pc.strftime(parsed, format="%Y-%m-%d")
        ok = _np_bool(pc.equal(back, candidate))
        days = pc.cast(pc.cast(parsed, pa.timestamp("s")), pa.date32())
    # Year 0000 parses in Arrow but is no calendar date.
    ok &= _np_bool(pc.greater_equal(col, "0001-01-01"))
    day_numbers = np.asarray(pc.fill_null(days.cast(pa.int32()), 0).to_numpy(zero_copy_only=False), np.int64)
    return ok, day_numbers


def _all_line_spans(body: bytes) -> np.ndarray:
    """[start, end) of every physical line, with Arrow's line ends: "\r\n", "\n" or a lone "\r"."""
    arr = np.frombuffer(body, dtype=np.uint8)
    if not len(arr):
        return np.zeros((0, 2), np.int64)
    cr = arr == 13
    lf = arr == 10
    next_lf = np.concatenate([lf[1:], [False]])
    prev_cr = np.concatenate([[False], cr[:-1]])
    term = np.flatnonzero(cr | (lf & ~prev_cr))  # where each line ending starts
    term_len = np.where(cr[term] & next_lf[term], 2, 1)
    starts = np.concatenate([[0], term + term_len])
    ends = np.concatenate([term, [len(arr)]])
    if starts[-1] == len(arr):  # the empty tail after the last line end is not a line
        starts, ends = starts[:-1], ends[:-1]
    return np.stack([starts, ends], axis=1)


def _line_spans(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """0-based body line numbers of the non-blank lines (what Arrow counts as rows) and their spans."""
    spans = _all_line_spans(body)
    nonblank = np.flatnonzero(spans[:, 1] > spans[:, 0])
    return nonblank, spans[nonblank]


def parse_csv(data: bytes, symbol: str, security_name: str | None = None, file: str = "") -> ParsedFile:
    """One ticker's CSV bytes -> rows that take RAW_SCHEMA, rows set aside, counts. Never raises on data."""
    if not data:
        return _reject("empty file (0 bytes)")
    if data.find(b"\x00") != -1:
        return _reject("binary file (contains NUL bytes), not a CSV")
    start = len(BOM) if data.startswith(BOM) else 0
    nl = data.find(b"\n", start)
    header_end = len(data) if nl == -1 else nl
    cr = data.find(b"\r", start, header_end)
    if cr != -1 and cr + 1 != header_end:  # a lone "\r" ends the header (old Mac line ends)
        header_end = cr
    fields = _header_fields(data[start:header_end])
    if not any(f.strip() for f in fields):
        return _reject("no header line")
    cols, problem = _match_columns(fields)
    if problem:
        return _reject(problem)
    body_offset = header_end + 1
    body = data[body_offset:] if body_offset < len(data) else b""
    if len(body) < 256 and not body.strip(b"\r\n\t "):
        return _reject("header only: no data rows")
    bad_utf8 = set() if data.isascii() else _bad_utf8_lines(body)
    if bad_utf8:
        # Replace undecodable bytes (U+FFFD) so no value is invalid UTF-8; newlines are untouched,
        # so line numbers stay exact and the lines listed in bad_utf8 are flagged in quarantine.
        body = body.decode("utf-8", errors="replace").encode("utf-8")
    buf = pa.py_buffer(body)

    try:
        table, invalid = _read_body(buf, len(fields), cols, typed=True)
        typed = True
    except pa.ArrowInvalid:
        try:
            table, invalid = _read_body(buf, len(fields), cols, typed=False)
        except pa.ArrowInvalid as exc:
            return _reject(f"not readable as CSV: {str(exc).splitlines()[0][:200]}")
        typed = False
    n = table.num_rows
    if n == 0 and not invalid:
        return _reject("header only: no data rows")
    if typed and not invalid:
        clean = _clean_file(table, symbol, security_name)
        if clean is not None:
            return clean

    # Per-column problems as numpy masks, plus the values that passed.
    problems: dict[str, dict[str, np.ndarray]] = {}  # kind -> column -> mask
    volume_problem_rows: dict[int, str] = {}

    def flag(kind: str, column: str, mask: np.ndarray) -> None:
        if mask.any():
            problems.setdefault(kind, {})[column] = mask

    if not typed:
        # Arrow's typed CSV reader ignores spaces around numbers; the string path does the same.
        for name in (*PRICE_COLUMNS, "Volume"):
            table = table.set_column(table.schema.get_field_index(name), name, pc.ascii_trim_whitespace(table[name]))
    prices = {}
    for name in PRICE_COLUMNS:
        raw = table[name]
        missing = _np_bool(pc.is_null(raw))
        values = raw if typed else _cast_float(raw)
        parsed = _np_bool(pc.is_valid(values))
        flag("missing", name, missing)
        flag("non-numeric", name, ~missing & ~parsed)
        flag("non-finite", name, parsed & ~_np_bool(pc.is_finite(values)))
        prices[name] = values
    raw_vol = table["Volume"]
    vol_missing = _np_bool(pc.is_null(raw_vol))
    flag("missing", "Volume", vol_missing)
    if typed:
        volume = raw_vol.combine_chunks()
    else:
        volume, volume_problem_rows = _cast_volume(raw_vol)
        for kind in ("non-numeric", "non-finite", "non-integral", "beyond int64"):
            rows = [r for r, p in volume_problem_rows.items() if p == kind]
            if rows:
                mask = np.zeros(n, bool)
                mask[rows] = True
                flag(kind if kind != "beyond int64" else "overflow", "Volume", mask)
    negative = _np_bool(pc.less(volume, 0))
    neg_text = np.zeros(n, bool)
    if volume_problem_rows:
        neg_text[[r for r, p in volume_problem_rows.items() if p == "negative"]] = True
    flag("negative", "Volume", negative | neg_text)
    date_missing = _np_bool(pc.is_null(table["Date"]))
    flag("missing", "Date", date_missing)
    date_ok, days = _valid_dates(table["Date"])
    flag("bad-date", "Date", ~date_missing & ~date_ok)

    bad = np.zeros(n, bool)
    for by_col in problems.values():
        for mask in by_col.values():
            bad |= mask

    # Duplicate dates among otherwise valid rows: the first keeps its place, later ones are set aside.
    good_idx = np.flatnonzero(~bad)
    good_days = days[good_idx]
    duplicate_of: dict[int, int] = {}
    order = None
    if len(good_days) > 1 and not np.all(np.diff(good_days) > 0):
        order = np.argsort(good_days, kind="stable")
        sorted_days = good_days[order]
        repeat = np.concatenate([[False], sorted_days[1:] == sorted_days[:-1]])
        if repeat.any():
            first_pos = np.maximum.accumulate(np.where(~repeat, np.arange(len(order)), 0))
            for pos in np.flatnonzero(repeat).tolist():
                duplicate_of[int(good_idx[order[pos]])] = int(good_idx[order[first_pos[pos]]])
            order = order[~repeat]
        keep_idx = good_idx[order]
    else:
        keep_idx = good_idx
    if duplicate_of:
        bad[list(duplicate_of)] = True

    # Rows kept, in date order.
    if len(keep_idx) == n:
        take = None
    else:
        take = pa.array(keep_idx, pa.int64())

    def pick(arr):
        return arr if take is None else arr.take(take)

    kept_n = len(keep_idx)
    kept_cols = {name: pick(prices[name]) for name in PRICE_COLUMNS}
    kept_volume = pick(volume)
    kept = pa.table(
        {
            "Symbol": pa.repeat(pa.scalar(symbol, pa.string()), kept_n),
            "Security Name": pa.repeat(pa.scalar(security_name, pa.string()), kept_n),
            "Date": pick(table["Date"]),
            **kept_cols,
            "Volume": kept_volume,
        },
        schema=RAW_SCHEMA,
    )
    zero_volume = int(pc.sum(pc.equal(kept_volume, 0)).as_py() or 0)
    nonpositive = np.zeros(kept_n, bool)
    for name in PRICE_COLUMNS:
        nonpositive |= _np_bool(pc.less_equal(kept_cols[name], 0.0))

    n_bad = int(bad.sum())
    quarantine = None
    if n_bad or invalid:
        quarantine = _quarantine_rows(body, table, n, bad, problems, duplicate_of, days, invalid,
                                      bad_utf8, symbol, file, len(fields))
    rows_read = n + len(invalid)
    counts = {
        "rows_read": rows_read,
        "rows_kept": kept_n,
        "rows_quarantined": rows_read - kept_n,
        "zero_volume_rows": zero_volume,
        "nonpositive_price_rows": int(nonpositive.sum()),
    }
    return ParsedFile(kept, quarantine, counts, None)


DAY_ONE = -719162  # 0001-01-01 in days since 1970-01-01


def _clean_file(table: pa.Table, symbol: str, security_name: str | None) -> ParsedFile | None:
    """The common case in a few whole-column checks: typed, nothing missing or out of range, dates
    valid and strictly increasing. None when anything is off (the detailed path then finds what)."""
    if any(table.column(i).null_count for i in range(table.num_columns)):
        return None
    try:
        days = pc.cast(table["Date"], pa.date32())
    except pa.ArrowInvalid:
        return None
    d = days.cast(pa.int32()).to_numpy()
    if len(d) and (d[0] < DAY_ONE or (len(d) > 1 and not (np.diff(d) > 0).all())):
        return None
    prices = np.column_stack([table[c].to_numpy() for c in PRICE_COLUMNS]) if len(d) else np.zeros((0, 5))
    if not np.isfinite(prices).all():
        return None
    volume = table["Volume"].combine_chunks()
    vol = volume.to_numpy()
    if len(vol) and vol.min() < 0:
        return None
    n = table.num_rows
    kept = pa.table(
        {
            "Symbol": pa.repeat(pa.scalar(symbol, pa.string()), n),
            "Security Name": pa.repeat(pa.scalar(security_name, pa.string()), n),
            "Date": table["Date"],
            **{c: table[c] for c in PRICE_COLUMNS},
            "Volume": volume,
        },
        schema=RAW_SCHEMA,
    )
    counts = {"rows_read": n, "rows_kept": n, "rows_quarantined": 0,
              "zero_volume_rows": int((vol == 0).sum()),
              "nonpositive_price_rows": int((prices <= 0).any(axis=1).sum())}
    return ParsedFile(kept, None, counts, None)


CANONICAL_HEADER = ",".join(CSV_COLUMNS).encode() + b"\n"
_RAW_BODY_SCHEMA = pa.schema([f for f in RAW_SCHEMA if f.name not in TICKER_COLUMNS])
BATCH_BYTES = 16 << 20  # CSV text parsed in one Arrow read (per-call overhead is ~0.4 ms, a third of a small file's cost)


def _batch_body(data: bytes) -> memoryview | None:
    """The data lines of a file the batch reader can take as they are, or None (parse_csv reads it alone).

    Only the plainest files qualify: the canonical header, ASCII, "\n" line ends, no quotes, no NUL.
    """
    if not data.startswith(CANONICAL_HEADER) or len(data) == len(CANONICAL_HEADER):
        return None
    if not _plain(data, len(CANONICAL_HEADER), len(data)):
        return None
    return memoryview(data)[len(CANONICAL_HEADER):]


def _plain(buffer: bytes | bytearray, start: int, stop: int) -> bool:
    """Whether ``buffer[start:stop]`` is plain enough for the joint read: ASCII, no "\r", quote or NUL.
    (Checked in place: the reused read buffer is never copied.)"""
    return (buffer.find(b"\r", start, stop) == -1 and buffer.find(b'"', start, stop) == -1
            and buffer.find(b"\x00", start, stop) == -1
            and not (np.frombuffer(buffer, np.uint8, stop - start, start) >= 0x80).any())


_SEPARATOR = b"\n|\n"  # a one-field line between files: Arrow reports it as invalid, with its row number


def _read_joined(joined: pa.Buffer, typed: bool) -> tuple[pa.Table, list[tuple[int, int, bool]]]:
    """The read of joined bodies (typed, or all text); also every invalid row as (number, fields, is separator)."""
    invalid: list[tuple[int, int, bool]] = []

    def on_invalid(row):
        invalid.append((row.number, row.actual_columns, row.text == "|"))
        return "skip"

    types = {"Date": pa.string(), "Volume": pa.int64(), **{c: pa.float64() for c in PRICE_COLUMNS}}
    if not typed:
        types = {c: pa.string() for c in CSV_COLUMNS}
    table = pcsv.read_csv(
        pa.BufferReader(joined),
        read_options=pcsv.ReadOptions(column_names=list(CSV_COLUMNS), use_threads=False, block_size=1 << 22),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True,
                                            quoted_strings_can_be_null=True, check_utf8=False),
    )
    return table, invalid


def _convert_by_file(table: pa.Table, starts: np.ndarray, counts: np.ndarray, ok: np.ndarray) -> pa.Table:
    """Text columns -> the typed reader's types; a file with any value that does not convert is marked
    not ok (its values become null). Arrow's CSV reader and its cast parse numbers with the same routine."""
    types = {"Volume": pa.int64(), **{c: pa.float64() for c in PRICE_COLUMNS}}
    for name, typ in types.items():
        col = table[name]
        try:
            converted = pc.cast(col, typ)
        except pa.ArrowInvalid:
            pieces = []
            for k, (s, c) in enumerate(zip(starts.tolist(), counts.tolist())):
                try:
                    pieces.append(pc.cast(col.slice(s, c), typ).combine_chunks())
                except pa.ArrowInvalid:
                    ok[k] = False
                    pieces.append(pa.nulls(c, typ))
            converted = pa.chunked_array(pieces, typ)
        table = table.set_column(table.schema.get_field_index(name), name, converted)
    return table


def parse_csv_batch(items: list[tuple[bytes, str, str | None]], ticker_columns: bool = True) -> list[ParsedFile | None]:
    """Many ticker CSVs ``(data, symbol, security name)`` in one typed Arrow read.

    Each result is exactly what ``parse_csv`` returns for that file when the file is clean (the
    common case: typed, no malformed line, nothing missing, finite prices, non-negative Volume, real
    and strictly increasing dates), else None: the caller then runs ``parse_csv`` on that file, which
    finds and quarantines what is wrong. All None when the joint read fails (a value that is not a
    number anywhere in the batch). Files are joined with a separator line whose row number Arrow
    reports, so each file's rows are known without scanning for line ends (blank lines are skipped
    by Arrow in both paths alike).

    ``ticker_columns=False`` leaves out Symbol and Security Name (the raw writer adds them as
    dictionaries): repeating a name on each row is 0.4 s of CPU over the x3 benchmark's 23.6 M rows.
    """
    results: list[ParsedFile | None] = [None] * len(items)
    picked, parts = [], []
    for i, (data, _, _) in enumerate(items):
        body = _batch_body(data)
        if body is not None:
            picked.append(i)
            parts.append(body)
    if not picked:
        return results
    joined = pa.py_buffer(_SEPARATOR.join([*parts, b""]))  # ends with a separator too
    del parts
    parsed = _parse_joined(joined, [items[i][1:] for i in picked], ticker_columns)
    for i, one in zip(picked, parsed):
        results[i] = one
    return results


def _parse_joined(joined: pa.Buffer, tickers: list[tuple[str, str | None]],
                  ticker_columns: bool = True) -> list[ParsedFile | None]:
    """``parse_csv_batch`` on bodies already joined (each followed by ``_SEPARATOR``), one
    ``(symbol, security name)`` per body: a result per body, None where parse_csv must decide."""
    results: list[ParsedFile | None] = [None] * len(tickers)
    picked = range(len(tickers))
    try:
        table, invalid = _read_joined(joined, typed=True)
        typed = True
    except pa.ArrowInvalid:  # a value somewhere is no number: read text, then convert file by file
        try:
            table, invalid = _read_joined(joined, typed=False)
        except pa.ArrowInvalid:
            return results
        typed = False
    del joined
    numbers = np.array([num for num, _, _ in invalid], np.int64)
    is_sep = np.array([sep and fields == 1 for _, fields, sep in invalid], bool)
    if len(numbers) and (numbers.min() < 1 or (np.diff(numbers) <= 0).any()):
        return results  # Arrow's row numbers unusable here
    sep_numbers = numbers[is_sep]
    if len(sep_numbers) != len(picked):  # a "|" line of a file's own, or a quote ran over: file by file
        return results
    # Ordinals (1-based, among non-blank lines) -> table rows: subtract the invalid rows before.
    first_ord = np.concatenate([[1], sep_numbers[:-1] + 1])
    starts = first_ord - 1 - np.searchsorted(numbers, first_ord, side="left")
    row_ends = sep_numbers - 1 - np.searchsorted(numbers, sep_numbers, side="left")
    counts = row_ends - starts
    ok = np.ones(len(picked), bool)
    if (~is_sep).any():  # malformed lines: their files go file by file
        ok[np.searchsorted(sep_numbers, numbers[~is_sep], side="left")] = False
    if not typed:
        table = _convert_by_file(table, starts, counts, ok)

    # Whole-column checks; only rows that fail are mapped back to their files (rare).
    def files_of(mask) -> np.ndarray:
        rows = pc.indices_nonzero(mask).to_numpy()
        return np.searchsorted(row_ends, rows, side="right")

    def fail(mask) -> None:
        if pc.any(mask).as_py():
            ok[files_of(mask)] = False

    for name in table.column_names:
        if table[name].null_count:
            fail(pc.is_null(table[name]))
    try:
        days = pc.cast(table["Date"], pa.date32())
    except pa.ArrowInvalid:  # some file has a bad date: find which, file by file
        pieces = []
        for k, (s, c) in enumerate(zip(starts.tolist(), counts.tolist())):
            try:
                pieces.append(pc.cast(table["Date"].slice(s, c), pa.date32()).combine_chunks())
            except pa.ArrowInvalid:
                ok[k] = False
                pieces.append(pa.nulls(c, pa.date32()))
        days = pa.chunked_array(pieces, pa.date32())
    day = pc.fill_null(days.cast(pa.int32()), 0).to_numpy()  # null dates already failed their file
    step_ok = np.ones(len(day), bool)
    step_ok[1:] = day[1:] > day[:-1]
    step_ok[starts[counts > 0]] = True  # a file's first row follows another file
    if not step_ok.all():
        ok[np.searchsorted(row_ends, np.flatnonzero(~step_ok), side="right")] = False
    fail(pc.less(days, pa.scalar(DAY_ONE, pa.int32()).cast(pa.date32())))  # increasing: only a first row can be early
    nonpositive = np.zeros(len(picked), np.int64)
    price_le0 = None
    for name in PRICE_COLUMNS:
        fail(pc.invert(pc.fill_null(pc.is_finite(table[name]), True)))
        le0 = pc.less_equal(table[name], 0.0)
        price_le0 = le0 if price_le0 is None else pc.or_kleene(price_le0, le0)
    if pc.any(price_le0).as_py():
        nonpositive = np.bincount(files_of(pc.fill_null(price_le0, False)), minlength=len(picked))
    volume = table["Volume"].combine_chunks()
    fail(pc.fill_null(pc.less(volume, 0), False))
    zero = pc.fill_null(pc.equal(volume, 0), False)
    zero_volume = np.bincount(files_of(zero), minlength=len(picked)) if pc.any(zero).as_py() else np.zeros(len(picked), np.int64)
    columns = {"Date": table["Date"], **{c: table[c] for c in PRICE_COLUMNS}, "Volume": volume}
    for k in picked:
        if not ok[k] or not counts[k]:
            continue
        s, c = int(starts[k]), int(counts[k])
        symbol, name = tickers[k]
        values = {col: arr.slice(s, c) for col, arr in columns.items()}
        if ticker_columns:
            kept = pa.table({"Symbol": pa.repeat(pa.scalar(symbol, pa.string()), c),
                             "Security Name": pa.repeat(pa.scalar(name, pa.string()), c), **values}, schema=RAW_SCHEMA)
        else:
            kept = pa.table(values, schema=_RAW_BODY_SCHEMA)
        results[k] = ParsedFile(kept, None, {"rows_read": c, "rows_kept": c, "rows_quarantined": 0,
                                             "zero_volume_rows": int(zero_volume[k]),
                                             "nonpositive_price_rows": int(nonpositive[k])}, None)
    return results


_KIND_ORDER = ("missing", "non-numeric", "non-finite", "non-integral", "negative", "overflow", "bad-date",
               "duplicate-date")
_KIND_TEXT = {"non-numeric": "is not a number", "non-finite": "is not finite",
              "non-integral": "is not a whole number", "negative": "is negative", "overflow": "is beyond int64",
              "bad-date": "is not a real YYYY-MM-DD date"}


def _quarantine_rows(body, table, n, bad, problems, duplicate_of, days, invalid, bad_utf8, symbol, file,
                     n_fields) -> pa.Table:
    """Build the quarantine rows (a Python loop over the bad rows only)."""
    # Map table rows and Arrow's invalid-row ordinals to physical lines.
    line_idx, spans = _line_spans(body)
    total_rows = n + len(invalid)
    consistent = len(line_idx) == total_rows
    known = all(o is not None for o, _ in invalid)
    invalid_ordinals = np.array(sorted(o - 1 for o, _ in invalid) if known else [], dtype=np.int64)
    table_ordinals = np.setdiff1d(np.arange(total_rows, dtype=np.int64), invalid_ordinals, assume_unique=True)
    if not known or len(table_ordinals) != n:  # Arrow's row numbers unusable: no line numbers
        consistent, table_ordinals = False, np.arange(n, dtype=np.int64)

    def line_of(ordinal: int) -> int | None:
        return int(line_idx[ordinal]) + 2 if consistent else None  # +1 header, +1 for 1-based

    def text_of(ordinal: int) -> str | None:
        if not consistent:
            return None
        s, e = spans[ordinal]
        return body[s:e].rstrip(b"\r").decode("utf-8", errors="replace")[:QUARANTINE_TEXT_CHARS]

    rows = {name: [] for name in QUARANTINE_SCHEMA.names}

    def add(ordinal: int, kind: str, reason: str) -> None:
        line = line_of(ordinal)
        if line is not None and (line - 2) in bad_utf8:
            kind, reason = "encoding", f"non-UTF-8 bytes in line; {reason}"
        rows["file"].append(file)
        rows["symbol"].append(symbol)
        rows["line"].append(line)
        rows["kind"].append(kind)
        rows["reason"].append(reason)
        rows["text"].append(text_of(ordinal))

    for ordinal, found in sorted(invalid, key=lambda item: item[0] or 0):
        add((ordinal or 1) - 1, "malformed", f"malformed row: {found} fields, header has {n_fields}")

    bad_rows = np.flatnonzero(bad)
    for row in bad_rows.tolist():
        parts, first_kind = [], None
        for kind in _KIND_ORDER[:-1]:
            cols = [c for c, mask in problems.get(kind, {}).items() if mask[row]]
            if not cols:
                continue
            first_kind = first_kind or kind
            if kind == "missing":
                parts.append("missing " + ", ".join(cols))
            else:
                for c in cols:
                    value = _texts(table[c], [row])[0] if pa.types.is_string(table[c].type) else table[c][row].as_py()
                    parts.append(f"{c} {_KIND_TEXT[kind]} ({value!r})")
        if row in duplicate_of:
            first_kind = first_kind or "duplicate-date"
            first_line = line_of(int(table_ordinals[duplicate_of[row]]))
            where = f" (first on line {first_line})" if first_line else ""
            parts.append(f"duplicate date {_texts(table['Date'], [row])[0]}{where}")
        add(int(table_ordinals[row]), first_kind or "invalid", "; ".join(parts) or "invalid row")
    out = pa.table(rows, schema=QUARANTINE_SCHEMA)
    return out.sort_by([("line", "ascending")]) if consistent else out


def parse_meta(data: bytes | None) -> tuple[dict[str, str | None], str | None]:
    """``symbols_valid_meta.csv`` -> {NASDAQ Symbol: Security Name}, and a note when something is off.

    The meta's ``Symbol`` column spells some tickers differently from the file names (``AGM$A`` for
    ``AGM-A.csv``); ``NASDAQ Symbol`` spells them as the files do, so that is the key.
    """
    if data is None:
        return {}, "no symbols_valid_meta.csv in the source: Security Name is null for every ticker"
    text = data.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    if "Security Name" not in fields:
        return {}, "symbols_valid_meta.csv has no 'Security Name' column: Security Name is null for every ticker"
    key, note = "NASDAQ Symbol", None
    if key not in fields:
        key, note = "Symbol", "symbols_valid_meta.csv has no 'NASDAQ Symbol' column; matched on 'Symbol'"
        if key not in fields:
            return {}, "symbols_valid_meta.csv has neither 'NASDAQ Symbol' nor 'Symbol': Security Name is null"
    names: dict[str, str | None] = {}
    for row in reader:
        sym = (row.get(key) or "").strip()
        if sym and sym not in names:
            names[sym] = row.get("Security Name") or None
    return names, note


# =============================================================================================
# Sources


class ResolvedSource(NamedTuple):
    kind: str  # "dir", "zip", "kaggle" (a downloaded zip or folder), "demo" (a generated folder)
    path: Path
    label: str  # what to call it in reports and notebooks


class SourceFile(NamedTuple):
    rel: str  # path inside the source, "stocks/AAPL.csv"
    symbol: str
    size: int
    stamp: str  # cheap change stamp: mtime_ns for folders, CRC32 for zip members (from the directory)


class Catalog(NamedTuple):
    files: list[SourceFile]
    meta: bytes | None
    meta_fingerprint: str | None
    rejected: list[dict]  # files set aside before parsing (same ticker twice)
    root: str  # folder or zip prefix holding stocks/ and etfs/


def _kaggle_config_dir() -> Path:
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    home = Path.home() / ".kaggle"
    if home.exists():
        return home
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "kaggle"


def kaggle_credentials_location() -> str | None:
    """Where Kaggle credentials were found (as the kaggle 2.2 client looks), without importing kaggle."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt"):
        path = Path.home() / ".kaggle" / name
        if path.is_file() and path.read_text(errors="replace").strip():
            return f"~/.kaggle/{name}"
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    config_file = _kaggle_config_dir() / "kaggle.json"
    if config_file.is_file():
        try:
            values = json.loads(config_file.read_text())
        except (ValueError, OSError):
            values = {}
        if isinstance(values, dict):
            user, key = user or values.get("username"), key or values.get("key")
    if user and key:
        return "KAGGLE_USERNAME/KAGGLE_KEY" if not config_file.is_file() else str(config_file)
    if (Path.home() / ".kaggle" / "credentials.json").is_file():
        return "~/.kaggle/credentials.json (kaggle auth login)"
    return None


def has_kaggle_credentials() -> bool:
    return kaggle_credentials_location() is not None


CREDENTIALS_HELP = (
    "set KAGGLE_API_TOKEN (a token from https://www.kaggle.com/settings/api), save it to "
    "~/.kaggle/access_token, run 'kaggle auth login', or use KAGGLE_USERNAME+KAGGLE_KEY or ~/.kaggle/kaggle.json"
)


def describe_default_source() -> str:
    """What ingest uses when no source is given, and how to choose otherwise (one line)."""
    where = kaggle_credentials_location()
    if where:
        return (f"No source given: Kaggle credentials found ({where}), so ingesting {config.KAGGLE_DATASET} "
                "from Kaggle; use --source demo for generated data or --source PATH for a local copy.")
    return ("No source given and no Kaggle credentials found, so ingesting GENERATED demo data; for the real "
            f"dataset {CREDENTIALS_HELP}, or pass --source PATH to a Kaggle-layout folder or .zip.")


def _import_kaggle_api():
    """``KaggleApi`` imported quietly: ``import kaggle`` authenticates at import and prints help when it can't."""
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


def download_kaggle(dest: str | os.PathLike) -> Path:
    """Download jacksoncrow/stock-market-dataset into ``dest``; returns the zip (or folder) to ingest.

    The zip is kept as it is (ingest reads its members directly, and its CRCs are free fingerprints).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not has_kaggle_credentials():
        raise UserError(f"no Kaggle credentials found; {CREDENTIALS_HELP}")
    KaggleApi = _import_kaggle_api()
    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:  # the client exits when no credential works
        raise UserError(f"Kaggle rejected the credentials; {CREDENTIALS_HELP}") from None
    slug = config.KAGGLE_DATASET
    try:
        api.dataset_download_files(slug, path=str(dest), unzip=False, quiet=False)
    except Exception as exc:  # network, 401/403, 404: say it in one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if any(code in text for code in ("401", "403", "Unauthorized", "Forbidden")):
            raise UserError(f"Kaggle refused the download ({text}); check your credentials: {CREDENTIALS_HELP}") from None
        raise UserError(f"Kaggle download of {slug} failed: {text}") from None
    archive = dest / (slug.split("/")[1] + ".zip")
    if archive.is_file():
        return archive
    if (dest / "stocks").is_dir() or (dest / "etfs").is_dir():  # a client that unzipped for us
        return dest
    raise UserError(f"the Kaggle download left no {archive.name} in {dest}; delete that folder and retry")


DEMO_VERSION = 1
DEMO_END = np.datetime64("2020-04-01")  # where the Kaggle dataset ends; fixed so the demo is reproducible


def _demo_names(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    names: list[str] = []
    seen = set()
    while len(names) < n:
        size = int(rng.integers(3, 5))
        name = "".join(rng.choice(letters, size))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def generate_demo_market(dest: str | os.PathLike, n_tickers: int = 200, years: int = 10, seed: int = 42) -> Path:
    """Write a generated market in the Kaggle layout into ``dest`` and return ``dest``.

    Stocks and ETFs (about 1 in 5), business days ending 2020-04-01, prices as geometric random walks
    (some tickers list later), log-normal volumes with persistence (AR(1) in log volume, bigger on big
    moves), and a meta file with the real columns. Everything is labelled as generated (GENERATED.txt,
    "(generated)" in every Security Name). A few real-data quirks are reproduced on purpose: one class
    share ``<X>-A`` whose meta ``Symbol`` is ``<X>$A``; one ticker without metadata; one file with a row
    of empty values and Volume written as ``123.0``; occasional zero volumes. Deterministic for a seed.
    """
    if n_tickers < 1 or years < 1:
        raise UserError("demo_tickers and demo_years must be at least 1")
    dest = Path(dest)
    rng = np.random.default_rng(seed)
    start = DEMO_END - np.timedelta64(int(round(365.25 * years)), "D")
    all_days = np.arange(start, DEMO_END + np.timedelta64(1, "D"))
    days = all_days[np.is_busday(all_days)]
    n_days = len(days)
    date_text = pa.array(np.datetime_as_string(days, unit="D"))

    names = _demo_names(rng, n_tickers)
    n_etf = max(1, round(n_tickers * 0.2)) if n_tickers > 1 else 0
    is_etf = np.zeros(n_tickers, bool)
    is_etf[rng.choice(n_tickers, n_etf, replace=False)] = True
    stock_idx = np.flatnonzero(~is_etf)
    if len(stock_idx) >= 3:
        names[stock_idx[1]] += "-A"  # class share: meta Symbol spells it with "$"
    no_meta = int(stock_idx[-1]) if len(stock_idx) >= 4 else -1
    float_volume = int(stock_idx[2]) if len(stock_idx) >= 5 else -1

    # Listing day: most tickers cover the whole span, some list later (at least 60 days of data).
    first = np.where(rng.random(n_tickers) < 0.7, 0, rng.integers(0, max(1, n_days - 60), n_tickers))
    sigma = rng.uniform(0.008, 0.035, n_tickers) * np.where(is_etf, 0.6, 1.0)
    drift = rng.normal(0.0003, 0.0004, n_tickers)
    returns = drift[:, None] + sigma[:, None] * rng.standard_normal((n_tickers, n_days))
    p0 = np.exp(rng.normal(3.2, 1.0, n_tickers))
    close = p0[:, None] * np.exp(np.cumsum(returns, axis=1))
    open_ = np.concatenate([p0[:, None], close[:, :-1]], axis=1) * np.exp(
        sigma[:, None] / 3 * rng.standard_normal((n_tickers, n_days)))
    wick = np.abs(sigma[:, None] / 2 * rng.standard_normal((2, n_tickers, n_days)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    yield_ = np.where(rng.random(n_tickers) < 0.6, rng.uniform(0.005, 0.04, n_tickers), 0.0)
    adj = close * np.exp(-yield_[:, None] * (n_days - 1 - np.arange(n_days)) / 252)

    # Log volume: AR(1) around a ticker level, pushed up on big moves.
    level = rng.normal(12.0, 1.5, n_tickers) - np.where(is_etf, 1.0, 0.0)
    phi = rng.uniform(0.80, 0.95, n_tickers)
    noise = rng.uniform(0.2, 0.45, n_tickers)[:, None] * rng.standard_normal((n_tickers, n_days))
    shock = 0.35 * np.abs(returns - drift[:, None]) / sigma[:, None]
    log_vol = np.empty((n_tickers, n_days))
    log_vol[:, 0] = level
    for t in range(1, n_days):
        log_vol[:, t] = level + phi * (log_vol[:, t - 1] - level) + noise[:, t]
    volume = np.rint(np.exp(log_vol + shock)).astype(np.int64)
    volume[rng.random((n_tickers, n_days)) < 0.002] = 0  # thin days, as in the real data

    staging = dest.parent / f".{dest.name}.staging-{os.getpid()}"
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    for sub in config.SOURCE_SUBDIRS:
        (staging / sub).mkdir(parents=True)
    header = (",".join(CSV_COLUMNS) + "\n").encode()
    for i, name in enumerate(names):
        sl = slice(int(first[i]), n_days)
        table = pa.table({
            "Date": date_text[sl],
            "Open": np.round(open_[i, sl], 4), "High": np.round(high[i, sl], 4),
            "Low": np.round(low[i, sl], 4), "Close": np.round(close[i, sl], 4),
            "Adj Close": np.round(adj[i, sl], 6),
            "Volume": volume[i, sl] if i != float_volume else volume[i, sl].astype(np.float64),
        })
        out = io.BytesIO()
        out.write(header)
        pcsv.write_csv(table, out, pcsv.WriteOptions(include_header=False, quoting_style="none"))
        data = out.getvalue()
        if i == float_volume:  # like BEP.csv: floats for Volume and a row of empty values
            lines = data.split(b"\n")
            j = len(lines) // 2
            lines[j] = lines[j].split(b",")[0] + b",,,,,,"
            data = b"\n".join(ln if k == 0 or k == j or not ln else ln + (b".0" if not ln.endswith(b".0") else b"")
                              for k, ln in enumerate(lines))
        (staging / ("etfs" if is_etf[i] else "stocks") / f"{name}.csv").write_bytes(data)

    meta = io.StringIO()
    writer = csv.writer(meta, lineterminator="\n")
    writer.writerow(["Symbol", "Security Name", "Listing Exchange", "Market Category", "ETF", "Round Lot Size",
                     "Test Issue", "Financial Status", "CQS Symbol", "NASDAQ Symbol", "NextShares"])
    for i in sorted(range(n_tickers), key=lambda k: names[k]):
        if i == no_meta:
            continue
        name = names[i]
        kind = "ETF Fund" if is_etf[i] else "Corp"
        title = f"Demo {kind} {name.replace('-', ' Class ')} (generated)"
        writer.writerow([name.replace("-", "$"), title, "Q", "G" if not is_etf[i] else " ", "Y" if is_etf[i] else "N",
                         100, "N", "N", "", name, "N"])
    (staging / config.META_FILE).write_text(meta.getvalue(), encoding="utf-8")
    (staging / "GENERATED.txt").write_text(
        f"GENERATED demo market, not real data (volcast demo v{DEMO_VERSION}).\n"
        f"seed={seed} tickers={n_tickers} years={years} days={n_days} end={DEMO_END}\n"
        "Quirks on purpose: a class share whose meta Symbol uses '$', one ticker without metadata,\n"
        "one file with a row of empty values and float Volumes, occasional zero volumes.\n",
        encoding="utf-8",
    )
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, dest)
    return dest


def _demo_dir(cache_dir: Path, seed: int, tickers: int, years: int) -> Path:
    return cache_dir / f"demo-v{DEMO_VERSION}-seed{seed}-t{tickers}-y{years}"


def resolve_source(source: str | os.PathLike | None, cache_dir: str | os.PathLike, *, demo_seed: int = config.DEMO_SEED,
                   demo_tickers: int = config.DEMO_TICKERS, demo_years: int = config.DEMO_YEARS,
                   say=print) -> ResolvedSource:
    """Turn the ``source`` parameter into something to read: (kind, path, label).

    ``None`` picks Kaggle when credentials exist, else the demo, and says so through ``say``.
    The demo is generated once per (seed, tickers, years) into ``cache_dir`` and reused.
    """
    cache_dir = Path(cache_dir)
    if source is None or str(source).strip() == "":
        say(describe_default_source())
        source = "kaggle" if has_kaggle_credentials() else "demo"
    source = str(source)
    if source == "demo":
        path = _demo_dir(cache_dir, demo_seed, demo_tickers, demo_years)
        if not (path / "GENERATED.txt").is_file():
            generate_demo_market(path, demo_tickers, demo_years, demo_seed)
        label = f"generated demo data (seed {demo_seed}, {demo_tickers} tickers, {demo_years} years)"
        return ResolvedSource("demo", path, label)
    if source == "kaggle":
        path = download_kaggle(cache_dir / "kaggle")
        return ResolvedSource("kaggle", path, f"Kaggle {config.KAGGLE_DATASET}")
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"source {source}: no such file or directory; give a Kaggle-layout folder or .zip, 'kaggle' or 'demo'")
    path = path.resolve()
    if path.is_dir():
        return ResolvedSource("dir", path, path.name)
    if zipfile.is_zipfile(path):
        return ResolvedSource("zip", path, path.name)
    raise UserError(f"source {source}: not a folder or a .zip; give a Kaggle-layout folder or .zip, 'kaggle' or 'demo'")


_LAYOUT_RE = re.compile(r"^(?P<root>(?:.*/)?)(?P<sub>stocks|etfs)/(?P<name>[^/]+)$")


def _split_members(paths: Iterable[str]) -> tuple[str, list[str], str | None]:
    """Pick the root holding stocks/ and etfs/ among relative paths; return (root, csv members, meta)."""
    roots: dict[str, list[str]] = {}
    for p in paths:
        if "__MACOSX" in p.split("/"):
            continue
        m = _LAYOUT_RE.match(p)
        if m and not m["name"].startswith(".") and m["name"].lower().endswith(".csv"):
            roots.setdefault(m["root"], []).append(p)
    if not roots:
        raise UserError("source has no stocks/*.csv or etfs/*.csv; give a folder or .zip in the Kaggle layout")
    if len(roots) > 1:
        shown = ", ".join(sorted(r or "." for r in roots))
        raise UserError(f"source holds more than one Kaggle layout ({shown}); point --source at one of them")
    root, members = next(iter(roots.items()))
    return root, sorted(members), root + config.META_FILE


def scan_source(src: ResolvedSource) -> Catalog:
    """List the ticker files of a source with their sizes and change stamps (no file is read)."""
    path = src.path
    entries: dict[str, tuple[int, str]] = {}
    meta: bytes | None = None
    meta_fp = None
    if path.is_dir():
        found = []
        for sub in config.SOURCE_SUBDIRS:
            for top in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
                d = top / sub
                if d.is_dir():
                    found.extend(str((d / f.name).relative_to(path)) for f in os.scandir(d) if f.is_file())
        root, members, meta_rel = _split_members(found)
        for rel in members:
            st = os.stat(path / rel)
            entries[rel] = (st.st_size, str(st.st_mtime_ns))
        meta_path = path / meta_rel
        if meta_path.is_file():
            meta = meta_path.read_bytes()
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
                root, members, meta_rel = _split_members(infos)
                for rel in members:
                    entries[rel] = (infos[rel].file_size, f"crc{infos[rel].CRC:08x}")
                if meta_rel in infos:
                    meta = zf.read(meta_rel)
        except zipfile.BadZipFile as exc:
            raise UserError(f"source {path}: broken zip ({exc}); download it again") from None
    if meta is not None:
        meta_fp = hashlib.blake2b(meta, digest_size=16).hexdigest()
    files, rejected, seen = [], [], {}
    for rel in sorted(entries, key=lambda r: (Path(r).stem, r)):
        symbol = Path(rel).stem
        size, stamp = entries[rel]
        short = rel[len(root):]
        if symbol in seen:
            rejected.append({"file": short, "symbol": symbol, **_zero_counts(),
                             "error": f"same ticker as {seen[symbol]}; only the first is ingested"})
            continue
        seen[symbol] = short
        files.append(SourceFile(rel, symbol, size, stamp))
    return Catalog(files, meta, meta_fp, rejected, root)


# =============================================================================================
# Workers: one task per partition


_ZIPS: dict[str, zipfile.ZipFile] = {}
_PROGRESS = None  # a multiprocessing queue in worker processes: the number of files done, per batch


def _init_worker(progress_queue) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue


def _read_zip_member(source_path: str, rel: str) -> bytes:
    """A member of a zip source (directory sources are read by ``_JoinedBodies``)."""
    zf = _ZIPS.get(source_path)
    if zf is None:
        zf = _ZIPS[source_path] = zipfile.ZipFile(source_path)
    return zf.read(rel)


class _BufferedParquet:
    """Write tables in order to one Parquet file in row groups of ~1M rows (memory stays bounded)."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.writer = None

    def add(self, table: pa.Table | None) -> None:
        if table is None or not table.num_rows:
            return
        self.buffer.append(table)
        self.buffered += table.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, self.schema, **storage.parquet_options(self.schema))
        self.writer.write_table(pa.concat_tables(self.buffer), row_group_size=ROW_GROUP_ROWS)
        self.rows += self.buffered
        self.buffer, self.buffered = [], 0

    def close(self) -> int:
        """Finish the file (replacing any hard-linked previous version); no rows -> no file."""
        self._flush()
        if self.path.exists():
            self.path.unlink()  # a hard link to the previous version: never write through it
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.path)
        return self.rows


class _RawParquet(_BufferedParquet):
    """The raw partition writer: each piece added is one ticker's rows, so Symbol and Security Name are
    handed to Parquet as ready-made dictionary columns (no hashing of a string per row: 20% of the write).

    The file stores no Arrow schema: its Parquet types read back exactly as ``RAW_SCHEMA`` (plain strings).
    """

    def __init__(self, path: Path):
        super().__init__(path, RAW_SCHEMA)
        self.tickers: list[tuple[str, str | None, int]] = []
        self.rows_per_symbol: dict[str, int] = {}
        self.rows_per_year: dict[str, int] = {}
        self.date_range: list[str] = []

    def add(self, table: pa.Table | None, symbol: str = "", name: str | None = None) -> None:
        if table is None or not table.num_rows:
            return
        self.tickers.append((symbol, name, table.num_rows))
        self.rows_per_symbol[symbol] = self.rows_per_symbol.get(symbol, 0) + table.num_rows
        super().add(table.drop_columns([c for c in TICKER_COLUMNS if c in table.column_names]))

    def close(self) -> int:
        """Finish the file with its summary in the footer (see ``summarize_raw``)."""
        self._flush()
        if self.writer is not None:
            self.writer.add_key_value_metadata({SUMMARY_KEY: json.dumps({
                "rows_per_symbol": self.rows_per_symbol, "rows_per_year": self.rows_per_year,
                "date_min": min(self.date_range), "date_max": max(self.date_range)})})
        return super().close()

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, RAW_DICTIONARY_SCHEMA, store_schema=False,
                                           **storage.parquet_options(RAW_SCHEMA))
        rows = np.array([n for _, _, n in self.tickers], np.int64)
        columns = {}
        for pos, name in enumerate(TICKER_COLUMNS):
            values = [t[pos] for t in self.tickers]
            unique = list(dict.fromkeys(v for v in values if v is not None))
            code = {v: i for i, v in enumerate(unique)}
            per_piece = np.array([code.get(v, -1) for v in values], np.int32)
            idx = np.repeat(per_piece, rows)
            columns[name] = pa.DictionaryArray.from_arrays(pa.array(idx, mask=idx < 0), pa.array(unique, pa.string()))
        body = pa.concat_tables(self.buffer)
        # Counted here, where every row passes once, so the notebook's summary reads footers, not rows
        # (x3: 0.8-1.4 s in the kernel, after the run). A valid Date is YYYY-MM-DD: its year is 4 characters.
        years = pc.value_counts(pc.utf8_slice_codeunits(body["Date"], 0, 4))
        for year, n in zip(years.field("values").to_pylist(), years.field("counts").to_pylist()):
            self.rows_per_year[year] = self.rows_per_year.get(year, 0) + n
        self.date_range += [d for d in pc.min_max(body["Date"]).as_py().values() if d is not None]
        table = pa.table({**columns, **{c: body[c] for c in body.column_names}}, schema=RAW_DICTIONARY_SCHEMA)
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += self.buffered
        self.buffer, self.buffered, self.tickers = [], 0, []


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


class _JoinedBodies:
    """A batch's plain CSV files read straight into one buffer, reused batch after batch, already joined
    the way ``parse_csv_batch`` joins them: no bytes object per file and no joined copy.

    Files not plain enough for the joint read (``_batch_body``'s rules) are returned as bytes instead.
    Measured on 2,000 files of the x3 benchmark (553 MB, in the page cache, one process): ``read()``
    per file 0.33-0.81 s (fresh pages for each bytes object), into the reused buffer 0.13 s; the
    join's copy (0.19 s) is gone too.
    """

    _HEADER = len(CANONICAL_HEADER)

    def __init__(self) -> None:
        self.buffer = bytearray(BATCH_BYTES + (1 << 20))
        self.end = 0
        self.spans: list[tuple[int, int]] = []  # each appended body's [start, stop) in the buffer

    def clear(self) -> None:
        self.end, self.spans = 0, []

    def read(self, path: str) -> tuple[int, bytes | None]:
        """Append the file's body (the result is ``(crc32 of the whole file, None)``), or return
        ``(crc32, the file's bytes)`` when it must be parsed alone. The caller clears it after each batch;
        a body that does not fit grows the buffer (once or twice per process: it stays grown)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if self.end + size + len(_SEPARATOR) > len(self.buffer):
                bigger = bytearray(self.end + size + len(_SEPARATOR) + (1 << 20))
                bigger[:self.end] = memoryview(self.buffer)[:self.end]
                self.buffer = bigger
            header = os.pread(fd, self._HEADER, 0)
            if header != CANONICAL_HEADER or size == self._HEADER:
                data = header + _read_rest(fd, self._HEADER)
                return crc32(data), data
            start = self.end
            view = memoryview(self.buffer)
            n = os.preadv(fd, [view[start:start + size - self._HEADER]], self._HEADER)
            stop = start + n
            crc = crc32(view[start:stop], crc32(header))
            changed = n < size - self._HEADER or os.pread(fd, 1, self._HEADER + n)  # shrank or grew meanwhile
            if changed or not _plain(self.buffer, start, stop):
                data = header + view[start:stop].tobytes() + _read_rest(fd, self._HEADER + n)
                return crc32(data), data
            view[stop:stop + len(_SEPARATOR)] = _SEPARATOR
            del view
            self.end = stop + len(_SEPARATOR)
            self.spans.append((start, stop))
            return crc, None
        finally:
            os.close(fd)

    def body(self, k: int) -> bytes:
        """The whole file of the k-th appended body, for the file-by-file parser."""
        start, stop = self.spans[k]
        return CANONICAL_HEADER + bytes(self.buffer[start:stop])

    def parse(self, tickers: list[tuple[str, str | None]]) -> list[ParsedFile | None]:
        if not self.spans:
            return []
        return _parse_joined(pa.py_buffer(memoryview(self.buffer)[:self.end]), tickers, ticker_columns=False)


def _read_rest(fd: int, offset: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


_JOINED: _JoinedBodies | None = None  # one per process: reused by every partition task it runs


def _partition_task(task: _Task) -> list[dict]:
    """Parse a partition's files and write its raw and quarantine Parquet files. Returns per-file entries."""
    old_raw = old_q = None
    if task.keep_symbols and task.previous_raw and os.path.exists(task.previous_raw):
        old_raw = pq.read_table(task.previous_raw, schema=RAW_SCHEMA)
        old_raw = old_raw.filter(pc.is_in(old_raw["Symbol"], pa.array(task.keep_symbols, pa.string())))
    if task.keep_symbols and task.previous_quarantine and os.path.exists(task.previous_quarantine):
        old_q = pq.read_table(task.previous_quarantine, schema=QUARANTINE_SCHEMA)
        old_q = old_q.filter(pc.is_in(old_q["symbol"], pa.array(task.keep_symbols, pa.string())))
    raw_out = _RawParquet(Path(task.raw_out))
    q_out = _BufferedParquet(Path(task.quarantine_out), QUARANTINE_SCHEMA)

    # Merge previous rows of unchanged tickers with freshly parsed ones, in Symbol order.
    keep = sorted(task.keep_symbols)
    pieces: list[tuple[str, Any]] = [(s, None) for s in keep] + [(sym, (rel, name)) for rel, sym, name in task.parse]
    pieces.sort(key=lambda p: p[0])
    old_bounds = _symbol_bounds(old_raw) if old_raw is not None else {}
    old_q_bounds = _symbol_bounds(old_q, "symbol") if old_q is not None else {}
    entries = []
    # (entry, the file's bytes, symbol, security name, result so far, index of its body in `joined`)
    batch: list[tuple[dict, bytes | None, str, str | None, ParsedFile | None, int | None]] = []
    batch_bytes = 0
    global _JOINED
    joined = None
    if os.path.isdir(task.source_path):  # zip members are read as bytes
        joined = _JOINED = _JOINED or _JoinedBodies()
        joined.clear()

    def flush() -> None:
        """Parse the batch (jointly where files are clean, else file by file) and write it in order."""
        nonlocal batch, batch_bytes
        fast: dict[int, ParsedFile | None] = {}
        readable = [k for k, b in enumerate(batch) if b[1] is not None]
        if len(readable) > 1:
            try:
                fast.update(zip(readable, parse_csv_batch([batch[k][1:4] for k in readable], ticker_columns=False)))
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
                    parsed = parse_csv(data if body is None else joined.body(body), symbol, name, entry["file"])
                except Exception as exc:  # never let one file stop the run
                    parsed = _reject(f"unreadable: {type(exc).__name__}: {exc}")
            entry.update(parsed.counts)
            if parsed.error:
                entry["error"] = parsed.error
            raw_out.add(parsed.table, symbol, name)
            q_out.add(parsed.quarantine)
            entries.append(entry)
        if _PROGRESS is not None and batch:
            _PROGRESS.put(len(batch))
        batch, batch_bytes = [], 0
        if joined is not None:
            joined.clear()

    for symbol, item in pieces:
        if item is None:
            flush()  # keep Symbol order: earlier files first
            if symbol in old_bounds:
                old = old_raw.slice(*old_bounds[symbol])
                raw_out.add(old, symbol, old["Security Name"][0].as_py())  # as last written
            if symbol in old_q_bounds:
                q_out.add(old_q.slice(*old_q_bounds[symbol]))
            continue
        rel, name = item
        entry: dict[str, Any] = {"file": rel[len(task.root):], "symbol": symbol}
        try:
            if joined is not None:
                crc, data = joined.read(os.path.join(task.source_path, rel))
                body = None if data is not None else len(joined.spans) - 1
                size = len(data) if data is not None else joined.spans[-1][1] - joined.spans[-1][0]
            else:
                data = _read_zip_member(task.source_path, rel)
                crc, body, size = crc32(data), None, len(data)
            entry["crc32"] = f"{crc:08x}"
            batch.append((entry, data, symbol, name, None, body))
            batch_bytes += size
        except Exception as exc:  # never let one file stop the run
            batch.append((entry, None, symbol, name, _reject(f"unreadable: {type(exc).__name__}: {exc}"), None))
        if batch_bytes >= BATCH_BYTES:
            flush()
    flush()
    raw_out.close()
    q_out.close()
    return entries


def _symbol_bounds(table: pa.Table, column: str = "Symbol") -> dict[str, tuple[int, int]]:
    """{symbol: (offset, length)} of a table sorted by that column."""
    if table is None or not table.num_rows:
        return {}
    ree = pc.run_end_encode(table[column].combine_chunks())
    ends = ree.run_ends.to_numpy()
    values = ree.values.to_pylist()
    starts = np.concatenate([[0], ends[:-1]])
    return {v: (int(s), int(e - s)) for v, s, e in zip(values, starts, ends)}


# =============================================================================================
# The stage


def _code_fingerprint() -> str:
    """Incremental runs reuse earlier output only if the parsing code and schemas are the same."""
    # storage.py holds the partitioning scheme.
    return storage.code_digest(__file__, storage.__file__, extra=(RAW_SCHEMA, STATE_VERSION))


def _source_identity(src: ResolvedSource) -> dict:
    return {"kind": src.kind, "path": str(src.path), "label": src.label}


def _load_state(layout: Layout) -> dict | None:
    current = storage.current_version(layout.raw_dir)
    if current is None:
        return None
    try:
        return storage.read_json(current / STATE_FILE)
    except (OSError, ValueError):
        return None


def load_raw(output_dir: str | os.PathLike, **kwargs):
    """The raw dataset as a pandas DataFrame (``pandas.read_parquet`` of ``data/raw``)."""
    import pandas as pd

    return pd.read_parquet(Layout.at(output_dir).raw_dir, **kwargs)


def _raw_files(output_dir) -> list[Path]:
    raw_dir = Layout.at(output_dir).raw_dir
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
            summary["days"] = [dt.date.fromisoformat(summary[k]).toordinal() - _EPOCH_ORDINAL
                               for k in ("date_min", "date_max")]
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
    their rows were written: then only footers are read. x3 benchmark: 0.8-1.4 s -> about 0.05 s.
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
        head_df = (pa.Table.from_batches([batch]) if batch is not None else schema.empty_table()).slice(0, head).to_pandas()
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
        "rows_per_ticker": pd.Series([tickers[n] for n in names], index=pd.Index(names, name="Symbol"),
                                     name="rows", dtype="int64"),
        "rows_per_year": pd.Series(years[year_idx], index=pd.Index(year_idx.tolist(), name="year"), name="rows"),
    }


def load_quarantine(output_dir: str | os.PathLike):
    """Rows set aside by the last ingest (an empty frame with the quarantine columns when none)."""
    qdir = Layout.at(output_dir).quarantine_dir
    files = sorted(qdir.glob("part-*.parquet")) if qdir.exists() else []
    if not files:
        return QUARANTINE_SCHEMA.empty_table().to_pandas()
    return pa.concat_tables(pq.read_table(f, schema=QUARANTINE_SCHEMA) for f in files).to_pandas()


def run(output_dir, source="demo", jobs=0, demo_seed=42, demo_tickers=200, demo_years=10,
        incremental=True) -> dict:
    """Ingest ``source`` into ``output_dir/data/raw`` (+ quarantine) and write ``reports/ingest.json``.

    ``source``: a Kaggle-layout folder or .zip, ``"kaggle"``, ``"demo"`` or None (Kaggle when
    credentials exist, else the demo). Re-running on the same source rereads only changed files;
    the report's ``changed_partitions`` lists the partition keys rewritten (empty: nothing changed).
    ``incremental=False`` (the pipeline's ``--force``) ignores the previous run and re-reads everything.
    With ``jobs`` > 1 files are parsed in worker processes (forkserver): a script that calls this must
    keep its top level under ``if __name__ == "__main__":``, as multiprocessing requires.
    """
    t0 = time.perf_counter()
    layout = Layout.at(output_dir)
    jobs = config.resolve_jobs(jobs)
    src = resolve_source(source, layout.cache_dir, demo_seed=int(demo_seed), demo_tickers=int(demo_tickers),
                         demo_years=int(demo_years))
    print(f"ingest: source {src.label}" + (" -- NOT real market data" if src.kind == "demo" else ""))
    catalog = scan_source(src)
    names, meta_note = parse_meta(catalog.meta)
    state = _load_state(layout) if incremental else None
    code_fp = _code_fingerprint()
    plan = _plan(catalog, state, src, code_fp, layout)

    entries: dict[str, dict] = {}  # file -> per-file entry
    changed_partitions: list[str] = []
    if plan["incremental"] and not plan["rewrite"]:
        # Nothing changed: keep the dataset, refresh the stamps of touched-but-equal files.
        entries = {e["file"]: e for e in state["files"]}
        if plan["stamps_refreshed"]:
            storage.atomic_write_json(storage.current_version(layout.raw_dir) / STATE_FILE,
                                      _state(src, catalog, code_fp, entries, plan["stamps"]))
    else:
        entries = _write_partitions(layout, src, catalog, names, plan, jobs, state)
        changed_partitions = sorted(plan["rewrite"])

    report = _report(src, catalog, names, meta_note, entries, plan, changed_partitions, time.perf_counter() - t0)
    storage.atomic_write_json(layout.report(STAGE), report)
    t = report["totals"]
    print(f"ingest: {t['files_ingested']:,} files, {t['rows_kept']:,} rows kept, "
          f"{t['rows_quarantined']:,} rows quarantined, {t['files_rejected']} files set aside, "
          f"{len(report['tickers_without_metadata'])} tickers without metadata"
          + ("" if not plan["incremental"] else f"; incremental: {len(changed_partitions)} partitions rewritten"))
    return report


def _plan(catalog: Catalog, state: dict | None, src: ResolvedSource, code_fp: str, layout: Layout) -> dict:
    """Decide full or incremental, and which partitions to rewrite and which files to read."""
    full = {"incremental": False, "rewrite": {storage.partition_key(f.symbol) for f in catalog.files},
            "read": {f.rel for f in catalog.files}, "stamps": {}, "stamps_refreshed": False, "why": "first run"}
    if state is None:
        return full
    if state.get("version") != STATE_VERSION or state.get("code") != code_fp:
        return {**full, "why": "ingest code changed"}
    if state.get("source", {}).get("path") != str(src.path) or state.get("source", {}).get("kind") != src.kind:
        return {**full, "why": "different source"}
    if state.get("meta") != catalog.meta_fingerprint:
        return {**full, "why": "symbols_valid_meta.csv changed"}
    previous = {e["rel"]: e for e in state.get("stamps", [])}
    if len(state.get("files", [])) != len(previous):
        return {**full, "why": "state incomplete"}
    rewrite, read, stamps, refreshed = set(), set(), {}, False
    current = {f.rel for f in catalog.files}
    for f in catalog.files:
        old = previous.get(f.rel)
        stamps[f.rel] = {"rel": f.rel, "symbol": f.symbol, "size": f.size, "stamp": f.stamp,
                         "crc32": old.get("crc32") if old else None}
        if old and old["size"] == f.size and old["stamp"] == f.stamp and old.get("symbol") == f.symbol:
            continue
        if old and old["size"] == f.size and old.get("crc32") and src.path.is_dir():
            # Touched but maybe not modified: compare content (CRC32 at ~2 GB/s) before rereading.
            crc = f"{crc32((src.path / f.rel).read_bytes()):08x}"
            if crc == old["crc32"]:
                refreshed = True
                continue
        rewrite.add(storage.partition_key(f.symbol))
        read.add(f.rel)
    for rel, old in previous.items():
        if rel not in current:
            rewrite.add(storage.partition_key(old["symbol"]))
    return {"incremental": True, "rewrite": rewrite, "read": read, "stamps": stamps,
            "stamps_refreshed": refreshed, "why": "same source as the last run"}


def _write_partitions(layout, src, catalog, names, plan, jobs, state) -> dict[str, dict]:
    by_key: dict[str, list[SourceFile]] = {}
    for f in catalog.files:
        by_key.setdefault(storage.partition_key(f.symbol), []).append(f)
    old_entries = {e["file"]: e for e in (state or {}).get("files", [])} if plan["incremental"] else {}
    entries: dict[str, dict] = {}
    # Entries of files not reread come from the last run (their rows are carried over unchanged).
    for f in catalog.files:
        short = f.rel[len(catalog.root):]
        if f.rel not in plan["read"] and short in old_entries:
            entries[short] = old_entries[short]

    previous_raw = storage.current_version(layout.raw_dir) if plan["incremental"] else None
    previous_q = storage.current_version(layout.quarantine_dir) if plan["incremental"] else None
    incremental = plan["incremental"]
    with storage.publish_dir(layout.raw_dir, seed_from_current=incremental) as raw_stage, \
            storage.publish_dir(layout.quarantine_dir, seed_from_current=incremental) as q_stage:
        tasks = []
        for key in sorted(plan["rewrite"]):
            files = by_key.get(key, [])
            part = storage.partition_file(key)
            to_parse = [(f.rel, f.symbol, names.get(f.symbol)) for f in files if f.rel in plan["read"]]
            keep = [f.symbol for f in files if f.rel not in plan["read"]]
            tasks.append(_Task(
                key, str(src.path), catalog.root, to_parse, keep,
                str(previous_raw / part) if previous_raw else None,
                str(previous_q / part) if previous_q else None,
                str(raw_stage / part), str(q_stage / part),
                sum(f.size for f in files if f.rel in plan["read"]),
            ))
        for entry in _execute(tasks, jobs, sum(len(t.parse) for t in tasks)):
            entries[entry["file"]] = entry
        ordered = {f.rel[len(catalog.root):]: None for f in catalog.files}
        entries = {k: entries[k] for k in ordered if k in entries}
        stamps = plan["stamps"] or {f.rel: {"rel": f.rel, "size": f.size, "stamp": f.stamp, "symbol": f.symbol}
                                    for f in catalog.files}
        for f in catalog.files:
            e = entries.get(f.rel[len(catalog.root):], {})
            if e.get("crc32"):
                stamps[f.rel]["crc32"] = e["crc32"]
        storage.atomic_write_json(raw_stage / STATE_FILE, _state(src, catalog, _code_fingerprint(), entries, stamps))
    return entries


def start_worker_server():
    """Start (once per process) the server ``run``'s worker processes are forked from; return its context.

    forkserver: workers start from a clean process, not a fork of a threaded parent (pyarrow). The
    server imports this module and pandas (pyarrow's to_numpy imports it) before it forks the first
    worker: about 0.5 s, which the pipeline overlaps with the kernel's start by calling this ahead.
    """
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["volcast.ingest", "pandas"])
    forkserver.ensure_running()
    return ctx


def _execute(tasks: list[_Task], jobs: int, n_files: int) -> list[dict]:
    """Run partition tasks on ``jobs`` processes (biggest first) with a progress bar over files."""
    from tqdm import tqdm  # text bar: executed notebooks keep a line, not a widget

    tasks = sorted(tasks, key=lambda t: -t.bytes)
    out: list[dict] = []
    bar = tqdm(total=n_files, desc="ingest", unit="file", disable=n_files == 0, mininterval=0.5)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            for task in tasks:
                entries = _partition_task(task)
                bar.update(len(task.parse))
                out.extend(entries)
            return out
        ctx = start_worker_server()
        progress = ctx.Queue()
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(progress,)) as pool:
            pending = {pool.submit(_partition_task, t) for t in tasks}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress, bar)
                for fut in done:
                    out.extend(fut.result())
            _drain(progress, bar)
        return out
    finally:
        bar.n = n_files
        bar.refresh()
        bar.close()


def _drain(progress, bar) -> None:
    n = 0
    while True:
        try:
            n += progress.get_nowait()  # files done, sent per batch
        except queue_mod.Empty:
            break
    if n:
        bar.update(n)


def _state(src, catalog, code_fp, entries, stamps) -> dict:
    return {
        "version": STATE_VERSION,
        "code": code_fp,
        "source": _source_identity(src),
        "meta": catalog.meta_fingerprint,
        "files": list(entries.values()),  # parsed files (rejected ones included), not catalog.rejected
        "stamps": list(stamps.values()),
    }


def _report(src, catalog, names, meta_note, entries, plan, changed_partitions, seconds) -> dict:
    files = list(entries.values()) + catalog.rejected
    ok = [e for e in files if not e.get("error")]
    rejected = [{"file": e["file"], "symbol": e["symbol"], "reason": e["error"]} for e in files if e.get("error")]
    sums = {k: sum(e.get(k, 0) for e in files) for k in
            ("rows_read", "rows_kept", "rows_quarantined", "zero_volume_rows", "nonpositive_price_rows")}
    without_meta = sorted(e["symbol"] for e in ok if e.get("rows_kept") and e["symbol"] not in names)
    # Speed counts only the rows parsed in this run (an incremental run rereads few files).
    reread = {f.rel[len(catalog.root):] for f in catalog.files if f.rel in plan["read"]}
    rows_this_run = sum(e.get("rows_read", 0) for e in files if e["file"] in reread)
    rows_per_s = rows_this_run / seconds if seconds > 0 and rows_this_run else None
    return {
        "stage": STAGE,
        "source": _source_identity(src) | {"generated": src.kind == "demo"},
        "totals": {
            "files": len(files),
            "files_ingested": len(ok),
            "files_rejected": len(rejected),
            "tickers": sum(1 for e in ok if e.get("rows_kept")),
            **sums,
        },
        "rejected_files": rejected,
        "tickers_without_metadata": without_meta,
        "meta_note": meta_note,
        "incremental": plan["incremental"],
        "incremental_reason": plan["why"],
        "changed_partitions": changed_partitions,
        "files_reread": len(plan["read"]),
        "rows_read_this_run": rows_this_run,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows_per_s) if rows_per_s else None,
        "files": [{k: v for k, v in e.items() if k != "crc32"} for e in files],
    }
