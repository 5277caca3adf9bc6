"""Serving: the JSON prediction API, its OpenAPI document, and the process that runs API + dashboard.

Pieces, from pure to I/O:

* validation (``parse_predict_params``, ``validate_record``, ``validate_batch``): pure functions that
  turn query strings / JSON / dashboard text into floats or raise ``InputError`` naming the field.
  The dashboard uses the same functions, so it explains bad input in the same words as the API.
* ``Predictor``: one loaded model + the rounding rule + a per-model cache of single-row answers.
* ``ModelHolder``: the current ``Predictor``; re-reads ``models/LATEST`` (rate-limited or from a
  background thread), builds the new predictor fully and then swaps one reference, so a request
  (which reads the reference once) never mixes two models and never sees a half-loaded one.
* ``ApiApplication``: a small HTTP/1.1 app on tornado's bare ``HTTPServer`` (no ``RequestHandler``
  layer: that layer alone halves throughput). Single-row misses that arrive in the same event-loop
  turn are predicted in one ``model.predict`` call (CatBoost answers 1 row in ~0.35 ms and 32 rows in
  ~0.7 ms, with bit-identical values).
* ``serve()``: binds the API port once per worker with SO_REUSEPORT (the kernel spreads connections
  over the worker processes, one per core), starts the Voilà dashboard, prints the URLs, and stops
  everything on Ctrl-C / SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs

import numpy as np
from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, HTTPServerConnectionDelegate, ResponseStartLine

from volcast import __version__
from volcast.config import (
    DASHBOARD_NOTEBOOK,
    DEFAULT_API_PORT,
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_HOST,
    NOTEBOOKS_DIR,
    PRICE_FEATURE,
    PROJECT_ROOT,
    VOL_FEATURE,
    Layout,
    resolve_jobs,
)
from volcast.errors import UserError

log = logging.getLogger("volcast.serve")

# ---------------------------------------------------------------------------------------------
# Input contract
# ---------------------------------------------------------------------------------------------

# Inclusive bounds. The largest 30-day mean volume in the Kaggle data is ~1e9 shares and the
# largest rolling median price ~4e5 (BRK-A); the bounds leave two orders of magnitude of room and
# still reject values that can only be typos or unit mistakes.
FIELD_BOUNDS: dict[str, tuple[float, float]] = {
    VOL_FEATURE: (0.0, 1e11),
    PRICE_FEATURE: (0.0, 1e7),
}
FIELDS = tuple(FIELD_BOUNDS)
MAX_BATCH = 10_000
# A 10,000-object batch is ~0.8 MB of JSON; bodies above this are refused before parsing.
MAX_BODY_BYTES = 16 * 1024 * 1024
NO_MODEL_ERROR = "no model yet: run `python run_pipeline.py` first"

_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NON_FINITE_WORDS = {"nan": "NaN", "inf": "infinity", "infinity": "infinity"}


class InputError(UserError, ValueError):
    """Bad prediction input; ``str(err)`` is the sentence shown to the user (API and dashboard)."""

    def __init__(self, message: str, field: str | None = None, index: int | None = None):
        super().__init__(message)
        self.field = field
        self.index = index

    def payload(self) -> dict:
        out: dict[str, Any] = {"error": str(self)}
        if self.field is not None:
            out["field"] = self.field
        if self.index is not None:
            out["index"] = self.index
        return out


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _fmt(bound: float) -> str:
    """1e11 -> "1e11" (not "1e+11"), 0 -> "0"."""
    return re.sub(r"e\+0*", "e", f"{bound:g}")


def bounds_text(field: str) -> str:
    """'a number from 0 to 1e11': the accepted range of a field, in words."""
    lo, hi = FIELD_BOUNDS[field]
    return f"a number from {_fmt(lo)} to {_fmt(hi)}"


def _check_range(field: str, value: float, shown: str) -> float:
    lo, hi = FIELD_BOUNDS[field]
    if value < lo:
        raise InputError(f"{field} must not be negative, got {shown}", field)
    if value > hi:
        raise InputError(f"{field} must be at most {_fmt(hi)}, got {shown}", field)
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
            f"{field} must be a plain number like 12345.6 (no commas, units or spaces inside), "
            f"got {_show(stripped)}",
            field,
        )
    value = float(stripped)  # cannot fail after the regex; a huge exponent gives +-inf
    shown = stripped if len(stripped) <= 40 else f"{value:g}"
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
    lo, hi = FIELD_BOUNDS[field]
    # Compare before float(): a 400-digit JSON integer would overflow float(). A literal such as
    # 1e400 parses to inf and lands in the "at most" branch below, which is what it is.
    if isinstance(value, float):
        shown = f"{value:g}" if math.isfinite(value) else "a number too large for a float"
    else:
        shown = str(value) if value.bit_length() < 128 else "a huge integer"
    if value < lo:
        raise InputError(f"{where}{field} must not be negative, got {shown}", field)
    if value > hi:
        raise InputError(f"{where}{field} must be at most {_fmt(hi)}, got {shown}", field)
    return float(value)


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
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise InputError(f"{shown} is given {counts[name]} times in one object; give it once", name)
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
        return json.loads(text, parse_constant=_JsonConstant, object_pairs_hook=_unique_keys)
    except InputError:
        raise
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and int() digit-limit errors
        raise InputError(f"malformed JSON: {err}") from None


# ---------------------------------------------------------------------------------------------
# Model holding and prediction
# ---------------------------------------------------------------------------------------------


def round_volumes(raw: np.ndarray) -> np.ndarray:
    """Model output -> the nearest non-negative integers (halves round up), as int64."""
    raw = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(raw)):
        raise RuntimeError("the model returned a non-finite prediction")
    return np.maximum(np.floor(raw + 0.5), 0.0).astype(np.int64)


class Predictor:
    """A loaded model and what is derived from it once: its id (JSON-encoded) and an answer cache.

    The cache maps an exact (vol_moving_avg, adj_close_rolling_med) pair to the rounded answer the
    model gave for it, so a cached answer is by construction identical to ``model.predict``.
    """

    CACHE_SIZE = 65_536

    def __init__(self, model: Any, model_dir: Path | None = None):
        self.model = model
        self.model_id = str(model.model_id)
        self.model_dir = model_dir
        self.model_id_json = json.dumps(self.model_id)
        self._cache: dict[tuple[float, float], int] = {}

    @property
    def card(self) -> dict:
        return getattr(self.model, "card", {}) or {}

    def predict(self, vols: np.ndarray, prices: np.ndarray) -> np.ndarray:
        raw = self.model.predict(np.asarray(vols, dtype=np.float64), np.asarray(prices, dtype=np.float64))
        out = round_volumes(raw)
        if out.shape != (len(vols),):
            raise RuntimeError(f"the model returned shape {out.shape} for {len(vols)} rows")
        return out

    def cached(self, vol: float, price: float) -> int | None:
        return self._cache.get((vol, price))

    def predict_pairs(self, pairs: Sequence[tuple[float, float]]) -> list[int]:
        """Answers for (vol, price) pairs; misses go to the model in one call and into the cache."""
        answers: list[int | None] = [self._cache.get(pair) for pair in pairs]
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            vols = np.array([pairs[i][0] for i in missing])
            prices = np.array([pairs[i][1] for i in missing])
            got = self.predict(vols, prices).tolist()
            if len(self._cache) + len(missing) > self.CACHE_SIZE:
                self._cache.clear()  # crude but O(1) amortised; a full cache is rare in practice
            for i, value in zip(missing, got):
                answers[i] = value
                self._cache[pairs[i]] = value
        return answers  # type: ignore[return-value]

    def predict_one(self, vol: float, price: float) -> int:
        return self.predict_pairs([(vol, price)])[0]


def _default_locator(output_dir: Path) -> Path | None:
    from volcast.train import latest_model_dir

    return latest_model_dir(output_dir)


def _default_loader(model_dir: Path) -> Any:
    from volcast.train import load_model

    return load_model(model_dir)


class ModelHolder:
    """The current model of an output directory, swapped atomically when ``models/LATEST`` changes.

    ``current`` is one attribute: readers take it once per request. ``refresh()`` locates the latest
    model dir; when it differs from the loaded one it loads the new model *fully* (outside any
    reader's way) and only then replaces the reference. If loading fails the old model stays.
    ``load_model`` / ``latest_model_dir`` default to ``volcast.train``'s; tests may inject others.
    """

    RETRY_FAILED_AFTER = 30.0

    def __init__(
        self,
        output_dir: str | os.PathLike | None,
        *,
        load_model: Callable[[Path], Any] | None = None,
        latest_model_dir: Callable[[Path], Path | None] | None = None,
        check_interval: float = 1.0,
    ):
        self.output_dir = Layout.at(output_dir).output_dir
        self._load = load_model or _default_loader
        self._locate = latest_model_dir or _default_locator
        self.check_interval = check_interval
        self.current: Predictor | None = None
        self.error: str | None = None
        self._key: str | None = None
        self._failed: tuple[str, float] | None = None
        self._last_check = -math.inf
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the latest model if it changed. True when a new model was swapped in."""
        with self._lock:
            self._last_check = time.monotonic()
            try:
                model_dir = self._locate(self.output_dir)
            except Exception as err:  # a broken LATEST must not take the server down
                self.error = f"cannot read {self.output_dir / 'models' / 'LATEST'}: {err}"
                log.warning(self.error)
                return False
            if model_dir is None:
                return False  # keep serving what we have (nothing, or the last good model)
            model_dir = Path(model_dir)
            key = str(model_dir.resolve())
            if key == self._key:
                return False
            if self._failed and self._failed[0] == key and time.monotonic() - self._failed[1] < self.RETRY_FAILED_AFTER:
                return False
            try:
                predictor = Predictor(self._load(model_dir), model_dir)
            except Exception as err:
                self._failed = (key, time.monotonic())
                self.error = f"model {model_dir.name} could not be loaded: {type(err).__name__}: {err}"
                log.error(self.error)
                return False
            old = self.current
            self.current = predictor  # the swap: one reference assignment
            self._key, self._failed, self.error = key, None, None
            log.info("serving model %s%s", predictor.model_id, f" (was {old.model_id})" if old else "")
            return True

    def get(self) -> Predictor | None:
        """The current predictor, after a rate-limited check for a new one (for callers without a poller)."""
        if time.monotonic() - self._last_check >= self.check_interval:
            self.refresh()
        return self.current

    def start_polling(self) -> "ModelHolder":
        """Check for a new model every ``check_interval`` seconds in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="volcast-model-poller", daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.check_interval):
            try:
                self.refresh()
            except Exception:  # pragma: no cover - refresh already catches; belt and braces
                log.exception("model refresh failed")

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# ---------------------------------------------------------------------------------------------
# OpenAPI (the one source: served at /openapi.json and written to docs/openapi.json)
# ---------------------------------------------------------------------------------------------

OPENAPI_PATH = PROJECT_ROOT / "docs" / "openapi.json"


def openapi_spec() -> dict:
    vol_lo, vol_hi = FIELD_BOUNDS[VOL_FEATURE]
    price_lo, price_hi = FIELD_BOUNDS[PRICE_FEATURE]
    number = {
        VOL_FEATURE: {
            "type": "number",
            "minimum": vol_lo,
            "maximum": vol_hi,
            "description": "Mean daily volume (shares) over the last 30 trading days, today included.",
            "example": 12345,
        },
        PRICE_FEATURE: {
            "type": "number",
            "minimum": price_lo,
            "maximum": price_hi,
            "description": "Median adjusted close over the same 30 trading days.",
            "example": 25,
        },
    }
    error = {"$ref": "#/components/schemas/Error"}
    json_error = lambda text: {"description": text, "content": {"application/json": {"schema": error}}}  # noqa: E731
    prediction = {"$ref": "#/components/schemas/Prediction"}
    no_model = json_error(f"No model has been trained yet (`{NO_MODEL_ERROR}`).")
    bad_input = json_error(
        "Bad input: missing, repeated or unknown field, not a number, NaN, infinity, negative, above the "
        "upper bound, malformed JSON, wrong JSON type (strings and booleans are not numbers), empty or "
        f"too large batch. `error` says what is wrong; `field` (and `index` in a batch) say where."
    )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "volcast prediction API",
            "version": __version__,
            "description": (
                "Predicts a ticker's next-day trading volume from two features. Predictions are rounded "
                "to the nearest non-negative integer (halves up). The model in `models/LATEST` is "
                "reloaded without a restart within about a second of a new training run."
            ),
        },
        "paths": {
            "/predict": {
                "get": {
                    "summary": "Predict one volume",
                    "operationId": "predictGet",
                    "parameters": [
                        {"name": name, "in": "query", "required": True, "schema": schema}
                        for name, schema in number.items()
                    ],
                    "responses": {
                        "200": {"description": "The prediction.", "content": {"application/json": {"schema": prediction}}},
                        "400": bad_input,
                        "503": no_model,
                    },
                },
                "post": {
                    "summary": "Predict one volume, or a batch",
                    "operationId": "predictPost",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Features"},
                                        {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Features"},
                                            "minItems": 1,
                                            "maxItems": MAX_BATCH,
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "An object for an object; a list in the same order for a list.",
                            "content": {
                                "application/json": {
                                    "schema": {"oneOf": [prediction, {"type": "array", "items": prediction}]}
                                }
                            },
                        },
                        "400": bad_input,
                        "503": no_model,
                    },
                },
            },
            "/health": {
                "get": {
                    "summary": "Is a model loaded?",
                    "operationId": "health",
                    "responses": {
                        "200": {
                            "description": "A model is loaded.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                        },
                        "503": no_model,
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3 document.", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Features": {
                    "type": "object",
                    "required": list(FIELDS),
                    "additionalProperties": False,
                    "properties": number,
                },
                "Prediction": {
                    "type": "object",
                    "required": ["volume", "model_id"],
                    "properties": {
                        "volume": {"type": "integer", "minimum": 0, "example": 1234567},
                        "model_id": {"type": "string"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "model_id"],
                    "properties": {"status": {"type": "string", "enum": ["ok"]}, "model_id": {"type": "string"}},
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string", "description": "What is wrong, in one sentence."},
                        "field": {"type": "string", "description": "The offending field, when there is one."},
                        "index": {"type": "integer", "description": "The offending item of a batch."},
                    },
                },
            }
        },
    }


def openapi_json() -> str:
    return json.dumps(openapi_spec(), indent=2) + "\n"


def write_openapi(path: str | os.PathLike = OPENAPI_PATH) -> Path:
    from volcast.storage import atomic_write_text

    return atomic_write_text(path, openapi_json())


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

_ROUTES = {"/predict": ("GET", "POST"), "/health": ("GET",), "/openapi.json": ("GET",)}
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error", 503: "Service Unavailable"}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")


class _Request(HTTPMessageDelegate):
    """The tornado message delegate for one request: collects it, then hands it to the app."""

    __slots__ = ("app", "conn", "method", "target", "chunks")

    def __init__(self, app: "ApiApplication", conn):
        self.app, self.conn = app, conn
        self.chunks: list[bytes] = []  # the body; tornado enforces max_body_size

    # tornado.httputil.HTTPMessageDelegate interface
    def headers_received(self, start_line, headers):
        self.method, self.target = start_line.method, start_line.path

    def data_received(self, chunk):
        self.chunks.append(chunk)

    def finish(self):
        try:
            self.app.handle(self)
        except Exception:  # never leave a connection hanging; a bug is a 500, logged
            log.exception("unhandled error for %s %s", self.method, self.target)
            self.respond(500, _dumps({"error": "internal error; see the server log"}))

    def on_connection_close(self):
        pass

    def respond(self, status: int, body: bytes, extra: tuple = ()) -> None:
        headers = HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(body))})
        for name, value in extra:
            headers[name] = value
        try:
            self.conn.write_headers(
                ResponseStartLine("HTTP/1.1", status, _REASONS.get(status, "")),
                headers,
                None if self.method == "HEAD" else body,
            )
            self.conn.finish()
        except Exception:  # the client went away; nothing to tell it
            pass


class ApiApplication(HTTPServerConnectionDelegate):
    """Routes requests; the prediction endpoints read ``holder.current`` exactly once per answer."""

    def __init__(self, holder: ModelHolder):
        self.holder = holder
        self._openapi = openapi_json().encode("utf-8")
        self._pending: list[tuple[_Request, float, float]] = []
        self._flush_scheduled = False
        self.batches = 0  # statistics: single-row model calls and the rows they carried
        self.batched_rows = 0

    # tornado.httputil.HTTPServerConnectionDelegate interface
    def start_request(self, server_conn, request_conn):
        return _Request(self, request_conn)

    def on_close(self, server_conn):
        pass

    def _unavailable(self, req: _Request) -> None:
        body = {"error": NO_MODEL_ERROR, "status": "no model"}
        if self.holder.error:
            body["detail"] = self.holder.error
        req.respond(503, _dumps(body))

    def handle(self, req: _Request) -> None:
        path, _, query = req.target.partition("?")
        allowed = _ROUTES.get(path)
        if allowed is None:
            req.respond(404, _dumps({"error": f"no such path {_show(path)}; the API is described at /openapi.json"}))
            return
        method = "GET" if req.method == "HEAD" else req.method
        if method not in allowed:
            req.respond(
                405,
                _dumps({"error": f"method {req.method} is not allowed on {path}; use {' or '.join(allowed)}"}),
                (("Allow", ", ".join(allowed)),),
            )
            return
        if path == "/predict":
            if method == "GET":
                self._predict_get(req, query)
            else:
                self._predict_post(req)
        elif path == "/health":
            predictor = self.holder.current
            if predictor is None:
                self._unavailable(req)
            else:
                req.respond(200, b'{"status": "ok", "model_id": %s}' % predictor.model_id_json.encode())
        else:
            req.respond(200, self._openapi)

    def _predict_get(self, req: _Request, query: str) -> None:
        try:
            try:
                params = parse_qs(query, keep_blank_values=True, max_num_fields=16)
            except ValueError:
                raise InputError("too many query parameters; give vol_moving_avg and adj_close_rolling_med") from None
            vol, price = parse_predict_params(params)
        except InputError as err:
            req.respond(400, _dumps(err.payload()))
            return
        self._predict_single(req, vol, price)

    def _predict_single(self, req: _Request, vol: float, price: float) -> None:
        predictor = self.holder.current
        if predictor is None:
            self._unavailable(req)
            return
        hit = predictor.cached(vol, price)
        if hit is not None:
            req.respond(200, b'{"volume": %d, "model_id": %s}' % (hit, predictor.model_id_json.encode()))
            return
        # Misses that arrive in the same event-loop turn share one model call.
        self._pending.append((req, vol, price))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        pending, self._pending, self._flush_scheduled = self._pending, [], False
        predictor = self.holder.current  # one model for the whole group
        if predictor is None:  # pragma: no cover - models are never unloaded
            for req, _, _ in pending:
                self._unavailable(req)
            return
        try:
            answers = predictor.predict_pairs([(v, p) for _, v, p in pending])
        except Exception as err:
            log.exception("prediction failed")
            body = _dumps({"error": f"prediction failed: {err}"})
            for req, _, _ in pending:
                req.respond(500, body)
            return
        self.batches += 1
        self.batched_rows += len(pending)
        mid = predictor.model_id_json.encode()
        for (req, _, _), volume in zip(pending, answers):
            req.respond(200, b'{"volume": %d, "model_id": %s}' % (volume, mid))

    def _predict_post(self, req: _Request) -> None:
        try:
            vols, prices, was_list = validate_batch(parse_json_body(b"".join(req.chunks)))
        except InputError as err:
            req.respond(400, _dumps(err.payload()))
            return
        if not was_list:
            self._predict_single(req, float(vols[0]), float(prices[0]))
            return
        predictor = self.holder.current
        if predictor is None:
            self._unavailable(req)
            return
        volumes = predictor.predict(vols, prices).tolist()
        mid = predictor.model_id_json
        body = "[" + ", ".join('{"volume": %d, "model_id": %s}' % (v, mid) for v in volumes) + "]"
        req.respond(200, body.encode("utf-8"))


def make_http_server(holder: ModelHolder):
    from tornado.httpserver import HTTPServer

    return HTTPServer(
        ApiApplication(holder),
        max_body_size=MAX_BODY_BYTES,
        idle_connection_timeout=75,
        body_timeout=30,
    )


class ApiServer:
    """The API in a background thread of this process (tests, notebooks, benchmarks).

    ``ApiServer(output_dir, port=0).start()`` binds a free port; ``.url`` tells where; ``.stop()``.
    The ``holder`` argument lets a caller inject a ``ModelHolder`` with its own loader.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        holder: ModelHolder | None = None,
        check_interval: float = 1.0,
    ):
        self.holder = holder or ModelHolder(output_dir, check_interval=check_interval)
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.app: ApiApplication | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ApiServer":
        from tornado.netutil import bind_sockets

        sockets = bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self.holder.refresh()
        self.holder.start_polling()
        ready = threading.Event()

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            server = make_http_server(self.holder)
            self.app = server.request_callback
            server.add_sockets(sockets)
            ready.set()
            await self._stopped.wait()
            server.stop()
            await server.close_all_connections()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="volcast-api", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.holder.stop_polling()

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_api_worker(sock: socket.socket, output_dir: str | os.PathLike | None, check_interval: float = 1.0) -> int:
    """Serve the API on an already-bound listening socket until SIGTERM/SIGINT (one worker process)."""
    import gc

    holder = ModelHolder(output_dir, check_interval=check_interval)
    holder.refresh()
    holder.start_polling()
    parent = os.getppid()

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = make_http_server(holder)
        server.add_sockets([sock])
        gc.freeze()  # startup objects need no more collection: fewer, shorter GC pauses under load

        async def watch_parent():  # the supervisor died without stopping us: do not linger
            while not stop.is_set():
                await asyncio.sleep(1)
                if os.getppid() != parent:
                    stop.set()

        watcher = asyncio.ensure_future(watch_parent())
        await stop.wait()
        watcher.cancel()
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), 5)
        except asyncio.TimeoutError:
            pass

    asyncio.run(main())
    holder.stop_polling()
    return 0


