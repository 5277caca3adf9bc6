"""Hostile and broken inputs to the API (issue 14): size limits answered as JSON before reading, and
models that must prove they can predict before they are served, with /health telling the truth."""

from __future__ import annotations

import json
import shutil
import socket
import threading

import numpy as np
import pytest

from serve_helpers import Client, copy_output, expected_volumes, latest_id, tiny_output, wait_for  # noqa: F401
from volcast.config import Layout
from volcast.serve import MAX_BODY_BYTES, ApiServer
from volcast.storage import atomic_write_json, atomic_write_text

VOL, PRICE = "vol_moving_avg", "adj_close_rolling_med"


@pytest.fixture(scope="module")
def api(tiny_output):
    with ApiServer(tiny_output, port=0) as server:
        yield server


def raw_exchange(port: int, head: bytes, body_bytes: int = 0, fill: bytes = b"[],") -> tuple[int, dict, bytes]:
    """Send ``head`` then ``body_bytes`` of ``fill`` (from a thread, as a client that does not wait);
    return the status, the JSON body and the raw head of the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)

    def send():
        try:
            sock.sendall(head)
            block = (fill * (65536 // len(fill) + 1))[:65536]
            left = body_bytes
            while left > 0:
                sock.sendall(block[:left])
                left -= len(block)
        except OSError:  # the server closed after answering: what a refusal may do
            pass

    sender = threading.Thread(target=send)
    sender.start()
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    sender.join(30)
    sock.close()
    head_text, _, payload = data.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    return status, json.loads(payload), head_text


def test_a_16_mb_body_is_refused_from_content_length_without_being_parsed(api, monkeypatch):
    from volcast.serve import http as api_http

    parsed = []
    real = api_http.parse_json_body
    monkeypatch.setattr(api_http, "parse_json_body", lambda body: parsed.append(len(body)) or real(body))
    size = 16 * 1024 * 1024
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    status, body, head_text = raw_exchange(api.port, head, size)
    assert status == 413, body
    assert body["error"] == (
        f"the body is {size:,} bytes; the most is {MAX_BODY_BYTES:,} "
        "(a full batch of 10,000 objects needs far less); split it"
    )
    assert b"content-type: application/json" in head_text.lower()
    assert parsed == []  # never read, never parsed
    # The worker is free: the next request on a new connection is answered at once.
    c = Client(api.url)
    assert c.get("/health")[0] == 200
    c.close()


def test_a_body_at_the_limit_is_read_and_one_byte_more_is_refused(api, tiny_output):
    obj = json.dumps({VOL: 12345, PRICE: 25}).encode()
    padded = obj + b" " * (MAX_BODY_BYTES - len(obj))  # trailing spaces are valid JSON
    c = Client(api.url)
    status, body = c.post("/predict", raw=padded)
    assert status == 200 and body["volume"] == expected_volumes(tiny_output, [12345], [25])[0]
    c.close()
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n").encode()
    status, body, _ = raw_exchange(api.port, head, MAX_BODY_BYTES + 1, fill=b" ")
    assert status == 413 and "split it" in body["error"]


def chunked(body: bytes, size: int) -> bytes:
    """``body`` in the chunked transfer coding, in chunks of ``size`` bytes."""
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


CHUNKED_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_chunked_body_growing_past_the_limit_gets_the_same_json_413(api, tiny_output, monkeypatch):
    from volcast.serve import http as api_http

    received = []  # the body bytes the server held for each request
    real = api_http._Request.data_received
    monkeypatch.setattr(
        api_http._Request, "data_received", lambda self, chunk: received.append(len(chunk)) or real(self, chunk)
    )
    # At the limit, in chunks: read and answered.
    obj = json.dumps({VOL: 12345, PRICE: 25}).encode()
    padded = obj + b" " * (MAX_BODY_BYTES - len(obj))
    status, body, _ = raw_exchange(api.port, CHUNKED_HEAD + chunked(padded, 100_000))
    assert status == 200 and body["volume"] == expected_volumes(tiny_output, [12345], [25])[0]
    assert sum(received) == MAX_BODY_BYTES
    # One byte more, and a 16 MB body in 64 KiB chunks: refused as a declared length is, and what was held
    # never exceeds the limit (the chunk that would cross it is not read).
    for size, piece in ((MAX_BODY_BYTES + 1, 100_000), (16 * 1024 * 1024, 65536)):
        received.clear()
        status, body, head_text = raw_exchange(api.port, CHUNKED_HEAD + chunked(b"[]," * (size // 3 + 1), piece))
        assert status == 413, body
        assert body["error"] == (
            f"the chunked body grows past {MAX_BODY_BYTES:,} bytes; the most is {MAX_BODY_BYTES:,} "
            "(a full batch of 10,000 objects needs far less); split it"
        )
        assert b"content-type: application/json" in head_text.lower()
        assert sum(received) <= MAX_BODY_BYTES
    # One chunk that declares 1 GiB: refused before a byte of it is read.
    received.clear()
    status, body, _ = raw_exchange(api.port, CHUNKED_HEAD + b"40000000\r\n" + b"[]," * 1000)
    assert status == 413 and "split it" in body["error"] and sum(received) == 0
    # A malformed chunked body is still a plain 400, and the worker is free.
    status, _ = _status_of(api.port, CHUNKED_HEAD + b"zz\r\n[]\r\n0\r\n\r\n")
    assert status == 400
    c = Client(api.url)
    assert c.get("/health")[0] == 200
    c.close()


def _status_of(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_long_url_is_414_and_long_headers_are_431_as_json(api):
    long_url = b"GET /predict?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, body, head_text = raw_exchange(api.port, long_url)
    assert status == 414 and "request line is over 65,536 bytes" in body["error"]
    assert b"content-type: application/json" in head_text.lower()
    big_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"
    status, body, _ = raw_exchange(api.port, big_header)
    assert status == 431 and "headers are over 65,536 bytes" in body["error"]
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 100) for i in range(1000))  # 100 KB of short headers
    status, body, _ = raw_exchange(api.port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status == 431
    # Just under the limit is still served.
    c = Client(api.url)
    status, body = c.get("/predict?vol_moving_avg=1&adj_close_rolling_med=2&" + "x" * 60_000)
    assert status == 400 and body["field"] == "x" * 40 + "..."  # an unknown parameter, clipped
    c.close()


# ---------------------------------------------------------------------------------------------
# Models: probe before swap; /health says "degraded" while LATEST is unusable


def seven_input_model(good_dir, dest):
    """A real CatBoost model with 7 inputs, under a card copied from a valid model (the issue's repro)."""
    from catboost import CatBoostRegressor

    shutil.copytree(good_dir, dest)
    card = json.loads((dest / "card.json").read_text())
    card["model_id"] = dest.name
    rng = np.random.default_rng(0)
    est = CatBoostRegressor(iterations=5, depth=2, verbose=False, allow_writing_files=False)
    est.fit(rng.random((50, 7)), rng.random(50))
    est.save_model(str(dest / card["model_file"]), format="cbm")
    atomic_write_json(dest / "card.json", card)
    return dest


@pytest.fixture()
def served(tiny_output, tmp_path):
    out = copy_output(tiny_output, tmp_path / "out")
    with ApiServer(out, port=0, check_interval=0.05) as server:
        c = Client(server.url)
        yield out, c
        c.close()


def health(c):
    status, body = c.get("/health")
    assert status == 200, body
    return body


def test_a_model_that_cannot_predict_is_not_swapped_in(served):
    out, c = served
    layout = Layout.at(out)
    good = latest_id(out)
    bad = seven_input_model(layout.models_dir / good, layout.models_dir / "20991231T000000-catboost-7input")
    atomic_write_text(layout.latest_file, bad.name + "\n")
    body = wait_for(lambda: (b := health(c))["status"] == "degraded" and b)
    assert body["model_id"] == good
    assert bad.name in body["reason"] and "probe" in body["reason"]
    for _ in range(20):  # every answer still comes from the good model
        status, answer = c.get("/predict?vol_moving_avg=12345&adj_close_rolling_med=25")
        assert status == 200 and answer["model_id"] == good
    status, answers = c.post("/predict", [{VOL: 1, PRICE: 2}])
    assert status == 200 and answers[0]["model_id"] == good
    atomic_write_text(layout.latest_file, good + "\n")  # LATEST back: healthy again
    assert wait_for(lambda: health(c) == {"status": "ok", "model_id": good})


def truncate_model(layout, good):
    dest = layout.models_dir / "20991231T000001-catboost-truncated"
    shutil.copytree(layout.models_dir / good, dest)
    card = json.loads((dest / "card.json").read_text())
    card["model_id"] = dest.name
    atomic_write_json(dest / "card.json", card)
    model_file = dest / card["model_file"]
    model_file.write_bytes(model_file.read_bytes()[:200])
    return dest.name


@pytest.mark.parametrize(
    "breakage, words",
    [
        ("missing", "models/LATEST is missing"),
        ("directory", "models/LATEST is a directory"),
        ("garbage", "does not name a model directory"),
        ("binary", "does not name a model directory"),
        ("unknown name", "which is not a model directory"),
        ("truncated", "could not be loaded"),
    ],
)
def test_health_is_degraded_while_latest_is_unusable(served, breakage, words):
    out, c = served
    layout = Layout.at(out)
    good = latest_id(out)
    assert health(c) == {"status": "ok", "model_id": good}
    latest = layout.latest_file
    if breakage == "missing":
        latest.unlink()
    elif breakage == "directory":
        latest.unlink()
        latest.mkdir()
    elif breakage == "garbage":
        atomic_write_text(latest, "../../etc/passwd\n")
    elif breakage == "binary":
        latest.write_bytes(b"\x00\xff" * 5000)
    elif breakage == "unknown name":
        atomic_write_text(latest, "20991231T000002-catboost-nothere\n")
    else:
        atomic_write_text(latest, truncate_model(layout, good) + "\n")
    body = wait_for(lambda: (b := health(c))["status"] == "degraded" and b)
    assert body["model_id"] == good and words in body["reason"]
    assert len(body["reason"]) < 500
    status, answer = c.get("/predict?vol_moving_avg=12345&adj_close_rolling_med=25")
    assert status == 200 and answer["model_id"] == good
    if latest.is_dir():
        latest.rmdir()
    atomic_write_text(latest, good + "\n")
    assert wait_for(lambda: health(c) == {"status": "ok", "model_id": good})


def test_health_is_503_only_while_no_model_was_ever_loaded(tmp_path):
    with ApiServer(tmp_path / "empty", port=0, check_interval=0.05) as server:
        c = Client(server.url)
        status, body = c.get("/health")
        assert status == 503 and body["status"] == "no model"
        (tmp_path / "empty" / "models").mkdir(parents=True)
        atomic_write_text(tmp_path / "empty" / "models" / "LATEST", "garbage!\n")
        status, body = wait_for(lambda: (r := c.get("/health"))[1].get("detail") and r)
        assert status == 503 and "does not name a model directory" in body["detail"]
        c.close()
