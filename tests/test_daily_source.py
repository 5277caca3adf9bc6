"""benchmarks/make_daily_source.py: a source tree that grows one trading day at a time.

Checked against pandas reading every version independently: each version's files are byte prefixes of the
next one's, the last version is the original tree byte for byte, and the rows add up day by day.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HOLD_BACK = 6


def _load_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mds = _load_module("make_daily_source")

HEADER = "Date,Open,High,Low,Close,Adj Close,Volume\n"


def _row(day: str, volume: int) -> str:
    return f"{day},10.0,11.0,9.5,10.5,10.5,{volume}\n"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A small generated market plus hand-made files for the cases the generator does not make."""
    from volcast.ingest import generate_demo_market

    root = generate_demo_market(tmp_path_factory.mktemp("daily-src") / "tree", n_tickers=10, years=1, seed=3)
    days = sorted(pd.read_csv(next((root / "stocks").glob("*.csv")))["Date"])
    last = days[-HOLD_BACK:]  # every generated ticker trades every day, so these are the held-back days
    early = days[:-HOLD_BACK][-5:]
    # did not trade on two of the held-back days
    gappy = [d for i, d in enumerate(last) if i not in (1, 4)]
    (root / "stocks" / "GAPPY.csv").write_text(HEADER + "".join(_row(d, 100 + i) for i, d in enumerate(early + gappy)))
    # listed during the held-back days: no file before its first day
    (root / "stocks" / "NEWCO.csv").write_text(HEADER + "".join(_row(d, 7) for d in last[3:]))
    # CRLF endings, a row of empty values, and no newline at the end of the file
    lines = [_row(d, 5).rstrip("\n") for d in early + last]
    lines[-3] = f"{last[-3]},,,,,,"
    (root / "etfs" / "ODDLY.csv").write_bytes(("\r\n".join([HEADER.rstrip("\n")] + lines)).encode())
    # traded only before the held-back days: never changes
    (root / "etfs" / "GONE.csv").write_text(HEADER + "".join(_row(d, 3) for d in early))
    return root


def _tree(root: Path) -> dict[str, bytes]:
    """Every file of a Kaggle-layout tree (the hidden state folder excluded)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).parts[0].startswith(".")
    }


def _frames(tree: dict[str, bytes]) -> dict[str, pd.DataFrame]:
    import io

    return {
        rel: pd.read_csv(io.BytesIO(data))
        for rel, data in tree.items()
        if rel.endswith(".csv") and rel.split("/")[0] in ("stocks", "etfs")
    }


@pytest.fixture(scope="module")
def versions(source, tmp_path_factory):
    """The tree at every version 0..N, released one day at a time in place, with each file's stat."""
    out = tmp_path_factory.mktemp("daily-out") / "src"
    mds.init(str(source), out, HOLD_BACK)
    trees, stats = [_tree(out)], [{rel: os.stat(out / rel) for rel in _tree(out)}]
    for _ in range(HOLD_BACK):
        result = mds.main(["release", str(out), "next"])
        assert result == 0
        trees.append(_tree(out))
        stats.append({rel: os.stat(out / rel) for rel in trees[-1]})
    return out, trees, stats


def test_held_back_days_are_the_last_trading_days_of_all_files(source, versions):
    out, _, _ = versions
    all_days = sorted(set().union(*(set(df["Date"]) for df in _frames(_tree(source)).values())))
    assert mds.status(out)["held_back"] == f"{all_days[-HOLD_BACK]} .. {all_days[-1]}"
    assert mds.status(out)["version"] == HOLD_BACK


def test_each_version_is_a_byte_prefix_of_the_next(versions):
    _, trees, _ = versions
    for k in range(HOLD_BACK):
        for rel, data in trees[k].items():
            assert rel in trees[k + 1], f"{rel} vanished at version {k + 1}"
            assert trees[k + 1][rel].startswith(data), f"{rel}: version {k} is not a prefix of version {k + 1}"


def test_last_version_is_the_original_tree_byte_for_byte(source, versions):
    _, trees, _ = versions
    assert trees[-1] == _tree(source)


