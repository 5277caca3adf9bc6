"""Shared fixtures: real data from ../shared when present, generated demo data otherwise.

``VOLCAST_HIDE_SHARED=1`` makes the tests behave as on a fresh clone with no ``../shared`` beside it
(CI runs the suite both ways, ``.ci/run``). Anything in tests/ that wants ../shared asks ``shared_data()``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_ZIP = SHARED_DATA / "stock-market-sample.zip"
NASDAQ_PARQUET = SHARED_DATA / "nasdaq-2023.parquet"
HIDE_SHARED_ENV = "VOLCAST_HIDE_SHARED"


def shared_hidden() -> bool:
    return os.environ.get(HIDE_SHARED_ENV, "").strip().lower() not in ("", "0", "false", "no")


def shared_data(name: str | None = None) -> Path | None:
    """``../shared/data`` (or a file in it) when it exists and is not hidden by VOLCAST_HIDE_SHARED; else None."""
    if shared_hidden():
        return None
    path = SHARED_DATA / name if name else SHARED_DATA
    return path if path.exists() else None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path | None:
    return shared_data()


@pytest.fixture(scope="session")
def sample_source(tmp_path_factory) -> Path:
    """The real 209-ticker sample zip, or a generated demo market in the same layout when absent."""
    sample = shared_data(SAMPLE_ZIP.name)
    if sample is not None:
        return sample
    from volcast.ingest import generate_demo_market

    return generate_demo_market(tmp_path_factory.mktemp("demo-source"), n_tickers=40, years=4, seed=7)


@pytest.fixture(scope="session")
def sample_is_real(sample_source) -> bool:
    return Path(sample_source).suffix == ".zip"


# Fixtures whose data comes from ../shared when it is there; module texts that ask for it directly.
_SHARED_FIXTURES = {"sample_source", "sample_is_real", "shared_data_dir"}
_SHARED_CALLS = ("shared_data(", "SAMPLE_ZIP", "NASDAQ_PARQUET", "SHARED_DATA")


def _module_asks_for_shared(module) -> bool:
    path = getattr(module, "__file__", None)
    if not path or Path(path).name == "conftest.py":
        return False
    text = Path(path).read_text(encoding="utf-8")
    return any(call in text for call in _SHARED_CALLS)


def pytest_collection_modifyitems(config, items):
    """Mark ``uses_shared`` every test whose data depends on whether ../shared/data is there.

    CI's second pass (``VOLCAST_HIDE_SHARED=1 pytest tests -m uses_shared``) re-runs exactly these as on a
    fresh clone; every other test runs on generated data in both passes already.
    """
    asked: dict[str, bool] = {}
    for item in items:
        module = getattr(item, "module", None)
        key = getattr(module, "__name__", "")
        if key not in asked:
            asked[key] = module is not None and _module_asks_for_shared(module)
        if asked[key] or _SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.uses_shared)


@pytest.fixture
def row_group_reads(monkeypatch) -> list:
    """Every ``ParquetFile.read_row_groups`` call of the test, as (row groups asked for, rows returned)."""
    import pyarrow.parquet as pq

    read: list = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        table = original(self, row_groups, *args, **kwargs)
        read.append((list(row_groups), table.num_rows))
        return table

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    return read
