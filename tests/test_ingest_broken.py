"""A folder of broken files: every valid row is kept, every other row or file is reported.

Each test file is written line by line with what should happen to each line, so the expectation is
stated by hand next to the data rather than derived from the code under test.
"""

from __future__ import annotations

import pandas as pd
import pytest

from volcast import config, ingest
from volcast.config import Layout

H = "Date,Open,High,Low,Close,Adj Close,Volume"
KEEP = "keep"

# name -> (kind of file, [(line text, expectation)], newline, leading bytes)
# expectation: KEEP, a quarantine kind, or None (header / blank line: no row)
FILES = {
    "GOOD": (
        "stocks",
        [(H, None), ("2020-01-02,1.0,2.0,0.5,1.5,1.4,100", KEEP), ("2020-01-03,1.5,2.5,1.0,2.0,1.9,0", KEEP)],
        "\n",
        b"",
    ),
    "REORD": (
        "stocks",
        [
            ("Volume,Date,Note,Close,Adj Close,Open,Low,High", None),
            ("300,2020-01-02,hello,1.5,1.4,1.0,0.5,2.0", KEEP),
            ("400,2020-01-03,,2.0,1.9,1.5,1.0,2.5", KEEP),
        ],
        "\n",
        b"",
    ),
    "TEXTVOL": (
        "stocks",
        [(H, None), ("2020-01-02,1,2,0.5,1.5,1.4,abc", "non-numeric"), ("2020-01-03,1,2,0.5,1.5,1.4,12", KEEP)],
        "\n",
        b"",
    ),
    "FRAC": (
        "stocks",
        [
            (H, None),
            ("2020-01-02,1,2,0.5,1.5,1.4,12.5", "non-integral"),
            ("2020-01-03,1,2,0.5,1.5,1.4,5254.0", KEEP),
            ("2020-01-06,1,2,0.5,1.5,1.4,1e3", KEEP),
        ],
        "\n",
        b"",
    ),
    "NEG": (
        "stocks",
        [(H, None), ("2020-01-02,1,2,0.5,1.5,1.4,-3", "negative"), ("2020-01-03,-1,2,0.5,0,1.4,7", KEEP)],
        "\n",
        b"",
    ),
    "BIGVOL": (
        "stocks",
        [
            (H, None),
            ("2020-01-02,1,2,0.5,1.5,1.4,9223372036854775808", "overflow"),
            ("2020-01-03,1,2,0.5,1.5,1.4,9223372036854775807", KEEP),
            ("2020-01-06,1,2,0.5,1.5,1.4,000000000000000000000012", KEEP),
        ],
        "\n",
        b"",
    ),
    "DATES": (
        "stocks",
        [
            (H, None),
            ("2020-01-03,1,2,0.5,1.5,1.4,10", KEEP),
            ("2021-02-30,1,2,0.5,1.5,1.4,10", "bad-date"),
            ("2020/01/05,1,2,0.5,1.5,1.4,10", "bad-date"),
            ("20200106,1,2,0.5,1.5,1.4,10", "bad-date"),
            ("2020-13-01,1,2,0.5,1.5,1.4,10", "bad-date"),
            ("2020-01-03,9,9,9,9,9,99", "duplicate-date"),
            ("2020-01-02,1,2,0.5,1.5,1.4,11", KEEP),  # out of order: sorted in the output
            ("", None),  # a blank line is not a row
            ("2020-01-02,1,2,0.5,1.5,1.4,12", "duplicate-date"),
        ],
        "\n",
        b"",
    ),
    "VALUES": (
        "stocks",
        [
            (H, None),
            ("2020-01-02,,2,0.5,1.5,1.4,10", "missing"),
            ("2020-01-03,inf,2,0.5,1.5,1.4,10", "non-finite"),
            ("2020-01-06,1,nan,0.5,1.5,1.4,10", "non-finite"),
            ("2020-01-07,1,2,x,1.5,1.4,10", "non-numeric"),
            ("2020-01-08,1,2,0.5", "malformed"),
            ("2020-01-09,1,2,0.5,1.5,1.4,10,extra", "malformed"),
            (",1,2,0.5,1.5,1.4,10", "missing"),
            ("2020-01-10,1,2,0.5,1.5,1.4,10", KEEP),
        ],
        "\n",
        b"",
    ),
    "CRLF": (
        "stocks",
        [
            (H, None),
            ("2020-01-02,1,2,0.5,1.5,1.4,10", KEEP),
            ("2020-01-03,1,2,0.5,1.5,1.4,x", "non-numeric"),
            ("2020-01-06,1,2,0.5,1.5,1.4,30", KEEP),
        ],
        "\r\n",
        b"",
    ),
    "BOM": ("etfs", [(H, None), ("2020-01-02,1,2,0.5,1.5,1.4,10", KEEP)], "\n", b"\xef\xbb\xbf"),
    "NOTAIL": (
        "etfs",
        [(H, None), ("2020-01-02,1,2,0.5,1.5,1.4,10", KEEP), ("2020-01-03,1,2,0.5,1.5,1.4,11", KEEP)],
        "no-tail",
        b"",
    ),  # no final newline
}
# Files whose bytes are written directly: name -> (kind, bytes, rows kept, [(line, kind)]) or a rejection.
LATIN = (
    H + "\n2020-01-02,1,2,0.5,1.5,1.4,10\n2020-01-03,1,2,0.5,1.5,1.4,1\xe92\n2020-01-06,1,2,0.5,1.5,1.4,30\n"
).encode("latin-1")
REJECTED = {
    "EMPTY": (b"", "empty"),
    "HEADERONLY": ((H + "\n").encode(), "header only"),
    "NOADJ": (b"Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,10\n", "Adj Close"),
    "BINARY": (bytes(range(256)) * 4, "binary"),
    "NOTCSV": ("\u00e9t\u00e9 \u00e0 la plage\nrien \u00e0 voir\n".encode("latin-1"), "missing required column"),
}


