"""Hostile and broken source files (issue 14): no row lost, nothing read that should not be, limits that hold.

Every probe file is made here. Expected values are worked out by hand from how each file was built."""

from __future__ import annotations

import datetime as dt
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from volcast import ingest, storage
from volcast.config import Layout
from volcast.errors import UserError

HEADER = b"Date,Open,High,Low,Close,Adj Close,Volume\n"
N_ROWS = 2609


def ticker_lines(n: int = N_ROWS, start: dt.date = dt.date(2000, 1, 3)) -> list[bytes]:
    """n valid data lines, one per calendar day, each with its own Volume (100 + row index)."""
    return [
        f"{start + dt.timedelta(days=i)},{10 + i % 7}.5,{12 + i % 7}.25,{9 + i % 7}.75,{11 + i % 7}.0,"
        f"{11 + i % 7}.0,{100 + i}\n".encode()
        for i in range(n)
    ]


def folder_source(root: Path, files: dict[str, bytes]) -> Path:
    """A Kaggle-layout folder: {"stocks/AAA.csv": bytes, ...}."""
    src = root / "src"
    for sub in ("stocks", "etfs"):
        (src / sub).mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    return src


def entry(report: dict, symbol: str) -> dict:
    return next(e for e in report["files"] if e["symbol"] == symbol)


def raw_volumes(out: Path, symbol: str) -> list[int]:
    raw = ingest.load_raw(out)
    return sorted(raw.loc[raw["Symbol"] == symbol, "Volume"].tolist())


# ---------------------------------------------------------------------------------------------
# Finding 1 and 11: every line ends as a kept or a quarantined row, with its line number.


def test_stray_quote_quarantines_its_line_only(tmp_path):
    """A '"' before the Open value of data line 100 (physical line 101, the header being line 1): the
    other 2,608 rows are kept, that one is quarantined with line 101."""
    lines = ticker_lines()
    lines[99] = lines[99].replace(b",", b',"', 1)
    src = folder_source(
        tmp_path, {"stocks/AAA.csv": HEADER + b"".join(lines), "stocks/BBB.csv": HEADER + b"".join(ticker_lines(50))}
    )
    report = ingest.run(tmp_path / "out", source=str(src), jobs=1)
    e = entry(report, "AAA")
    assert (e["rows_read"], e["rows_kept"], e["rows_quarantined"], e["lines"]) == (2609, 2608, 1, 2609)
    q = ingest.load_quarantine(tmp_path / "out")
    assert q[["symbol", "line", "kind"]].values.tolist() == [["AAA", 101, "unbalanced-quote"]]
    assert q["text"][0] == lines[99].decode().rstrip("\n")
    assert raw_volumes(tmp_path / "out", "AAA") == [100 + i for i in range(N_ROWS) if i != 99]
    assert entry(report, "BBB")["rows_kept"] == 50


def test_nul_bytes_quarantine_their_line_only(tmp_path):
    lines = ticker_lines()
    lines[49] = lines[49][:4] + b"\x00\x00" + lines[49][4:]  # data line 50 = physical line 51
    lines[2000] = b"\x00" * 30 + b"\n"
    src = folder_source(tmp_path, {"stocks/AAA.csv": HEADER + b"".join(lines)})
    report = ingest.run(tmp_path / "out", source=str(src), jobs=1)
    e = entry(report, "AAA")
    assert "error" not in e and (e["rows_kept"], e["rows_quarantined"]) == (2607, 2)
    q = ingest.load_quarantine(tmp_path / "out")
    assert q[["line", "kind"]].values.tolist() == [[51, "nul-bytes"], [2002, "nul-bytes"]]
    assert raw_volumes(tmp_path / "out", "AAA") == [100 + i for i in range(N_ROWS) if i not in (49, 2000)]
    only = ingest.parse_csv(HEADER + b"2000-01-03,1\x00,1,1,1,1,5\n", "B")  # the file's one line set aside
    assert only.error is None and (only.counts["rows_kept"], only.counts["rows_quarantined"]) == (0, 1)


