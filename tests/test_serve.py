"""The JSON API: validation (pure), rounding, model holding, and the HTTP contract over real HTTP."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_helpers import (  # noqa: F401  (tiny_output is a fixture)
    Client,
    copy_output,
    expected_volumes,
    latest_id,
    publish_models_from,
    run_swap,
    tiny_output,
)
from volcast import train
from volcast.config import Layout
from volcast.serve import (
    FIELD_BOUNDS,
    MAX_BATCH,
    MAX_BODY_BYTES,
    NO_MODEL_ERROR,
    OPENAPI_PATH,
    ApiServer,
    InputError,
    ModelHolder,
    openapi_spec,
    parse_json_body,
    parse_number_text,
    parse_predict_params,
    round_volumes,
    validate_batch,
    validate_record,
)
from volcast.storage import atomic_write_json, atomic_write_text

VOL, PRICE = "vol_moving_avg", "adj_close_rolling_med"


# ---------------------------------------------------------------------------------------------
# Validation (pure)


def q(**kw):
    return {k: v if isinstance(v, list) else [v] for k, v in kw.items()}


def test_bounds_are_the_documented_ones():
    # Every finite non-negative number: real split-adjusted Adj Close reaches 1e10, Volume 7.4e9.
    assert FIELD_BOUNDS == {VOL: (0.0, float("inf")), PRICE: (0.0, float("inf"))}
    assert MAX_BATCH == 10_000


def test_the_largest_valid_batch_fits_the_body_limit():
    # 10,000 objects, numbers at full float precision, pretty-printed: about 1.2 MB, under the limit.
    item = {VOL: 1.2345678901234567e300, PRICE: 9.876543210987654e-300}
    body = json.dumps([item] * MAX_BATCH, indent=4).encode()
    assert len(body) <= MAX_BODY_BYTES < 16 * 1024 * 1024
    vols, _, _ = validate_batch(parse_json_body(body))
    assert len(vols) == MAX_BATCH


@pytest.mark.parametrize(
    "vol, price, expected",
    [
        ("12345", "25", (12345.0, 25.0)),
        ("0", "0", (0.0, 0.0)),
        ("1e11", "1e7", (1e11, 1e7)),  # the former bounds, and beyond: real data reaches 1e10
        ("7.4e9", "1.0e10", (7.4e9, 1e10)),
        ("100000000000.00001", "10000000.0", (100000000000.00001, 1e7)),
        ("1e300", "0", (1e300, 0.0)),
        (" 12.5 ", "+.5", (12.5, 0.5)),
        ("1E3", "2.", (1000.0, 2.0)),
        ("-0", "0.0", (0.0, 0.0)),
    ],
)
def test_parse_accepts_plain_numbers(vol, price, expected):
    assert parse_predict_params(q(vol_moving_avg=vol, adj_close_rolling_med=price)) == expected


@pytest.mark.parametrize(
    "params, field, words",
    [
        (q(adj_close_rolling_med="25"), VOL, "is missing"),
        (q(vol_moving_avg="1"), PRICE, "is missing"),
        (q(vol_moving_avg=["1", "2"], adj_close_rolling_med="25"), VOL, "given 2 times"),
        (q(vol_moving_avg="1", adj_close_rolling_med=["1", "1", "1"]), PRICE, "given 3 times"),
        (q(vol_moving_avg="", adj_close_rolling_med="25"), VOL, "is empty"),
        (q(vol_moving_avg="abc", adj_close_rolling_med="25"), VOL, "must be a plain number"),
        (q(vol_moving_avg="1,000", adj_close_rolling_med="25"), VOL, "must be a plain number"),
        (q(vol_moving_avg="1_000", adj_close_rolling_med="25"), VOL, "must be a plain number"),
        (q(vol_moving_avg="0x10", adj_close_rolling_med="25"), VOL, "must be a plain number"),
        (q(vol_moving_avg="12 shares", adj_close_rolling_med="25"), VOL, "must be a plain number"),
        (q(vol_moving_avg="1", adj_close_rolling_med="$25"), PRICE, "must be a plain number"),
        (q(vol_moving_avg="NaN", adj_close_rolling_med="25"), VOL, "finite number, got NaN"),
        (q(vol_moving_avg="1", adj_close_rolling_med="nan"), PRICE, "finite number, got NaN"),
        (q(vol_moving_avg="inf", adj_close_rolling_med="25"), VOL, "finite number, got infinity"),
        (q(vol_moving_avg="-Infinity", adj_close_rolling_med="25"), VOL, "finite number, got infinity"),
        (q(vol_moving_avg="-1", adj_close_rolling_med="25"), VOL, "must not be negative, got -1"),
        (q(vol_moving_avg="1", adj_close_rolling_med="-0.01"), PRICE, "must not be negative"),
        (q(vol_moving_avg="1e400", adj_close_rolling_med="25"), VOL, "finite number, got 1e400, which is too large"),
        # ASCII digits only: Arabic-Indic and fullwidth digits are digits to Python's float(), not to us.
        (q(vol_moving_avg="\u0661\u0662", adj_close_rolling_med="25"), VOL, "must be a plain number"),
        (q(vol_moving_avg="1", adj_close_rolling_med="\uff11\uff12"), PRICE, "must be a plain number"),
        (q(vol_moving_avg="1\u0660", adj_close_rolling_med="2"), VOL, "must be a plain number"),
        (q(vol_moving_avg="1", adj_close_rolling_med="2", volume="3"), "volume", "unknown parameter"),
    ],
)
def test_parse_rejects_bad_input_naming_the_field(params, field, words):
    with pytest.raises(InputError) as info:
        parse_predict_params(params)
    assert info.value.field == field
    assert field in str(info.value)
    assert words in str(info.value)


def test_parse_number_text_echoes_long_input_shortened():
    with pytest.raises(InputError) as info:
        parse_number_text(VOL, "x" * 500)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    "obj, field, words",
    [
        ({PRICE: 1}, VOL, "is missing"),
        ({VOL: "12345", PRICE: 25}, VOL, "must be a JSON number, got a string"),
        ({VOL: True, PRICE: 25}, VOL, "got a boolean"),
        ({VOL: 1, PRICE: False}, PRICE, "got a boolean"),
        ({VOL: None, PRICE: 25}, VOL, "got null"),
        ({VOL: [1], PRICE: 25}, VOL, "got an array"),
        ({VOL: {"v": 1}, PRICE: 25}, VOL, "got an object"),
        ({VOL: -5, PRICE: 25}, VOL, "must not be negative, got -5"),
        ({VOL: 10**400, PRICE: 1}, VOL, "must be a finite number, got an integer of 401 digits, which is too large"),
        ({VOL: 1, PRICE: 2, "vol_moving_average": 3}, "vol_moving_average", "unknown field"),
    ],
)
def test_validate_record_rejects_naming_the_field(obj, field, words):
    with pytest.raises(InputError) as info:
        validate_record(obj)
    assert info.value.field == field and words in str(info.value)


def test_validate_record_accepts_ints_and_floats():
    assert validate_record({VOL: 12345, PRICE: 25.5}) == (12345.0, 25.5)
    assert validate_record({PRICE: 0, VOL: 1e11}) == (1e11, 0.0)
    assert validate_record({PRICE: 1e10, VOL: 7.4e9}) == (7.4e9, 1e10)
    assert validate_record({PRICE: 10**300, VOL: 0}) == (0.0, 1e300)


def test_validate_batch_shapes_and_limits():
    vols, prices, was_list = validate_batch({VOL: 1, PRICE: 2})
    assert (vols.tolist(), prices.tolist(), was_list) == ([1.0], [2.0], False)
    vols, prices, was_list = validate_batch([{VOL: 1, PRICE: 2}, {VOL: 3, PRICE: 4}])
    assert (vols.tolist(), prices.tolist(), was_list) == ([1.0, 3.0], [2.0, 4.0], True)
    with pytest.raises(InputError, match="batch is empty"):
        validate_batch([])
    with pytest.raises(InputError, match="10001 objects; the most is 10000"):
        validate_batch([{VOL: 1, PRICE: 2}] * (MAX_BATCH + 1))
    with pytest.raises(InputError, match="JSON object or a list of objects, got a string"):
        validate_batch("12345")
    with pytest.raises(InputError) as info:
        validate_batch([{VOL: 1, PRICE: 2}, {VOL: 1, PRICE: 2}, 7])
    assert info.value.index == 2 and "item 2" in str(info.value)
    with pytest.raises(InputError) as info:
        validate_batch([{VOL: 1, PRICE: 2}, {VOL: "1", PRICE: 2}])
    assert (info.value.index, info.value.field) == (1, VOL)
    assert info.value.payload() == {"error": str(info.value), "field": VOL, "index": 1}


@pytest.mark.parametrize(
    "body, words, field",
    [
        (b"", "body is empty", None),
        (b"{", "malformed JSON", None),
        (b"\xff\xfe", "not UTF-8", None),
        (b"[" * 100_000, "malformed JSON", None),
        (b'{"vol_moving_avg": NaN, "adj_close_rolling_med": 1}', "finite number, got NaN", VOL),
        (b'{"vol_moving_avg": 1, "adj_close_rolling_med": -Infinity}', "finite number, got -Infinity", PRICE),
        (b'{"vol_moving_avg": 1e400, "adj_close_rolling_med": 1}', "must be a finite number", VOL),
        (
            b'{"vol_moving_avg": 1' + b"0" * 5000 + b', "adj_close_rolling_med": 1}',
            "vol_moving_avg must be a finite number, got an integer of 5,001 digits",
            VOL,
        ),
        (
            b'{"vol_moving_avg": 1, "adj_close_rolling_med": -' + b"9" * 5000 + b"}",
            "adj_close_rolling_med must be a finite number, got an integer of 5,000 digits",
            PRICE,
        ),
        (
            b'{"vol_moving_avg": -100000000000.00001, "adj_close_rolling_med": 1}',
            "must not be negative, got -100000000000.0000",
            VOL,
        ),
        (b'{"vol_moving_avg": \xef\xbc\x91\xef\xbc\x92, "adj_close_rolling_med": 1}', "malformed JSON", None),
        (b'{"vol_moving_avg": 1, "adj_close_rolling_med": 2, "vol_moving_avg": 3}', "given 2 times", VOL),
        (b'[{"vol_moving_avg": 1, "adj_close_rolling_med": 2, "adj_close_rolling_med": 2}]', "given 2 times", PRICE),
        # NaN / Infinity where an object is expected: named as written, not by an internal class name.
        (b"NaN", "a list of objects, got NaN", None),
        (
            b"[-Infinity]",
            "item 0: expected a JSON object with vol_moving_avg and adj_close_rolling_med, got -Infinity",
            None,
        ),
    ],
)
def test_json_body_errors(body, words, field):
    with pytest.raises(InputError) as info:
        validate_batch(parse_json_body(body))
    assert words in str(info.value)
    assert info.value.field == field
    assert "sys." not in str(info.value) and len(str(info.value)) < 300


def test_errors_never_echo_a_long_name_whole():
    key = "k" * 1_000_000
    with pytest.raises(InputError) as info:
        validate_batch(parse_json_body(json.dumps({key: 1, VOL: 1, PRICE: 2}).encode()))
    payload = info.value.payload()
    assert payload["field"] == "k" * 40 + "..."
    assert len(json.dumps(payload)) < 300
    with pytest.raises(InputError) as info:
        parse_predict_params(q(**{key: "1", VOL: "1", PRICE: "2"}))
    assert len(json.dumps(info.value.payload())) < 300


def test_repeated_key_among_many_keys_is_found_in_one_pass():
    # A 16 MB body can hold a million keys: finding the repeated one by counting each key's
    # occurrences separately took ~20 s at 50,000 keys and would take hours at 16 MB, blocking a
    # worker. Counted without a clock: key comparisons must grow linearly with the keys.
    from volcast.serve import _unique_keys

    compared = 0

    class Key(str):
        __hash__ = str.__hash__

        def __eq__(self, other):
            nonlocal compared
            compared += 1
            return str.__eq__(self, other)

    n = 5_000
    pairs = [(Key(f"k{i}"), 0) for i in range(n)] + [(Key(f"k{n - 1}"), 1)]
    with pytest.raises(InputError) as info:
        _unique_keys(pairs)
    assert str(info.value) == f"k{n - 1} is given 2 times in one object; give it once"
    assert compared <= 10 * n  # a per-key count compares each key with all of them: ~n * n

    # Through the parser, and a long name is cut in the message.
    body = ("{" + ", ".join(f'"k{i}": 0' for i in range(50_000)) + ', "k49999": 1}').encode()
    with pytest.raises(InputError) as info:
        parse_json_body(body)
    assert str(info.value) == "k49999 is given 2 times in one object; give it once"
    long_name = "x" * 1000
    with pytest.raises(InputError) as info:
        parse_json_body(json.dumps({long_name: 1}).encode()[:-1] + f', "{long_name}": 2}}'.encode())
    assert str(info.value) == "x" * 40 + "... is given 2 times in one object; give it once"
    assert info.value.field == long_name


def test_round_volumes_half_up_and_never_negative():
    raw = np.array([0.0, 0.4999, 0.5, 1.5, 2.5, 2.4999, -3.2, 1_000_000.49, 1_000_000.5])
    assert round_volumes(raw).tolist() == [0, 0, 1, 2, 3, 2, 0, 1_000_000, 1_000_001]
    with pytest.raises(RuntimeError):
        round_volumes(np.array([np.nan]))


# ---------------------------------------------------------------------------------------------
# ModelHolder with injected loaders (no files needed)


class FakeModel:
    def __init__(self, model_id, factor):
        self.model_id, self.card, self.factor = model_id, {}, factor

    def predict(self, vol, price):
        return np.asarray(vol) * self.factor + np.asarray(price)


def test_holder_swaps_only_complete_models_and_keeps_the_old_one_on_failure(tmp_path):
    state = {"dir": None}
    loads = []

    def locate(_):
        return state["dir"]

    def load(model_dir):
        loads.append(model_dir.name)
        if model_dir.name == "broken":
            raise ValueError("corrupt model file")
        return FakeModel(model_dir.name, 2.0 if model_dir.name == "a" else 3.0)

    holder = ModelHolder(tmp_path, load_model=load, latest_model_dir=locate, check_interval=0)
    assert holder.get() is None and holder.error is None
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "broken").mkdir()
    state["dir"] = tmp_path / "a"
    first = holder.get()
    assert first.model_id == "a" and first.predict_one(10, 1) == 21
    assert holder.get() is first and loads == ["a"]  # unchanged LATEST: no reload
    state["dir"] = tmp_path / "broken"
    assert holder.get() is first  # a broken model never replaces a working one
    assert "corrupt model file" in holder.error
    assert holder.get() is first and loads == ["a", "broken"]  # not retried every check
    state["dir"] = tmp_path / "b"
    assert holder.get().model_id == "b" and holder.get().predict_one(10, 1) == 31 and holder.error is None
    state["dir"] = None  # LATEST removed: keep serving the last good model
    assert holder.get().model_id == "b"


def test_predictor_cache_answers_equal_the_model():
    from volcast.serve import Predictor

    p = Predictor(FakeModel("m", 1.5))
    pairs = [(1.0, 0.1), (2.0, 0.2), (1.0, 0.1), (3.0, 0.0)]
    assert p.predict_pairs(pairs) == [2, 3, 2, 5]  # 1.6 -> 2, 3.2 -> 3, 4.5 -> 5 (half up)
    assert p.cached(2.0, 0.2) == 3 and p.cached(9.0, 9.0) is None


# ---------------------------------------------------------------------------------------------
# HTTP contract, against a real model


@pytest.fixture(scope="module")
def api(tiny_output):
    with ApiServer(tiny_output, port=0) as server:
        yield server


@pytest.fixture()
def client(api):
    c = Client(api.url)
    yield c
    c.close()


PAIRS = [(12345.0, 25.0), (0.0, 0.0), (1e11, 1e7), (2_500_000.0, 3.75), (987.5, 1234.5)]


def answer(tiny_output, vol, price, volume) -> dict:
    """The expected answer: "extrapolated": true only outside the card's training ranges."""
    card = json.loads((train.latest_model_dir(tiny_output) / "card.json").read_text())
    (vlo, vhi), (plo, phi) = card["input_ranges"][VOL], card["input_ranges"][PRICE]
    out = {"volume": volume, "model_id": latest_id(tiny_output)}
    if not (vlo <= vol <= vhi and plo <= price <= phi):
        out["extrapolated"] = True
    return out


