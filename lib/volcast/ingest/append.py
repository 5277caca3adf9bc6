"""Append-aware ingest: a source file whose previous content is an unchanged byte prefix of its new content
has only its appended lines parsed; anything else goes back to the file-by-file path.

A file qualifies when the last run read it whole (its size and CRC-32 are in the state), it is now longer,
its first ``old size`` bytes still have that CRC-32 and end with a line end ("\\n"), and the rows parsed
from the appended lines all date after the ticker's last stored row. The appended lines are parsed as a
CSV of their own (the file's header line, then those lines), so every row gets exactly the treatment a
full parse gives it; quarantine line numbers (and "first on line N" in a reason) are moved on by the old
content's line count, so they are the file's physical lines as a full read reports them.

A date not after the last stored one (a repeat, or an earlier day) sends the file to the full parse,
which quarantines a repeated date exactly as a full run does (the first row keeps its place) and sorts
an earlier day into place.
"""

from __future__ import annotations

import os
import re
import threading
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from isal.isal_zlib import crc32  # zlib's CRC-32 with the same values, faster (ISA-L)

from .batch import parse_csv_batch
from .limits import Limits, Refused
from .lines import count_lines, data_lines
from .parse import BOM, ParsedFile, parse_csv
from .read import _open_regular

COUNT_KEYS = ("lines", "rows_read", "rows_kept", "rows_quarantined", "zero_volume_rows", "nonpositive_price_rows")


class Candidate(NamedTuple):
    """A file the plan expects to have grown by appended lines (all it knew at the last run)."""

    rel: str
    symbol: str
    name: str | None
    old_size: int
    old_crc: str  # CRC-32 of the whole file as last read, 8 hex digits
    old_entry: dict  # the file's entry of the last run (its counts)


class Tail(NamedTuple):
    data: bytes  # the file's header line + the appended bytes: a CSV that parse_csv takes as it is
    path: str  # the file (its old content is read again only if an appended row is set aside)
    body_start: int  # where the old content's data lines start (after the header line)
    old_size: int
    crc: str  # CRC-32 of the whole new file

    def line_offset(self) -> int:
        """Physical lines of the old content after its header line (counted only when a row is set aside)."""
        with open(self.path, "rb") as handle:
            old = handle.read(self.old_size)
        return count_lines(old, self.body_start, self.old_size)


# One buffer per process, reused file after file: a fresh bytes object per file costs fresh pages (page
# faults) each time, which is most of the cost of checking a file's old content.
# One per thread: the delta tasks of a daily update run in threads (``delta.run_tasks``).
_LOCAL = threading.local()


def read_tail(path: str, c: Candidate, limits: Limits) -> Tail | str:
    """The appended part of a file, or why the file must be read whole (a short reason)."""
    try:
        fd, size = _open_regular(path, limits)
    except (Refused, OSError) as exc:
        return f"unreadable now ({exc})"
    try:
        buf = getattr(_LOCAL, "buffer", None)
        if buf is None or len(buf) < size + 1:
            buf = _LOCAL.buffer = bytearray(max(size + 1, 2 * len(buf) if buf else 1 << 20))
        view = memoryview(buf)
        n = os.preadv(fd, [view[: size + 1]], 0)  # one byte more than the size: a file still growing shows
        if n != size:
            return "changed while read"
    finally:
        os.close(fd)
    if size < c.old_size:
        return "shorter than last read"
    if size == c.old_size:
        return "same size, touched"
    prefix_crc = crc32(view[: c.old_size])
    if f"{prefix_crc:08x}" != c.old_crc:
        return "earlier content changed"
    if c.old_size == 0 or buf[c.old_size - 1] != ord("\n"):  # a last line without its end may be continued
        return "previous content did not end with a line end"
    start = len(BOM) if buf.startswith(BOM) else 0
    nl = buf.find(b"\n", start, c.old_size)
    cr = buf.find(b"\r", start, nl)
    if nl == -1 or (cr != -1 and cr + 1 != nl):  # a lone "\r" header end: the full parse decides
        return "header line not ended by a newline"
    whole_crc = crc32(view[c.old_size : size], prefix_crc)  # the CRC-32 of the whole file, carried on
    return Tail(bytes(view[: nl + 1]) + bytes(view[c.old_size : size]), path, nl + 1, c.old_size, f"{whole_crc:08x}")


