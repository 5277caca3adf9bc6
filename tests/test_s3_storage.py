"""Datasets and models on object storage (volcast.remote) against a real S3 endpoint on loopback (moto's
server): versions under their own prefix, pointers written last, readers that never see a partial version."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from s3_helpers import new_bucket, s3_endpoint  # noqa: F401 - the fixture
from volcast import features, ingest, remote, storage
from volcast.errors import UserError

DEMO = {"source": "demo", "demo_tickers": 24, "demo_years": 2, "demo_seed": 5}


def _fs():
    return fsspec.filesystem("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True)


def _read_remote(url: str, dataset: str) -> pd.DataFrame:
    """What a reader with only the bucket sees: follow the pointer, read that prefix (s3fs + pyarrow)."""
    fs = _fs()
    root = url.split("://", 1)[1]
    version = fs.cat_file(f"{root}/data/{dataset}.current").decode().strip()
    return pd.read_parquet(f"{url}/data/{version}", storage_options={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    ingest.run(out, jobs=1, **DEMO)
    features.run(out, jobs=1)
    return out


def test_stages_pushed_to_s3_read_back_equal_to_local(s3_endpoint, local_run, tmp_path):
    url = f"s3://{new_bucket()}/team/volcast"
    writer = remote.Remote(url, mirror=tmp_path / "writer")
    ingest.run(writer.mirror, jobs=1, **DEMO)
    assert writer.push(["raw_dir", "quarantine_dir"]) == ["data/raw.current", "data/quarantine.current"]
    features.run(writer.mirror, jobs=1)
    assert writer.push(["features_dir"]) == ["data/features.current"]
    assert writer.push() == []  # nothing new: nothing moves
    for name in ("raw", "quarantine", "features"):
        pd.testing.assert_frame_equal(_read_remote(url, name), pd.read_parquet(local_run / "data" / name), obj=name)
    # Another machine's working copy pulls the same versions, under the same names.
    reader = remote.Remote(url, mirror=tmp_path / "reader")
    assert sorted(reader.pull()) == ["data/features", "data/quarantine", "data/raw"]
    assert reader.pull() == []
    for name in ("raw", "features"):
        assert (
            storage.current_version(reader.layout.data_dir / name).name
            == storage.current_version(writer.layout.data_dir / name).name
        )
        pd.testing.assert_frame_equal(
            pd.read_parquet(reader.layout.data_dir / name), pd.read_parquet(local_run / "data" / name)
        )
    latest = pd.read_parquet(reader.layout.features_dir / "_latest.parquet")
    pd.testing.assert_frame_equal(latest, pd.read_parquet(local_run / "data" / "features" / "_latest.parquet"))


def test_a_new_version_becomes_visible_only_with_its_pointer(s3_endpoint, tmp_path):
    """Files of a new version are on the store before the pointer moves; until then readers get the old
    one. A version replaced is kept one round (a reader may be mid-read), older ones are removed."""
    url = f"s3://{new_bucket()}/p"
    root = url.split("://", 1)[1]
    writer = remote.Remote(url, mirror=tmp_path / "w")
    ingest.run(writer.mirror, jobs=1, **DEMO)
    features.run(writer.mirror, jobs=1, window=30)
    writer.push()
    first = writer.dataset_version("features")
    before = _read_remote(url, "features")

    features.run(writer.mirror, jobs=1, window=10)  # every partition recomputed: a new version
    second = storage.current_version(writer.layout.features_dir).name
    assert second != first
    # The upload without the pointer (what a writer killed before its last PUT leaves): readers stay put.
    writer._push_version(writer.layout.data_dir / second, first)
    assert writer.dataset_version("features") == first
    pd.testing.assert_frame_equal(_read_remote(url, "features"), before)
    assert writer.push(["features_dir"]) == ["data/features.current"]
    after = _read_remote(url, "features")
    assert not after["vol_moving_avg"].equals(before["vol_moving_avg"])
    pd.testing.assert_frame_equal(after, pd.read_parquet(writer.layout.features_dir))

    features.run(writer.mirror, jobs=1, window=20)
    third = storage.current_version(writer.layout.features_dir).name
    writer.push(["features_dir"])
    versions = sorted(p.rsplit("/", 1)[-1] for p in _fs().ls(f"{root}/data", refresh=True) if "/.features.v" in p)
    assert versions == sorted([second, third])  # the first is gone, the one it replaced stays

    # An unchanged re-run publishes nothing new.
    raw_before = writer.dataset_version("raw")
    ingest.run(writer.mirror, jobs=1, **DEMO)
    assert writer.push(["raw_dir"]) == [] and writer.dataset_version("raw") == raw_before


def test_hostile_pointers_are_refused(s3_endpoint, tmp_path):
    url = f"s3://{new_bucket()}/p"
    r = remote.Remote(url, mirror=tmp_path / "m")
    r.write_text("data/raw.current", "../../../etc")
    with pytest.raises(UserError, match="does not name a raw version"):
        r.pull(["raw_dir"])
    r.write_text("data/raw.current", ".features.v1")  # another dataset's version
    with pytest.raises(UserError, match="does not name a raw version"):
        r.pull(["raw_dir"])
    r.write_text("models/LATEST", "../x")
    with pytest.raises(UserError, match="does not name a model"):
        r.pull(["models_dir"])
    assert not (tmp_path / "m" / "data" / "raw").exists()


def test_endpoint_and_credentials_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("VOLCAST_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert remote.storage_options("s3://b/p")["endpoint_url"] == "http://127.0.0.1:9"
    monkeypatch.setenv("VOLCAST_S3_ENDPOINT", "http://minio:9000")
    options = remote.storage_options("s3://b/p")
    assert options["endpoint_url"] == "http://minio:9000"
    assert not {"key", "secret", "token"} & set(options)  # credentials: botocore's chain, never ours
    assert remote.storage_options("gs://b/p") == {}
    assert remote.is_remote("s3://b/p") and not remote.is_remote("/tmp/x") and not remote.is_remote("file:///tmp")
    assert remote.default_mirror("s3://b/p") != remote.default_mirror("s3://b/q")


def test_incremental_version_copies_unchanged_partitions_on_the_store(s3_endpoint, tmp_path):
    """One source file changes: ingest rewrites one partition and hard-links the rest; the push uploads
    only that partition (and the state files) and copies the others server-side; the store's dataset then
    equals a fresh local ingest of the changed source."""
    source = ingest.generate_demo_market(tmp_path / "src", n_tickers=20, years=2, seed=3)
    url = f"s3://{new_bucket()}/inc"
    writer = remote.Remote(url, mirror=tmp_path / "w")
    ingest.run(writer.mirror, source=str(source), jobs=1)
    writer.push(["raw_dir"])
    first = writer.dataset_version("raw")
    changed = sorted((Path(source) / "stocks").glob("*.csv"))[0]
    lines = changed.read_text().splitlines()
    changed.write_text("\n".join(lines[:-5]) + "\n")  # the last five days dropped
    report = ingest.run(writer.mirror, source=str(source), jobs=1)
    assert len(report["changed_partitions"]) == 1
    writer.push(["raw_dir"])
    second = writer.dataset_version("raw")
    assert second != first
    parts = len(list((writer.layout.raw_dir).glob("part-*.parquet")))
    state_files = len(list(writer.layout.raw_dir.glob("_*")))  # the dataset's own state, rewritten each run
    assert writer.transfers[second] == {"uploaded": 1 + state_files, "copied": parts - 1}  # + the partition
    fresh = tmp_path / "fresh"
    ingest.run(fresh, source=str(source), jobs=1)
    pd.testing.assert_frame_equal(_read_remote(url, "raw"), pd.read_parquet(fresh / "data" / "raw"))


def test_a_local_output_dir_has_the_stores_layout(s3_endpoint, local_run, tmp_path):
    """The local symlink and the pointer file name the same version, so a local data/ tree copied as
    plain files (no links) to a bucket is a published dataset there."""
    data = local_run / "data"
    for name in ("raw", "quarantine", "features"):
        assert (data / f"{name}.current").read_text().strip() == os.readlink(data / name)
    url = f"s3://{new_bucket()}/copied"
    fs = _fs()
    root = url.split("://", 1)[1]
    for path in data.rglob("*"):
        rel = path.relative_to(local_run).as_posix()
        if path.is_file() and not path.is_symlink() and not any(p.is_symlink() for p in path.parents):
            fs.put_file(str(path), f"{root}/{rel}")
    reader = remote.Remote(url, mirror=tmp_path / "r")
    assert sorted(reader.pull(["raw_dir", "features_dir"])) == ["data/features", "data/raw"]
    pd.testing.assert_frame_equal(pd.read_parquet(reader.layout.features_dir), pd.read_parquet(data / "features"))


def test_delta_files_of_a_daily_append_travel_like_any_other(s3_endpoint, tmp_path):
    """A daily append adds ``part-<key>~<seq>.parquet`` beside a partition's base file in a new version:
    the push uploads the delta only (the base files are copied on the store), and another machine's
    working copy reads the same partition groups and the same rows."""
    import pyarrow.parquet as pq

    url = f"s3://{new_bucket()}/daily"
    writer = remote.Remote(url, mirror=tmp_path / "w")
    ingest.run(writer.mirror, jobs=1, **DEMO)
    writer.push(["raw_dir"])
    first = writer.dataset_version("raw")
    groups = storage.partition_groups(writer.layout.raw_dir)
    key, (base,) = next(iter(groups.items()))
    extra = pq.read_table(base).slice(0, 3)  # any three rows of the right schema stand for a day's rows
    with storage.publish_dir(writer.layout.raw_dir, seed_from_current=True) as staging:
        storage.write_parquet(extra, staging / storage.delta_file(key, 1))
    assert writer.push(["raw_dir"]) == ["data/raw.current"]
    second = writer.dataset_version("raw")
    assert second != first
    files_before = len([p for p in (writer.layout.data_dir / first).iterdir() if p.is_file()])
    assert files_before > len(groups)  # the partitions and the dataset's own state files
    assert writer.transfers[second] == {"uploaded": 1, "copied": files_before}  # the delta only goes up
    on_store = {p.rsplit("/", 1)[-1] for p in _fs().ls(f"{url.split('://', 1)[1]}/data/{second}", refresh=True)}
    assert storage.delta_file(key, 1) in on_store

    reader = remote.Remote(url, mirror=tmp_path / "r")
    reader.pull(["raw_dir"])
    got = storage.partition_groups(reader.layout.raw_dir)
    want = storage.partition_groups(writer.layout.raw_dir)
    assert {k: [p.name for p in v] for k, v in got.items()} == {k: [p.name for p in v] for k, v in want.items()}
    assert [p.name for p in got[key]] == [base.name, storage.delta_file(key, 1)]
    pd.testing.assert_frame_equal(pd.read_parquet(reader.layout.raw_dir), pd.read_parquet(writer.layout.raw_dir))
    assert len(pd.read_parquet(reader.layout.raw_dir)) == len(pd.read_parquet(writer.layout.data_dir / first)) + 3
