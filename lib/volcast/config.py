"""Paths, schemas and defaults: the one place every stage takes them from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
DEFAULT_OUTPUT_DIR = PROJECT_ROOT / "outputs"

KAGGLE_DATASET = "jacksoncrow/stock-market-dataset"
META_FILE = "symbols_valid_meta.csv"
# symbols_valid_meta.csv's header, as Kaggle ships it (the demo and the benchmark trees write it)
META_COLUMNS = (
    "Symbol",
    "Security Name",
    "Listing Exchange",
    "Market Category",
    "ETF",
    "Round Lot Size",
    "Test Issue",
    "Financial Status",
    "CQS Symbol",
    "NASDAQ Symbol",
    "NextShares",
)
SOURCE_SUBDIRS = ("stocks", "etfs")

# Column names every stage uses.
SYMBOL, SECURITY_NAME, DATE = "Symbol", "Security Name", "Date"
OPEN, HIGH, LOW, CLOSE, ADJ_CLOSE, VOLUME = "Open", "High", "Low", "Close", "Adj Close", "Volume"

# Raw dataset contract (DESIGN.md, Problem 1): exactly these columns, in this order.
PRICE_COLUMNS = ("Open", "High", "Low", "Close", "Adj Close")
CSV_COLUMNS = ("Date",) + PRICE_COLUMNS + ("Volume",)
RAW_SCHEMA = pa.schema(
    [
        ("Symbol", pa.string()),
        ("Security Name", pa.string()),
        ("Date", pa.string()),
        *[(name, pa.float64()) for name in PRICE_COLUMNS],
        ("Volume", pa.int64()),
    ]
)
RAW_COLUMNS = tuple(RAW_SCHEMA.names)
# The same on every row of a ticker. Ingest writes and features reads them as Arrow dictionaries
# (RAW_DICTIONARY_SCHEMA), never a string per row; files store no Arrow schema, so they read back as
# RAW_SCHEMA's plain strings.
TICKER_COLUMNS = ("Symbol", "Security Name")
RAW_DICTIONARY_SCHEMA = pa.schema(
    [pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in TICKER_COLUMNS else f for f in RAW_SCHEMA]
)

# Feature contract (Problem 2).
VOL_FEATURE = "vol_moving_avg"
PRICE_FEATURE = "adj_close_rolling_med"
FEATURE_COLUMNS = (VOL_FEATURE, PRICE_FEATURE)
DEFAULT_WINDOW = 30
# Forecasting inputs (features stage, volcast.features.inputs): per ticker, from the current and earlier
# rows only. Volume inputs are log ratios to the ticker's 30-row mean Volume (whatever ``window`` is), whose
# log1p is LOG_VOL_MEAN30; chosen on the validation slice (benchmarks/results/model_eval.md). vol_med30_lr
# (the 30-row median of log Volume) is also the forecast model's target base (train.forecast_model).
LOG_VOL_MEAN30 = "log_vol_mean30"
FORECAST_INPUTS = (
    LOG_VOL_MEAN30,
    "vol_lr_0",
    "vol_lr_1",
    "vol_lr_2",
    "vol_lr_3",
    "vol_mean5_lr",
    "vol_mean10_lr",
    "vol_mean22_lr",
    "vol_med30_lr",
    "vol_std30",
    "return_1d",
    "range_hl",
    "weekday",
    "next_weekday",
    "next_gap_days",
    "next_expiration",
    "next_month_end",
    "next_pre_holiday",
    "log_price_med",
    "dist_52w_high",
)
FEATURES_SCHEMA = pa.schema(
    list(RAW_SCHEMA)
    + [(VOL_FEATURE, pa.float64()), (PRICE_FEATURE, pa.float64())]
    + [(name, pa.float64()) for name in FORECAST_INPUTS]
)

# Stages in DAG order, each with its notebook.
STAGES = ("ingest", "features", "train")
STAGE_NOTEBOOKS = {
    "ingest": "01_ingest.ipynb",
    "features": "02_features.ipynb",
    "train": "03_train.ipynb",
}
DASHBOARD_NOTEBOOK = "dashboard.ipynb"

# Demo market defaults (also the notebooks' literal parameter defaults).
DEMO_SEED = 42
DEMO_TICKERS = 200
DEMO_YEARS = 10

# Serving
DEFAULT_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8000
DEFAULT_DASHBOARD_PORT = 8866


def default_jobs() -> int:
    """Worker processes to use when the user did not say: every core."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def resolve_jobs(jobs: int | None) -> int:
    return default_jobs() if not jobs or jobs <= 0 else int(jobs)


@dataclass(frozen=True)
class Layout:
    """Where a run's outputs live under one output directory (DESIGN.md, "Stages and their contracts")."""

    output_dir: Path

    @classmethod
    def at(cls, output_dir: str | os.PathLike | None = None) -> Layout:
        return cls(Path(output_dir or DEFAULT_OUTPUT_DIR).expanduser().resolve())

    @property
    def data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def models_dir(self) -> Path:
        return self.output_dir / "models"

    @property
    def latest_file(self) -> Path:
        return self.models_dir / "LATEST"

    @property
    def reports_dir(self) -> Path:
        return self.output_dir / "reports"

    @property
    def runs_dir(self) -> Path:
        return self.output_dir / "runs"

    @property
    def cache_dir(self) -> Path:
        """Downloads and generated sources (Kaggle zip, demo market)."""
        return self.output_dir / "cache"

    @property
    def lock_file(self) -> Path:
        return self.output_dir / ".volcast.lock"

    def report(self, stage: str) -> Path:
        return self.reports_dir / f"{stage}.json"
