"""Daily updates: append-aware ingest (and the features stage after it) equals a full run on the same tree.

A small generated market grows one trading day at a time (benchmarks/make_daily_source.py). After each
release the incremental output directory is compared with a fresh full run on the same tree, with
pandas.testing; the report's file counts are checked against what changed on disk, found independently
(file sizes before and after).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from volcast import features, ingest, partitions, storage
from volcast.ingest import load_quarantine

REPO_ROOT = Path(__file__).resolve().parents[1]
HOLD_BACK = 26


def _load_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mds = _load_module("make_daily_source")


def _sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.glob("*/*.csv"))}


def _by_symbol_date(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["Symbol", "Date"], kind="stable").reset_index(drop=True)


def _datasets(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Raw, quarantine and features, each in one order whatever its files (delta files read after their base)."""
    raw = _by_symbol_date(pd.read_parquet(out / "data" / "raw"))
    q = load_quarantine(out).sort_values(["file", "line"]).reset_index(drop=True)
    feats = _by_symbol_date(pd.read_parquet(out / "data" / "features"))
    return raw, q, feats


def _full(src: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    shutil.rmtree(out, ignore_errors=True)
    ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)
    return _datasets(out)


def _update(src: Path, out: Path) -> dict:
    report = ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)
    return report


def _assert_same(a, b) -> None:
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A daily source (version 0 ingested), a CRLF file among the generated ones."""
    base = tmp_path_factory.mktemp("daily")
    market = ingest.generate_demo_market(base / "market", n_tickers=6, years=1, seed=11)
    crlf = sorted((market / "stocks").glob("*.csv"))[0]
    crlf.write_bytes(crlf.read_bytes().replace(b"\n", b"\r\n"))
    src = base / "src"
    mds.init(str(market), src, HOLD_BACK)
    out = base / "out"
    ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)
    return {"src": src, "out": out, "full": base / "full", "crlf": str(crlf.relative_to(market))}


def test_one_day_then_five_equal_a_full_run(grown):
    src, out = grown["src"], grown["out"]
    before = _sizes(src)
    mds.release(src, "next")
    after = _sizes(src)
    grew = {f for f in after if f in before and after[f] > before[f]}
    assert grew and grown["crlf"] in grew
    report = _update(src, out)
    assert report["files_appended"] == len(grew)
    assert report["files_reread"] == len(set(after) - set(before))
    assert report["files_unchanged"] == len(after) - len(grew) - len(set(after) - set(before))
    assert report["rows_read_this_run"] == len(grew)  # one new day: one line each
    t = report["totals"]
    assert t["lines"] == t["rows_kept"] + t["rows_quarantined"]
    _assert_same(_datasets(out), _full(src, grown["full"]))
    for _ in range(5):
        mds.release(src, "next")
        report = _update(src, out)
        assert report["files_appended"] >= len(grew) - 1 and not report["append_fallbacks"]
    _assert_same(_datasets(out), _full(src, grown["full"]))


def test_edited_past_row_and_truncated_file_are_read_whole(grown, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(grown["src"], src)  # a source of its own, at the version the module's tests left it
    out = tmp_path / "out"
    ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)
    mds.release(src, "next")
    files = sorted(_sizes(src))
    edited, truncated = src / files[1], src / files[2]
    lines = edited.read_bytes().split(b"\n")
    fields = lines[3].split(b",")
    fields[-1] = fields[-1].rstrip(b"\r") + b"1" + (b"\r" if fields[-1].endswith(b"\r") else b"")
    lines[3] = b",".join(fields)  # a past row's Volume edited (the file also grew by the new day)
    edited.write_bytes(b"\n".join(lines))
    data = truncated.read_bytes()
    truncated.write_bytes(data.rstrip(b"\r\n").rsplit(b"\n", 2)[0] + b"\n")  # its last two rows gone
    report = _update(src, out)
    reasons = {f["file"]: f["reason"] for f in report["append_fallbacks"]}
    assert reasons == {files[1]: "earlier content changed"}  # the shorter file is planned as a re-read
    assert report["files_reread"] == 2
    assert report["files_appended"] == len(files) - 2 - report["files_unchanged"]
    _assert_same(_datasets(out), _full(src, tmp_path / "full"))


def test_repeated_date_and_bad_appended_row_are_quarantined_as_in_a_full_run(tmp_path):
    src = tmp_path / "src"
    market = ingest.generate_demo_market(tmp_path / "market", n_tickers=3, years=1, seed=5)
    mds.init(str(market), src, 2)
    out = tmp_path / "out"
    ingest.run(out, source=str(src), jobs=1)
    first, second = (src / f for f in sorted(_sizes(src))[:2])
    old_first = first.read_bytes()
    last_line = old_first.rstrip(b"\n").rsplit(b"\n", 1)[1]
    first_lines = old_first.count(b"\n")  # the header is line 1, so the last row is on this line
    first.write_bytes(old_first + last_line + b"\n")  # the last day again
    old_second = second.read_bytes()
    second_lines = old_second.count(b"\n")
    second.write_bytes(old_second + b"2099-01-02,,,,,,\n2099-01-05,1,2,0.5,1.5,1.5,7\n")
    report = _update(src, out)
    assert report["files_appended"] == 1  # the second file: its bad row belongs to the appended part
    assert [f["reason"] for f in report["append_fallbacks"]] == ["a date not after the last stored one"]
    q = load_quarantine(out)
    rel_first, rel_second = (str(p.relative_to(src)) for p in (first, second))
    dup = q[(q["file"] == rel_first) & (q["line"] > first_lines)]
    assert dup["line"].tolist() == [first_lines + 1] and dup["kind"].tolist() == ["duplicate-date"]
    assert f"first on line {first_lines}" in dup["reason"].iloc[0]
    bad = q[(q["file"] == rel_second) & (q["line"] > second_lines)]
    assert bad["line"].tolist() == [second_lines + 1] and bad["kind"].tolist() == ["missing"]
    entry = {e["file"]: e for e in report["files"]}[rel_second]
    blank = old_second.count(b"\n\n")
    assert entry["lines"] == entry["rows_kept"] + entry["rows_quarantined"] == second_lines - 1 - blank + 2
    raw = pd.read_parquet(out / "data" / "raw")
    assert raw[raw["Symbol"] == second.stem]["Date"].iloc[-1] == "2099-01-05"
    _assert_same(_datasets(out), _full(src, tmp_path / "full"))


def _shared_prefix_market(path: Path, names: list[str], seed: int) -> Path:
    """A generated market whose tickers are renamed to ``names`` (several share a partition: same first
    two letters); the meta file lists none of them (Security Name null)."""
    market = ingest.generate_demo_market(path, n_tickers=len(names), years=1, seed=seed)
    for old, name in zip(sorted(market.glob("*/*.csv")), names):
        old.rename(old.with_name(f"{name}.csv"))
    return market


def _files_by_key(directory: Path) -> dict[str, list[str]]:
    """Each partition's members by name (its base, then the shared delta file for its rows there)."""
    return {key: [Path(m).name for m in members] for key, members in storage.partition_groups(directory).items()}


