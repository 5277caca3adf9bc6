"""The HTTP application: routing, the endpoints' answers, and the tornado server around them.

A small HTTP/1.1 app on tornado's bare ``HTTPServer`` (no ``RequestHandler`` layer: that layer
alone halves throughput). Single-row cache misses that arrive in the same event-loop turn are
predicted in one ``model.predict`` call, with values identical to one call per row. The endpoints
read ``holder.current`` exactly once per answer, so a hot swap never mixes two models.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import time
from typing import Any
from urllib.parse import parse_qs

from tornado.httpserver import HTTPServer
from tornado.httputil import (
    HTTPHeaders,
    HTTPInputError,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    ResponseStartLine,
)
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError

from .model import ForecastRefused, ModelHolder
from .openapi import openapi_json
from .validate import (
    MAX_BATCH,
    MAX_BODY_BYTES,
    NO_MODEL_ERROR,
    InputError,
    _show,
    clip,
    parse_forecast_params,
    parse_json_body,
    parse_predict_params,
    validate_batch,
    validate_symbols,
)

log = logging.getLogger("volcast.serve")


# The request line and headers together (tornado's max_header_size): above it, 414 or 431.
MAX_HEADER_BYTES = 64 * 1024
# After a refusal the client may still be sending: read and drop its bytes this long before closing,
# so the close does not reset the connection before the client has read the answer.
LINGER_SECONDS = 2.0

_ROUTES = {"/predict": ("GET", "POST"), "/forecast": ("GET", "POST"), "/health": ("GET",), "/openapi.json": ("GET",)}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    414: "URI Too Long",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _dumps(obj: Any) -> bytes:
    # < > & as \u escapes: still the same JSON, but text a client echoes into HTML cannot become markup.
    text = json.dumps(obj)
    if "<" in text or ">" in text or "&" in text:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode("utf-8")


_EXTRAPOLATED = b', "extrapolated": true}'


def _prediction(volume: int, model_id_json: bytes, extrapolated: bool) -> bytes:
    body = b'{"volume": %d, "model_id": %s}' % (volume, model_id_json)
    return body[:-1] + _EXTRAPOLATED if extrapolated else body


def _closing_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response with a JSON error body, for a connection about to be closed."""
    body = _dumps({"error": message})
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _answer_and_linger(stream: IOStream, response: bytes) -> None:
    """Write ``response`` on a stream tornado no longer reads, drop what the client still sends, close."""
    try:
        await stream.write(response)
        stream.socket.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.wait_for(stream.read_bytes(64 * 1024, partial=True), left)
    except (TimeoutError, StreamClosedError, OSError):
        pass
    finally:
        stream.close()


def _declared_length(value: str) -> int | None:
    """Content-Length as a number (None when malformed: tornado answers those with 400)."""
    pieces = {piece.strip() for piece in value.split(",")}
    if len(pieces) != 1:
        return None
    text = pieces.pop()
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= 18 else 10**18


class _ApiStream(IOStream):
    """tornado's IOStream, but a request line or headers over ``MAX_HEADER_BYTES`` get a JSON 414 or
    431 before the connection closes (tornado closes it without a status)."""

    def close(self, exc_info: Any = False) -> None:
        if isinstance(exc_info, UnsatisfiableReadError) and self._read_regex is not None and not self.closed():
            head = bytes(self._read_buffer[:MAX_HEADER_BYTES])
            if b"\n" in head.lstrip(b"\r\n"):
                response = _closing_response(
                    431, f"the request headers are over {MAX_HEADER_BYTES:,} bytes; send fewer or shorter headers"
                )
            else:
                response = _closing_response(
                    414, f"the request line is over {MAX_HEADER_BYTES:,} bytes; the API's URLs are short"
                )
            try:  # best effort, non-blocking: a small answer fits in the socket's send buffer
                self.socket.send(response)
                self.socket.shutdown(socket.SHUT_WR)
                for _ in range(64):  # drop what already arrived, so the close sends no reset
                    if not self.socket.recv(64 * 1024):
                        break
            except OSError:
                pass
        super().close(exc_info)


