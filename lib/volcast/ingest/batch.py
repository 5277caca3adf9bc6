"""The batch fast path: many clean ticker CSVs parsed in one Arrow read (``parse_csv_batch``).

Why a second parser: Arrow's per-call overhead is a large share of a small file's parse, so clean files
(the common case) are read together; anything unusual goes to ``parse_csv``, which decides and explains.
``tests/test_ingest_batch.py`` checks that both give the same result on every file the fast path takes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ..config import CSV_COLUMNS, PRICE_COLUMNS, RAW_SCHEMA, TICKER_COLUMNS
from .limits import MAX_LINE_BYTES
from .lines import longest_line
from .parse import DAY_ONE, ParsedFile

CANONICAL_HEADER = ",".join(CSV_COLUMNS).encode() + b"\n"
_RAW_BODY_SCHEMA = pa.schema([f for f in RAW_SCHEMA if f.name not in TICKER_COLUMNS])
BATCH_BYTES = 16 << 20  # CSV text parsed in one Arrow read (each read has a fixed cost, large beside a small file's)


def _batch_body(data: bytes, max_line_bytes: int = MAX_LINE_BYTES) -> memoryview | None:
    """The data lines of a file the batch reader can take as they are, or None (parse_csv reads it alone).

    Only the plainest files qualify: the canonical header, ASCII, "\n" line ends, no quotes, no NUL, no
    line over max_line_bytes.
    """
    if not data.startswith(CANONICAL_HEADER) or len(data) == len(CANONICAL_HEADER):
        return None
    if not _plain(data, len(CANONICAL_HEADER), len(data)):
        return None
    if len(data) > max_line_bytes and longest_line(data, len(CANONICAL_HEADER)) > max_line_bytes:
        return None
    return memoryview(data)[len(CANONICAL_HEADER) :]


def _plain(buffer: bytes | bytearray, start: int, stop: int) -> bool:
    """Whether ``buffer[start:stop]`` is plain enough for the joint read: ASCII, no "\r", quote or NUL.
    (Checked in place: the reused read buffer is never copied.)"""
    return (
        buffer.find(b"\r", start, stop) == -1
        and buffer.find(b'"', start, stop) == -1
        and buffer.find(b"\x00", start, stop) == -1
        and not (np.frombuffer(buffer, np.uint8, stop - start, start) >= 0x80).any()
    )


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
        convert_options=pcsv.ConvertOptions(
            column_types=types,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            check_utf8=False,
        ),
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


def parse_csv_batch(
    items: list[tuple[bytes, str, str | None]], ticker_columns: bool = True, max_line_bytes: int = MAX_LINE_BYTES
) -> list[ParsedFile | None]:
    """Many ticker CSVs ``(data, symbol, security name)`` in one typed Arrow read.

    Each result is exactly what ``parse_csv`` returns for that file when the file is clean (the
    common case: typed, no malformed line, nothing missing, finite prices, non-negative Volume, real
    and strictly increasing dates), else None: the caller then runs ``parse_csv`` on that file, which
    finds and quarantines what is wrong. All None when the joint read fails (a value that is not a
    number anywhere in the batch). Files are joined with a separator line whose row number Arrow
    reports, so each file's rows are known without scanning for line ends (blank lines are skipped
    by Arrow in both paths alike).

    ``ticker_columns=False`` leaves out Symbol and Security Name (the raw writer adds them as
    dictionaries): repeating a name on each row would cost a string per row.
    """
    results: list[ParsedFile | None] = [None] * len(items)
    picked, parts = [], []
    for i, (data, _, _) in enumerate(items):
        body = _batch_body(data, max_line_bytes)
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


def _parse_joined(
    joined: pa.Buffer, tickers: list[tuple[str, str | None]], ticker_columns: bool = True
) -> list[ParsedFile | None]:
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
    zero_volume = (
        np.bincount(files_of(zero), minlength=len(picked)) if pc.any(zero).as_py() else np.zeros(len(picked), np.int64)
    )
    columns = {"Date": table["Date"], **{c: table[c] for c in PRICE_COLUMNS}, "Volume": volume}
    for k in picked:
        if not ok[k] or not counts[k]:
            continue
        s, c = int(starts[k]), int(counts[k])
        symbol, name = tickers[k]
        values = {col: arr.slice(s, c) for col, arr in columns.items()}
        if ticker_columns:
            kept = pa.table(
                {
                    "Symbol": pa.repeat(pa.scalar(symbol, pa.string()), c),
                    "Security Name": pa.repeat(pa.scalar(name, pa.string()), c),
                    **values,
                },
                schema=RAW_SCHEMA,
            )
        else:
            kept = pa.table(values, schema=_RAW_BODY_SCHEMA)
        results[k] = ParsedFile(
            kept,
            None,
            {
                "rows_read": c,
                "rows_kept": c,
                "rows_quarantined": 0,
                "zero_volume_rows": int(zero_volume[k]),
                "nonpositive_price_rows": int(nonpositive[k]),
            },
            None,
        )
    return results
