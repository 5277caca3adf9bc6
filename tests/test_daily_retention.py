"""Retention: a run keeps the N newest models and run records, the served model, the stages' last runs;
dataset versions go only once no reader can be on them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from volcast import retention, storage
from volcast.config import Layout
from volcast.errors import UserError
from volcast.pipeline import run_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


def _make(out: Path, models: list[str], runs: list[str], latest: str, state_runs: dict[str, str]) -> Layout:
    layout = Layout.at(out)
    for m in models:
        (layout.models_dir / m).mkdir(parents=True)
        (layout.models_dir / m / "card.json").write_text("{}")
    for r in runs:
        (layout.runs_dir / r).mkdir(parents=True)
        (layout.runs_dir / r / "manifest.json").write_text("{}")
    layout.latest_file.write_text(latest + "\n")
    (layout.runs_dir / "state.json").write_text(json.dumps({s: {"run_id": r} for s, r in state_runs.items()}))
    return layout


def test_prune_keeps_newest_served_protected_and_lineage(tmp_path):
    models = [f"m{i:02d}" for i in range(15)]
    runs = [f"2026010{i // 10}T{i % 10:02d}" for i in range(14)]
    layout = _make(tmp_path, models, runs, latest="m02", state_runs={"ingest": runs[1], "train": runs[12]})
    result = retention.prune(tmp_path, keep=3, current_run=runs[0], protect=("m05",))
    kept_models = sorted(p.name for p in layout.models_dir.iterdir() if p.is_dir())
    assert kept_models == ["m02", "m05", "m12", "m13", "m14"]
    assert sorted(result["models_removed"]) == sorted(set(models) - set(kept_models))
    kept_runs = sorted(p.name for p in layout.runs_dir.iterdir() if p.is_dir())
    assert kept_runs == sorted({runs[0], runs[1], runs[11], runs[12], runs[13]})
    assert (layout.runs_dir / "state.json").exists() and layout.latest_file.read_text().strip() == "m02"
    # nothing left half-deleted, and a second prune removes nothing
    assert not list(layout.models_dir.glob(".*")) and not list(layout.runs_dir.glob(".*"))
    assert retention.prune(tmp_path, keep=3, current_run=runs[0], protect=("m05",))["models_removed"] == []


@pytest.mark.parametrize("bad", [0, -1, "two", "1.5", True])
def test_keep_must_be_a_whole_number(bad):
    with pytest.raises(UserError, match="--keep"):
        retention.check_keep(bad)


def test_cli_refuses_a_bad_keep_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "run_pipeline.py"),
            "--output-dir",
            str(tmp_path),
            "--keep",
            "0",
            "--stages",
            "ingest",
            "--source",
            "demo",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --keep must be a whole number")


def test_a_run_prunes_old_run_records(tmp_path):
    layout = _make(
        tmp_path, [f"m{i}" for i in range(4)], [f"20200101T00000{i}" for i in range(4)], latest="m0", state_runs={}
    )
    manifest = run_pipeline(
        tmp_path,
        source="demo",
        stages=["ingest"],
        params={"ingest": {"demo_tickers": 3}},
        keep=2,
        progress=False,
        say=lambda _: None,
    )
    runs = sorted(p.name for p in layout.runs_dir.iterdir() if p.is_dir())
    assert runs == ["20200101T000003", manifest["run_id"]]
    assert sorted(p.name for p in layout.models_dir.iterdir() if p.is_dir()) == ["m0", "m2", "m3"]
    assert manifest["retention"]["runs_removed"] == [f"20200101T00000{i}" for i in range(3)]


def test_dataset_versions_go_only_after_the_next_swap(tmp_path):
    final = tmp_path / "data" / "features"
    seen = []
    for k in range(4):
        with storage.publish_dir(final) as staging:
            storage.write_parquet(pa.table({"k": [k]}), staging / "part-00.parquet")
        seen.append(storage.current_version(final))
        # a reader that resolved the link before this swap can still read the version it holds
        if k:
            assert seen[-2].exists() and (seen[-2] / "part-00.parquet").exists()
    versions = sorted(p for p in final.parent.iterdir() if p.name.startswith(".features.v"))
    assert versions == sorted(seen[-2:])
