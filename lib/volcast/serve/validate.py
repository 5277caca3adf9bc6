"""Input validation for predictions: the one place that decides what a request may contain.

Pure functions that turn query strings, JSON bodies and dashboard text into floats, or raise
``InputError`` with one sentence naming the field (and the item of a batch). The dashboard uses the
same functions, so it explains bad input in the same words as the API.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from volcast.config import PRICE_FEATURE, VOL_FEATURE
from volcast.errors import UserError

# Inclusive bounds: every finite non-negative number. Real split-adjusted Adj Close reaches 1e10 and
# Volume 7.4e9, so any upper bound would refuse real rows; an input outside the training range is
# answered with "extrapolated": true instead (model.Predictor).
FIELD_BOUNDS: dict[str, tuple[float, float]] = {
    VOL_FEATURE: (0.0, math.inf),
    PRICE_FEATURE: (0.0, math.inf),
}
FIELDS = tuple(FIELD_BOUNDS)
MAX_BATCH = 10_000
# Bytes one batch item may take: a 10,000-object batch of plain json.dumps is ~0.75 MB; 256 bytes an
# item leaves room for 17-digit numbers and pretty-printing. Larger bodies are refused with 413 from
# Content-Length, before a byte of them is read.
MAX_ITEM_BYTES = 256
MAX_BODY_BYTES = MAX_BATCH * MAX_ITEM_BYTES
# Digits a JSON integer may have (float's range ends near 1.8e308); longer ones are refused by name
# without ever converting them (int() of 5,000 digits is refused by Python itself).
MAX_INT_DIGITS = 400
NO_MODEL_ERROR = "no model yet: run `python run_pipeline.py` first"
# Ticker symbols: ASCII letters and digits, and . - _ ^ = $ (BRK.A, BRK-A, ^GSPC, CL=F), at most 20.
MAX_SYMBOL_CHARS = 20
SYMBOL_PATTERN = rf"[A-Za-z0-9^][A-Za-z0-9.\-_^=$]{{0,{MAX_SYMBOL_CHARS - 1}}}"
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)
SYMBOL_RULE = f"1 to {MAX_SYMBOL_CHARS} characters: ASCII letters, digits, or . - _ ^ = $"
# Longest text of a name or value quoted back in an error (the rest is cut, with "...").
SHOWN_CHARS = 40

# ASCII digits only: str patterns' \d and float() also take Arabic-Indic or fullwidth digits.
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE_WORDS = {"nan": "NaN", "inf": "infinity", "infinity": "infinity"}


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with "..."), for echoing user input back."""
    return text if len(text) <= limit else text[:limit] + "..."


class InputError(UserError, ValueError):
    """Bad prediction input; ``str(err)`` is the sentence shown to the user (API and dashboard)."""

    def __init__(self, message: str, field: str | None = None, index: int | None = None):
        super().__init__(message)
        self.field = field
        self.index = index

    def payload(self) -> dict:
        out: dict[str, Any] = {"error": str(self)}
        if self.field is not None:
            out["field"] = clip(self.field)  # an unknown 1 MB key is not echoed whole
        if self.index is not None:
            out["index"] = self.index
        return out


def _show(text: str, limit: int = SHOWN_CHARS) -> str:
    return repr(clip(text, limit))


def bounds_text(field: str) -> str:
    """'a finite number, 0 or more': the accepted range of a field, in words."""
    lo, hi = FIELD_BOUNDS[field]
    if math.isinf(hi):
        return f"a finite number, {lo:g} or more"
    return f"a number from {lo:g} to {hi:g}"


def _check_range(field: str, value: float, shown: str, where: str = "") -> float:
    lo, hi = FIELD_BOUNDS[field]
    if not math.isfinite(value):  # 1e400 parses to inf: it is not a number we can use
        raise InputError(f"{where}{field} must be a finite number, got {shown}, which is too large for a float", field)
    if value < lo:
        raise InputError(f"{where}{field} must not be negative, got {shown}", field)
    if value > hi:
        raise InputError(f"{where}{field} must be at most {hi!r}, got {shown}", field)
    return float(value)


