"""Ingest against the sample (real when ../shared is present, else generated), checked by a second method."""

from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from volcast import config, ingest, storage
from volcast.config import Layout

REQUIRED = ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]


# ---------------------------------------------------------------------------------------------
# An independent reference: the csv module and Python's own number/date parsing, row by row.


def reference_rows(text: str) -> tuple[list[tuple], int]:
    """(valid rows as (Date, O, H, L, C, AC, V), number of data rows) of one CSV, by the contract's rules."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader)]
    idx = [header.index(name.lower()) for name in REQUIRED]
    seen, out, n = set(), [], 0
    for row in reader:
        if not row:  # blank line: not a row
            continue
        n += 1
        if len(row) != len(header):
            continue
        vals = [row[i] for i in idx]
        if any(v == "" for v in vals):
            continue
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", vals[0]):
            continue
        try:
            date.fromisoformat(vals[0])
            prices = [float(v) for v in vals[1:6]]
            volume = Decimal(vals[6])
        except (ValueError, InvalidOperation):
            continue
        if not all(math.isfinite(p) for p in prices) or not volume.is_finite():
            continue
        if volume != volume.to_integral_value() or volume < 0 or volume >= 2**63:
            continue
        if vals[0] in seen:
            continue
        seen.add(vals[0])
        out.append((vals[0], *prices, int(volume)))
    return sorted(out), n


def source_texts(source: Path) -> dict[str, str]:
    """{ticker: CSV text} of a Kaggle-layout folder or zip."""
    out = {}
    if source.is_dir():
        for path in sorted(source.glob("*/*.csv")):
            if path.parent.name in config.SOURCE_SUBDIRS:
                out[path.stem] = path.read_text(encoding="utf-8")
    else:
        with zipfile.ZipFile(source) as zf:
            for name in zf.namelist():
                parts = name.split("/")
                if len(parts) >= 2 and parts[-2] in config.SOURCE_SUBDIRS and name.endswith(".csv"):
                    out[Path(name).stem] = zf.read(name).decode("utf-8")
    return out


def source_meta(source: Path) -> list[dict]:
    if source.is_dir():
        text = (source / config.META_FILE).read_text(encoding="utf-8")
    else:
        with zipfile.ZipFile(source) as zf:
            text = zf.read(next(n for n in zf.namelist() if n.endswith(config.META_FILE))).decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def sample_run(sample_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest-sample")
    report = ingest.run(out, source=str(sample_source), jobs=2)
    return out, report


@pytest.fixture(scope="module")
def sample_raw(sample_run):
    return pd.read_parquet(Layout.at(sample_run[0]).raw_dir)


@pytest.fixture(scope="module")
def sample_texts(sample_source):
    return source_texts(Path(sample_source))


# ---------------------------------------------------------------------------------------------


def test_schema_and_dtypes_exact(sample_run):
    out, _ = sample_run
    table = pq.read_table(Layout.at(out).raw_dir)
    assert table.schema.remove_metadata().equals(config.RAW_SCHEMA)
    df = pd.read_parquet(Layout.at(out).raw_dir)
    assert list(df.columns) == list(config.RAW_COLUMNS)
    assert df["Volume"].dtype == "int64"
    for name in config.PRICE_COLUMNS:
        assert df[name].dtype == "float64"
    assert df["Date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()


def test_sorted_by_symbol_then_date(sample_raw):
    keys = list(zip(sample_raw["Symbol"], sample_raw["Date"]))
    assert keys == sorted(keys)
    assert not sample_raw.duplicated(["Symbol", "Date"]).any()


def test_rows_equal_independent_count(sample_run, sample_raw, sample_texts):
    _, report = sample_run
    per_file = {e["symbol"]: e for e in report["files"]}
    counts = sample_raw.groupby("Symbol").size().to_dict()
    assert set(per_file) == set(sample_texts)
    for symbol, text in sample_texts.items():
        valid, n_rows = reference_rows(text)
        entry = per_file[symbol]
        assert entry["rows_read"] == n_rows, symbol
        assert entry["rows_kept"] == len(valid) == counts.get(symbol, 0), symbol
        assert entry["rows_read"] == entry["rows_kept"] + entry["rows_quarantined"]
    totals = report["totals"]
    assert totals["rows_read"] == totals["rows_kept"] + totals["rows_quarantined"]
    assert totals["rows_kept"] == len(sample_raw)


def test_values_equal_reference_for_some_tickers(sample_raw, sample_texts):
    for symbol in sorted(sample_texts)[:: max(1, len(sample_texts) // 12)]:
        valid, _ = reference_rows(sample_texts[symbol])
        got = sample_raw[sample_raw["Symbol"] == symbol][REQUIRED].itertuples(index=False, name=None)
        assert [tuple(r) for r in got] == valid, symbol


def test_empty_value_rows_quarantined_with_reasons(sample_run, sample_texts, sample_is_real):
    out, report = sample_run
    quarantine = ingest.load_quarantine(out)
    expected = []
    for symbol, text in sample_texts.items():
        for lineno, line in enumerate(text.splitlines(), start=1):
            if lineno > 1 and re.fullmatch(r"[^,]+,,,,,,", line):
                expected.append((symbol, lineno))
    if sample_is_real:
        assert {s for s, _ in expected} == {"BEP", "COHU"}
    assert expected, "the sample has rows of empty values"
    got = quarantine[quarantine["kind"] == "missing"]
    assert sorted(zip(got["symbol"], got["line"])) == sorted(expected)
    assert got["reason"].str.contains("missing Open").all()
    assert report["totals"]["rows_quarantined"] == len(quarantine)


def test_float_volume_text_becomes_int(sample_raw, sample_texts):
    floaty = [s for s, t in sample_texts.items() if re.search(r",\d+\.0\r?\n", t)]
    assert floaty, "the sample has a file with Volume written as 5254.0"
    symbol = floaty[0]
    first = next(line for line in sample_texts[symbol].splitlines()[1:] if not line.endswith(",,,,,,"))
    vol = int(Decimal(first.split(",")[-1]))
    row = sample_raw[sample_raw["Symbol"] == symbol].iloc[0]
    assert row["Date"] == first.split(",")[0] and row["Volume"] == vol


def test_ticker_without_metadata_keeps_rows(sample_source, sample_run, sample_raw, sample_is_real):
    _, report = sample_run
    known = {row["NASDAQ Symbol"] for row in source_meta(Path(sample_source))}
    missing = sorted(set(sample_raw["Symbol"]) - known)
    assert report["tickers_without_metadata"] == missing
    if sample_is_real:
        assert missing == ["BCV-A", "BRLN", "DIHP", "DTB"]
    assert missing
    rows = sample_raw[sample_raw["Symbol"].isin(missing)]
    assert len(rows) >= len(missing) and rows["Security Name"].isna().all()


def test_security_name_from_meta(sample_source, sample_raw):
    names = {row["NASDAQ Symbol"]: row["Security Name"] for row in source_meta(Path(sample_source))}
    got = sample_raw.groupby("Symbol")["Security Name"].first()
    for symbol, name in got.dropna().items():
        assert name == names[symbol]


def test_zero_volume_and_nonpositive_prices_kept_and_counted(sample_run, sample_raw):
    _, report = sample_run
    zero = int((sample_raw["Volume"] == 0).sum())
    nonpos = int((sample_raw[list(config.PRICE_COLUMNS)] <= 0).any(axis=1).sum())
    assert report["totals"]["zero_volume_rows"] == zero
    assert report["totals"]["nonpositive_price_rows"] == nonpos
    assert zero > 0


def test_partitions_and_staging(sample_run):
    out, report = sample_run
    layout = Layout.at(out)
    assert layout.raw_dir.is_symlink()
    parts = sorted(p.name for p in layout.raw_dir.glob("part-*.parquet"))
    assert parts == [storage.partition_file(k) for k in sorted(report["changed_partitions"])]
    for part in parts:
        symbols = pq.read_table(layout.raw_dir / part, columns=["Symbol"])["Symbol"].unique().to_pylist()
        assert {storage.partition_key(s) for s in symbols} == {part[len("part-") : -len(".parquet")]}
    assert storage.read_json(layout.report("ingest"))["totals"] == report["totals"]
    assert not list(layout.data_dir.glob(".*staging*"))


def test_security_name_matched_through_nasdaq_symbol(tmp_path):
    src = tmp_path / "src"
    (src / "stocks").mkdir(parents=True)
    (src / "stocks" / "AGM-A.csv").write_text(
        "Date,Open,High,Low,Close,Adj Close,Volume\n2020-01-02,1.5,1.6,1.4,1.55,1.5,100\n"
    )
    (src / "stocks" / "AGM.csv").write_text(
        "Date,Open,High,Low,Close,Adj Close,Volume\n2020-01-02,2.5,2.6,2.4,2.55,2.5,200\n"
    )
    (src / config.META_FILE).write_text(
        "Symbol,Security Name,Listing Exchange,Market Category,ETF,Round Lot Size,Test Issue,"
        "Financial Status,CQS Symbol,NASDAQ Symbol,NextShares\n"
        "AGM,Federal Agricultural Mortgage Corporation Common Stock,N, ,N,100,N,,AGM,AGM,N\n"
        "AGM$A,Federal Agricultural Mortgage Corporation Class A,N, ,N,100,N,,AGM.A,AGM-A,N\n"
    )
    report = ingest.run(tmp_path / "out", source=str(src), jobs=1)
    df = pd.read_parquet(Layout.at(tmp_path / "out").raw_dir)
    names = dict(zip(df["Symbol"], df["Security Name"]))
    assert names == {
        "AGM": "Federal Agricultural Mortgage Corporation Common Stock",
        "AGM-A": "Federal Agricultural Mortgage Corporation Class A",
    }
    assert report["tickers_without_metadata"] == []


def test_summarize_raw_equals_pandas(sample_run, sample_raw):
    """The notebook's summary (Arrow, two columns, row group by row group) against pandas on the loaded dataset."""
    out, _ = sample_run
    s = ingest.summarize_raw(out)
    df = sample_raw
    assert s["rows"] == len(df)
    assert s["tickers"] == df["Symbol"].nunique()
    assert (s["date_min"], s["date_max"]) == (df["Date"].min(), df["Date"].max())
    assert list(s["schema"]) == list(df.columns) == list(config.RAW_COLUMNS)
    assert s["schema"]["Volume"] == "int64" and s["schema"]["Open"] == "double" and s["schema"]["Date"] == "string"
    pd.testing.assert_frame_equal(s["head"], df.head(3))
    by_ticker = df.groupby("Symbol").size()
    assert s["rows_per_ticker"].index.tolist() == by_ticker.index.tolist()
    assert s["rows_per_ticker"].tolist() == by_ticker.tolist()
    by_year = df["Date"].str[:4].astype(int).value_counts().sort_index()
    assert s["rows_per_year"].index.tolist() == by_year.index.tolist()
    assert s["rows_per_year"].tolist() == by_year.tolist()
    assert s["rows_per_ticker"].sum() == s["rows_per_year"].sum() == len(df)


