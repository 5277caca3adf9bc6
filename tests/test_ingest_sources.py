"""Sources: Kaggle (client replaced at its import), credentials, the default choice, the demo generator."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from volcast import config, ingest
from volcast.config import Layout
from volcast.errors import UserError

KAGGLE_ENV = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME")


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A home without any Kaggle credentials."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in KAGGLE_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return ingest.generate_demo_market(tmp_path_factory.mktemp("demo") / "market", n_tickers=12, years=2, seed=5)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- credentials ------------------------------------------------------------------------------


def test_no_credentials(no_credentials):
    assert not ingest.has_kaggle_credentials()
    message = ingest.describe_default_source()
    assert "demo" in message and "KAGGLE_API_TOKEN" in message and "\n" not in message


@pytest.mark.parametrize("setup", ["token_env", "token_file", "legacy_env", "kaggle_json", "config_dir", "oauth"])
def test_credentials_found(no_credentials, monkeypatch, tmp_path, setup):
    home = no_credentials
    if setup == "token_env":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_x")
    elif setup == "token_file":
        (home / ".kaggle").mkdir()
        (home / ".kaggle" / "access_token").write_text("KGAT_x\n")
    elif setup == "legacy_env":
        monkeypatch.setenv("KAGGLE_USERNAME", "me")
        monkeypatch.setenv("KAGGLE_KEY", "k")
    elif setup == "kaggle_json":
        (home / ".kaggle").mkdir()
        (home / ".kaggle" / "kaggle.json").write_text('{"username": "me", "key": "k"}')
    elif setup == "config_dir":
        cfg = tmp_path / "cfg"
        cfg.mkdir()
        (cfg / "kaggle.json").write_text('{"username": "me", "key": "k"}')
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    else:
        (home / ".kaggle").mkdir()
        (home / ".kaggle" / "credentials.json").write_text("{}")
    assert ingest.has_kaggle_credentials()
    assert "Kaggle credentials found" in ingest.describe_default_source()


def test_half_credentials_are_none(no_credentials, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    (no_credentials / ".kaggle").mkdir()
    (no_credentials / ".kaggle" / "access_token").write_text("  \n")  # empty token file
    assert not ingest.has_kaggle_credentials()


def test_checking_credentials_does_not_import_kaggle(no_credentials):
    code = (
        "import sys, volcast.ingest as i; i.has_kaggle_credentials(); i.describe_default_source(); "
        "print('kaggle' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False" and out.stderr == ""


# --- Kaggle with the client replaced ----------------------------------------------------------


class FakeKaggleApi:
    """Stands in for kaggle.api.kaggle_api_extended.KaggleApi (kaggle 2.2)."""

    calls: list = []
    fail_auth = False
    unzip_itself = False
    source: Path | None = None

    def authenticate(self):
        FakeKaggleApi.calls.append(("authenticate",))
        if FakeKaggleApi.fail_auth:
            raise SystemExit(1)  # what the real client does when no credential works

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=()):
        FakeKaggleApi.calls.append(("download", dataset, path, unzip))
        dest = Path(path)
        if FakeKaggleApi.unzip_itself:
            import shutil

            shutil.copytree(FakeKaggleApi.source, dest, dirs_exist_ok=True)
            return
        with zipfile.ZipFile(dest / (dataset.split("/")[1] + ".zip"), "w") as zf:
            for p in sorted(FakeKaggleApi.source.rglob("*")):
                if p.is_file():
                    zf.write(p, str(p.relative_to(FakeKaggleApi.source)))


@pytest.fixture
def fake_kaggle(monkeypatch, small_demo):
    """Replace the kaggle package at import: the code under test runs its real import statement."""
    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FakeKaggleApi
    for name, mod in {
        "kaggle": types.ModuleType("kaggle"),
        "kaggle.api": types.ModuleType("kaggle.api"),
        "kaggle.api.kaggle_api_extended": module,
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(sys.modules["kaggle"], "api", sys.modules["kaggle.api"], raising=False)
    monkeypatch.setattr(sys.modules["kaggle.api"], "kaggle_api_extended", module, raising=False)
    FakeKaggleApi.calls, FakeKaggleApi.fail_auth, FakeKaggleApi.unzip_itself = [], False, False
    FakeKaggleApi.source = small_demo
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_test")
    return FakeKaggleApi


def test_kaggle_source_downloads_the_dataset_and_ingests_the_zip(fake_kaggle, tmp_path, small_demo):
    report = ingest.run(tmp_path / "out", source="kaggle", jobs=1)
    downloads = [c for c in fake_kaggle.calls if c[0] == "download"]
    assert fake_kaggle.calls[0] == ("authenticate",)
    assert len(downloads) == 1
    _, slug, path, unzip = downloads[0]
    assert slug == "jacksoncrow/stock-market-dataset" == config.KAGGLE_DATASET
    assert unzip is False and Path(path) == Layout.at(tmp_path / "out").cache_dir / "kaggle"
    assert report["source"]["kind"] == "kaggle" and report["source"]["path"].endswith("stock-market-dataset.zip")
    n_csv = len(list(small_demo.glob("*/*.csv")))
    assert report["totals"]["files"] == n_csv
    df = pd.read_parquet(Layout.at(tmp_path / "out").raw_dir)
    assert df["Symbol"].nunique() == n_csv


def test_kaggle_client_that_unzips(fake_kaggle, tmp_path):
    fake_kaggle.unzip_itself = True
    assert ingest.download_kaggle(tmp_path / "dl") == tmp_path / "dl"


def test_kaggle_default_when_credentials_exist(fake_kaggle, tmp_path, capsys):
    report = ingest.run(tmp_path / "out", source=None, jobs=1)
    assert report["source"]["kind"] == "kaggle"
    assert "Kaggle credentials found (KAGGLE_API_TOKEN)" in capsys.readouterr().out


def test_kaggle_without_credentials_is_one_clear_line(no_credentials, tmp_path):
    with pytest.raises(UserError) as err:
        ingest.run(tmp_path / "out", source="kaggle")
    text = str(err.value)
    assert "\n" not in text and "KAGGLE_API_TOKEN" in text and "kaggle.json" in text


def test_kaggle_rejected_credentials(fake_kaggle, tmp_path):
    fake_kaggle.fail_auth = True
    with pytest.raises(UserError, match="rejected the credentials"):
        ingest.download_kaggle(tmp_path / "dl")


def test_default_is_demo_without_credentials(no_credentials, tmp_path, capsys):
    report = ingest.run(tmp_path / "out", source=None, jobs=1, demo_tickers=6, demo_years=1)
    assert report["source"]["kind"] == "demo" and report["source"]["generated"]
    assert "GENERATED demo data" in capsys.readouterr().out


def test_bad_sources(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        ingest.resolve_source(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="Kaggle layout"):
        ingest.run(tmp_path / "out", source=str(tmp_path / "empty"))
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError):
        ingest.resolve_source(str(tmp_path / "x.zip"), tmp_path)


def test_zip_with_top_folder_and_folder_equal(small_demo, tmp_path):
    archive = tmp_path / "nested.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(small_demo.rglob("*")):
            if p.is_file():
                zf.write(p, "stock-market-dataset/" + str(p.relative_to(small_demo)))
    a = ingest.run(tmp_path / "a", source=str(archive), jobs=1)
    b = ingest.run(tmp_path / "b", source=str(small_demo), jobs=2)
    assert a["totals"] == b["totals"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(Layout.at(tmp_path / "a").raw_dir), pd.read_parquet(Layout.at(tmp_path / "b").raw_dir)
    )


# --- demo generator ----------------------------------------------------------------------------


def test_demo_is_deterministic_and_labelled(tmp_path):
    a = ingest.generate_demo_market(tmp_path / "a", n_tickers=30, years=3, seed=9)
    b = ingest.generate_demo_market(tmp_path / "b", n_tickers=30, years=3, seed=9)
    c = ingest.generate_demo_market(tmp_path / "c", n_tickers=30, years=3, seed=10)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)
    assert "GENERATED" in (a / "GENERATED.txt").read_text()
    stocks, etfs = list((a / "stocks").glob("*.csv")), list((a / "etfs").glob("*.csv"))
    assert stocks and etfs and len(stocks) + len(etfs) == 30
    with open(a / config.META_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
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
    ]
    assert all(r["Security Name"].endswith("(generated)") for r in rows)
    assert any(r["Symbol"] != r["NASDAQ Symbol"] for r in rows)  # a class share spelled with "$"
    assert {r["ETF"] for r in rows} == {"Y", "N"}


def test_demo_series_look_like_markets(tmp_path):
    root = ingest.generate_demo_market(tmp_path / "m", n_tickers=200, years=10, seed=42)
    frames = {p.stem: pd.read_csv(p) for p in sorted(root.glob("*/*.csv"))[:40]}
    for symbol, df in frames.items():
        df = df.dropna()
        dates = pd.to_datetime(df["Date"])
        assert (dates.dt.day_of_week < 5).all() and dates.is_monotonic_increasing
        assert (df["High"] >= df[["Open", "Close"]].max(axis=1) - 1e-3).all()
        assert (df["Low"] <= df[["Open", "Close"]].min(axis=1) + 1e-3).all()
        vol = np.log(df["Volume"][df["Volume"] > 0].to_numpy(float))  # zero days are rare, kept aside
        assert np.corrcoef(vol[:-1], vol[1:])[0, 1] > 0.5, symbol  # persistent volumes
    first = min(df["Date"].min() for df in frames.values())
    last = max(df["Date"].max() for df in frames.values())
    assert 9.9 <= (pd.Timestamp(last) - pd.Timestamp(first)).days / 365.25 <= 10.01


def test_demo_source_ingests_with_its_labels(tmp_path):
    report = ingest.run(tmp_path / "out", source="demo", jobs=1, demo_tickers=20, demo_years=2, demo_seed=3)
    assert report["source"]["generated"] and "generated" in report["source"]["label"]
    df = pd.read_parquet(Layout.at(tmp_path / "out").raw_dir)
    assert df["Symbol"].nunique() == 20
    named = df["Security Name"].dropna().unique()
    assert len(named) and all(name.endswith("(generated)") for name in named)
    assert len(report["tickers_without_metadata"]) == 1
    assert report["totals"]["rows_quarantined"] == 1  # the row of empty values, on purpose
