"""The features stage on the sample: equal to pandas groupby-rolling, incremental equal to full."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from volcast import config, features, ingest, storage
from volcast.config import Layout
from volcast.errors import UserError

VOL, MED = config.VOL_FEATURE, config.PRICE_FEATURE


@pytest.fixture(scope="module")
def raw_sample(sample_source, tmp_path_factory):
    """A raw dataset ingested from the sample (real when ../shared exists, else generated)."""
    out = tmp_path_factory.mktemp("features-sample")
    ingest.run(out, source=str(sample_source), jobs=2)
    return out


def pandas_reference(raw: pd.DataFrame, window, min_periods) -> pd.DataFrame:
    """The textbook way: sort, then groupby-rolling on a DatetimeIndex per Symbol."""
    df = raw.assign(ts=pd.to_datetime(raw["Date"])).sort_values(["Symbol", "ts"], kind="stable")
    need = min_periods or (window if isinstance(window, int) else 1)
    grouped = df.set_index("ts").groupby("Symbol", sort=False)
    df[VOL] = grouped["Volume"].rolling(window, min_periods=need).mean().to_numpy()
    df[MED] = grouped["Adj Close"].rolling(window, min_periods=need).median().to_numpy()
    return df.drop(columns="ts").reset_index(drop=True)


def read_features(out) -> pd.DataFrame:
    return pd.read_parquet(Layout.at(out).features_dir)


@pytest.mark.parametrize("window,min_periods", [(30, 0), (10, 0), ("30D", 0), (30, 5)])
def test_stage_equals_pandas_groupby_rolling(raw_sample, window, min_periods):
    layout = Layout.at(raw_sample)
    report = features.run(raw_sample, window=window, min_periods=min_periods, jobs=2)
    raw = pd.read_parquet(layout.raw_dir)
    ours = read_features(raw_sample)
    expected = pandas_reference(raw, window, min_periods)

    assert pq.read_schema(next(layout.features_dir.glob("part-*.parquet"))).equals(config.FEATURES_SCHEMA)
    assert sorted(p.name for p in layout.features_dir.glob("part-*.parquet")) == sorted(
        p.name for p in layout.raw_dir.glob("part-*.parquet")
    )
    pd.testing.assert_frame_equal(ours[list(config.RAW_COLUMNS)], expected[list(config.RAW_COLUMNS)])
    # Exact, NaN pattern included: no tolerance.
    np.testing.assert_array_equal(ours[VOL].to_numpy(), expected[VOL].to_numpy())
    np.testing.assert_array_equal(ours[MED].to_numpy(), expected[MED].to_numpy())

    # The report, counted independently from the raw rows.
    sizes = raw.groupby("Symbol").size()
    assert report["rows"] == len(raw) and report["tickers"] == len(sizes)
    assert report["rows_with_features"] == int((expected[VOL].notna() & expected[MED].notna()).sum())
    assert report["window"] == window
    if isinstance(window, int):
        assert report["min_periods"] == (min_periods or window)
        assert report["rows_with_full_window"] == int(np.maximum(sizes - window + 1, 0).sum())
        short = sorted(sizes.index[sizes < window])
    else:
        days = pd.to_datetime(raw["Date"]).groupby(raw["Symbol"])
        short = sorted((days.max() - days.min())[lambda s: s < pd.Timedelta(window)].index)
    assert report["tickers_shorter_than_window_list"] == short
    assert report["tickers_shorter_than_window"] == len(short)
    assert storage.read_json(layout.report("features")) == report


def _copy_raw(src_out, dst_out):
    """Publish a copy of ``src_out``'s raw dataset as ``dst_out``'s (a fresh inode per file)."""
    with storage.publish_dir(Layout.at(dst_out).raw_dir) as staging:
        for part in Layout.at(src_out).raw_dir.glob("part-*.parquet"):
            shutil.copy2(part, staging / part.name)


def test_incremental_run_recomputes_only_changed_partitions_and_equals_a_full_run(raw_sample, tmp_path):
    work, fresh = tmp_path / "incremental", tmp_path / "full"
    _copy_raw(raw_sample, work)
    raw_dir = Layout.at(work).raw_dir
    parts = sorted(p.name for p in raw_dir.glob("part-*.parquet"))
    assert len(parts) >= 3
    first = features.run(work, window=10, jobs=1)
    assert first["partitions_recomputed"] == len(parts)

    # Nothing changed: nothing recomputed, the published version stays.
    version = storage.current_version(Layout.at(work).features_dir)
    again = features.run(work, window=10, jobs=1)
    assert again["partitions_recomputed"] == 0 and again["partitions_reused"] == len(parts)
    assert storage.current_version(Layout.at(work).features_dir) == version
    kept_inode = (Layout.at(work).features_dir / parts[1]).stat().st_ino

    # A new raw version as ingest publishes one: one partition changed, one removed, one added.
    changed, removed = parts[0], parts[-1]
    with storage.publish_dir(raw_dir, seed_from_current=True) as staging:
        table = pq.read_table(staging / changed)
        volume = pa.compute.multiply(table["Volume"], 3).cast(pa.int64())
        storage.write_parquet(
            table.set_column(table.column_names.index("Volume"), "Volume", volume).slice(0, table.num_rows - 7),
            staging / changed,
        )
        (staging / removed).unlink()
        new = table.slice(0, 50).set_column(0, "Symbol", pa.array(["~NEW"] * 50))
        storage.write_parquet(new, staging / storage.partition_file(storage.partition_key("~NEW")))

    report = features.run(work, window=10, jobs=1)
    assert report["partitions_recomputed"] == 2  # the changed and the added one
    assert report["partitions_reused"] == len(parts) - 2
    assert (Layout.at(work).features_dir / parts[1]).stat().st_ino == kept_inode  # carried over, not rewritten
    assert not (Layout.at(work).features_dir / removed).exists()

    _copy_raw(work, fresh)
    full = features.run(fresh, window=10, jobs=1)
    pd.testing.assert_frame_equal(read_features(work), read_features(fresh))
    ignore = {"seconds", "partitions_recomputed", "partitions_reused"}
    assert {k: v for k, v in report.items() if k not in ignore} == {k: v for k, v in full.items() if k not in ignore}

    # Other parameters: everything is recomputed.
    assert features.run(work, window=11, jobs=1)["partitions_recomputed"] == len(parts)


def test_parallel_workers_equal_one_process(raw_sample, tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    _copy_raw(raw_sample, one)
    _copy_raw(raw_sample, many)
    features.run(one, window="30D", jobs=1)
    report = features.run(many, window="30D", jobs=2)
    assert report["jobs"] == 2
    pd.testing.assert_frame_equal(read_features(one), read_features(many))


def test_run_without_raw_dataset_says_run_ingest(tmp_path):
    with pytest.raises(UserError, match="run the ingest stage first"):
        features.run(tmp_path / "empty")


def test_a_killed_run_leaves_the_previous_version(raw_sample, tmp_path, monkeypatch):
    work = tmp_path / "work"
    _copy_raw(raw_sample, work)
    features.run(work, window=10, jobs=1)
    before = read_features(work)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed half way through the partitions

    monkeypatch.setattr(features.stage, "_process", boom)  # what each partition task runs
    with pytest.raises(KeyboardInterrupt):
        features.run(work, window=20, jobs=1)
    pd.testing.assert_frame_equal(read_features(work), before)
    assert not list(Layout.at(work).data_dir.glob(".features.staging-*"))


def test_load_one_ticker_and_the_ticker_with_most_rows(raw_sample):
    features.run(raw_sample, window=30, jobs=1)
    everything = read_features(raw_sample)
    sizes = everything.groupby("Symbol").size()
    longest = sorted(sizes.index[sizes == sizes.max()])[0]
    assert features.most_rows_symbol(raw_sample) == longest
    one = features.load_features(raw_sample, longest)
    pd.testing.assert_frame_equal(one, everything[everything["Symbol"] == longest].reset_index(drop=True))
    assert len(features.load_features(raw_sample, "NO-SUCH-TICKER")) == 0


def test_unsorted_partition_with_many_row_groups_is_sorted_and_exact(raw_sample, tmp_path):
    """A raw partition written by another tool: rows shuffled, plain (not dictionary) strings, small row
    groups (each with its own dictionary when read back). The stage sorts it and stays exact."""
    raw = pd.read_parquet(Layout.at(raw_sample).raw_dir)
    rows = pa.Table.from_pandas(raw.sample(frac=1.0, random_state=7), preserve_index=False).cast(config.RAW_SCHEMA)
    work = tmp_path / "shuffled"
    with storage.publish_dir(Layout.at(work).raw_dir) as staging:
        # Row groups sized from the data, so there are many whatever the sample's size (demo or real).
        pq.write_table(rows, staging / "part-41.parquet", row_group_size=max(1, rows.num_rows // 8))
    assert pq.ParquetFile(Layout.at(work).raw_dir / "part-41.parquet").num_row_groups > 5

    report = features.run(work, window=30, jobs=1)
    ours = read_features(work)
    expected = pandas_reference(raw, 30, 0)
    assert report["rows"] == len(raw)
    pd.testing.assert_frame_equal(ours[list(config.RAW_COLUMNS)], expected[list(config.RAW_COLUMNS)])
    np.testing.assert_array_equal(ours[VOL].to_numpy(), expected[VOL].to_numpy())
    np.testing.assert_array_equal(ours[MED].to_numpy(), expected[MED].to_numpy())
