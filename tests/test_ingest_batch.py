"""The batch fast path (many files in one Arrow read) gives exactly what the file-by-file path gives.

The file-by-file path (``parse_csv``) is the judge: its own tests check it against hand-written
expectations. Here every file the batch path accepts must come out identical (rows, values, counts),
and a whole ingest with batching switched off must equal one with batching on.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_ingest_broken import FILES, LATIN, REJECTED, write_file
from volcast import config, ingest
from volcast.config import Layout

H = ingest.CANONICAL_HEADER


def assert_same(fast: ingest.ParsedFile, slow: ingest.ParsedFile) -> None:
    assert slow.error is None and slow.quarantine is None
    assert fast.error is None and fast.quarantine is None
    assert fast.counts == slow.counts
    assert fast.table.schema.equals(slow.table.schema)
    assert fast.table.equals(slow.table)


def check_batch(items, all_clean_taken=False) -> int:
    """Batch vs file by file; returns how many files the batch path took. With ``all_clean_taken``,
    every plain file (canonical header, ASCII, "\n" line ends) that parse_csv finds clean must be taken."""
    taken = 0
    for (data, symbol, name), fast in zip(items, ingest.parse_csv_batch(items)):
        slow = ingest.parse_csv(data, symbol, name)
        if fast is not None:
            assert_same(fast, slow)
            taken += 1
        elif all_clean_taken:
            plain = data.startswith(H) and data.isascii() and b"\r" not in data and b'"' not in data
            assert not (plain and slow.error is None and slow.quarantine is None), symbol
    return taken


def broken_items():
    items = []
    for name, (_, lines, newline, lead) in FILES.items():
        sep, tail = ("\n", "") if newline == "no-tail" else (newline, newline)
        items.append((lead + (sep.join(line for line, _ in lines) + tail).encode(), name, f"{name} Inc"))
    items.append((LATIN, "LATIN", None))
    items += [(data, name, None) for name, (data, _) in REJECTED.items()]
    return items


def test_broken_files_batch_equals_file_by_file():
    items = broken_items()
    # GOOD and NOTAIL are clean and plain: the batch takes them, even next to files whose values are
    # no numbers (the joint read then falls back to text and converts file by file).
    assert check_batch(items, all_clean_taken=True) == 2
    for k in range(len(items)):  # every order, and each file alone
        check_batch(items[k:] + items[:k], all_clean_taken=True)
        check_batch(items[k : k + 1])


def test_sample_batch_equals_file_by_file(sample_source, tmp_path):
    src = ingest.resolve_source(str(sample_source), tmp_path)
    catalog = ingest.scan_source(src)
    if src.path.is_dir():
        read = lambda rel: (src.path / rel).read_bytes()  # noqa: E731
    else:
        read = zipfile.ZipFile(src.path).read
    items = [(read(f.rel), f.symbol, "x") for f in catalog.files]
    taken = sum(check_batch(items[i : i + 40], all_clean_taken=True) for i in range(0, len(items), 40))
    assert taken >= 0.9 * len(items)  # the clean files take the fast path


GOOD_LINES = [f"2020-01-{d:02d},1.5,2,1,1.25,1.2,{100 + d}" for d in range(1, 29)]
ODD_LINES = [
    "",
    "|",
    " ",
    "2020-01-05,1,2,3",
    "2020-01-05,1,2,3,4,5,6,7",
    ",,,,,,",
    "2020-02-30,1,1,1,1,1,1",
    "2020-01-03,1,1,1,1,1,5254.0",
    "2020-01-03,1,1,1,1,1,-1",
    "2020-01-03,nan,1,1,1,1,1",
    "2020-01-03,1,1,1,1,-2,1",
    "0000-01-01,1,1,1,1,1,1",
    '2020-01-03,"1",1,1,1,1,1',
    "2020-01-03,1,1,1,1,1,x",
]


@st.composite
def csv_file(draw):
    days = sorted(draw(st.sets(st.integers(0, len(GOOD_LINES) - 1), min_size=0, max_size=8)))
    lines = [GOOD_LINES[d] for d in days]
    if draw(st.booleans()):  # sometimes out of order or duplicated
        lines = draw(st.permutations(lines + lines[:1]))
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(ODD_LINES)))
    header = draw(
        st.sampled_from(
            [H.decode().rstrip("\n"), H.decode().rstrip("\n"), "Date,Open,High,Low,Close,Adj Close,Volume,Extra"]
        )
    )
    tail = draw(st.sampled_from(["\n", "", "\n\n"]))
    return ("\n".join([header, *lines]) + tail).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(csv_file(), min_size=1, max_size=6))
def test_random_batches_equal_file_by_file(files):
    check_batch([(data, f"T{i}", None if i % 2 else "Name") for i, data in enumerate(files)])


def read_all(out):
    layout = Layout.at(out)
    raw = pa.concat_tables(pq.read_table(f) for f in sorted(layout.raw_dir.glob("part-*.parquet")))
    qfiles = sorted(layout.quarantine_dir.glob("part-*.parquet"))
    q = pa.concat_tables(pq.read_table(f) for f in qfiles) if qfiles else None
    return raw, q


@pytest.mark.parametrize("which", ["broken", "sample", "broken, tiny read buffer"])
def test_whole_ingest_same_with_and_without_batches(which, tmp_path, sample_source, monkeypatch):
    if which.startswith("broken"):
        src = tmp_path / "src"
        for sub in config.SOURCE_SUBDIRS:
            (src / sub).mkdir(parents=True)
        for name, (sub, lines, newline, lead) in FILES.items():
            write_file(src / sub / f"{name}.csv", lines, newline, lead)
            write_file(src / sub / f"{name}2.csv", lines, newline, lead)  # neighbours in one partition
        (src / "stocks" / "LATIN.csv").write_bytes(LATIN)
        for name, (data, _) in REJECTED.items():
            (src / "stocks" / f"{name}.csv").write_bytes(data)
        source = str(src)
    else:
        source = str(sample_source)
    if which.endswith("tiny read buffer"):  # every file outgrows the reader's buffer, which must grow
        tiny = ingest.read._JoinedBodies()
        tiny.buffer = bytearray(64)
        monkeypatch.setattr(ingest.task, "_JOINED", tiny)
    fast = ingest.run(tmp_path / "fast", source=source, jobs=1)
    monkeypatch.setattr(ingest.task, "BATCH_BYTES", 0)  # every batch one file: parse_csv for all
    slow = ingest.run(tmp_path / "slow", source=source, jobs=1)
    # the checksums the next run compares are of each file's bytes, however the file was read
    files = ingest.stage._load_state(Layout.at(tmp_path / "fast"))["files"]
    assert len(files) >= len(fast["files"]) > 0  # files set aside unread are not in the state
    if Path(source).is_dir():
        read = lambda rel: (Path(source) / rel).read_bytes()  # noqa: E731
    else:
        members = {
            name.split("/", 1)[-1] if not name.startswith(("stocks/", "etfs/")) else name: name
            for name in zipfile.ZipFile(source).namelist()
        }
        read = lambda rel: zipfile.ZipFile(source).read(members[rel])  # noqa: E731
    for entry in files:
        assert entry["crc32"] == f"{zlib.crc32(read(entry['file'])):08x}", entry["file"]
    assert fast["files"] == slow["files"] and fast["totals"] == slow["totals"]
    assert fast["rejected_files"] == slow["rejected_files"]
    (raw_f, q_f), (raw_s, q_s) = read_all(tmp_path / "fast"), read_all(tmp_path / "slow")
    assert raw_f.equals(raw_s)
    assert (q_f is None and q_s is None) or q_f.equals(q_s)


@pytest.mark.parametrize("change", [-23, 23])  # the file grew, or shrank, after its size was read
def test_joined_reader_takes_a_file_that_changes_size_whole(tmp_path, monkeypatch, change):
    import os
    from types import SimpleNamespace

    data = ingest.CANONICAL_HEADER + b"2020-01-02,1.5,2,1,1.5,1.5,500\n" * 40
    path = tmp_path / "A.csv"
    path.write_bytes(data)
    real_fstat = os.fstat
    monkeypatch.setattr(
        ingest.read.os,
        "fstat",
        lambda fd: SimpleNamespace(st_size=real_fstat(fd).st_size + change, st_mode=real_fstat(fd).st_mode),
    )
    reader = ingest.read._JoinedBodies()
    crc, whole = reader.read(str(path))
    monkeypatch.undo()
    assert whole == data and crc == zlib.crc32(data)
    assert reader.spans == [] and reader.end == 0  # nothing appended: parsed alone, as read
    assert reader.read(str(path)) == (zlib.crc32(data), None) and reader.body(0) == data  # unchanged: appended
