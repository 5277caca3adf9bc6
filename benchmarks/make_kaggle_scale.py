"""Write a Kaggle-layout source tree (stocks/, etfs/, symbols_valid_meta.csv) at any scale.

    python benchmarks/make_kaggle_scale.py --scale 3 --out benchmarks/data/x3

Material: ``../shared/data/nasdaq-2023.parquet`` (2,758 real tickers, long form). Scale 1 writes the
real tickers as they are; scale k > 1 also writes k-1 copies of every ticker under new names
(``AAPL1``, ``AAPL2``...; same first character, so the same storage partition as the original).
A copy's CSV is byte-identical to its original: the CSV of a ticker is rendered once and written k
times, which keeps the generator I/O-bound. Volume is written as integers (the parquet holds float64),
missing values as empty fields, as in the Kaggle files.

The meta file has the real Kaggle columns. Tickers found in the sample's original meta (if present)
keep their real row; others get a row with a name that says it was made up for the benchmark.
The tree is written to a staging directory beside ``--out`` and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from volcast.config import META_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_PARQUET = SHARED_DATA / "nasdaq-2023.parquet"
DEFAULT_META_ZIP = SHARED_DATA / "stock-market-sample.zip"

CSV_HEADER = b"Date,Open,High,Low,Close,Adj Close,Volume\n"
CSV_COLUMNS = ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]


def copy_names(symbols: list[str], scale: int) -> dict[str, list[str]]:
    """Each real ticker -> its ``scale`` names (the real one first), all distinct.

    A copy is ``<ticker><i>``; if that happens to be a real ticker or an earlier name, letters are
    appended until it is unique (never happens on the 2,758 real tickers, but stay correct).
    """
    taken = set(symbols)
    names: dict[str, list[str]] = {}
    for sym in symbols:
        out = [sym]
        for i in range(1, scale):
            name = f"{sym}{i}"
            while name in taken:
                name += "Z"
            taken.add(name)
            out.append(name)
        names[sym] = out
    return names


def load_real_meta(meta_zip: Path | None) -> dict[str, dict[str, str]]:
    """Real meta rows by NASDAQ Symbol from the sample zip's original meta file (empty if absent)."""
    if meta_zip is None or not Path(meta_zip).exists():
        return {}
    with zipfile.ZipFile(meta_zip) as zf:
        member = next((n for n in zf.namelist() if n.endswith("symbols_valid_meta.csv")), None)
        if member is None:
            return {}
        text = zf.read(member).decode("utf-8")
    return {row["NASDAQ Symbol"]: row for row in csv.DictReader(io.StringIO(text))}


def meta_rows(symbol: str, kind: str, names: list[str], real: dict[str, dict[str, str]]) -> list[dict]:
    base = real.get(symbol)
    if base is None:
        base = {
            "Symbol": symbol,
            "Security Name": f"{symbol} (benchmark row, no real metadata)",
            "Listing Exchange": "Q",
            "Market Category": "G",
            "ETF": "Y" if kind == "etfs" else "N",
            "Round Lot Size": "100",
            "Test Issue": "N",
            "Financial Status": "N",
            "CQS Symbol": "",
            "NASDAQ Symbol": symbol,
            "NextShares": "N",
        }
    rows = []
    for i, name in enumerate(names):
        row = dict(base)
        if i:
            row.update(
                {
                    "Symbol": name,
                    "NASDAQ Symbol": name,
                    "CQS Symbol": name if base.get("CQS Symbol") else "",
                    "Security Name": f"{base['Security Name'].strip()} (benchmark copy {i})",
                }
            )
        rows.append(row)
    return rows


def render_csv(table: pa.Table) -> bytes:
    """One ticker's rows as Kaggle CSV bytes: header unquoted, Volume integral, nulls empty."""
    table = table.select(CSV_COLUMNS)
    table = table.set_column(6, "Volume", pc.cast(table["Volume"], pa.int64()))
    buf = io.BytesIO()
    buf.write(CSV_HEADER)
    pcsv.write_csv(table, buf, pcsv.WriteOptions(include_header=False, quoting_style="none"))
    return buf.getvalue()


def build(parquet: Path, out: Path, scale: int, jobs: int, meta_zip: Path | None, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    table = pq.read_table(parquet)
    table = table.sort_by([("Symbol", "ascending"), ("Date", "ascending")])
    symbols_col = table["Symbol"].combine_chunks()
    # Run boundaries of each Symbol in the sorted table.
    ends = pc.run_end_encode(symbols_col).run_ends.to_numpy()  # type: ignore[attr-defined]
    starts = [0, *ends[:-1].tolist()]
    symbols = [symbols_col[int(s)].as_py() for s in starts]
    kinds = [table["Kind"][int(s)].as_py() for s in starts]
    names = copy_names(symbols, scale)
    real_meta = load_real_meta(meta_zip)

    out = Path(out).resolve()
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    for sub in ("stocks", "etfs"):
        (staging / sub).mkdir(parents=True)

    def write_one(i: int) -> int:
        chunk = table.slice(starts[i], int(ends[i]) - starts[i])
        data = render_csv(chunk)
        for name in names[symbols[i]]:
            with open(staging / kinds[i] / f"{name}.csv", "wb") as handle:
                handle.write(data)
        return chunk.num_rows * scale

    # Threads, not processes: pyarrow's CSV writer and file writes release the GIL, and nothing
    # is forked after pyarrow's own thread pools started.
    rows = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        it = pool.map(write_one, range(len(symbols)))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(symbols), desc=f"kaggle tree x{scale}", unit="ticker")
        for n in it:
            rows += n

    meta = io.StringIO()
    writer = csv.DictWriter(meta, fieldnames=META_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for sym, kind in zip(symbols, kinds):
        writer.writerows(meta_rows(sym, kind, names[sym], real_meta))
    (staging / "symbols_valid_meta.csv").write_text(meta.getvalue(), encoding="utf-8")

    if out.exists():
        shutil.rmtree(out)
    os.rename(staging, out)
    return {
        "out": str(out),
        "scale": scale,
        "files": len(symbols) * scale,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="copies of every ticker (1 = the real tickers)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (replaced if it exists)")
    parser.add_argument("--parquet", type=Path, default=DEFAULT_PARQUET, help="long-form source parquet")
    parser.add_argument(
        "--meta-zip",
        type=Path,
        default=DEFAULT_META_ZIP,
        help="zip holding the original symbols_valid_meta.csv (real names; optional)",
    )
    parser.add_argument("--jobs", type=int, default=0, help="writer threads (0 = all cores)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be >= 1")
    if not args.parquet.exists():
        parser.error(f"{args.parquet} not found; pass --parquet")
    jobs = args.jobs if args.jobs > 0 else (os.cpu_count() or 1)
    summary = build(args.parquet, args.out, args.scale, jobs, args.meta_zip, progress=not args.quiet)
    print(f"wrote {summary['files']} files, {summary['rows']:,} rows to {summary['out']} in {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