def _worker_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="volcast-api-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--check-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[volcast api {os.getpid()}] %(levelname)s %(message)s")
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(False)  # tornado's accept loop runs until EWOULDBLOCK
    sys.exit(run_api_worker(sock, args.output_dir, args.check_interval))


# ---------------------------------------------------------------------------------------------
# Processes: API workers + Voilà
# ---------------------------------------------------------------------------------------------


def _port_in_use_error(what: str, host: str, port: int, flag: str) -> UserError:
    return UserError(f"{what} port {port} on {host} is already in use; stop what uses it or pass {flag} with another port")


def bind_api_sockets(host: str, port: int, workers: int) -> list[socket.socket]:
    """One listening socket per worker, all on the same port with SO_REUSEPORT (kernel load-balancing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Another process of ours may hold the port with SO_REUSEPORT too (bind would then succeed and
    # silently share it): refuse if anything answers on it.
    if port:
        try:
            with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), timeout=0.5):
                raise _port_in_use_error("API", host, port, "--api-port")
        except OSError:
            pass
    sockets: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                sock.close()
                if err.errno == errno.EADDRINUSE:
                    raise _port_in_use_error("API", host, port, "--api-port") from None
                raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None
            sock.listen(1024)
            sock.set_inheritable(True)
            sockets.append(sock)
            port = sock.getsockname()[1]  # port 0: every further socket takes the one chosen
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _free_port(host: str, port: int, what: str, flag: str) -> int:
    """Check ``port`` is free (or pick one for 0) by binding it briefly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As Voila (tornado) binds: connections left in TIME_WAIT by a server stopped a moment ago
        # do not make the port "in use"; a socket listening on it still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise _port_in_use_error(what, host, port, flag) from None
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None
        return sock.getsockname()[1]


