"""Serving from object storage: the API loads the store's current model at launch, follows
``models/LATEST`` there, swaps without failing a request, and keeps serving when the store goes away."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from s3_helpers import moto_endpoint, new_bucket
from serve_helpers import Client, check_swap, copy_output, hammer, latest_id, tiny_output, wait_for  # noqa: F401
from volcast import remote, train
from volcast.serve import ApiServer


def test_model_swap_over_s3_under_concurrent_requests(tiny_output, tmp_path):
    with moto_endpoint():
        url = f"s3://{new_bucket()}/prod"
        out = copy_output(tiny_output, tmp_path / "trainer")
        trainer = remote.Remote(url, mirror=out)
        assert trainer.push(["models_dir"]) == ["models/LATEST"]
        old = latest_id(out)
        old_dir = train.latest_model_dir(out)
        holder = remote.model_holder(url, check_interval=0.3, mirror=tmp_path / "server-copy")
        with ApiServer(holder=holder, port=0) as server:
            status, body = Client(server.url).get("/health")
            assert (status, body) == (200, {"status": "ok", "model_id": old})  # loaded from the store at start
            stop = threading.Event()
            last_model: dict[int, str] = {}
            threads = 6
            with ThreadPoolExecutor(threads) as pool:
                futures = [pool.submit(hammer, server.url, stop, seed, last_model) for seed in range(threads)]
                time.sleep(0.5)
                train.run(out, seed=11, iterations=25, max_train_rows=20_000, jobs=1, progress=False)
                new = latest_id(out)
                assert new != old
                assert trainer.push(["models_dir"]) == ["models/LATEST"]  # model files first, LATEST last
                wait_for(lambda: all(last_model.get(i) == new for i in range(threads)))
                time.sleep(1.0)
                stop.set()
                results = [f.result() for f in futures]
            check_swap(results, old_dir, train.latest_model_dir(out), old, new)
            assert (tmp_path / "server-copy" / "models" / new / "card.json").is_file()


def test_unreachable_storage_keeps_the_loaded_model_serving(tiny_output, tmp_path):
    with moto_endpoint() as (_endpoint, server_s3):
        url = f"s3://{new_bucket()}/prod"
        out = copy_output(tiny_output, tmp_path / "trainer")
        remote.Remote(url, mirror=out).push(["models_dir"])
        model_id = latest_id(out)
        holder = remote.model_holder(url, check_interval=0.3, mirror=tmp_path / "copy")
        with ApiServer(holder=holder, port=0) as api:
            client = Client(api.url)
            assert client.get("/health")[0] == 200
            server_s3.stop()  # the store goes away
            status, body = wait_for(
                lambda: (lambda r: r if r[1].get("status") == "degraded" else None)(client.get("/health")), timeout=60
            )
            assert status == 200 and body["model_id"] == model_id
            assert "unavailable" in body["reason"] and url in body["reason"]
            assert "volcast-test-secret" not in body["reason"]  # no credential in what is reported
            status, body = client.get("/predict?vol_moving_avg=12345&adj_close_rolling_med=25")
            assert status == 200 and body["model_id"] == model_id
            # A fresh server with no working copy and no store: nothing was ever loaded -> 503.
            fresh = remote.model_holder(url, check_interval=0.3, mirror=tmp_path / "empty")
            with ApiServer(holder=fresh, port=0) as empty:
                assert Client(empty.url).get("/health")[0] == 503


def test_serve_command_on_an_s3_output_dir(tiny_output, tmp_path, monkeypatch):
    """`serve --output-dir s3://...` as a process: API workers answer with the store's model, and the
    dashboard's working copy holds the store's current features and model."""
    from serve_helpers import ServeProcess

    with moto_endpoint():
        url = f"s3://{new_bucket()}/prod"
        out = copy_output(tiny_output, tmp_path / "trainer")
        writer = remote.Remote(url, mirror=out)
        writer.push()
        monkeypatch.setenv("VOLCAST_CACHE", str(tmp_path / "cache"))
        proc = ServeProcess(url, dashboard=False, api_workers=2)
        try:
            status, body = Client(proc.api_url).get("/health")
            assert (status, body) == (200, {"status": "ok", "model_id": latest_id(out)})
            status, body = Client(proc.api_url).get("/predict?vol_moving_avg=12345&adj_close_rolling_med=25")
            assert status == 200 and body["model_id"] == latest_id(out)
            copy = remote.Remote(url).mirror
            assert str(copy).startswith(str(tmp_path / "cache"))
            assert (copy / "data" / "features").resolve().name == writer.dataset_version("features")
            assert latest_id(copy) == latest_id(out)
            assert any(url in line for line in proc.log)  # says where the models come from
            assert not any("volcast-test-secret" in line for line in proc.log)
        finally:
            assert proc.stop() == 0