def test_summarize_raw_empty(tmp_path):
    s = ingest.summarize_raw(tmp_path)
    assert (s["rows"], s["tickers"], s["files"], len(s["head"]), len(s["rows_per_year"])) == (0, 0, 0, 0, 0)
    assert list(s["head"].columns) == list(config.RAW_COLUMNS)


@pytest.mark.parametrize("footer", ["kept", "stripped", "of other rows"])
def test_summarize_raw_sums_across_row_groups(sample_run, sample_raw, tmp_path, footer):
    """Tickers and years split over many small row groups still count once each, whether they come from
    the summary ingest writes in each footer or, without one (or with one that does not fit), from the rows."""
    raw_dir = Layout.at(tmp_path).raw_dir
    raw_dir.mkdir(parents=True)
    for f in sorted(Layout.at(sample_run[0]).raw_dir.glob("part-*.parquet"))[:5]:
        table = pq.read_table(f)
        assert ingest.SUMMARY_KEY.encode() in table.schema.metadata
        if footer == "stripped":
            table = table.replace_schema_metadata(None)
        elif footer == "of other rows":  # a footer carried over by a rewrite that dropped rows
            table = table.slice(1)
        pq.write_table(table, raw_dir / f.name, row_group_size=777)
    s = ingest.summarize_raw(tmp_path)
    df = pd.read_parquet(raw_dir)
    assert s["rows"] == len(df) and s["tickers"] == df["Symbol"].nunique()
    assert s["rows_per_ticker"].to_dict() == df.groupby("Symbol").size().to_dict()
    assert s["rows_per_year"].to_dict() == df["Date"].str[:4].astype(int).value_counts().to_dict()
    assert (s["date_min"], s["date_max"]) == (df["Date"].min(), df["Date"].max())


