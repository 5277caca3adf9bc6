"""Rows set aside: the quarantine schema, the reasons written for each bad row, and reading them back."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Layout
from .lines import _line_spans
from .values import _texts

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


_KIND_ORDER = (
    "missing",
    "non-numeric",
    "non-finite",
    "non-integral",
    "negative",
    "overflow",
    "bad-date",
    "duplicate-date",
)
_KIND_TEXT = {
    "non-numeric": "is not a number",
    "non-finite": "is not finite",
    "non-integral": "is not a whole number",
    "negative": "is negative",
    "overflow": "is beyond int64",
    "bad-date": "is not a real YYYY-MM-DD date",
}


def _quarantine_rows(
    body, table, n, bad, problems, duplicate_of, days, invalid, bad_utf8, symbol, file, n_fields, set_aside=()
) -> pa.Table:
    """Build the quarantine rows: a Python loop over the bad rows only, whose values are fetched once per
    column (one ``take`` each), so the cost is linear in the bad rows. ``set_aside``: lines the CSV
    reader never saw, as ``(0-based body line, kind, reason, text)``."""
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

    for i, kind, reason, text in set_aside:
        for name, value in zip(QUARANTINE_SCHEMA.names, (file, symbol, i + 2, kind, reason, text)):
            rows[name].append(value)

    bad_rows = np.flatnonzero(bad)
    cache: dict[str, dict[int, object]] = {}

    def value_of(column: str, row: int):
        """The value of ``column`` at a bad row: text for text columns, else the parsed value."""
        if column not in cache:
            arr = table[column]
            values = (
                _texts(arr, bad_rows)
                if pa.types.is_string(arr.type)
                else arr.take(pa.array(bad_rows, pa.int64())).to_pylist()
            )
            cache[column] = dict(zip(bad_rows.tolist(), values))
        return cache[column][row]

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
                    value = value_of(c, row)
                    parts.append(f"{c} {_KIND_TEXT[kind]} ({value!r})")
        if row in duplicate_of:
            first_kind = first_kind or "duplicate-date"
            first_line = line_of(int(table_ordinals[duplicate_of[row]]))
            where = f" (first on line {first_line})" if first_line else ""
            parts.append(f"duplicate date {value_of('Date', row)}{where}")
        add(int(table_ordinals[row]), first_kind or "invalid", "; ".join(parts) or "invalid row")
    out = pa.table(rows, schema=QUARANTINE_SCHEMA)
    return out.sort_by([("line", "ascending")]) if consistent else out


def load_quarantine(output_dir: str | os.PathLike):
    """Rows set aside by the last ingest (an empty frame with the quarantine columns when none)."""
    qdir = Layout.at(output_dir).quarantine_dir
    files = sorted(qdir.glob("part-*.parquet")) if qdir.exists() else []
    if not files:
        return QUARANTINE_SCHEMA.empty_table().to_pandas()
    return pa.concat_tables(pq.read_table(f, schema=QUARANTINE_SCHEMA) for f in files).to_pandas()
