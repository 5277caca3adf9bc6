"""Serving: the JSON prediction API, its OpenAPI document, and the process that runs API + dashboard.

The package's modules, from pure to I/O:

* ``validate``: what a request may contain (``parse_predict_params``, ``validate_record``,
  ``validate_batch``, ``parse_json_body``, ``validate_symbol``) and the limits; the dashboard explains bad
  input with the same functions.
* ``model``: ``Predictor`` (one loaded model bundle, rounding, answer caches, forecasts) and
  ``ModelHolder`` (the current model, its probe and hot swap when ``models/LATEST`` changes).
* ``openapi``: the OpenAPI document, served at /openapi.json and written to docs/openapi.json.
* ``http``: the HTTP application (routing, answers, size limits) on tornado's bare ``HTTPServer``.
* ``worker``: the app in a background thread (``ApiServer``) or in one API worker process.
* ``launch``: ``serve()``, the workers on one port, the Voilà dashboard (kernel culling), supervision.
* ``voila_app``: Voilà as ``serve`` runs it, with /logout and malformed template URLs made harmless.

Every public name is importable from ``volcast.serve`` itself.
"""

from __future__ import annotations

from .http import ApiApplication, make_http_server
from .launch import _free_port as _free_port
from .launch import bind_api_sockets, serve, start_api_workers, start_dashboard, stop_processes, voila_command
from .model import ModelHolder, Predictor, round_volumes
from .openapi import OPENAPI_PATH, openapi_json, openapi_spec, write_openapi
from .validate import (
    FIELD_BOUNDS,
    FIELDS,
    MAX_BATCH,
    MAX_BODY_BYTES,
    NO_MODEL_ERROR,
    InputError,
    bounds_text,
    parse_json_body,
    parse_number_text,
    parse_predict_params,
    validate_batch,
    validate_record,
)
from .validate import _unique_keys as _unique_keys
from .worker import ApiServer, run_api_worker
from .worker import _worker_main as _worker_main

__all__ = [
    "FIELD_BOUNDS",
    "FIELDS",
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "NO_MODEL_ERROR",
    "OPENAPI_PATH",
    "ApiApplication",
    "ApiServer",
    "InputError",
    "ModelHolder",
    "Predictor",
    "bind_api_sockets",
    "bounds_text",
    "make_http_server",
    "openapi_json",
    "openapi_spec",
    "parse_json_body",
    "parse_number_text",
    "parse_predict_params",
    "round_volumes",
    "run_api_worker",
    "serve",
    "start_api_workers",
    "start_dashboard",
    "stop_processes",
    "validate_batch",
    "validate_record",
    "voila_command",
    "write_openapi",
]
