"""Crash-safe publishing and partition naming."""

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from volcast import storage


def test_partition_file_order_is_symbol_order():
    symbols = ["A", "AA", "AGM", "AGM-A", "B", "ZYXI", "a"]
    # Stable sort by partition file name, then by symbol inside a partition, must give Symbol order.
    by_partition = sorted(symbols, key=lambda s: (storage.partition_file(storage.partition_key(s)), s))
    assert by_partition == sorted(symbols)


def test_dataset_reads_back_in_symbol_order(tmp_path):
    rows = {"B": [3, 4], "A": [1, 2], "C": [5]}
    with storage.publish_dir(tmp_path / "ds") as staging:
        for symbol, values in rows.items():
            table = pa.table({"Symbol": [symbol] * len(values), "v": values})
            storage.write_parquet(table, staging / storage.partition_file(storage.partition_key(symbol)))
    df = pd.read_parquet(tmp_path / "ds")
    assert df["Symbol"].tolist() == ["A", "A", "B", "B", "C"]
    assert df["v"].tolist() == [1, 2, 3, 4, 5]


def test_failed_publish_leaves_previous_version(tmp_path):
    final = tmp_path / "ds"
    with storage.publish_dir(final) as staging:
        (staging / "one.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with storage.publish_dir(final) as staging:
            (staging / "one.txt").write_text("half")
            raise RuntimeError("killed")
    assert (final / "one.txt").read_text() == "v1"
    leftovers = [p.name for p in tmp_path.iterdir() if "staging" in p.name]
    assert leftovers == []


def test_publish_replaces_and_seeds_by_hard_link(tmp_path):
    final = tmp_path / "ds"
    with storage.publish_dir(final) as staging:
        (staging / "keep.txt").write_text("kept")
        (staging / "change.txt").write_text("old")
    first = storage.current_version(final)
    with storage.publish_dir(final, seed_from_current=True) as staging:
        os.unlink(staging / "change.txt")
        (staging / "change.txt").write_text("new")
    second = storage.current_version(final)
    assert second != first
    assert (first / "change.txt").read_text() == "old", "the replaced version stays for readers in flight"
    assert (final / "keep.txt").read_text() == "kept"
    assert (final / "change.txt").read_text() == "new"
    assert (first / "keep.txt").stat().st_ino == (second / "keep.txt").stat().st_ino, "seeded by hard link"
    with storage.publish_dir(final) as staging:
        (staging / "keep.txt").write_text("third")
    assert not first.exists(), "versions older than the one just replaced are swept"
    assert second.exists()


def test_atomic_write_leaves_no_temp_files(tmp_path):
    storage.atomic_write_json(tmp_path / "r.json", {"a": 1})
    storage.atomic_write_text(tmp_path / "r.json", '{"a": 2}')
    assert storage.read_json(tmp_path / "r.json") == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_parquet_options_round_trip_exactly_and_dictionaries_read_back_as_strings(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    prices = rng.lognormal(3, 1, 5000)
    prices[::97] = np.nan
    symbols = pa.DictionaryArray.from_arrays(pa.array(np.repeat([0, 1], 2500).astype("int32")), pa.array(["AA", "AB"]))
    table = pa.table(
        {
            "Symbol": symbols,
            "Date": pa.array([f"2020-01-{1 + i % 28:02d}" for i in range(5000)]),
            "Adj Close": prices,
            "Volume": pa.array(rng.integers(0, 10**9, 5000)),
        }
    )
    path = storage.write_parquet(table, tmp_path / "t.parquet", arrow_schema=False)

    back = pq.read_table(path)
    assert back.schema.field("Symbol").type == pa.string()  # the dictionary was only how it was written
    assert back["Symbol"].to_pylist() == ["AA"] * 2500 + ["AB"] * 2500
    np.testing.assert_array_equal(back["Adj Close"].to_numpy(), prices)  # bit for bit, NaN where NaN
    assert back["Volume"].equals(table["Volume"]) and back["Date"].equals(table["Date"])
    column = {c.path_in_schema: c for c in (pq.ParquetFile(path).metadata.row_group(0).column(i) for i in range(4))}
    assert "BYTE_STREAM_SPLIT" in column["Adj Close"].encodings
    assert column["Symbol"].statistics.has_min_max and column["Date"].statistics.has_min_max
    assert column["Adj Close"].statistics is None or not column["Adj Close"].statistics.has_min_max


def test_dictionary_value_counts_add_up_across_row_groups(tmp_path):
    import collections

    import pyarrow.parquet as pq

    values = ["B", "A", None, "C", "A", "B", "B", None, "A", "D"] * 7
    pq.write_table(pa.table({"Symbol": values}), tmp_path / "t.parquet", row_group_size=9)  # 8 row groups
    column = pq.read_table(tmp_path / "t.parquet", read_dictionary=["Symbol"])["Symbol"]
    assert column.num_chunks > 1
    assert storage.dictionary_value_counts(column) == collections.Counter(v for v in values if v is not None)


# ----------------------------------------------------------------------------- fingerprints


def _digest(lines: list[bytes]) -> str:
    """The fingerprint worked out by hand: one line per file, sorted by name."""
    import hashlib

    return hashlib.sha256(b"".join(lines)).hexdigest()[:16]


def test_fingerprint_of_a_tree_is_names_sizes_and_mtimes_of_its_data_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_bytes(b"12345")
    (tmp_path / "a.csv").write_bytes(b"xy")
    (tmp_path / "_features_state.json").write_text("{}")  # a dataset's own state: not data
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "c.csv").write_text("hidden")
    os.utime(tmp_path / "a.csv", ns=(1, 1_000))
    os.utime(tmp_path / "sub" / "b.csv", ns=(1, 2_000))
    assert storage.fingerprint_path(tmp_path) == _digest([b"a.csv|2|1000\n", b"sub/b.csv|5|2000\n"])
    assert storage.fingerprint_path(tmp_path / "a.csv") == _digest([b"a.csv|2|1000\n"])
    assert storage.fingerprint_path(tmp_path / "missing") is None


def test_content_fingerprint_ignores_time_and_place(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, stamp in ((one, 1_000), (two, 9_000)):
        folder.mkdir()
        (folder / "p.parquet").write_bytes(b"abc")
        os.utime(folder / "p.parquet", ns=(1, stamp))
    expected = _digest([b"p.parquet|3\nabc\n"])
    assert storage.fingerprint_path(one, content=True) == storage.fingerprint_path(two, content=True) == expected
    assert storage.fingerprint_files([two / "p.parquet"], content=True) == expected
    assert storage.fingerprint_path(one) != storage.fingerprint_path(two)  # the stat form sees the mtime
    (two / "p.parquet").write_bytes(b"abd")
    assert storage.fingerprint_path(two, content=True) != expected


def test_code_digest_refuses_a_missing_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    assert storage.code_digest(tmp_path / "pkg") == storage.code_digest(tmp_path / "pkg" / "m.py")
    with pytest.raises(FileNotFoundError):
        storage.code_digest(tmp_path / "gone.py")


def _write(path, symbols, values):
    storage.write_parquet(pa.table({"Symbol": symbols, "Date": [f"2020-01-0{v}" for v in values], "v": values}), path)


def test_delta_names_parse_and_group_base_first(tmp_path):
    assert storage.delta_file("4141", 3) == "part-4141~000003.parquet"
    assert storage.split_partition_name("part-4141~000003.parquet") == ("4141", 3)
    assert storage.split_partition_name("part-4141.parquet") == ("4141", 0)
    for bad in ("part-4141~.parquet", "part-4141~000000.parquet", "part-~000001.parquet", "other.parquet"):
        assert storage.split_partition_name(bad) is None
    for name in (
        "part-4142~000002.parquet",
        "part-4141~000010.parquet",
        "part-4141.parquet",
        "part-41.parquet",
        "part-4141~000002.parquet",
        "_latest.parquet",
    ):
        (tmp_path / name).write_bytes(b"")
    groups = storage.partition_groups(tmp_path)
    assert list(groups) == ["41", "4141", "4142"]
    assert [p.name for p in groups["4141"]] == [
        "part-4141.parquet",
        "part-4141~000002.parquet",
        "part-4141~000010.parquet",
    ]
    assert [p.name for p in storage.partition_members(tmp_path / "part-4141.parquet")] == [
        p.name for p in groups["4141"]
    ]
    # A partition with deltas and no base yet: its deltas, named by where the base would be.
    assert [p.name for p in storage.partition_members(tmp_path / "part-4142.parquet")] == ["part-4142~000002.parquet"]


def test_a_partition_read_base_then_delta_is_sorted_by_symbol_then_date(tmp_path):
    _write(tmp_path / "part-41.parquet", ["A", "A", "AB", "AC"], [1, 2, 1, 1])
    _write(tmp_path / "part-41~000002.parquet", ["A", "AB", "AB", "AC"], [3, 2, 3, 2])
    pandas_order = pd.read_parquet(tmp_path)  # path order: the delta's rows after the base's
    assert pandas_order["Symbol"].tolist() == ["A", "A", "AB", "AC", "A", "AB", "AB", "AC"]
    table = storage.read_partition(storage.partition_members(tmp_path / "part-41.parquet"))
    assert list(zip(table["Symbol"].to_pylist(), table["v"].to_pylist())) == [
        ("A", 1),
        ("A", 2),
        ("A", 3),
        ("AB", 1),
        ("AB", 2),
        ("AB", 3),
        ("AC", 1),
        ("AC", 2),
    ]
    ds = storage.read_dataset(tmp_path, columns=["v"]).to_pandas()
    expected = pandas_order.sort_values("Symbol", kind="stable")["v"].tolist()
    assert ds["v"].tolist() == expected == [1, 2, 3, 1, 2, 3, 1, 2]


def test_folding_by_size_takes_the_largest_delta_groups_until_the_delta_fits():
    # 1,000 rows in the dataset, a 2 % bound: 20 rows may stay in the delta.
    rows = {"41": 12, "42": 3, "43": 9, "44": 5}  # 29 rows in the delta
    assert storage.keys_to_fold(rows, 1000, 0.02) == {"41"}  # 29 - 12 = 17 <= 20
    assert storage.keys_to_fold(rows, 1000, 0.01) == {"41", "43"}  # 29 - 12 - 9 = 8 <= 10
    assert storage.keys_to_fold(rows, 1000, 0.05) == set()  # 29 <= 50
    assert storage.keys_to_fold(rows, 0, 0.02) == set(rows)  # an empty dataset keeps no delta
    assert storage.keys_to_fold({}, 1000, 0.02) == set()


def _shared_delta(directory, seq, groups: dict[str, tuple[list, list]]):
    """A shared delta written the way the stages write it: one row group per key, in key order."""
    writer = storage.DeltaWriter(directory / storage.shared_delta_file(seq), _SCHEMA)
    for key, (symbols, values) in groups.items():
        writer.add(key, _table(symbols, values), f"{seq}-{key}")
    return writer.close()


_SCHEMA = pa.schema([("Symbol", pa.string()), ("Date", pa.string()), ("v", pa.int64())])


def _table(symbols, values):
    return pa.table({"Symbol": symbols, "Date": [f"2020-01-{v:02d}" for v in values], "v": values}, schema=_SCHEMA)


def test_the_shared_delta_sorts_after_every_base_and_holds_one_row_group_per_partition(tmp_path):
    assert storage.shared_delta_file(7) == "part-~000007.parquet"
    assert storage.split_delta_name("part-~000007.parquet") == 7
    assert storage.split_partition_name("part-~000007.parquet") is None  # not a partition's own file
    # '~' sorts after every hex digit (and '.'), so the delta comes after every base in path order.
    bases = [storage.partition_file(storage.partition_key(s)) for s in ("A", "AZ", "Zz", "zz", "\u00e9t\u00e9")]
    assert sorted([*bases, storage.shared_delta_file(1)])[-1] == storage.shared_delta_file(1)
    storage.write_parquet(_table(["A", "A", "AB"], [1, 2, 1]), tmp_path / "part-41.parquet")
    storage.write_parquet(_table(["B"], [1]), tmp_path / "part-42.parquet")
    storage.write_parquet(_table(["C", "CD"], [1, 1]), tmp_path / "part-43.parquet")
    _shared_delta(tmp_path, 3, {"41": (["A", "AB", "AB"], [3, 2, 3]), "43": (["C"], [2])})
    md = pq.read_metadata(tmp_path / "part-~000003.parquet")
    assert md.num_row_groups == 2 and [md.row_group(i).num_rows for i in range(2)] == [3, 1]
    groups = storage.partition_groups(tmp_path)
    assert list(groups) == ["41", "42", "43"]
    part = groups["41"][-1]
    assert isinstance(part, storage.DeltaPart) and (part.key, part.row_groups, part.rows) == ("41", (0,), 3)
    assert [Path(m).name for m in groups["43"]] == ["part-43.parquet", "part-~000003.parquet"]
    assert groups["42"] == [tmp_path / "part-42.parquet"]
    assert storage.partition_members(tmp_path / "part-43.parquet") == groups["43"]
    # Every reader of a directory sees the delta last: each ticker's rows in Date order.
    import dask.dataframe as dd

    for frame in (pd.read_parquet(tmp_path), pq.read_table(tmp_path).to_pandas(), dd.read_parquet(tmp_path).compute()):
        frame = frame.reset_index(drop=True)
        assert frame["Symbol"].tolist() == ["A", "A", "AB", "B", "C", "CD", "A", "AB", "AB", "C"]
        assert frame["v"].tolist() == [1, 2, 1, 1, 1, 1, 3, 2, 3, 2]
    # volcast's readers: Symbol then Date.
    table = storage.read_partition(groups["41"])
    assert list(zip(table["Symbol"].to_pylist(), table["v"].to_pylist())) == [
        ("A", 1), ("A", 2), ("A", 3), ("AB", 1), ("AB", 2), ("AB", 3)
    ]  # fmt: skip
    whole = storage.read_dataset(tmp_path).to_pandas()
    assert whole["Symbol"].tolist() == ["A", "A", "A", "AB", "AB", "AB", "B", "C", "C", "CD"]
    assert whole["v"].tolist() == [1, 2, 3, 1, 2, 3, 1, 1, 2, 1]
    one = storage.read_partition(groups["43"], filters=[("Symbol", "==", "C")], columns=["v"])
    assert one["v"].to_pylist() == [1, 2]


def test_a_partition_read_takes_only_its_row_groups_of_the_delta(tmp_path, monkeypatch, row_group_reads):
    storage.write_parquet(_table(["A"], [1]), tmp_path / "part-41.parquet")
    storage.write_parquet(_table(["B"], [1]), tmp_path / "part-42.parquet")
    storage.write_parquet(_table(["C"], [1]), tmp_path / "part-43.parquet")
    _shared_delta(
        tmp_path, 2, {"41": (["A"] * 5, [2, 3, 4, 5, 6]), "42": (["B"] * 7, list(range(2, 9))), "43": (["C"], [2])}
    )
    read = row_group_reads
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("the whole delta was read"))
    members = storage.partition_groups(tmp_path)["42"]
    table = storage.read_partition([m for m in members if isinstance(m, storage.DeltaPart)])
    assert read == [([1], 7)]  # the second row group only: partition 42's 7 rows
    assert table["v"].to_pylist() == list(range(2, 9))


def test_an_old_layout_dataset_with_per_partition_deltas_and_a_shared_delta_reads_in_order(tmp_path):
    # Written before the shared delta: a legacy delta beside its base; then one shared delta after it.
    storage.write_parquet(_table(["A", "AB"], [1, 1]), tmp_path / "part-41.parquet")
    storage.write_parquet(_table(["A", "AB"], [2, 2]), tmp_path / storage.delta_file("41", 2))
    storage.write_parquet(_table(["B"], [1]), tmp_path / "part-42.parquet")
    _shared_delta(tmp_path, 3, {"41": (["AB"], [3])})
    groups = storage.partition_groups(tmp_path)
    assert [Path(m).name for m in groups["41"]] == ["part-41.parquet", "part-41~000002.parquet", "part-~000003.parquet"]
    whole = storage.read_dataset(tmp_path).to_pandas()
    assert list(zip(whole["Symbol"], whole["v"])) == [("A", 1), ("A", 2), ("AB", 1), ("AB", 2), ("AB", 3), ("B", 1)]
    plain = pd.read_parquet(tmp_path)
    for _, rows in plain.groupby("Symbol"):
        assert rows["v"].is_monotonic_increasing


def test_partitions_file_round_trip_and_default(tmp_path):
    assert storage.read_partitions_file(tmp_path) == {"seq": 0, "epochs": {}}
    assert storage.read_partitions_file(None) == {"seq": 0, "epochs": {}}
    storage.write_partitions_file(tmp_path, 7, {"41": "7-abc"})
    assert storage.read_partitions_file(tmp_path) == {"seq": 7, "epochs": {"41": "7-abc"}}
    assert not (tmp_path / storage.PARTITIONS_FILE).name.startswith("part-")  # not data


def test_old_versions_are_removed_in_the_background_and_leftovers_at_the_next_publish(tmp_path, monkeypatch):
    import threading

    final = tmp_path / "data" / "raw"
    for k in range(3):
        with storage.publish_dir(final) as staging:
            storage.write_parquet(pa.table({"k": [k]}), staging / "part-00.parquet")
    for thread in threading.enumerate():
        if thread.name == "volcast-trash":
            thread.join(10)
    names = sorted(p.name for p in final.parent.iterdir() if p.name.startswith(".raw."))
    assert len(names) == 2 and all(n.startswith(".raw.v") for n in names)  # current + previous, no trash left
    # A removal cut short (the process ended): its trash is swept by the next publish.
    monkeypatch.setattr(threading.Thread, "start", lambda self: None)
    with storage.publish_dir(final) as staging:
        storage.write_parquet(pa.table({"k": [3]}), staging / "part-00.parquet")
    assert len(list(final.parent.glob(".raw.trash-*"))) == 1
    monkeypatch.undo()
    with storage.publish_dir(final) as staging:
        storage.write_parquet(pa.table({"k": [4]}), staging / "part-00.parquet")
    for thread in threading.enumerate():
        if thread.name == "volcast-trash":
            thread.join(10)
    assert not list(final.parent.glob(".raw.trash-*"))
    assert pd.read_parquet(final)["k"].tolist() == [4]