def _wait_ready(host: str, port: int, proc: subprocess.Popen, timeout: float, http_path: str | None,
                stop: threading.Event) -> bool:
    """Wait until ``port`` accepts connections (and, with ``http_path``, answers any HTTP status)."""
    import http.client

    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            return False
        try:
            if http_path is None:
                with socket.create_connection((host, port), timeout=0.5):
                    return True
            # The API's listening sockets exist before its workers run: wait for an actual answer.
            conn = http.client.HTTPConnection(host, port, timeout=2)
            try:
                conn.request("GET", http_path)
                conn.getresponse().read()
                return True
            finally:
                conn.close()
        except OSError:
            time.sleep(0.1)
    return False


def _child_env(output_dir: Path) -> dict:
    env = dict(os.environ)
    env["VOLCAST_OUTPUT_DIR"] = str(output_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_api_workers(output_dir: Path, host: str, port: int, workers: int) -> tuple[list[subprocess.Popen], int]:
    """Start ``workers`` API processes sharing ``host:port``; returns them and the port."""
    sockets = bind_api_sockets(host, port, workers)
    port = sockets[0].getsockname()[1]
    procs = []
    try:
        for sock in sockets:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "from volcast.serve import _worker_main; _worker_main()",
                        "--fd",
                        str(sock.fileno()),
                        "--output-dir",
                        str(output_dir),
                    ],
                    pass_fds=(sock.fileno(),),
                    env=_child_env(output_dir),
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C goes to the supervisor, which stops us in order
                )
            )
    except BaseException:
        stop_processes(procs)
        raise
    finally:
        for sock in sockets:
            sock.close()  # the workers hold their own copies
    return procs, port


