"""One ticker CSV, bytes in: rows that take ``config.RAW_SCHEMA`` and rows set aside (``parse_csv``).

Columns are matched by header name; every data line ends as a kept row or a quarantined row with its line
number and reason. Vectorised with pyarrow; Python loops run only over rows that failed."""

from __future__ import annotations

import csv
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ..config import CSV_COLUMNS, PRICE_COLUMNS, RAW_SCHEMA
from .limits import DEFAULT_LIMITS, Limits
from .lines import _all_line_spans, count_blank_lines, count_lines
from .quarantine import QUARANTINE_TEXT_CHARS, _quarantine_rows
from .values import _cast_float, _cast_volume, _np_bool, _valid_dates

BOM = b"\xef\xbb\xbf"


class ParsedFile(NamedTuple):
    table: pa.Table | None  # RAW_SCHEMA rows kept, sorted by Date (None when the file is rejected)
    quarantine: pa.Table | None  # QUARANTINE_SCHEMA rows set aside (None when there are none)
    counts: dict  # rows_read, rows_kept, rows_quarantined, zero_volume_rows, nonpositive_price_rows
    error: str | None  # why the whole file was rejected


def _zero_counts() -> dict:
    return {"rows_read": 0, "rows_kept": 0, "rows_quarantined": 0, "zero_volume_rows": 0, "nonpositive_price_rows": 0}


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


def _read_body(
    body: pa.Buffer, n_fields: int, cols: dict[str, int], typed: bool, quoting: bool = True, block_size: int = 1 << 22
):
    """Read the data lines (no header) with Arrow; rows with a wrong field count are collected.
    ``quoting=False`` reads quotes as text, so that no field can run over a line end."""
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
        read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=block_size),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid, quote_char='"' if quoting else False),
        convert_options=pcsv.ConvertOptions(
            column_types=types,
            include_columns=[f"c{cols[c]}" for c in CSV_COLUMNS],
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            check_utf8=False,
        ),
    )
    table = table.rename_columns(list(CSV_COLUMNS))
    return table, invalid


def _read_lines(body: bytes, n_fields: int, cols: dict[str, int], block_size: int):
    """(table, invalid rows, typed) with one row per non-blank line: typed when every value converts, else
    text. A quoted field that spans lines (quotes balanced on each line, e.g. 'a"b,"c') would make one row
    of several lines: then the body is read again with quotes as text."""
    buf = pa.py_buffer(body)
    for quoting in (True, False):
        try:
            table, invalid = _read_body(buf, n_fields, cols, typed=True, quoting=quoting, block_size=block_size)
            typed = True
        except pa.ArrowInvalid:
            table, invalid = _read_body(buf, n_fields, cols, typed=False, quoting=quoting, block_size=block_size)
            typed = False
        rows = table.num_rows + len(invalid)
        if rows == count_lines(body) or rows == count_lines(body) - count_blank_lines(body):
            break
    return table, invalid, typed


def _set_aside_lines(body: bytes, max_line_bytes: int) -> tuple[bytes, list[tuple[int, str, str, str]]]:
    """Lines kept from the CSV reader, each quarantined alone: NUL bytes, a quote that does not close on
    its line (the reader would carry the field over the following lines), or longer than max_line_bytes.

    Returns the body with those lines emptied (line ends kept, so every line keeps its number; the reader
    skips empty lines) and ``(0-based body line, kind, reason, text)`` for each. Linear in the body."""
    if body.find(b"\x00") == -1 and body.find(b'"') == -1 and len(body) <= max_line_bytes:
        return body, []
    spans = _all_line_spans(body)
    if not len(spans):
        return body, []
    arr = np.frombuffer(body, np.uint8)

    def per_line(byte: int) -> np.ndarray:
        where = np.searchsorted(spans[:, 0], np.flatnonzero(arr == byte), side="right") - 1
        return np.bincount(where, minlength=len(spans))

    nul, quotes = per_line(0) > 0, per_line(34)
    too_long = spans[:, 1] - spans[:, 0] > max_line_bytes
    out, pieces, prev = [], [], 0
    for i in np.flatnonzero(nul | (quotes % 2 == 1) | too_long).tolist():
        s, e = (int(v) for v in spans[i])
        if too_long[i]:
            kind, reason = "too-long", f"line is {e - s:,} bytes, over the limit max_line_bytes={max_line_bytes:,}"
        elif nul[i]:
            kind, reason = "nul-bytes", "line has NUL bytes"
        else:
            kind, reason = "unbalanced-quote", f"unbalanced quote: {quotes[i]} quote character(s) on the line"
        text = body[s : min(e, s + 4 * QUARANTINE_TEXT_CHARS)].rstrip(b"\r").replace(b"\x00", b"\\x00")
        out.append((i, kind, reason, text.decode("utf-8", errors="replace")[:QUARANTINE_TEXT_CHARS]))
        pieces.append(body[prev:s])
        prev = e
    pieces.append(body[prev:])
    return b"".join(pieces), out