def test_quoted_field_running_over_lines_loses_no_line():
    """Quotes balanced on each line but a field opened mid-line ('a"b,"c'): a CSV reader carries the
    field over the next lines. Each line is still one row: the bad one quarantined, the rest kept."""
    lines = ticker_lines(300)
    lines[9] = lines[9].replace(b",", b',a"b,"c', 1)  # data line 10 = line 11, with 2 quotes
    lines[20] = b'"2000-01-23",10.5,12.25,9.75,11.0,11.0,120\n'  # row 20's own date, quoted
    parsed = ingest.parse_csv(HEADER + b"".join(lines), "AAA")
    assert (parsed.counts["rows_kept"], parsed.counts["rows_quarantined"]) == (299 - 1, 2)
    assert parsed.quarantine["line"].to_pylist() == [11, 22]  # without quoting the quoted date is text


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
@pytest.mark.parametrize("final_newline", [True, False])
def test_line_count_is_independent_of_the_parser(ending, final_newline):
    """The count the stage checks against: non-blank lines after the header, whatever the line ends."""
    body = ending.join([b"a", b"", b"b", b"c"]) + (ending if final_newline else b"")
    assert ingest.lines.data_lines(HEADER.rstrip(b"\n") + ending + body) == 3
    assert ingest.lines.count_lines(body) == 4


def reference_spans(body: bytes) -> list[tuple[int, int]]:
    """Line spans by walking the bytes: "\r\n", "\n" and a lone "\r" end a line."""
    spans, start, i = [], 0, 0
    while i < len(body):
        if body[i] in b"\r\n":
            spans.append((start, i))
            i += 2 if body[i : i + 2] == b"\r\n" else 1
            start = i
        else:
            i += 1
    if start < len(body):
        spans.append((start, len(body)))
    return spans


def test_line_spans_and_counts_match_a_byte_walk():
    rng = np.random.default_rng(5)
    for _ in range(2000):
        body = bytes(rng.choice(list(b"ab\r\n"), rng.integers(0, 30)).astype(np.uint8))
        spans = reference_spans(body)
        assert [tuple(s) for s in ingest.lines._all_line_spans(body).tolist()] == spans, body
        assert ingest.lines.count_lines(body) == len(spans)
        assert ingest.lines.count_blank_lines(body) == sum(s == e for s, e in spans)
        assert ingest.lines.longest_line(body) == max((e - s for s, e in spans), default=0)


def test_a_row_lost_by_the_parser_stops_the_stage(tmp_path, monkeypatch):
    """If a parser ever drops a line but counts consistently (finding 1's failure), the stage raises and
    publishes nothing, rather than reporting rows_read = kept + quarantined over fewer rows."""
    src = folder_source(
        tmp_path,
        {
            "stocks/AAA.csv": HEADER.replace(b"\n", b"\r\n")
            + b"".join(x.replace(b"\n", b"\r\n") for x in ticker_lines(40))
        },
    )
    real = ingest.task.parse_csv

    def losing(*args, **kwargs):
        p = real(*args, **kwargs)
        counts = {**p.counts, "rows_read": p.counts["rows_read"] - 1, "rows_kept": p.counts["rows_kept"] - 1}
        return p._replace(table=p.table.slice(1), counts=counts)

    monkeypatch.setattr(ingest.task, "parse_csv", losing)
    with pytest.raises(ingest.LinesNotAccounted, match="40 data lines, but 39 kept"):
        ingest.run(tmp_path / "out", source=str(src), jobs=1)
    assert storage.current_version(Layout.at(tmp_path / "out").raw_dir) is None
    assert not Layout.at(tmp_path / "out").report("ingest").exists()


# ---------------------------------------------------------------------------------------------
# Finding 3: quarantine cost linear in the bad rows.


