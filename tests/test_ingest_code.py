"""Output made by other ingest code is never reused: the stage's code digest covers the whole package."""

from __future__ import annotations

from volcast import pipeline, storage


def test_pipeline_ingest_code_names_files_that_exist():
    stage = pipeline.STAGES["ingest"]
    assert all((pipeline.LIBRARY_DIR / name).exists() for name in stage.code)  # a missing name hashes nothing


def test_code_digest_of_a_package_changes_with_any_of_its_files(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    for name in ("__init__.py", "parse.py", "write.py"):
        (package / name).write_text(f"# {name}\n")
    before = storage.code_digest(package)
    assert before != storage.code_digest()
    (package / "write.py").write_text("# write.py, changed\n")
    changed = storage.code_digest(package)
    (package / "extra.py").write_text("\n")
    assert len({before, changed, storage.code_digest(package)}) == 3