def voila_command(port: int, host: str = DEFAULT_HOST, notebook: Path | None = None) -> list[str]:
    notebook = notebook or NOTEBOOKS_DIR / DASHBOARD_NOTEBOOK
    return [
        sys.executable,
        "-m",
        "voila",
        str(notebook),
        f"--port={port}",
        "--no-browser",
        f"--Voila.ip={host}",
        "--Voila.port_retries=0",  # fail loudly rather than moving to another port
        "--Voila.log_level=WARN",
        "--show_tracebacks=False",
        "--strip_sources=True",
    ]


# Runs Voila in place of a small Python process that first asks Linux to send it SIGTERM when its parent
# (the supervisor) dies: a supervisor killed with SIGKILL cannot stop it, and an orphaned Voila would keep
# the dashboard port. (The API workers watch their parent themselves.) Elsewhere Voila is run as is.
_VOILA_GUARD = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def start_dashboard(output_dir: Path, host: str, port: int) -> subprocess.Popen:
    command = voila_command(port, host)
    return subprocess.Popen(
        [command[0], "-c", _VOILA_GUARD, str(os.getpid()), *command[1:]],
        cwd=str(NOTEBOOKS_DIR),
        env=_child_env(output_dir),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_processes(procs: Sequence[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM each process and its descendants (Voilà's kernels), then SIGKILL what is left."""
    import psutil

    family: list[psutil.Process] = []
    for proc in procs:
        try:
            parent = psutil.Process(proc.pid)
            family.extend(parent.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in family:  # kernels Voilà did not shut down itself
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=max(0.5, deadline - time.monotonic()))
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def serve(
    output_dir: str | os.PathLike | None = None,
    host: str = DEFAULT_HOST,
    api_port: int = DEFAULT_API_PORT,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    *,
    api_workers: int = 0,
    dashboard: bool = True,
    startup_timeout: float = 120.0,
) -> int:
    """Run the JSON API (``api_workers`` processes; 0 = one per core) and the Voilà dashboard.

    Prints both URLs, then waits; Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops both and
    returns 0. If a child dies on its own, the rest are stopped and 1 is returned. Port 0 picks a free
    port (printed).
    """
    layout = Layout.at(output_dir)
    workers = resolve_jobs(api_workers)
    stop_requested = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        stop_signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        for sig in stop_signals:
            previous[sig] = signal.signal(sig, lambda *_: stop_requested.set())
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        if dashboard:
            dashboard_port = _free_port(host, dashboard_port, "dashboard", "--dashboard-port")
        api_procs, api_port = start_api_workers(layout.output_dir, host, api_port, workers)
        procs += [("API worker", p) for p in api_procs]
        if dashboard:
            procs.append(("dashboard (Voila)", start_dashboard(layout.output_dir, host, dashboard_port)))
        shown_host = f"[{host}]" if ":" in host else host
        for name, proc in procs:
            port = dashboard_port if name.startswith("dashboard") else api_port
            path = None if name.startswith("dashboard") else "/health"
            if not _wait_ready(host, port, proc, startup_timeout, path, stop_requested):
                if stop_requested.is_set():
                    return 0
                print(f"volcast serve: the {name} did not start (exit code {proc.poll()}); stopping", file=sys.stderr)
                return 1
        has_model = layout.latest_file.exists()
        print(f"volcast API:       http://{shown_host}:{api_port}  ({workers} worker{'s' * (workers > 1)}; "
              f"GET/POST /predict, GET /health, GET /openapi.json)")
        print(f"  try: curl 'http://{shown_host}:{api_port}/predict?{VOL_FEATURE}=12345&{PRICE_FEATURE}=25'")
        if dashboard:
            print(f"volcast dashboard: http://{shown_host}:{dashboard_port}/")
        print(f"serving models from {layout.models_dir}" + ("" if has_model else f"; {NO_MODEL_ERROR} (the API answers 503 until then)"))
        print("Press Ctrl-C to stop.", flush=True)
        while not stop_requested.wait(0.5):
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"volcast serve: the {name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    return 1
        print("volcast serve: stopping", flush=True)
        return 0
    finally:
        stop_processes([p for _, p in procs])
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = [
    "FIELD_BOUNDS",
    "FIELDS",
    "MAX_BATCH",
    "NO_MODEL_ERROR",
    "InputError",
    "bounds_text",
    "parse_number_text",
    "parse_predict_params",
    "validate_record",
    "validate_batch",
    "parse_json_body",
    "round_volumes",
    "Predictor",
    "ModelHolder",
    "openapi_spec",
    "write_openapi",
    "ApiApplication",
    "ApiServer",
    "serve",
]