def write_file(path, lines, newline, lead):
    sep, tail = ("\n", "") if newline == "no-tail" else (newline, newline)
    text = sep.join(line for line, _ in lines) + tail
    path.write_bytes(lead + text.encode("utf-8"))


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    src = root / "src"
    for sub in config.SOURCE_SUBDIRS:
        (src / sub).mkdir(parents=True)
    for name, (sub, lines, newline, lead) in FILES.items():
        write_file(src / sub / f"{name}.csv", lines, newline, lead)
    (src / "stocks" / "LATIN.csv").write_bytes(LATIN)
    for name, (data, _) in REJECTED.items():
        (src / "stocks" / f"{name}.csv").write_bytes(data)
    (src / "stocks" / "README.txt").write_text("not a ticker file: ignored")
    (src / config.META_FILE).write_text("Symbol,Security Name,NASDAQ Symbol\nGOOD,Good Inc,GOOD\n")
    report = ingest.run(root / "out", source=str(src), jobs=2)
    return root / "out", report


def expected_rows():
    keep, quarantine = {}, set()
    for name, (_, lines, _, _) in FILES.items():
        for lineno, (_, what) in enumerate(lines, start=1):
            if what == KEEP:
                keep[name] = keep.get(name, 0) + 1
            elif what:
                quarantine.add((name, lineno, what))
    keep["LATIN"] = 2
    quarantine.add(("LATIN", 3, "encoding"))
    return keep, quarantine


def test_every_valid_row_kept(broken_run):
    out, _ = broken_run
    df = pd.read_parquet(Layout.at(out).raw_dir)
    keep, _ = expected_rows()
    assert df.groupby("Symbol").size().to_dict() == keep
    # Spot values: columns matched by name, 5254.0 and 1e3 integral, int64 extremes, order by date.
    reord = df[df.Symbol == "REORD"].iloc[0]
    values = (reord.Open, reord.High, reord.Low, reord.Close, reord["Adj Close"], reord.Volume)
    assert values == (1.0, 2.0, 0.5, 1.5, 1.4, 300)
    assert df[df.Symbol == "FRAC"].Volume.tolist() == [5254, 1000]
    assert df[df.Symbol == "BIGVOL"].Volume.tolist() == [2**63 - 1, 12]
    assert df[df.Symbol == "DATES"].Date.tolist() == ["2020-01-02", "2020-01-03"]
    assert df[df.Symbol == "DATES"].Volume.tolist() == [11, 10]  # the first of each date
    assert df[df.Symbol == "LATIN"].Volume.tolist() == [10, 30]
    assert df[df.Symbol == "GOOD"]["Security Name"].tolist() == ["Good Inc"] * 2
    assert df[df.Symbol != "GOOD"]["Security Name"].isna().all()


