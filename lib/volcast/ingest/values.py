"""Text to typed values: the float, Volume and date rules a CSV cell must meet (vectorised, Python only for
the rare cells Arrow and the rules disagree on)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INT64_MAX = 2**63 - 1

# Arrow's float parser accepts these forms (checked against pyarrow 26); the regex only splits
# "can be cast" from "cannot" in the slow path, the cast itself decides the value.
_FLOAT_RE = r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)$"
_FLOAT_PY = re.compile(_FLOAT_RE, re.IGNORECASE)
_DATE_RE = r"^\d{4}-\d{2}-\d{2}$"


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