def _header_problem(data: bytes, start: int, limits: Limits) -> str | None:
    """A header line over max_header_bytes or with more than max_columns fields, found before parsing it."""
    window = data[start : start + limits.max_header_bytes + 1]  # a header within the limit ends in here
    ends = [i for i in (window.find(b"\n"), window.find(b"\r")) if i != -1]
    if not ends and len(data) - start > limits.max_header_bytes:
        return f"header line longer than the limit max_header_bytes={limits.max_header_bytes:,}"
    columns = window.count(b",", 0, min(ends, default=len(window))) + 1
    if columns > limits.max_columns:
        return f"header has {columns:,} columns, over the limit max_columns={limits.max_columns:,}"
    return None


def parse_csv(
    data: bytes, symbol: str, security_name: str | None = None, file: str = "", limits: Limits = DEFAULT_LIMITS
) -> ParsedFile:
    """One ticker's CSV bytes -> rows that take RAW_SCHEMA, rows set aside, counts. Never raises on data.

    Every non-blank line after the header ends as a kept row or a quarantined row with its line number
    (``rows_read`` = kept + quarantined = the non-blank data lines), unless the whole file is rejected."""
    if not data:
        return _reject("empty file (0 bytes)")
    start = len(BOM) if data.startswith(BOM) else 0
    problem = _header_problem(data, start, limits)
    if problem:
        return _reject(problem)
    nl = data.find(b"\n", start)
    header_end = len(data) if nl == -1 else nl
    cr = data.find(b"\r", start, header_end)
    if cr != -1 and cr + 1 != header_end:  # a lone "\r" ends the header (old Mac line ends)
        header_end = cr
    if data.find(b"\x00", start, header_end) != -1:
        return _reject("binary file (NUL bytes in the header line), not a CSV")
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
    body, set_aside = _set_aside_lines(body, limits.max_line_bytes)
    bad_utf8 = set() if body.isascii() else _bad_utf8_lines(body)
    if bad_utf8:
        # Replace undecodable bytes (U+FFFD) so no value is invalid UTF-8; newlines are untouched,
        # so line numbers stay exact and the lines listed in bad_utf8 are flagged in quarantine.
        body = body.decode("utf-8", errors="replace").encode("utf-8")
    if set_aside and count_lines(body) == count_blank_lines(body):  # every data line was set aside
        table, invalid, typed = pa.table({c: pa.array([], pa.string()) for c in CSV_COLUMNS}), [], False
    else:
        try:
            table, invalid, typed = _read_lines(body, len(fields), cols, max(1 << 22, 2 * limits.max_line_bytes))
        except pa.ArrowInvalid as exc:
            return _reject(f"not readable as CSV: {str(exc).splitlines()[0][:200]}")
    n = table.num_rows
    if n == 0 and not invalid and not set_aside:
        return _reject("header only: no data rows")
    if typed and not invalid and not set_aside:
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
    if n_bad or invalid or set_aside:
        quarantine = _quarantine_rows(
            body, table, n, bad, problems, duplicate_of, days, invalid, bad_utf8, symbol, file, len(fields), set_aside
        )
    rows_read = n + len(invalid) + len(set_aside)
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
    counts = {
        "rows_read": n,
        "rows_kept": n,
        "rows_quarantined": 0,
        "zero_volume_rows": int((vol == 0).sum()),
        "nonpositive_price_rows": int((prices <= 0).any(axis=1).sum()),
    }
    return ParsedFile(kept, None, counts, None)