_FIRST_ON_LINE = re.compile(r"first on line (\d+)")


def _shift_lines(quarantine: pa.Table | None, tail: Tail) -> pa.Table | None:
    """Quarantine rows of the appended part, with the file's own line numbers."""
    if quarantine is None or not quarantine.num_rows:
        return quarantine
    offset = tail.line_offset()
    lines = pc.add(quarantine["line"], pa.scalar(offset, pa.int64()))
    reasons = [
        None if r is None else _FIRST_ON_LINE.sub(lambda m: f"first on line {int(m.group(1)) + offset}", r)
        for r in quarantine["reason"].to_pylist()
    ]
    quarantine = quarantine.set_column(quarantine.schema.get_field_index("line"), "line", lines)
    return quarantine.set_column(quarantine.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))


class Appended(NamedTuple):
    entry: dict  # the file's entry: the last run's counts plus the appended part's
    table: pa.Table  # the appended rows kept, in date order
    quarantine: pa.Table | None  # the appended rows set aside, file line numbers
    rows_read: int  # rows parsed in this run (the appended part)


def parse_appended(
    candidates: list[Candidate], source_path: str, root: str, last_dates: dict[str, str], limits: Limits
) -> tuple[dict[str, Appended], dict[str, str]]:
    """Parse the appended part of each candidate: ``({symbol: Appended}, {symbol: why it is read whole})``.

    ``last_dates``: each ticker's last stored Date (tickers with no kept row are absent). The clean tails
    are parsed together in one Arrow read, the others one by one, as the file-by-file path does."""
    tails: dict[str, Tail] = {}
    fallback: dict[str, str] = {}
    for c in candidates:
        got = read_tail(os.path.join(source_path, c.rel), c, limits)
        if isinstance(got, str):
            fallback[c.symbol] = got
        else:
            tails[c.symbol] = got
    by_symbol = {c.symbol: c for c in candidates}
    order = list(tails)
    fast = (
        parse_csv_batch(
            [(tails[s].data, s, by_symbol[s].name) for s in order],
            ticker_columns=False,
            max_line_bytes=limits.max_line_bytes,
        )
        if order  # one file too: the joint read is the lighter one for a short tail
        else [None] * len(order)
    )
    done: dict[str, Appended] = {}
    for symbol, parsed in zip(order, fast):
        c, tail = by_symbol[symbol], tails[symbol]
        file = c.rel[len(root) :]
        if parsed is None:
            parsed = parse_csv(tail.data, symbol, c.name, file, limits)
        why = _check(parsed, last_dates.get(symbol))
        if why:
            fallback[symbol] = why
            continue
        lines = data_lines(tail.data, accounted=parsed.counts["rows_read"])
        entry = {"file": file, "symbol": symbol, "crc32": tail.crc}
        added = {**parsed.counts, "lines": lines}
        if lines != added["rows_kept"] + added["rows_quarantined"]:
            fallback[symbol] = "appended lines not accounted for by the parser"
            continue
        for key in COUNT_KEYS:
            entry[key] = int(c.old_entry.get(key, 0)) + int(added[key])
        table = parsed.table.drop_columns([n for n in ("Symbol", "Security Name") if n in parsed.table.column_names])
        done[symbol] = Appended(entry, table, _shift_lines(parsed.quarantine, tail), added["rows_read"])
    return done, fallback


def _check(parsed: ParsedFile, last_date: str | None) -> str | None:
    """Why appended rows cannot simply follow the stored ones, or None."""
    if parsed.error:
        return f"appended part: {parsed.error}"
    table = parsed.table
    if last_date is not None and table.num_rows and table["Date"][0].as_py() <= last_date:
        return "a date not after the last stored one"
    return None