def test_quarantine_fetches_values_once_per_column_not_per_bad_row(monkeypatch):
    """N rows with the same date: N-1 duplicates. The values quoted in the reasons are fetched with one
    call per column, whatever N (the quadratic version fetched each bad row's value alone)."""
    calls = []
    real = ingest.quarantine._texts
    monkeypatch.setattr(ingest.quarantine, "_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    for n in (500, 4000):
        calls.clear()
        parsed = ingest.parse_csv(
            HEADER + b"2020-01-02,1.5,2,1,1.5,1.5,500\n" * n + b"2020-01-03,x,2,1,1.5,1.5,7\n", "AAA"
        )
        assert (parsed.counts["rows_kept"], parsed.counts["rows_quarantined"]) == (1, n)
        reasons = parsed.quarantine["reason"].to_pylist()
        assert reasons[0] == "duplicate date 2020-01-02 (first on line 2)" and len(set(reasons[:-1])) == 1
        assert reasons[-1] == "Open is not a number ('x')"
        assert len(calls) <= 2  # the Date and Open columns, once each


# ---------------------------------------------------------------------------------------------
# Findings 2 and 11: limits, checked before reading; what exceeds one is set aside and the run goes on.


def zip_source(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def rejected(report: dict) -> dict[str, str]:
    return {r["file"]: r["reason"] for r in report["rejected_files"]}


def test_zip_member_over_the_compression_ratio_is_set_aside_unread(tmp_path, monkeypatch):
    bomb = HEADER + b"2020-01-02,1.5,2,1,1.5,1.5,500\n" * 150_000  # 4.6 MB that deflates to a few KB
    good = HEADER + b"".join(ticker_lines())
    src = zip_source(tmp_path / "s.zip", {"stocks/BOMB.csv": bomb, "stocks/AAA.csv": good})
    assert zipfile.ZipFile(src).getinfo("stocks/BOMB.csv").compress_size * 100 < len(bomb)
    read = []
    real = ingest.task._read_zip_member
    monkeypatch.setattr(ingest.task, "_read_zip_member", lambda s, rel: read.append(rel) or real(s, rel))
    report = ingest.run(tmp_path / "out", source=str(src), jobs=1)
    assert "max_compression_ratio=100" in rejected(report)["stocks/BOMB.csv"]
    assert read == ["stocks/AAA.csv"]
    assert entry(report, "AAA")["rows_kept"] == N_ROWS and report["totals"]["files_rejected"] == 1
    written = json.loads(Layout.at(tmp_path / "out").report("ingest").read_text())
    assert written["limits"]["max_compression_ratio"] == 100 and written["rejected_files"] == report["rejected_files"]


def test_file_over_max_file_bytes_is_set_aside_from_zip_directory_and_folder(tmp_path):
    big = HEADER + b"".join(ticker_lines())  # 2,609 lines of about 40 bytes: over 100 kB
    small = HEADER + b"".join(ticker_lines(10))
    for kind in ("zip", "folder"):
        files = {"stocks/BIG.csv": big, "stocks/AAA.csv": small}
        src = zip_source(tmp_path / "s.zip", files) if kind == "zip" else folder_source(tmp_path, files)
        report = ingest.run(tmp_path / kind, source=str(src), jobs=1, max_file_bytes=50_000)
        assert rejected(report)["stocks/BIG.csv"] == f"file is {len(big):,} bytes, over the limit max_file_bytes=50,000"
        assert entry(report, "AAA")["rows_kept"] == 10
        assert ingest.summarize_raw(tmp_path / kind)["tickers"] == 1


def test_ten_million_column_header_is_refused_before_parsing(tmp_path):
    header = HEADER.rstrip(b"\n") + b"," + b"x," * 10_000_000 + b"x\n"  # 20 MB
    src = folder_source(
        tmp_path,
        {"stocks/WIDE.csv": header + b"".join(ticker_lines(5)), "stocks/AAA.csv": HEADER + b"".join(ticker_lines(5))},
    )
    report = ingest.run(tmp_path / "out", source=str(src), jobs=1)
    assert rejected(report)["stocks/WIDE.csv"] == "header line longer than the limit max_header_bytes=65,536"
    assert entry(report, "AAA")["rows_kept"] == 5
    few = HEADER.rstrip(b"\n") + b"," + b"x," * 1_500 + b"x\n"  # 3 kB but 1,508 columns
    assert ingest.parse_csv(few + b"".join(ticker_lines(5)), "W").error == (
        "header has 1,508 columns, over the limit max_columns=1,000"
    )


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_header_limits_count_the_header_line_only(ending):
    """A file far over max_header_bytes whose header is short is read, whatever its line ends (a lone
    "\r" too); a header of exactly max_header_bytes passes, one byte more does not."""
    body = b"".join(line.replace(b"\n", ending) for line in ticker_lines(3000))  # about 120 kB
    parsed = ingest.parse_csv(HEADER.replace(b"\n", ending) + body, "AAA")
    assert parsed.error is None and parsed.counts["rows_kept"] == 3000
    limits = ingest.Limits(max_header_bytes=len(HEADER) - 1)  # the header without its line end
    assert ingest.parse_csv(HEADER + body, "AAA", limits=limits).error is None
    tight = ingest.Limits(max_header_bytes=len(HEADER) - 2)
    assert ingest.parse_csv(HEADER + body, "AAA", limits=tight).error == (
        f"header line longer than the limit max_header_bytes={len(HEADER) - 2}"
    )


def test_line_over_max_line_bytes_is_quarantined_alone(tmp_path):
    """A 5 MB line (more than a CSV reader's block) in the middle of a file, in a folder and in a zip."""
    lines = ticker_lines(300)
    digits = np.random.default_rng(1).integers(ord("0"), ord("9") + 1, 5 << 20, dtype=np.uint8).tobytes()
    lines[150] = b"2000-06-01," + digits + b"\n"  # random digits: the zip member stays under the ratio limit
    data = HEADER + b"".join(lines)
    for kind in ("zip", "folder"):
        src = (
            zip_source(tmp_path / "s.zip", {"stocks/AAA.csv": data})
            if kind == "zip"
            else folder_source(tmp_path, {"stocks/AAA.csv": data})
        )
        report = ingest.run(tmp_path / kind, source=str(src), jobs=1)
        e = entry(report, "AAA")
        assert (e["rows_kept"], e["rows_quarantined"], e["lines"]) == (299, 1, 300)
        q = ingest.load_quarantine(tmp_path / kind)
        assert q[["line", "kind"]].values.tolist() == [[152, "too-long"]]
        assert len(q["text"][0]) == 300
        assert raw_volumes(tmp_path / kind, "AAA") == [100 + i for i in range(300) if i != 150]


def test_a_limit_that_is_no_positive_number_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="max_line_bytes must be a positive number, got 0"):
        ingest.run(tmp_path, source="demo", max_line_bytes=0)


# ---------------------------------------------------------------------------------------------
# Finding 10: links and special files in a folder source.


@pytest.fixture
def linked_source(tmp_path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "SECRET.csv").write_bytes(HEADER + b"1999-01-04,1,1,1,1,1,424242\n")
    (outside / "passwd").write_text("root-secret:x:0:0:root:/root:/bin/bash\n")
    (outside / "etfs").mkdir()
    (outside / "etfs" / "FAR.csv").write_bytes(HEADER + b"1999-01-04,1,1,1,1,1,434343\n")
    src = folder_source(tmp_path, {"stocks/AAA.csv": HEADER + b"".join(ticker_lines(20))})
    (src / "inner").mkdir()
    (src / "inner" / "IN.csv").write_bytes(HEADER + b"".join(ticker_lines(7)))
    stocks = src / "stocks"
    (stocks / "OUT.csv").symlink_to(outside / "SECRET.csv")
    (stocks / "PASSWD.csv").symlink_to(outside / "passwd")
    (stocks / "DANGLE.csv").symlink_to(tmp_path / "nowhere.csv")
    (stocks / "IN.csv").symlink_to(src / "inner" / "IN.csv")
    (stocks / "ZERO.csv").symlink_to("/dev/zero")
    os.mkfifo(stocks / "FIFO.csv")
    (src / "etfs").rmdir()
    (src / "etfs").symlink_to(outside / "etfs")
    (src / "symbols_valid_meta.csv").symlink_to(outside / "passwd")
    return src, outside


def test_links_and_special_files_are_refused_with_a_reason(tmp_path, linked_source):
    src, _ = linked_source
    report = ingest.run(tmp_path / "out", source=str(src), jobs=1)
    reasons = rejected(report)
    link = "symbolic link (refused; allow_links=True reads links to files inside the source folder)"
    assert reasons == {
        "etfs": "symbolic link to a folder (refused)",
        "symbols_valid_meta.csv": link,
        "stocks/DANGLE.csv": "dangling symbolic link (its target does not exist)",
        "stocks/FIFO.csv": "not a regular file (a FIFO, socket or device): refused",
        "stocks/IN.csv": link,
        "stocks/OUT.csv": link,
        "stocks/PASSWD.csv": link,
        "stocks/ZERO.csv": link,
    }
    assert [e["symbol"] for e in report["files"] if "error" not in e] == ["AAA"]
    text = Layout.at(tmp_path / "out").report("ingest").read_text()
    assert "root-secret" not in text and "424242" not in text
    assert raw_volumes(tmp_path / "out", "AAA") == [100 + i for i in range(20)]


def test_allowed_links_are_read_only_inside_the_source(tmp_path, linked_source):
    src, _ = linked_source
    report = ingest.run(tmp_path / "out", source=str(src), jobs=1, allow_links=True)
    reasons = rejected(report)
    assert (
        reasons["stocks/OUT.csv"]
        == reasons["stocks/PASSWD.csv"]
        == ("symbolic link to a file outside the source folder (refused)")
    )
    assert reasons["stocks/ZERO.csv"] == "symbolic link to a file outside the source folder (refused)"
    assert reasons["etfs"] == "symbolic link to a folder outside the source (refused)"
    assert reasons["stocks/DANGLE.csv"] == "dangling symbolic link (its target does not exist)"
    assert reasons["stocks/FIFO.csv"] == "not a regular file (a FIFO, socket or device): refused"
    assert sorted(e["symbol"] for e in report["files"] if "error" not in e) == ["AAA", "IN"]
    assert raw_volumes(tmp_path / "out", "IN") == [100 + i for i in range(7)]
    frame = ingest.load_raw(tmp_path / "out")
    assert not frame["Volume"].isin([424242, 434343]).any()
    assert "root-secret" not in Layout.at(tmp_path / "out").report("ingest").read_text()


def test_a_fifo_given_as_the_source_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "source.zip")
    with pytest.raises(UserError, match="not a folder or a .zip"):
        ingest.run(tmp_path / "out", source=str(tmp_path / "source.zip"), jobs=1)


def test_file_swapped_for_a_link_after_the_scan_is_not_followed(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_bytes(HEADER + b"1999-01-04,1,1,1,1,1,424242\n")
    src = folder_source(tmp_path, {"stocks/AAA.csv": HEADER + b"".join(ticker_lines(3))})
    reader = ingest.read._JoinedBodies()
    (src / "stocks" / "AAA.csv").unlink()
    (src / "stocks" / "AAA.csv").symlink_to(outside)
    with pytest.raises(ingest.limits.Refused, match="symbolic link"):
        reader.read(str(src / "stocks" / "AAA.csv"))
    (src / "stocks" / "AAA.csv").unlink()
    os.mkfifo(src / "stocks" / "AAA.csv")
    with pytest.raises(ingest.limits.Refused, match="not a regular file"):  # and it does not block
        reader.read(str(src / "stocks" / "AAA.csv"))