def test_get_predict_equals_the_loaded_model_rounded(client, tiny_output):
    expected = expected_volumes(tiny_output, [v for v, _ in PAIRS], [p for _, p in PAIRS])
    for (vol, price), want in zip(PAIRS, expected):
        status, body = client.get(f"/predict?vol_moving_avg={vol!r}&adj_close_rolling_med={price!r}")
        assert status == 200
        assert body == answer(tiny_output, vol, price, want)
        assert isinstance(body["volume"], int)


def test_post_object_and_list(client, tiny_output):
    model_id = latest_id(tiny_output)
    want = expected_volumes(tiny_output, [v for v, _ in PAIRS], [p for _, p in PAIRS])
    status, body = client.post("/predict", {VOL: 12345, PRICE: 25})
    assert status == 200 and body == answer(tiny_output, 12345, 25, want[0]) and body["model_id"] == model_id
    status, body = client.post("/predict", [{VOL: v, PRICE: p} for v, p in PAIRS])
    assert status == 200 and body == [answer(tiny_output, v, p, w) for (v, p), w in zip(PAIRS, want)]
    status, body = client.post("/predict", [{VOL: 5, PRICE: 1}])
    assert status == 200 and isinstance(body, list) and len(body) == 1


def test_post_full_batch_and_one_too_many(client, tiny_output):
    rng = np.random.default_rng(0)
    vols = np.round(rng.lognormal(12, 2, MAX_BATCH), 2)
    prices = np.round(rng.lognormal(3, 1, MAX_BATCH), 4)
    status, body = client.post("/predict", [{VOL: float(v), PRICE: float(p)} for v, p in zip(vols, prices)])
    assert status == 200
    assert [r["volume"] for r in body] == expected_volumes(tiny_output, vols, prices)
    status, body = client.post("/predict", [{VOL: 1, PRICE: 1}] * (MAX_BATCH + 1))
    assert status == 400 and "the most is 10000" in body["error"]


