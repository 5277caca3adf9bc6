"""The cross-machine run lock of an output directory on object storage (``volcast.remote_lock``) and the
store's retention (``retention.prune_store``), against a real S3 endpoint on loopback (moto's server).
Each ``Remote`` here stands for another machine: its own filesystem client and working copy."""

from __future__ import annotations

import json
import threading
import time

import pytest

from s3_helpers import new_bucket, s3_endpoint  # noqa: F401 - the fixture
from volcast import remote, retention
from volcast.errors import UserError
from volcast.remote_lock import LOCK_NAME, StoreLock


def _machine(url, tmp_path, name) -> remote.Remote:
    r = remote.Remote(url, mirror=tmp_path / name)
    r.fs = type(r.fs)(**{**r.fs.storage_options, "skip_instance_cache": True})  # a client of its own
    return r


def _lock(r: remote.Remote, **kwargs) -> StoreLock:
    lock = StoreLock.for_remote(r, say=lambda _: None, **kwargs)
    assert lock is not None
    return lock


def _record(r: remote.Remote) -> dict:
    return json.loads(r.fs.cat_file(r.key(LOCK_NAME)))


def test_one_of_many_concurrent_runs_gets_the_lock(s3_endpoint, tmp_path):
    url = f"s3://{new_bucket()}/shared"
    machines = [_machine(url, tmp_path, f"m{i}") for i in range(6)]
    locks = [_lock(m) for m in machines]
    start = threading.Barrier(len(locks))
    outcome: dict[int, str] = {}

    def take(i):
        start.wait()
        try:
            locks[i].acquire()
            outcome[i] = "held"
        except UserError as exc:
            outcome[i] = str(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(locks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcome.items() if o == "held"]
    assert len(winners) == 1, outcome
    (winner,) = winners
    assert _record(machines[0])["owner"] == locks[winner].owner
    for i, text in outcome.items():
        if i != winner:
            assert text.startswith("another volcast run holds") and "pid" in text
    locks[winner].release()
    assert not machines[0].fs.exists(machines[0].key(LOCK_NAME))
    late = _lock(machines[1]).acquire()  # released: the next run gets it
    assert _record(machines[0])["owner"] == late.owner
    late.release()


def test_a_dead_holders_lock_expires_and_a_stalled_holder_learns_it_lost(s3_endpoint, tmp_path):
    url = f"s3://{new_bucket()}/shared"
    a, b = _machine(url, tmp_path, "a"), _machine(url, tmp_path, "b")
    stalled = _lock(a, ttl=2.0, renew_every=3600).acquire()  # holds it, then stops renewing (hung)
    with pytest.raises(UserError, match="another volcast run holds"):
        _lock(b, ttl=2.0).acquire()
    time.sleep(3.2)  # Last-Modified has a 1 s resolution: wait past ttl + 1
    taker = _lock(b, ttl=2.0).acquire()
    assert _record(b)["owner"] == taker.owner
    stalled.check()  # it does not know yet
    assert stalled.renew() is False  # its If-Match no longer holds
    with pytest.raises(UserError, match="lost the lock"):
        stalled.check()
    stalled.release()  # must not remove the lock the other run holds now
    assert _record(b)["owner"] == taker.owner
    taker.release()
    assert not b.fs.exists(b.key(LOCK_NAME))


def test_a_live_holder_keeps_its_lock_past_the_expiry(s3_endpoint, tmp_path):
    url = f"s3://{new_bucket()}/shared"
    a, b = _machine(url, tmp_path, "a"), _machine(url, tmp_path, "b")
    holder = _lock(a, ttl=2.0, renew_every=0.4).acquire()
    time.sleep(4.0)  # twice the expiry: renewed all along
    with pytest.raises(UserError, match="another volcast run holds"):
        _lock(b, ttl=2.0).acquire()
    holder.check()
    holder.release()


def test_lock_can_be_switched_off(s3_endpoint, tmp_path, monkeypatch):
    r = _machine(f"s3://{new_bucket()}/p", tmp_path, "a")
    monkeypatch.setenv("VOLCAST_S3_LOCK", "off")
    said = []
    assert StoreLock.for_remote(r, say=said.append) is None
    assert "no lock" in said[0]


def _put(r: remote.Remote, rel: str, text: str = "x") -> None:
    r.fs.pipe_file(r.key(rel), text.encode())


def test_keep_prunes_the_stores_models_and_run_records(s3_endpoint, tmp_path):
    """The local rule on the store: the ``keep`` newest, the served model, the one protected, and the runs
    that state.json names stay; models made by another machine count too."""
    r = _machine(f"s3://{new_bucket()}/p", tmp_path, "a")
    models = [f"2026110{d}T000000-m{d}" for d in range(1, 6)]
    for m in models:
        _put(r, f"models/{m}/card.json", "{}")
        _put(r, f"models/{m}/model.cbm")
    _put(r, "models/LATEST", models[1])  # served: an older one (a rollback)
    runs = [f"2026110{d}T000000.000000-r{d}" for d in range(1, 7)]
    for run in runs:
        _put(r, f"runs/{run}/manifest.json", "{}")
    _put(r, "runs/state.json", json.dumps({"ingest": {"run_id": runs[0]}, "features": {"run_id": runs[2]}}))
    removed = retention.prune_store(r, 2, current_run=runs[5], protect=(models[0],))
    assert removed["models_removed"] == [models[2]]
    assert removed["runs_removed"] == [runs[1], runs[3]]
    left_models = sorted(p.rsplit("/", 1)[-1] for p in r.fs.ls(r.key("models"), refresh=True))
    assert left_models == sorted([models[0], models[1], models[3], models[4], "LATEST"])
    left_runs = sorted(p.rsplit("/", 1)[-1] for p in r.fs.ls(r.key("runs"), refresh=True))
    assert left_runs == sorted([runs[0], runs[2], runs[4], runs[5], "state.json"])
    assert r.fs.cat_file(r.key(f"models/{models[1]}/card.json")) == b"{}"
    assert retention.prune_store(r, 2, current_run=runs[5], protect=(models[0],)) == {
        "keep": 2,
        "models_removed": [],
        "runs_removed": [],
    }
    with pytest.raises(UserError, match="--keep"):
        retention.prune_store(r, 0)


def test_a_killed_runs_lock_on_this_machine_is_taken_over_at_once(s3_endpoint, tmp_path):
    import platform
    import subprocess
    import sys

    r = _machine(f"s3://{new_bucket()}/p", tmp_path, "a")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process of this machine that has exited
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        space = _record_of_a_lock_here(r)["space"]  # this machine's, as a lock taken here records it
        record = {"owner": "k" * 32, "host": platform.node(), "space": space, "pid": alive.pid, "ttl_seconds": 300}
        _put(r, LOCK_NAME, json.dumps(record))
        with pytest.raises(UserError, match="another volcast run holds"):
            _lock(r).acquire()  # its process still runs: wait
        _put(r, LOCK_NAME, json.dumps({**record, "pid": gone.pid}))
        said = []
        lock = StoreLock.for_remote(r, say=said.append).acquire()
        assert _record(r)["owner"] == lock.owner and "has exited" in said[-1]
        lock.release()
        for elsewhere in ({"host": "another-machine", "space": "another-machine|b|1"}, {"space": space + "0"}):
            _put(r, LOCK_NAME, json.dumps({**record, "pid": gone.pid, **elsewhere}))
            with pytest.raises(UserError, match="another volcast run holds"):
                _lock(r).acquire()  # a pid of another machine or container says nothing here: wait for expiry
    finally:
        alive.kill()
        alive.wait()


def _record_of_a_lock_here(r: remote.Remote) -> dict:
    lock = _lock(r).acquire()
    try:
        return _record(r)
    finally:
        lock.release()