def test_rows_add_up_day_by_day(source, versions):
    _, trees, _ = versions
    original = _frames(_tree(source))
    days = sorted(set().union(*(set(df["Date"]) for df in original.values())))[-HOLD_BACK:]
    for k, tree in enumerate(trees):
        frames = _frames(tree)
        # a file exists once its ticker has a row before the next held-back day; then it holds exactly those rows
        limit = days[k] if k < HOLD_BACK else "9999-99-99"
        expected = {rel: int((df["Date"] < limit).sum()) for rel, df in original.items() if (df["Date"] < limit).any()}
        assert {rel: len(df) for rel, df in frames.items()} == expected, f"version {k}"
    for k in range(1, HOLD_BACK + 1):
        traded = sum(int((df["Date"] == days[k - 1]).sum()) for df in original.values())
        rows = [sum(len(df) for df in _frames(trees[v]).values()) for v in (k - 1, k)]
        added = rows[1] - rows[0]
        assert added == traded, f"day {days[k - 1]}"
    # the hand-made cases, spelled out
    assert "stocks/NEWCO.csv" not in trees[3] and "stocks/NEWCO.csv" in trees[4]
    assert len(_frames(trees[4])["stocks/NEWCO.csv"]) == 1


def test_a_file_without_a_new_row_is_not_touched(versions):
    _, _, stats = versions
    # GAPPY did not trade on held-back days 2 and 5; GONE and the meta never change
    for k in (2, 5):
        before, after = stats[k - 1]["stocks/GAPPY.csv"], stats[k]["stocks/GAPPY.csv"]
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    for rel in ("etfs/GONE.csv", "symbols_valid_meta.csv", "GENERATED.txt"):
        assert {s[rel].st_mtime_ns for s in stats} == {stats[0][rel].st_mtime_ns}
    assert stats[3]["stocks/GAPPY.csv"].st_size > stats[2]["stocks/GAPPY.csv"].st_size


def test_going_back_truncates_and_removes(versions):
    out, trees, _ = versions
    result = mds.release(out, 0)
    assert _tree(out) == trees[0]
    assert result["files_removed"] == 1  # NEWCO
    mds.release(out, "all")
    assert _tree(out) == trees[-1]


def test_release_after_an_interrupted_release_finishes_the_job(versions):
    out, trees, _ = versions
    mds.release(out, 2)
    # as if a release to version 3 died half-way: some files grown, state still at 2
    grown = sorted(rel for rel in trees[3] if rel.endswith(".csv") and trees[3].get(rel) != trees[2].get(rel))[:3]
    for rel in grown:
        (out / rel).write_bytes(trees[3][rel])
    mds.release(out, 3)
    assert _tree(out) == trees[3]
    mds.release(out, "all")


def test_out_of_range_version_is_one_clear_error(versions):
    out, _, _ = versions
    with pytest.raises(SystemExit, match=f"versions 0..{HOLD_BACK}"):
        mds.release(out, HOLD_BACK + 1)
    with pytest.raises(SystemExit, match="not a daily source"):
        mds.release(out.parent, 1)


def test_sample_source_round_trip(sample_source, tmp_path):
    """The real sample zip (or the demo when ../shared is absent): version 0 -> all gives back the source."""
    out = tmp_path / "sample"
    mds.init(str(sample_source), out, 3)
    v0 = _tree(out)
    mds.release(out, "all")
    final = _tree(out)
    if Path(sample_source).suffix == ".zip":
        with zipfile.ZipFile(sample_source) as zf:
            original = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    else:
        original = _tree(Path(sample_source))
    assert final == original
    assert all(final[rel].startswith(data) for rel, data in v0.items())
    assert sum(len(df) for df in _frames(final).values()) > sum(len(df) for df in _frames(v0).values())


def test_parquet_source_ends_as_make_kaggle_scale_writes_it(source, tmp_path):
    """A long-form parquet (as ../shared/data/nasdaq-2023.parquet) at --scale 2: the last version is the
    tree that make_kaggle_scale.py writes from the same parquet, copies included."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = []
    for kind in ("stocks", "etfs"):
        for path in sorted((source / kind).glob("*.csv"))[:3]:
            df = pd.read_csv(path).dropna()
            frames.append(df.assign(Symbol=path.stem, Kind=kind, Volume=df["Volume"].astype("float64")))
    long = pd.concat(frames)[["Symbol", "Kind", "Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]]
    parquet = tmp_path / "long.parquet"
    pq.write_table(pa.Table.from_pandas(long, preserve_index=False), parquet)

    mks = _load_module("make_kaggle_scale")
    mks.build(parquet, tmp_path / "direct", 2, 1, None, progress=False)

    out = tmp_path / "daily"
    mds.init(str(parquet), out, 2, scale=2, jobs=1)
    v0 = _tree(out)
    copies = {f"stocks/{s}1.csv" for s in long.loc[long.Kind == "stocks", "Symbol"]}
    assert copies <= {rel for rel in v0 if rel.endswith(".csv")}
    mds.release(out, "all")
    assert _tree(out) == _tree(tmp_path / "direct")
    assert all(_tree(out)[rel].startswith(data) for rel, data in v0.items())