@pytest.mark.parametrize(
    "query, field",
    [
        ("adj_close_rolling_med=25", VOL),
        ("vol_moving_avg=1&vol_moving_avg=2&adj_close_rolling_med=25", VOL),
        ("vol_moving_avg=abc&adj_close_rolling_med=25", VOL),
        ("vol_moving_avg=1&adj_close_rolling_med=twenty", PRICE),
        ("vol_moving_avg=NaN&adj_close_rolling_med=25", VOL),
        ("vol_moving_avg=1&adj_close_rolling_med=inf", PRICE),
        ("vol_moving_avg=-1&adj_close_rolling_med=25", VOL),
        ("vol_moving_avg=1&adj_close_rolling_med=-25", PRICE),
        ("vol_moving_avg=1e400&adj_close_rolling_med=25", VOL),
        ("vol_moving_avg=%D9%A1%D9%A2&adj_close_rolling_med=25", VOL),  # Arabic-Indic 12
        ("vol_moving_avg=1&adj_close_rolling_med=%EF%BC%91%EF%BC%92", PRICE),  # fullwidth 12
        ("vol_moving_avg=&adj_close_rolling_med=25", VOL),
        ("vol_moving_avg&adj_close_rolling_med=25", VOL),
        ("vol_moving_avg=1&adj_close_rolling_med=25&debug=1", "debug"),
        ("vol_moving_avg=%FF%FE&adj_close_rolling_med=25", VOL),
    ],
)
def test_get_bad_input_is_400_naming_the_field(client, query, field):
    status, body = client.get("/predict?" + query)
    assert status == 400
    assert body["field"] == field and field in body["error"]
    # The same sentence the pure validation (and so the dashboard) gives.
    from urllib.parse import parse_qs

    with pytest.raises(InputError) as info:
        parse_predict_params(parse_qs(query, keep_blank_values=True))
    assert body["error"] == str(info.value)


