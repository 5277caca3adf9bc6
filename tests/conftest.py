"""Shared fixtures: real data from ../shared when present, generated demo data otherwise."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_ZIP = SHARED_DATA / "stock-market-sample.zip"
NASDAQ_PARQUET = SHARED_DATA / "nasdaq-2023.parquet"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path | None:
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture(scope="session")
def sample_source(tmp_path_factory) -> Path:
    """The real 209-ticker sample zip, or a generated demo market in the same layout when absent."""
    if SAMPLE_ZIP.exists():
        return SAMPLE_ZIP
    from volcast.ingest import generate_demo_market

    return generate_demo_market(tmp_path_factory.mktemp("demo-source"), n_tickers=40, years=4, seed=7)


@pytest.fixture(scope="session")
def sample_is_real(sample_source) -> bool:
    return Path(sample_source).suffix == ".zip"