def _delta_rows(directory: Path) -> dict[str, int]:
    """Rows per partition in the shared delta, counted from the file's row groups (not from its map)."""
    files = sorted(directory.glob("part-~*.parquet"))
    assert len(files) <= 1  # one delta file per dataset version
    if not files:
        return {}
    table = pq.read_table(files[0], columns=["Symbol"])
    keys = [storage.partition_key(s) for s in table["Symbol"].to_pylist()]
    return {k: keys.count(k) for k in dict.fromkeys(keys)}


def test_twenty_updates_equal_a_full_run_and_compaction_bounds_the_delta(tmp_path, monkeypatch):
    monkeypatch.setattr(partitions, "DELTA_FRACTION", 0.01)  # the delta may carry 1 % of the rows: folds often
    src = tmp_path / "src"
    market = _shared_prefix_market(tmp_path / "market", ["AAB", "AAC", "AB", "ABD", "BC"], seed=21)
    mds.init(str(market), src, 20)
    out = tmp_path / "out"
    ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)
    keys = set(_files_by_key(out / "data" / "raw"))
    assert keys == {"4141", "4142", "4243"}
    inodes = {k: (out / "data" / "raw" / storage.partition_file(k)).stat().st_ino for k in keys}
    folded, with_delta, appended = set(), set(), 0
    for _ in range(20):
        before = len(pd.read_parquet(out / "data" / "raw"))
        mds.release(src, "next")
        report = _update(src, out)
        appended += report["files_appended"]
        raw, feats = _files_by_key(out / "data" / "raw"), _files_by_key(out / "data" / "features")
        assert raw == feats  # the features files mirror the raw ones: its bases, the same delta file
        names = sorted(p.name for p in (out / "data" / "raw").glob("part-*"))
        assert names[: len(keys)] == sorted(storage.partition_file(k) for k in keys)  # one base per partition
        assert len(names) <= len(keys) + 1  # and at most one delta file, whatever the number of partitions
        rows = _delta_rows(out / "data" / "raw")
        assert rows == _delta_rows(out / "data" / "features")
        # The fold decision sees the delta before the day's rows: at most 1 % of the rows then, + one day.
        assert sum(rows.values()) <= 0.01 * before + 5
        with_delta |= set(rows)
        for k in keys:
            ino = (out / "data" / "raw" / storage.partition_file(k)).stat().st_ino
            if ino != inodes[k]:
                folded.add(k)
                assert k not in rows  # a folded partition's rows left the delta
            inodes[k] = ino
    assert appended == 5 * 20
    assert folded == keys and with_delta == keys  # every partition had delta rows, and had them folded
    mine = _datasets(out)
    _assert_same(mine, _full(src, tmp_path / "full"))
    # The serve table: each ticker's last features row, with its row count.
    latest = features.load_latest(out)
    expected = mine[2].groupby("Symbol").tail(1).reset_index(drop=True)
    pd.testing.assert_frame_equal(latest.drop(columns="rows"), expected, check_dtype=False)
    assert latest["rows"].tolist() == mine[2].groupby("Symbol").size().tolist()
    pd.testing.assert_frame_equal(latest, features.load_latest(tmp_path / "full"))