def test_get_without_query_and_with_too_many_params(client):
    status, body = client.get("/predict")
    assert status == 400 and body["field"] == VOL and "missing" in body["error"]
    status, body = client.get("/predict?" + "&".join(f"a{i}=1" for i in range(40)))
    assert status == 400 and "too many query parameters" in body["error"]


@pytest.mark.parametrize(
    "raw, words, field",
    [
        (b'{"vol_moving_avg": 1, "adj_close_rolling_med": ', "malformed JSON", None),
        (b"", "body is empty", None),
        (b'"12345"', "got a string", None),
        (b"42", "got a number", None),
        (b"[]", "batch is empty", None),
        (b"[NaN]", "item 0: expected a JSON object with vol_moving_avg and adj_close_rolling_med, got NaN", None),
        (b'{"vol_moving_avg": "12345", "adj_close_rolling_med": 25}', "got a string", VOL),
        (b'{"vol_moving_avg": true, "adj_close_rolling_med": 25}', "got a boolean", VOL),
        (b'{"vol_moving_avg": 1, "adj_close_rolling_med": null}', "got null", PRICE),
        (b'{"vol_moving_avg": NaN, "adj_close_rolling_med": 25}', "got NaN", VOL),
        (b'{"vol_moving_avg": 1, "adj_close_rolling_med": Infinity}', "got Infinity", PRICE),
        (b'{"vol_moving_avg": -1, "adj_close_rolling_med": 25}', "negative", VOL),
        (b'{"vol_moving_avg": 1e11, "adj_close_rolling_med": 1e400}', "must be a finite number", PRICE),
        (b'{"vol_moving_avg": 1, "adj_close_rolling_med": 2, "symbol": "AAPL"}', "unknown field", "symbol"),
        (b'[{"vol_moving_avg": 1, "adj_close_rolling_med": 2}, {"adj_close_rolling_med": 2}]', "item 1", VOL),
    ],
)
def test_post_bad_input_is_400(client, raw, words, field):
    status, body = client.post("/predict", raw=raw)
    assert status == 400, body
    assert words in body["error"]
    assert body.get("field") == field


