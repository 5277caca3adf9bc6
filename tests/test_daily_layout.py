"""The daily update's file layout: one shared delta file per dataset, crash safety while it is written, and a
dataset written in the previous layout (one delta file per partition) read and folded correctly.

Each test compares with a full run on the same source tree (pandas.testing), after a stable sort by Symbol
(the order contract of a plain directory read), and checks per-ticker Date order in the plain read.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from volcast import features, ingest, partitions, storage, train

REPO_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_daily_source", REPO_ROOT / "benchmarks" / "make_daily_source.py")
mds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mds)

NAMES = ["AAB", "AAC", "AB", "ABD", "BC"]  # three partitions: 4141, 4142, 4243


def _market(path: Path, seed: int = 3) -> Path:
    market = ingest.generate_demo_market(path, n_tickers=len(NAMES), years=1, seed=seed)
    for old, name in zip(sorted(market.glob("*/*.csv")), NAMES):
        old.rename(old.with_name(f"{name}.csv"))
    return market


def _run(src: Path, out: Path) -> None:
    ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)


def _plain(out: Path, name: str) -> pd.DataFrame:
    frame = pd.read_parquet(out / "data" / name)
    for _, rows in frame.groupby("Symbol", sort=False):  # the contract of a plain read: per ticker, Date order
        assert rows["Date"].is_monotonic_increasing and rows["Date"].is_unique
    return frame.sort_values("Symbol", kind="stable").reset_index(drop=True)


def _assert_equal_to_full(src: Path, out: Path, full: Path) -> None:
    shutil.rmtree(full, ignore_errors=True)
    _run(src, full)
    for name in ("raw", "features"):
        pd.testing.assert_frame_equal(_plain(out, name), pd.read_parquet(full / "data" / name))
    pd.testing.assert_frame_equal(ingest.load_raw(out), ingest.load_raw(full))
    pd.testing.assert_frame_equal(features.load_features(out), features.load_features(full))
    for symbol in NAMES:
        pd.testing.assert_frame_equal(features.load_features(out, symbol), features.load_features(full, symbol))
    pd.testing.assert_frame_equal(features.load_latest(out), features.load_latest(full))


@pytest.fixture
def daily(tmp_path, monkeypatch):
    monkeypatch.setattr(partitions, "DELTA_FRACTION", 1.0)  # no fold by size unless a test asks
    src = tmp_path / "src"
    mds.init(str(_market(tmp_path / "market")), src, 6)
    out = tmp_path / "out"
    _run(src, out)
    return src, out


def test_a_day_is_one_delta_file_per_dataset_and_equals_a_full_run(daily, tmp_path):
    src, out = daily
    for _ in range(2):
        mds.release(src, "next")
        _run(src, out)
    for name in ("raw", "features"):
        files = sorted(p.name for p in (out / "data" / name).glob("part-*"))
        # One base per partition and ONE delta for the whole dataset, holding both days' rows (2 x 5 tickers).
        assert files == ["part-4141.parquet", "part-4142.parquet", "part-4243.parquet", "part-~000003.parquet"]
        delta = pq.ParquetFile(out / "data" / name / "part-~000003.parquet")
        assert delta.metadata.num_rows == 10 and delta.metadata.num_row_groups == 3  # one per partition
    _assert_equal_to_full(src, out, tmp_path / "full")


def test_a_crash_while_the_delta_is_written_leaves_the_previous_version(daily, tmp_path, monkeypatch):
    src, out = daily
    mds.release(src, "next")
    _run(src, out)
    before = {name: (out / "data" / name).resolve() for name in ("raw", "quarantine", "features")}
    frames = {name: pd.read_parquet(out / "data" / name) for name in ("raw", "features")}
    mds.release(src, "next")
    real_add = storage.DeltaWriter.add
    calls = []

    def crash(self, key, table, stamp):  # dies after the first partition's row group is written
        calls.append(key)
        if len(calls) > 1:
            raise RuntimeError("killed while writing the delta")
        return real_add(self, key, table, stamp)

    monkeypatch.setattr(storage.DeltaWriter, "add", crash)
    with pytest.raises(RuntimeError, match="killed while writing the delta"):
        ingest.run(out, source=str(src), jobs=1)
    assert calls  # the delta was being written when it died
    for name, version in before.items():
        assert (out / "data" / name).resolve() == version  # the pointer did not move
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(pd.read_parquet(out / "data" / name), frame)
    assert not list((out / "data").glob(".raw.staging-*"))  # no half-written version left behind
    monkeypatch.setattr(storage.DeltaWriter, "add", real_add)
    calls.clear()
    _run(src, out)  # the next run appends the day as if nothing happened
    _assert_equal_to_full(src, out, tmp_path / "full")


def _to_legacy_layout(version: Path) -> None:
    """Rewrite a version's shared delta as the previous layout wrote deltas: one file per partition,
    ``part-<key>~<seq>.parquet`` beside its base, with the same rows (and the raw footer's summary)."""
    for path in storage.shared_deltas(version):
        seq = storage.split_delta_name(path.name)
        meta = pq.read_metadata(path).metadata
        for key, part in storage.delta_parts(path).items():
            table = pq.ParquetFile(path).read_row_groups(list(part.row_groups))
            keep = {k: v for k, v in meta.items() if k in (b"volcast.summary",)}
            if keep:  # the summary, narrowed to this partition's tickers
                import json

                summary = json.loads(keep[b"volcast.summary"])
                mine = set(table["Symbol"].to_pylist())
                summary["rows_per_symbol"] = {s: n for s, n in summary["rows_per_symbol"].items() if s in mine}
                summary["last_date"] = {s: d for s, d in summary["last_date"].items() if s in mine}
                summary["rows_per_year"] = {}
                for d in table["Date"].to_pylist():
                    summary["rows_per_year"][d[:4]] = summary["rows_per_year"].get(d[:4], 0) + 1
                keep = {b"volcast.summary": json.dumps(summary).encode()}
            table = table.replace_schema_metadata(keep or None)
            pq.write_table(table, version / storage.delta_file(key, seq))
        path.unlink()


def test_a_dataset_in_the_previous_layout_reads_correctly_and_folds_on_the_next_append(daily, tmp_path):
    src, out = daily
    for _ in range(2):
        mds.release(src, "next")
        _run(src, out)
    for name in ("raw", "quarantine", "features"):
        _to_legacy_layout((out / "data" / name).resolve())
    legacy = sorted(p.name for p in (out / "data" / "raw").glob("part-*"))
    assert "part-4141~000003.parquet" in legacy and not any(n.startswith("part-~") for n in legacy)
    # Read as it is: every reader sees the same data as a full run on the tree at that point.
    _assert_equal_to_full(src, out, tmp_path / "full_before")
    rows = train.data.feature_groups(out / "data" / "features")
    assert [Path(m).name for m in rows["4141"]] == ["part-4141.parquet", "part-4141~000003.parquet"]
    # The next daily update folds every partition it appends to that has legacy delta files.
    mds.release(src, "next")
    report = ingest.run(out, source=str(src), jobs=1)
    features.run(out, jobs=1)
    assert report["files_appended"] == len(NAMES)
    for name in ("raw", "features"):
        files = sorted(p.name for p in (out / "data" / name).glob("part-*"))
        assert files == ["part-4141.parquet", "part-4142.parquet", "part-4243.parquet"]  # folded: no delta left
    _assert_equal_to_full(src, out, tmp_path / "full")


def test_train_reads_a_partition_from_the_shared_delta_row_group_only(daily, tmp_path, row_group_reads):
    src, out = daily
    for _ in range(2):
        mds.release(src, "next")
        _run(src, out)
    groups = train.data.feature_groups(out / "data" / "features")
    part = groups["4142"][-1]
    assert isinstance(part, storage.DeltaPart)
    read = row_group_reads
    read.clear()  # the runs above read row groups too: only the read below counts
    table = train.data._read_group(groups["4142"], ["Symbol", "Date", "Volume"])
    assert read == [(list(part.row_groups), 4)]  # AB and ABD, two days each: its row group only
    full = pd.read_parquet(out / "data" / "features", columns=["Symbol", "Date", "Volume"])
    mine = full[full["Symbol"].isin(["AB", "ABD"])].sort_values("Symbol", kind="stable").reset_index(drop=True)
    got = table.to_pandas().sort_values("Symbol", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, mine, check_dtype=False)
    files = train.data.feature_files(out / "data" / "features")
    assert [p.name for p in files] == [*(storage.partition_file(k) for k in groups), "part-~000003.parquet"]
    assert os.fspath(part) == os.fspath(files[-1])