def test_every_other_row_quarantined_with_line_and_reason(broken_run):
    out, report = broken_run
    q = ingest.load_quarantine(out)
    _, expected = expected_rows()
    assert set(zip(q["symbol"], q["line"], q["kind"])) == expected
    assert len(q) == len(expected)
    assert (q["reason"].str.len() > 5).all()
    by_line = {(s, line): r for s, line, r in zip(q["symbol"], q["line"], q["reason"])}
    assert "12.5" in by_line[("FRAC", 2)]
    assert "first on line 2" in by_line[("DATES", 7)]
    assert "first on line 8" in by_line[("DATES", 10)]
    assert "non-UTF-8" in by_line[("LATIN", 3)]
    assert q.loc[(q.symbol == "VALUES") & (q.line == 6), "text"].item() == "2020-01-08,1,2,0.5"
    assert set(q["file"]) >= {"stocks/DATES.csv", "stocks/CRLF.csv"}


def test_every_bad_file_reported(broken_run):
    _, report = broken_run
    rejected = {r["symbol"]: r["reason"] for r in report["rejected_files"]}
    assert set(rejected) == set(REJECTED)
    for name, (_, words) in REJECTED.items():
        assert words.lower() in rejected[name].lower(), (name, rejected[name])
    assert report["totals"]["files_rejected"] == len(REJECTED)


def test_counts_add_up(broken_run):
    _, report = broken_run
    keep, quarantine = expected_rows()
    t = report["totals"]
    assert t["rows_kept"] == sum(keep.values())
    assert t["rows_quarantined"] == len(quarantine)
    assert t["rows_read"] == t["rows_kept"] + t["rows_quarantined"]
    for entry in report["files"]:
        assert entry["rows_read"] == entry["rows_kept"] + entry["rows_quarantined"]
    by_symbol = {e["symbol"]: e for e in report["files"]}
    assert by_symbol["GOOD"]["zero_volume_rows"] == 1
    assert by_symbol["NEG"]["nonpositive_price_rows"] == 1
    assert t["files"] == len(FILES) + 1 + len(REJECTED)  # README.txt is not a ticker file


@pytest.mark.parametrize(
    "text,expected",
    [
        ("5254", 5254),
        ("5254.0", 5254),
        ("5254.000", 5254),
        ("+7", 7),
        ("1e3", 1000),
        ("1.5e3", 1500),
        ("0", 0),
        ("-0", 0),
        ("9223372036854775807", 2**63 - 1),
        ("0009223372036854775807", 2**63 - 1),
        ("12.5", None),
        ("-3", None),
        ("9223372036854775808", None),
        ("1e19", None),
        ("abc", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        (" 5 ", 5),
        ("1,000", None),
    ],
)
def test_volume_text(text, expected):
    # Spaces around a number are ignored (as Arrow's typed CSV reader does); a date must be exact.
    # Two rows so the first (valid) row keeps the typed fast path from deciding the whole file.
    data = f"{H}\n2020-01-01,1,1,1,1,1,1\n2020-01-02,1,1,1,1,1,{text}\n".encode()
    parsed = ingest.parse_csv(data, "X")
    vols = parsed.table["Volume"].to_pylist()
    if expected is None:
        assert vols == [1] and parsed.counts["rows_quarantined"] == 1
    else:
        assert vols == [1, expected]


def test_duplicate_reported_after_an_invalid_first(tmp_path):
    # The first row of a date is invalid: the later valid row of that date is the one kept.
    data = f"{H}\n2020-01-02,,1,1,1,1,1\n2020-01-02,1,1,1,1,1,5\n".encode()
    parsed = ingest.parse_csv(data, "X")
    assert parsed.table["Volume"].to_pylist() == [5]
    assert parsed.quarantine["kind"].to_pylist() == ["missing"]


def test_parse_never_raises_on_garbage():
    import random

    rng = random.Random(3)
    alphabet = b'0123456789,.-\n\r e\xff"ab'
    for _ in range(300):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        parsed = ingest.parse_csv(H.encode() + b"\n" + body, "X")
        c = parsed.counts
        assert c["rows_read"] == c["rows_kept"] + c["rows_quarantined"]
        if parsed.table is not None:
            assert parsed.table.schema.equals(config.RAW_SCHEMA)