class _Request(HTTPMessageDelegate):
    """The tornado message delegate for one request: collects it, then hands it to the app."""

    __slots__ = ("app", "conn", "method", "target", "chunks", "refused")

    def __init__(self, app: ApiApplication, conn):
        self.app, self.conn = app, conn
        self.chunks: list[bytes] = []  # the body; tornado enforces max_body_size
        self.refused = False  # answered 413 on a detached stream: nothing more to do

    # tornado.httputil.HTTPMessageDelegate interface
    def headers_received(self, start_line, headers):
        self.method, self.target = start_line.method, start_line.path
        length = headers.get("Content-Length")
        if length is not None and (_declared_length(length) or 0) > MAX_BODY_BYTES:
            # Refused from the header, before a byte of the body is read (no 100-continue is sent).
            self._refuse(f"the body is {_declared_length(length):,} bytes")
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            self.conn._read_chunked_body = functools.partial(self._read_chunked, self.conn._read_chunked_body)

    async def _read_chunked(self, read_chunked, delegate) -> None:
        """tornado's reader of a chunked body, whose refusal of a body growing past ``max_body_size`` (made
        before it reads the chunk that would cross the limit) becomes the same JSON 413 as a declared length's,
        instead of a bare 400."""
        try:
            await read_chunked(delegate)
        except HTTPInputError as err:
            if "too large" not in str(err) or self.conn.stream is None:
                raise
            self._refuse(f"the chunked body grows past {MAX_BODY_BYTES:,} bytes")

    def _refuse(self, size: str) -> None:
        self.refused = True
        message = (
            f"{size}; the most is {MAX_BODY_BYTES:,} (a full batch of {MAX_BATCH:,} objects needs far less); split it"
        )
        asyncio.ensure_future(_answer_and_linger(self.conn.detach(), _closing_response(413, message)))

    def data_received(self, chunk):
        self.chunks.append(chunk)

    def finish(self):
        if self.refused:  # tornado calls it once the (refused) body's reading has returned
            return
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
        elif path == "/forecast":
            self._forecast(req, query if method == "GET" else None)
        elif path == "/health":
            predictor, problem = self.holder.status()
            if predictor is None:
                self._unavailable(req)
            elif problem:  # still answering, with the last good model
                req.respond(200, _dumps({"status": "degraded", "reason": problem, "model_id": predictor.model_id}))
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
            req.respond(200, _prediction(hit, predictor.model_id_json.encode(), predictor.extrapolated_one(vol, price)))
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
            body = _dumps({"error": f"prediction failed: {clip(str(err), 200)}; see the server log"})
            for req, _, _ in pending:
                req.respond(500, body)
            return
        self.batches += 1
        self.batched_rows += len(pending)
        mid = predictor.model_id_json.encode()
        for (req, vol, price), volume in zip(pending, answers):
            req.respond(200, _prediction(volume, mid, predictor.extrapolated_one(vol, price)))

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
        outside = predictor.extrapolated(vols, prices).tolist()
        mid = predictor.model_id_json.encode()
        req.respond(200, b"[" + b", ".join(_prediction(v, mid, x) for v, x in zip(volumes, outside)) + b"]")

    def _forecast(self, req: _Request, query: str | None) -> None:
        """GET /forecast?symbol= (``query``) or POST /forecast with a JSON list of symbols (``query`` None)."""
        try:
            if query is not None:
                try:
                    params = parse_qs(query, keep_blank_values=True, max_num_fields=4)
                except ValueError:
                    raise InputError("too many query parameters; give symbol") from None
                symbols = [parse_forecast_params(params)]
            else:
                symbols = validate_symbols(parse_json_body(b"".join(req.chunks)))
        except InputError as err:
            req.respond(400, _dumps(err.payload()))
            return
        predictor = self.holder.current  # one model (and its latest-row table) for the whole answer
        if predictor is None:
            self._unavailable(req)
            return
        answers = []
        for i, symbol in enumerate(symbols):
            try:
                answers.append(predictor.forecast_json(symbol))
            except ForecastRefused as err:
                payload = {"error": err.message, "symbol": symbol}
                if query is None:
                    payload["index"] = i
                req.respond(err.status, _dumps(payload))
                return
        req.respond(200, answers[0] if query is not None else b"[" + b", ".join(answers) + b"]")


class _ApiHTTPServer(HTTPServer):
    def handle_stream(self, stream, address):
        stream.__class__ = _ApiStream  # the same object with one overridden method (see _ApiStream)
        super().handle_stream(stream, address)


def make_http_server(holder: ModelHolder) -> HTTPServer:
    return _ApiHTTPServer(
        ApiApplication(holder),
        max_header_size=MAX_HEADER_BYTES,
        max_body_size=MAX_BODY_BYTES,
        idle_connection_timeout=75,
        body_timeout=30,
    )
