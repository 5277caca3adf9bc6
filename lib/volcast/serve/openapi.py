"""The OpenAPI 3 document of the API: one source, served at /openapi.json and written to
docs/openapi.json (a test keeps the two equal)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from volcast import __version__
from volcast.config import PRICE_FEATURE, PROJECT_ROOT, VOL_FEATURE

from .validate import FIELD_BOUNDS, FIELDS, MAX_BATCH, MAX_BODY_BYTES, NO_MODEL_ERROR, SYMBOL_PATTERN, SYMBOL_RULE

OPENAPI_PATH = PROJECT_ROOT / "docs" / "openapi.json"


def openapi_spec() -> dict:
    vol_lo, _ = FIELD_BOUNDS[VOL_FEATURE]  # no maximum: every finite number >= 0 is accepted
    price_lo, _ = FIELD_BOUNDS[PRICE_FEATURE]
    number = {
        VOL_FEATURE: {
            "type": "number",
            "minimum": vol_lo,
            "description": "Mean daily volume (shares) over the last 30 trading days, today included.",
            "example": 12345,
        },
        PRICE_FEATURE: {
            "type": "number",
            "minimum": price_lo,
            "description": "Median adjusted close over the same 30 trading days.",
            "example": 25,
        },
    }
    error = {"$ref": "#/components/schemas/Error"}
    json_error = lambda text: {"description": text, "content": {"application/json": {"schema": error}}}  # noqa: E731
    prediction = {"$ref": "#/components/schemas/Prediction"}
    no_model = json_error(f"No model has been trained yet (`{NO_MODEL_ERROR}`).")
    bad_input = json_error(
        "Bad input: missing, repeated or unknown field, not a number (ASCII digits only), NaN, infinity, "
        "negative, too large for a float, malformed JSON, wrong JSON type (strings and booleans are not "
        "numbers), empty or too large batch. `error` says what is wrong; `field` (and `index` in a batch) "
        "say where."
    )
    too_large = json_error(
        f"The body's Content-Length is over {MAX_BODY_BYTES:,} bytes; refused before the body is read "
        "(the connection is then closed)."
    )
    symbol = {
        "type": "string",
        "pattern": f"^{SYMBOL_PATTERN}$",
        "example": "AAPL",
        "description": f"A ticker: {SYMBOL_RULE}. Looked up as given, then in upper case.",
    }
    forecast = {"$ref": "#/components/schemas/Forecast"}
    bad_symbol = json_error("A missing, repeated or malformed symbol, or a body that is not a list of symbols.")
    unknown_symbol = json_error("A symbol not in the data of the model serving; `symbol` names it.")
    short_history = json_error(
        "A ticker with too little history for a forecast (it needs 30 trading days); `error` says how much it has."
    )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "volcast prediction API",
            "version": __version__,
            "description": (
                "Forecasts a ticker's next-day trading volume with a P10-P90 interval (`/forecast`), and "
                "predicts it from two features (`/predict`, rounded to the nearest non-negative integer, "
                "halves up). The model in `models/LATEST` is "
                "reloaded without a restart within about a second of a new training run, once it has "
                "answered a probe input. Request lines and headers over 64 KiB get 414 / 431 with a JSON "
                "error."
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
                        "200": {
                            "description": "The prediction.",
                            "content": {"application/json": {"schema": prediction}},
                        },
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
                        "413": too_large,
                        "503": no_model,
                    },
                },
            },
            "/forecast": {
                "get": {
                    "summary": "Tomorrow's volume of one ticker, with a P10-P90 interval",
                    "operationId": "forecastGet",
                    "parameters": [{"name": "symbol", "in": "query", "required": True, "schema": symbol}],
                    "responses": {
                        "200": {"description": "The forecast.", "content": {"application/json": {"schema": forecast}}},
                        "400": bad_symbol,
                        "404": unknown_symbol,
                        "422": short_history,
                        "503": no_model,
                    },
                },
                "post": {
                    "summary": "Forecasts of a list of tickers",
                    "operationId": "forecastPost",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": symbol, "minItems": 1, "maxItems": MAX_BATCH}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "A list in the order of the symbols.",
                            "content": {"application/json": {"schema": {"type": "array", "items": forecast}}},
                        },
                        "400": bad_symbol,
                        "404": unknown_symbol,
                        "413": too_large,
                        "422": short_history,
                        "503": no_model,
                    },
                },
            },
            "/health": {
                "get": {
                    "summary": "Is a model loaded, and is it the latest?",
                    "operationId": "health",
                    "responses": {
                        "200": {
                            "description": (
                                "A model is serving. `degraded`: models/LATEST is missing, unreadable, or names a "
                                "model that could not be loaded or failed its probe; `reason` says which, and "
                                "`model_id` is the model still serving."
                            ),
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
                        "extrapolated": {
                            "type": "boolean",
                            "enum": [True],
                            "description": "Present (true) only when an input lies outside the range the model "
                            "was trained on (recorded in its card): the answer is an extrapolation.",
                        },
                    },
                },
                "Forecast": {
                    "type": "object",
                    "required": ["symbol", "as_of", "volume", "interval", "model_id"],
                    "properties": {
                        "symbol": {"type": "string", "example": "AAPL"},
                        "as_of": {
                            "type": "string",
                            "format": "date",
                            "description": "The ticker's last date in the data; the forecast is for the "
                            "next trading day.",
                        },
                        "volume": {"type": "integer", "minimum": 0, "description": "P50 of next-day volume."},
                        "interval": {
                            "type": "object",
                            "required": ["low", "high"],
                            "properties": {
                                "low": {"type": "integer", "description": "P10"},
                                "high": {"type": "integer", "description": "P90"},
                            },
                        },
                        "model_id": {"type": "string"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "model_id"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded"]},
                        "model_id": {"type": "string"},
                        "reason": {"type": "string", "description": "Only when degraded: why."},
                    },
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