def test_a_fold_moves_a_partitions_rows_from_the_delta_into_its_base(tmp_path, monkeypatch):
    monkeypatch.setattr(partitions, "DELTA_FRACTION", 1.0)  # no fold by size
    src = tmp_path / "src"
    market = _shared_prefix_market(tmp_path / "market", ["AAB", "AAC", "AB", "BC"], seed=5)
    mds.init(str(market), src, 4)
    out = tmp_path / "out"
    _update(src, out)
    for _ in range(2):
        mds.release(src, "next")
        _update(src, out)
    assert _delta_rows(out / "data" / "raw") == {"4141": 4, "4142": 2, "4243": 2}
    base_rows = pq.read_metadata(out / "data" / "raw" / "part-4141.parquet").num_rows
    monkeypatch.setattr(partitions, "DELTA_FRACTION", 0.0)  # fold everything now in the delta
    mds.release(src, "next")
    _update(src, out)
    for name in ("raw", "features"):
        directory = out / "data" / name
        assert _delta_rows(directory) == {}  # the day's rows went with their partitions into new bases
        assert not list(directory.glob("part-~*"))
        assert pq.read_metadata(directory / "part-4141.parquet").num_rows == base_rows + 4 + 2
    _assert_same(_datasets(out), _full(src, tmp_path / "full"))


def test_delta_files_read_back_in_per_ticker_date_order(tmp_path, monkeypatch):
    monkeypatch.setattr(partitions, "DELTA_FRACTION", 1.0)  # no fold in these few updates
    src = tmp_path / "src"
    market = _shared_prefix_market(tmp_path / "market", ["AAB", "AAC", "AAD", "AB"], seed=4)
    mds.init(str(market), src, 3)
    out = tmp_path / "out"
    ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)
    for _ in range(3):
        mds.release(src, "next")
        _update(src, out)
    full = tmp_path / "full"
    ingest.run(full, source=str(src), jobs=1)
    features.run(full, jobs=1)
    for name in ("raw", "features"):
        groups = _files_by_key(out / "data" / name)
        # Runs are numbered from the one that wrote version 0 (1): the third update is run 4. Its delta holds
        # the three days' rows of both partitions, one row group each.
        assert groups == {k: [storage.partition_file(k), storage.shared_delta_file(4)] for k in ("4141", "4142")}
        delta = pq.ParquetFile(out / "data" / name / storage.shared_delta_file(4))
        assert delta.metadata.num_row_groups == 2
        assert [delta.read_row_group(i)["Symbol"].to_pylist() for i in range(2)] == [
            ["AAB"] * 3 + ["AAC"] * 3 + ["AAD"] * 3,
            ["AB"] * 3,
        ]
        mine = pd.read_parquet(out / "data" / name)  # the files in path order: the bases, then the delta
        assert not mine["Symbol"].is_monotonic_increasing  # the delta's rows follow every base's
        for _, rows in mine.groupby("Symbol", sort=False):
            assert rows["Date"].is_monotonic_increasing and rows["Date"].is_unique
        # A stable sort by Symbol alone gives the freshly written dataset, row for row.
        fresh = pd.read_parquet(full / "data" / name)
        pd.testing.assert_frame_equal(mine.sort_values("Symbol", kind="stable").reset_index(drop=True), fresh)
    # volcast's own readers return the contract order.
    pd.testing.assert_frame_equal(ingest.load_raw(out), ingest.load_raw(full))
    pd.testing.assert_frame_equal(features.load_features(out), features.load_features(full))
    pd.testing.assert_frame_equal(features.load_features(out, "AAC"), features.load_features(full, "AAC"))