def parse_number_text(field: str, text: str) -> float:
    """One field's value typed as text (query string or dashboard box) -> float, or InputError."""
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{field} is empty; give {bounds_text(field)}", field)
    word = stripped.lstrip("+-").lower()
    if word in _NON_FINITE_WORDS:
        raise InputError(f"{field} must be a finite number, got {_NON_FINITE_WORDS[word]}", field)
    if not _NUMBER_RE.fullmatch(stripped):
        raise InputError(
            f"{field} must be a plain number like 12345.6 (ASCII digits; no commas, units or spaces "
            f"inside), got {_show(stripped)}",
            field,
        )
    value = float(stripped)  # cannot fail after the regex; a huge exponent gives +-inf
    shown = stripped if len(stripped) <= SHOWN_CHARS else f"a number of {len(stripped):,} characters"
    return _check_range(field, value, shown)


def parse_predict_params(query: Mapping[str, Sequence[str]]) -> tuple[float, float]:
    """Query parameters (name -> list of values, as ``parse_qs`` gives) -> (vol_moving_avg, price)."""
    for name in query:
        if name not in FIELD_BOUNDS:
            raise InputError(
                f"unknown parameter {_show(name)}; the parameters are {VOL_FEATURE} and {PRICE_FEATURE}",
                name,
            )
    values = []
    for field in FIELDS:
        given = query.get(field)
        if not given:
            raise InputError(f"{field} is missing; give {bounds_text(field)}", field)
        if len(given) > 1:
            raise InputError(f"{field} is given {len(given)} times; give it once", field)
        values.append(parse_number_text(field, given[0]))
    return values[0], values[1]


class _JsonConstant:
    """NaN / Infinity / -Infinity in a body (Python's json accepts them; JSON does not).

    Kept as a marker so the field check names the field ("vol_moving_avg must be a finite number,
    got NaN") instead of failing the whole body with a vague parse error.
    """

    __slots__ = ("word",)

    def __init__(self, word: str):
        self.word = word


def _json_int(text: str) -> Any:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        return _JsonConstant(f"an integer of {digits:,} digits")
    return int(text)


def _json_type(value: Any) -> str:
    if isinstance(value, _JsonConstant):
        return value.word
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _validate_json_number(field: str, value: Any, where: str) -> float:
    # bool is a subclass of int: reject it first. Numbers in strings are rejected too: JSON has
    # numbers, and accepting "12" would make "12,3" or "1e5 shares" ambiguous.
    if isinstance(value, _JsonConstant):
        raise InputError(f"{where}{field} must be a finite number, got {value.word}", field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}{field} must be a JSON number, got {_json_type(value)}", field)
    if isinstance(value, int):
        text = str(value)
        shown = text if len(text) <= SHOWN_CHARS else f"an integer of {len(text.lstrip('-')):,} digits"
        try:
            number = float(value)
        except OverflowError:  # 309 to MAX_INT_DIGITS digits
            number = math.inf
    else:
        shown, number = (repr(value) if math.isfinite(value) else "a number"), value
    return _check_range(field, number, shown, where)


def validate_record(obj: Any, index: int | None = None) -> tuple[float, float]:
    """One JSON object ``{"vol_moving_avg": n, "adj_close_rolling_med": n}`` -> floats, or InputError.

    Unknown fields are rejected (a typo such as ``vol_moving_average`` must not be silently ignored).
    """
    where = "" if index is None else f"item {index}: "
    try:
        if not isinstance(obj, dict):
            raise InputError(
                f"{where}expected a JSON object with {VOL_FEATURE} and {PRICE_FEATURE}, got {_json_type(obj)}"
            )
        for name in obj:
            if name not in FIELD_BOUNDS:
                raise InputError(
                    f"{where}unknown field {_show(str(name))}; the fields are {VOL_FEATURE} and {PRICE_FEATURE}",
                    str(name),
                )
        values = []
        for field in FIELDS:
            if field not in obj:
                raise InputError(f"{where}{field} is missing; give {bounds_text(field)}", field)
            values.append(_validate_json_number(field, obj[field], where))
    except InputError as err:
        err.index = index
        raise
    return values[0], values[1]


