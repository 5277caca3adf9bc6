"""Incremental ingest: after edits to the source, a re-run equals a full run and rewrites only what changed."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from volcast import ingest, storage
from volcast.config import Layout

VOLATILE = (
    "seconds",
    "rows_per_second",
    "incremental",
    "incremental_reason",
    "changed_partitions",
    "files_reread",
    "rows_read_this_run",
    "files_appended",
    "files_unchanged",
    "append_fallbacks",
)


def dataset(out):
    layout = Layout.at(out)
    raw = pd.read_parquet(layout.raw_dir)
    quarantine = ingest.load_quarantine(out)
    return raw, quarantine.sort_values(["file", "line"]).reset_index(drop=True)


def stable(report):
    return {k: v for k, v in report.items() if k not in VOLATILE and k != "source"}


def inode_of(path):
    return os.stat(path).st_ino


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """A source ingested once, then edited (one file changed, one added, one removed, one only touched)."""
    root = tmp_path_factory.mktemp("incr")
    src = ingest.generate_demo_market(root / "src", n_tickers=40, years=2, seed=11)
    out = root / "out"
    first = ingest.run(out, source=str(src), jobs=2)
    before = {p.name: inode_of(p) for p in Layout.at(out).raw_dir.glob("part-*.parquet")}
    version_before = storage.current_version(Layout.at(out).raw_dir)

    files = sorted(src.glob("stocks/*.csv"), key=lambda p: p.name)
    changed, removed, touched = files[0], files[-1], files[len(files) // 2]
    assert len({p.name[0] for p in (changed, removed, touched)}) == 3, "pick tickers in distinct partitions"
    lines = changed.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",not-a-number"  # becomes a quarantined row
    lines[5] = lines[5].rsplit(",", 1)[0] + ",123"  # a changed value
    changed.write_text("\n".join(lines) + "\n")
    removed.unlink()
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    added = src / "etfs" / "ZZNEW.csv"  # a new ticker in a partition of its own
    shutil.copy(files[1], added)

    second = ingest.run(out, source=str(src), jobs=2)
    full = ingest.run(root / "full", source=str(src), jobs=2)
    return {
        "src": src,
        "out": out,
        "full": root / "full",
        "first": first,
        "second": second,
        "full_report": full,
        "before": before,
        "version_before": version_before,
        "keys": {
            k: storage.partition_key(p.stem)
            for k, p in {"changed": changed, "removed": removed, "touched": touched, "added": added}.items()
        },
    }


def test_incremental_equals_full(edited):
    raw_a, q_a = dataset(edited["out"])
    raw_b, q_b = dataset(edited["full"])
    pd.testing.assert_frame_equal(raw_a, raw_b)
    pd.testing.assert_frame_equal(q_a, q_b)
    assert stable(edited["second"]) == stable(edited["full_report"])
    assert edited["second"]["incremental"] and not edited["full_report"]["incremental"]


def test_summary_after_an_incremental_run_counts_the_dataset(edited):
    """Reused and rewritten partitions' footers together describe exactly the edited dataset."""
    raw, _ = dataset(edited["out"])
    summary = ingest.summarize_raw(edited["out"])
    assert summary["rows_per_ticker"].to_dict() == raw.groupby("Symbol").size().to_dict()
    assert summary["rows_per_year"].to_dict() == raw["Date"].str[:4].astype(int).value_counts().to_dict()
    assert (summary["date_min"], summary["date_max"]) == (raw["Date"].min(), raw["Date"].max())
    parts = Layout.at(edited["out"]).raw_dir.glob("part-*")
    assert all(ingest.summary._footer_summary(pq.read_metadata(p)) for p in parts)


def test_only_changed_partitions_rewritten(edited):
    keys = edited["keys"]
    expected = sorted({keys["changed"], keys["removed"], keys["added"]})
    assert edited["second"]["changed_partitions"] == expected
    assert edited["second"]["files_reread"] == 2  # the edited and the added file; the touched one is equal
    after = {p.name: inode_of(p) for p in Layout.at(edited["out"]).raw_dir.glob("part-*.parquet")}
    for name, inode in edited["before"].items():
        key = name[len("part-") : -len(".parquet")]
        if key not in expected and name in after:
            assert after[name] == inode, f"{name} was rewritten"  # hard link to the previous version
    assert edited["second"]["totals"]["rows_quarantined"] == edited["first"]["totals"]["rows_quarantined"] + 1


def test_nothing_changed_keeps_the_dataset(edited):
    out = edited["out"]
    version = storage.current_version(Layout.at(out).raw_dir)
    report = ingest.run(out, source=str(edited["src"]), jobs=2)
    assert report["changed_partitions"] == [] and report["files_reread"] == 0
    assert storage.current_version(Layout.at(out).raw_dir) == version
    assert stable(report) == stable(edited["full_report"])


def test_other_source_means_full_run(edited, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(edited["src"], copy)
    out = tmp_path / "out"
    shutil.copytree(edited["out"], out, symlinks=True)
    report = ingest.run(out, source=str(copy), jobs=1)
    assert not report["incremental"] and report["incremental_reason"] == "different source"