def test_unknown_path_404_and_wrong_method_405(client):
    status, body = client.get("/nope")
    assert status == 404 and "no such path" in body["error"]
    for method, path, allowed in [
        ("DELETE", "/predict", "GET, POST"),
        ("PUT", "/predict", "GET, POST"),
        ("POST", "/health", "GET"),
        ("POST", "/openapi.json", "GET"),
    ]:
        status, body, resp = client.request(method, path)
        assert status == 405 and method in body["error"]
        assert resp.getheader("Allow") == allowed
        assert resp.getheader("Content-Type") == "application/json"


def test_health(client, tiny_output):
    assert client.get("/health") == (200, {"status": "ok", "model_id": latest_id(tiny_output)})


def test_openapi_served_equals_docs_file_and_the_generator(client):
    status, body = client.get("/openapi.json")
    assert status == 200 and body == openapi_spec()
    assert json.loads(OPENAPI_PATH.read_text()) == body, "docs/openapi.json is stale: run volcast.serve.write_openapi()"
    assert body["openapi"].startswith("3.")
    schema = body["components"]["schemas"]["Features"]["properties"]
    assert (schema[VOL]["minimum"], schema[PRICE]["minimum"]) == (0, 0)
    assert "maximum" not in schema[VOL] and "maximum" not in schema[PRICE]  # any finite number >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from([VOL, PRICE, "x"]) | st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(st.tuples(st.sampled_from([VOL, PRICE, "x", ""]) | st.text(max_size=5), st.text(max_size=12)), max_size=4),
    json_values,
    st.binary(max_size=40),
)
def test_no_input_gives_a_5xx(api, pairs, value, junk):
    from urllib.parse import urlencode

    c = Client(api.url)
    try:
        status, body = c.get("/predict?" + urlencode(pairs))
        assert status in (200, 400) and (("error" in body) == (status == 400))
        for raw in (json.dumps(value).encode(), junk):
            status, body = c.post("/predict", raw=raw)
            assert status in (200, 400), body
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# No model yet -> 503; a model appears -> served without restart