def test_a_failed_append_publishes_nothing_and_the_next_run_appends(tmp_path, monkeypatch):
    import volcast.ingest.delta as delta_mod
    import volcast.ingest.task as task_mod

    src = tmp_path / "src"
    market = ingest.generate_demo_market(tmp_path / "market", n_tickers=3, years=1, seed=8)
    mds.init(str(market), src, 3)
    out = tmp_path / "out"
    ingest.run(out, source=str(src), jobs=1)
    before_version = (out / "data" / "raw").resolve()
    before = pd.read_parquet(out / "data" / "raw")
    state = (before_version / ingest.STATE_FILE).read_bytes()
    mds.release(src, "next")

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-append")

    monkeypatch.setattr(task_mod, "parse_appended", boom)
    monkeypatch.setattr(delta_mod, "parse_appended", boom)
    with pytest.raises(RuntimeError, match="killed mid-append"):
        ingest.run(out, source=str(src), jobs=1)
    assert (out / "data" / "raw").resolve() == before_version
    pd.testing.assert_frame_equal(pd.read_parquet(out / "data" / "raw"), before)
    assert (before_version / ingest.STATE_FILE).read_bytes() == state
    monkeypatch.undo()
    report = ingest.run(out, source=str(src), jobs=1)
    assert report["files_appended"] == len(_sizes(src))
    raw = pd.read_parquet(out / "data" / "raw").sort_values("Symbol", kind="stable").reset_index(drop=True)
    shutil.rmtree(tmp_path / "full", ignore_errors=True)
    ingest.run(tmp_path / "full", source=str(src), jobs=1)
    pd.testing.assert_frame_equal(raw, pd.read_parquet(tmp_path / "full" / "data" / "raw"))


def test_a_daily_update_on_the_dask_executor_equals_a_full_run(tmp_path):
    """The delta tasks (and a fallback's whole-partition task) run on a dask LocalCluster's worker processes."""
    src = tmp_path / "src"
    market = _shared_prefix_market(tmp_path / "market", ["AAB", "AAC", "AB"], seed=9)
    mds.init(str(market), src, 2)
    out = tmp_path / "out"
    ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)
    mds.release(src, "next")
    edited = sorted((src / "stocks").glob("*.csv"))[0]
    edited.write_bytes(edited.read_bytes().replace(b"\n", b"\r\n", 2).replace(b"\r\r\n", b"\r\n"))  # not a prefix
    report = ingest.run(out, source=str(src), jobs=2, executor="dask")
    assert report["executor"] == "dask" and report["files_appended"] == 2 and report["files_reread"] == 1
    assert features.run(out, jobs=2, executor="dask")["partitions_appended"] >= 1
    _assert_same(_datasets(out), _full(src, tmp_path / "full"))


def test_daily_updates_to_an_object_store_equal_a_full_run(tmp_path):
    """``--output-dir s3://``: the delta files go up as new objects of the new version (the base files are
    copied on the store), and a reader of the store sees a dataset equal to a full run."""
    import os
    import subprocess
    import sys

    import fsspec

    from s3_helpers import moto_endpoint, new_bucket

    src = tmp_path / "src"
    market = _shared_prefix_market(tmp_path / "market", ["AAB", "AAC", "AB"], seed=12)
    mds.init(str(market), src, 2)
    with moto_endpoint() as (endpoint, _server):
        url = f"s3://{new_bucket()}/daily"
        env = {**os.environ, "VOLCAST_CACHE": str(tmp_path / "cache")}

        def run() -> None:
            cmd = [sys.executable, str(REPO_ROOT / "run_pipeline.py"), "--source", str(src), "--output-dir", url]
            cmd += ["--stages", "ingest,features", "--jobs", "1", "--no-progress"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]

        run()
        for _ in range(2):
            mds.release(src, "next")
            run()
        fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
        stored = {}
        for name in ("raw", "features"):
            version = fs.cat_file(f"{url[5:]}/data/{name}.current").decode().strip()
            files = fs.ls(f"{url[5:]}/data/{version}", detail=False)
            assert any("~" in f for f in files)  # the updates' delta files are on the store
            frame = pd.read_parquet(f"{url}/data/{version}", storage_options={"endpoint_url": endpoint})
            stored[name] = _by_symbol_date(frame)
    raw, _, feats = _full(src, tmp_path / "full")
    pd.testing.assert_frame_equal(stored["raw"], raw)
    pd.testing.assert_frame_equal(stored["features"], feats)
