"""The generated demo market: a reproducible market in the Kaggle layout, labelled as generated."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from .. import config
from ..config import CSV_COLUMNS
from ..errors import UserError

DEMO_VERSION = 1
DEMO_END = np.datetime64("2020-04-01")  # where the Kaggle dataset ends; fixed so the demo is reproducible


def _demo_names(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    names: list[str] = []
    seen = set()
    while len(names) < n:
        size = int(rng.integers(3, 5))
        name = "".join(rng.choice(letters, size))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def generate_demo_market(
    dest: str | os.PathLike,
    n_tickers: int = config.DEMO_TICKERS,
    years: int = config.DEMO_YEARS,
    seed: int = config.DEMO_SEED,
) -> Path:
    """Write a generated market in the Kaggle layout into ``dest`` and return ``dest``.

    Stocks and ETFs (about 1 in 5), business days ending 2020-04-01, prices as geometric random walks
    (some tickers list later), log-normal volumes with persistence (AR(1) in log volume, bigger on big
    moves), and a meta file with the real columns. Everything is labelled as generated (GENERATED.txt,
    "(generated)" in every Security Name). A few real-data quirks are reproduced on purpose: one class
    share ``<X>-A`` whose meta ``Symbol`` is ``<X>$A``; one ticker without metadata; one file with a row
    of empty values and Volume written as ``123.0``; occasional zero volumes. Deterministic for a seed.
    """
    if n_tickers < 1 or years < 1:
        raise UserError("demo_tickers and demo_years must be at least 1")
    dest = Path(dest)
    rng = np.random.default_rng(seed)
    start = DEMO_END - np.timedelta64(int(round(365.25 * years)), "D")
    all_days = np.arange(start, DEMO_END + np.timedelta64(1, "D"))
    days = all_days[np.is_busday(all_days)]
    n_days = len(days)
    date_text = pa.array(np.datetime_as_string(days, unit="D"))

    names = _demo_names(rng, n_tickers)
    n_etf = max(1, round(n_tickers * 0.2)) if n_tickers > 1 else 0
    is_etf = np.zeros(n_tickers, bool)
    is_etf[rng.choice(n_tickers, n_etf, replace=False)] = True
    stock_idx = np.flatnonzero(~is_etf)
    if len(stock_idx) >= 3:
        names[stock_idx[1]] += "-A"  # class share: meta Symbol spells it with "$"
    no_meta = int(stock_idx[-1]) if len(stock_idx) >= 4 else -1
    float_volume = int(stock_idx[2]) if len(stock_idx) >= 5 else -1

    # Listing day: most tickers cover the whole span, some list later (at least 60 days of data).
    first = np.where(rng.random(n_tickers) < 0.7, 0, rng.integers(0, max(1, n_days - 60), n_tickers))
    sigma = rng.uniform(0.008, 0.035, n_tickers) * np.where(is_etf, 0.6, 1.0)
    drift = rng.normal(0.0003, 0.0004, n_tickers)
    returns = drift[:, None] + sigma[:, None] * rng.standard_normal((n_tickers, n_days))
    p0 = np.exp(rng.normal(3.2, 1.0, n_tickers))
    close = p0[:, None] * np.exp(np.cumsum(returns, axis=1))
    open_ = np.concatenate([p0[:, None], close[:, :-1]], axis=1) * np.exp(
        sigma[:, None] / 3 * rng.standard_normal((n_tickers, n_days))
    )
    wick = np.abs(sigma[:, None] / 2 * rng.standard_normal((2, n_tickers, n_days)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    yield_ = np.where(rng.random(n_tickers) < 0.6, rng.uniform(0.005, 0.04, n_tickers), 0.0)
    adj = close * np.exp(-yield_[:, None] * (n_days - 1 - np.arange(n_days)) / 252)

    # Log volume: AR(1) around a ticker level, pushed up on big moves.
    level = rng.normal(12.0, 1.5, n_tickers) - np.where(is_etf, 1.0, 0.0)
    phi = rng.uniform(0.80, 0.95, n_tickers)
    noise = rng.uniform(0.2, 0.45, n_tickers)[:, None] * rng.standard_normal((n_tickers, n_days))
    shock = 0.35 * np.abs(returns - drift[:, None]) / sigma[:, None]
    log_vol = np.empty((n_tickers, n_days))
    log_vol[:, 0] = level
    for t in range(1, n_days):
        log_vol[:, t] = level + phi * (log_vol[:, t - 1] - level) + noise[:, t]
    volume = np.rint(np.exp(log_vol + shock)).astype(np.int64)
    volume[rng.random((n_tickers, n_days)) < 0.002] = 0  # thin days, as in the real data

    staging = dest.parent / f".{dest.name}.staging-{os.getpid()}"
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    for sub in config.SOURCE_SUBDIRS:
        (staging / sub).mkdir(parents=True)
    header = (",".join(CSV_COLUMNS) + "\n").encode()
    for i, name in enumerate(names):
        sl = slice(int(first[i]), n_days)
        table = pa.table(
            {
                "Date": date_text[sl],
                "Open": np.round(open_[i, sl], 4),
                "High": np.round(high[i, sl], 4),
                "Low": np.round(low[i, sl], 4),
                "Close": np.round(close[i, sl], 4),
                "Adj Close": np.round(adj[i, sl], 6),
                "Volume": volume[i, sl] if i != float_volume else volume[i, sl].astype(np.float64),
            }
        )
        out = io.BytesIO()
        out.write(header)
        pcsv.write_csv(table, out, pcsv.WriteOptions(include_header=False, quoting_style="none"))
        data = out.getvalue()
        if i == float_volume:  # like BEP.csv: floats for Volume and a row of empty values
            lines = data.split(b"\n")
            j = len(lines) // 2
            lines[j] = lines[j].split(b",")[0] + b",,,,,,"
            data = b"\n".join(
                ln if k == 0 or k == j or not ln else ln + (b".0" if not ln.endswith(b".0") else b"")
                for k, ln in enumerate(lines)
            )
        (staging / ("etfs" if is_etf[i] else "stocks") / f"{name}.csv").write_bytes(data)

    meta = io.StringIO()
    writer = csv.writer(meta, lineterminator="\n")
    writer.writerow(config.META_COLUMNS)
    for i in sorted(range(n_tickers), key=lambda k: names[k]):
        if i == no_meta:
            continue
        name = names[i]
        kind = "ETF Fund" if is_etf[i] else "Corp"
        title = f"Demo {kind} {name.replace('-', ' Class ')} (generated)"
        writer.writerow(
            [
                name.replace("-", "$"),
                title,
                "Q",
                "G" if not is_etf[i] else " ",
                "Y" if is_etf[i] else "N",
                100,
                "N",
                "N",
                "",
                name,
                "N",
            ]
        )
    (staging / config.META_FILE).write_text(meta.getvalue(), encoding="utf-8")
    (staging / "GENERATED.txt").write_text(
        f"GENERATED demo market, not real data (volcast demo v{DEMO_VERSION}).\n"
        f"seed={seed} tickers={n_tickers} years={years} days={n_days} end={DEMO_END}\n"
        "Quirks on purpose: a class share whose meta Symbol uses '$', one ticker without metadata,\n"
        "one file with a row of empty values and float Volumes, occasional zero volumes.\n",
        encoding="utf-8",
    )
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, dest)
    return dest


def _demo_dir(cache_dir: Path, seed: int, tickers: int, years: int) -> Path:
    return cache_dir / f"demo-v{DEMO_VERSION}-seed{seed}-t{tickers}-y{years}"