def test_summary_footers_count_rows_written_in_many_row_groups(tmp_path, monkeypatch):
    """Partitions written in many row groups: the footer's counts add up every group's rows.

    Its own market (whatever sample is present): 12 tickers over 3 years are at least 60 business days
    each, written in row groups of 50 rows, so every partition has at least 2 groups and most many more."""
    source = ingest.generate_demo_market(tmp_path / "src", n_tickers=12, years=3, seed=3)
    monkeypatch.setattr(ingest.write, "ROW_GROUP_ROWS", 50)
    ingest.run(tmp_path, source=str(source), jobs=1)
    files = sorted(Layout.at(tmp_path).raw_dir.glob("part-*.parquet"))
    groups = [pq.read_metadata(f).num_row_groups for f in files]
    assert min(groups) >= 2 and max(groups) > 3
    assert all(ingest.summary._footer_summary(pq.read_metadata(f)) for f in files)
    s = ingest.summarize_raw(tmp_path)
    df = pd.read_parquet(Layout.at(tmp_path).raw_dir)
    assert s["rows_per_ticker"].to_dict() == df.groupby("Symbol").size().to_dict()
    assert s["rows_per_year"].to_dict() == df["Date"].str[:4].astype(int).value_counts().to_dict()
    assert (s["date_min"], s["date_max"]) == (df["Date"].min(), df["Date"].max())