def validate_batch(obj: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """A parsed JSON body (object or list of objects) -> (vol array, price array, was_list)."""
    if isinstance(obj, dict):
        vol, price = validate_record(obj)
        return np.array([vol]), np.array([price]), False
    if not isinstance(obj, list):
        raise InputError(f"the body must be a JSON object or a list of objects, got {_json_type(obj)}")
    if not obj:
        raise InputError("the batch is empty; send at least one object")
    if len(obj) > MAX_BATCH:
        raise InputError(f"the batch has {len(obj)} objects; the most is {MAX_BATCH}; split it")
    vols = np.empty(len(obj))
    prices = np.empty(len(obj))
    for i, item in enumerate(obj):
        vols[i], prices[i] = validate_record(item, i)
    return vols, prices, True


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    # json.loads keeps the last of repeated keys silently; a repeated field is an error, as in a query.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # One pass (a 16 MB body can hold a million keys: counting per key would take hours).
        counts: dict[str, int] = {}
        for name, _ in pairs:
            counts[name] = counts.get(name, 0) + 1
        name = next(n for n in obj if counts[n] > 1)
        raise InputError(f"{clip(name)} is given {counts[name]} times in one object; give it once", name)
    return obj


def parse_json_body(body: bytes) -> Any:
    """Request body -> parsed JSON, or InputError("malformed JSON ...")."""
    if not body.strip():
        raise InputError("the body is empty; send a JSON object or a list of objects")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("malformed JSON: the body is not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_JsonConstant, parse_int=_json_int, object_pairs_hook=_unique_keys)
    except InputError:
        raise
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None
    except ValueError as err:  # JSONDecodeError (its message says where)
        raise InputError(f"malformed JSON: {clip(str(err), 200)}") from None


def validate_symbol(value: Any, index: int | None = None) -> str:
    """One ticker symbol (checked before any look-up) -> str, or InputError."""
    where = "" if index is None else f"item {index}: "
    if not isinstance(value, str):
        raise InputError(f"{where}a symbol must be a JSON string, got {_json_type(value)}", "symbol", index)
    if not _SYMBOL_RE.fullmatch(value):
        shown = "an empty string" if not value else _show(value)
        raise InputError(f"{where}symbol must be {SYMBOL_RULE}; got {shown}", "symbol", index)
    return value


def parse_forecast_params(query: Mapping[str, Sequence[str]]) -> str:
    """Query parameters of GET /forecast -> the symbol, or InputError."""
    for name in query:
        if name != "symbol":
            raise InputError(f"unknown parameter {_show(name)}; the parameter is symbol", name)
    given = query.get("symbol")
    if not given:
        raise InputError("symbol is missing; give a ticker such as symbol=AAPL", "symbol")
    if len(given) > 1:
        raise InputError(f"symbol is given {len(given)} times; give it once, or POST a list", "symbol")
    return validate_symbol(given[0])


def validate_symbols(obj: Any) -> list[str]:
    """The parsed body of POST /forecast (a JSON list of symbols) -> the symbols, or InputError."""
    if not isinstance(obj, list):
        raise InputError(f'the body must be a JSON list of symbols such as ["AAPL"], got {_json_type(obj)}')
    if not obj:
        raise InputError("the list is empty; send at least one symbol")
    if len(obj) > MAX_BATCH:
        raise InputError(f"the list has {len(obj)} symbols; the most is {MAX_BATCH}; split it")
    return [validate_symbol(item, i) for i, item in enumerate(obj)]