def test_503_until_a_model_is_published_then_served_without_restart(tiny_output, tmp_path):
    empty = tmp_path / "fresh"
    empty.mkdir()
    with ApiServer(empty, port=0, check_interval=0.2) as server:
        c = Client(server.url)
        for status, body in (
            c.get("/health"),
            c.get("/predict?vol_moving_avg=1&adj_close_rolling_med=2"),
            c.post("/predict", {VOL: 1, PRICE: 2}),
            c.post("/predict", [{VOL: 1, PRICE: 2}]),
        ):
            assert status == 503 and body["error"] == NO_MODEL_ERROR
        # Bad input is still a 400, model or not.
        assert c.get("/predict?vol_moving_avg=x&adj_close_rolling_med=2")[0] == 400
        model_id = publish_models_from(tiny_output, empty)
        deadline = time.monotonic() + 10
        while c.get("/health")[0] != 200:
            assert time.monotonic() < deadline, "the new model was not picked up"
            time.sleep(0.05)
        assert c.get("/health") == (200, {"status": "ok", "model_id": model_id})
        status, body = c.get("/predict?vol_moving_avg=12345&adj_close_rolling_med=25")
        assert (status, body) == (200, {"volume": expected_volumes(empty, [12345], [25])[0], "model_id": model_id})
        c.close()


def test_broken_latest_keeps_serving_the_previous_model(tiny_output, tmp_path):
    out = copy_output(tiny_output, tmp_path / "out")
    old = latest_id(out)
    with ApiServer(out, port=0, check_interval=0.1) as server:
        c = Client(server.url)
        broken = Layout.at(out).models_dir / "broken-model"
        broken.mkdir()
        atomic_write_json(
            broken / "card.json",
            {
                "model_id": "broken-model",
                "model_kind": "catboost",
                "formulation": {"name": "ratio"},
                "model_file": "model.cbm",
            },
        )
        (broken / "model.cbm").write_bytes(b"not a model")
        atomic_write_text(Layout.at(out).latest_file, "broken-model\n")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            status, body = c.get("/predict?vol_moving_avg=10&adj_close_rolling_med=1")
            assert status == 200 and body["model_id"] == old
        assert "broken-model could not be loaded" in server.holder.error
        c.close()


# ---------------------------------------------------------------------------------------------
# A new model published by a real training run while requests hammer the server


def test_model_swap_under_load_in_process_server(tiny_output, tmp_path):
    out = copy_output(tiny_output, tmp_path / "out")
    with ApiServer(out, port=0) as server:
        run_swap(server.url, out)
