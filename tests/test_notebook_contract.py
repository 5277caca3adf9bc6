"""Each stage notebook declares exactly the parameters the pipeline and its library function use.

A renamed parameter must fail here rather than be silently ignored by papermill.
"""

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from volcast import config, pipeline
from volcast.errors import UserError


@pytest.mark.parametrize("stage", [s.name for s in pipeline.DAG])
def test_stage_notebook_has_exactly_one_parameters_cell(stage):
    nb = nbformat.read(pipeline.STAGES[stage].notebook_path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("stage", [s.name for s in pipeline.DAG])
def test_notebook_parameters_are_the_library_run_parameters(stage):
    spec = pipeline.STAGES[stage]
    declared = set(papermill.inspect_notebook(str(spec.notebook_path)))
    run_params = set(inspect.signature(spec.run_function()).parameters)
    assert declared == run_params | set(spec.notebook_only)


@pytest.mark.parametrize("stage", [s.name for s in pipeline.DAG])
def test_parameters_the_pipeline_injects_exist_in_the_notebook(tmp_path, stage):
    declared = set(papermill.inspect_notebook(str(pipeline.STAGES[stage].notebook_path)))
    injected = pipeline._stage_params(stage, config.Layout.at(tmp_path), source="demo", jobs=1, overrides={})
    assert set(injected) <= declared
    assert "output_dir" in injected


@pytest.mark.parametrize("stage", [s.name for s in pipeline.DAG])
def test_notebook_defaults_point_at_the_demo(stage):
    defaults = pipeline.notebook_parameters(stage)
    assert defaults["output_dir"] == "../outputs/demo"
    if stage == "ingest":
        assert defaults["source"] == "demo"
        assert isinstance(defaults["demo_seed"], int)


@pytest.mark.parametrize("stage", [s.name for s in pipeline.DAG])
def test_notebook_defaults_are_the_library_defaults(stage):
    """One place for each default: the notebook's literal equals the default of the library function it
    calls (which takes it from volcast.config where one exists)."""
    declared = pipeline.notebook_parameters(stage)
    signature = inspect.signature(pipeline.STAGES[stage].run_function()).parameters
    compared = [name for name in declared if name in signature and name != "output_dir"]
    assert compared, "nothing to compare"
    for name in compared:
        assert declared[name] == signature[name].default, f"{stage}: {name} = {declared[name]!r} in the notebook"
    expected_from_config = {
        "ingest": {"demo_seed": config.DEMO_SEED, "demo_tickers": config.DEMO_TICKERS, "demo_years": config.DEMO_YEARS},
        "features": {"window": config.DEFAULT_WINDOW},
    }.get(stage, {})
    assert {name: declared[name] for name in expected_from_config} == expected_from_config


def test_dashboard_has_a_parameters_cell_with_output_dir():
    declared = papermill.inspect_notebook(str(config.NOTEBOOKS_DIR / config.DASHBOARD_NOTEBOOK))
    assert "output_dir" in declared


# ---------------------------------------------------------------------------------------------
# Jupytext pairs: every notebook is an .ipynb (with stored outputs) and a py:percent twin


NOTEBOOKS = sorted(p.stem for p in config.NOTEBOOKS_DIR.glob("*.ipynb"))


def _cells(path):
    """What a person edits: each cell's type, source and tags, as jupytext reads either side of a pair."""
    import jupytext

    nb = jupytext.read(path)
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def test_every_stage_and_dashboard_notebook_is_paired():
    import jupytext.config

    expected = {Path(s.notebook).stem for s in pipeline.DAG} | {Path(config.DASHBOARD_NOTEBOOK).stem}
    assert set(NOTEBOOKS) == expected
    assert {p.stem for p in config.NOTEBOOKS_DIR.glob("*.py")} == expected  # twins, and no generators left
    # the pairing JupyterLab's jupytext contents manager applies to a notebook opened from this folder
    found = jupytext.config.load_jupytext_config(str(config.NOTEBOOKS_DIR))
    assert found is not None
    for name in expected:
        for suffix in (".ipynb", ".py"):  # opened from either side, it is the same pair
            assert found.default_formats(str(config.NOTEBOOKS_DIR / (name + suffix))) == "ipynb,py:percent"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_py_twin_has_the_cells_of_the_ipynb(name):
    ipynb, twin = config.NOTEBOOKS_DIR / f"{name}.ipynb", config.NOTEBOOKS_DIR / f"{name}.py"
    assert twin.read_text().count("\n# %%") >= 3  # a py:percent script, not an empty file
    assert _cells(twin) == _cells(ipynb), (
        f"{twin.name} and {ipynb.name} differ: run `python run_pipeline.py sync-notebooks` and commit both"
    )


def _copy_notebooks(tmp_path):
    for path in config.NOTEBOOKS_DIR.iterdir():
        if path.suffix in (".ipynb", ".py", ".toml"):
            shutil.copy2(path, tmp_path / path.name)
    return tmp_path


def _make_newest(path):
    later = max(p.stat().st_mtime for p in path.parent.iterdir()) + 10
    os.utime(path, (later, later))


def test_an_edit_of_the_py_twin_reaches_the_ipynb_and_keeps_its_outputs(tmp_path):
    folder = _copy_notebooks(tmp_path)
    twin, ipynb = folder / "02_features.py", folder / "02_features.ipynb"
    before = nbformat.read(ipynb, as_version=4)
    text = twin.read_text()
    assert 'symbol = ""\n' in text
    twin.write_text(text.replace('symbol = ""\n', 'symbol = ""\nextra_setting = 7\n', 1))
    _make_newest(twin)
    assert _cells(twin) != _cells(ipynb)  # what the sync test above would catch

    pipeline.sync_notebooks(["02_features"], notebooks_dir=folder)

    after = nbformat.read(ipynb, as_version=4)
    assert _cells(twin) == _cells(ipynb)
    params = [c for c in after.cells if "parameters" in c.metadata.get("tags", [])]
    assert params[0].source.endswith('symbol = ""\nextra_setting = 7')
    # cells whose source did not change keep their stored outputs (nbval compares them)
    stored = [c.outputs for c in before.cells if c.cell_type == "code" and c.outputs]
    assert stored and [c.outputs for c in after.cells if c.cell_type == "code" and c.outputs] == stored


def test_an_edit_of_the_ipynb_reaches_the_py_twin(tmp_path):
    folder = _copy_notebooks(tmp_path)
    twin, ipynb = folder / "03_train.py", folder / "03_train.ipynb"
    nb = nbformat.read(ipynb, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("## Added in JupyterLab\n\nA closing remark."))
    nbformat.write(nb, ipynb)
    _make_newest(ipynb)

    # the command a JupyterLab user runs from a shell, on the copied folder
    subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(ipynb)], check=True, cwd=folder)

    assert twin.read_text().rstrip().endswith("# ## Added in JupyterLab\n#\n# A closing remark.")
    assert _cells(twin) == _cells(ipynb)


def test_sync_of_an_unknown_notebook_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such notebook"):
        pipeline.sync_notebooks(["04_nothing"], notebooks_dir=_copy_notebooks(tmp_path))


def test_pytest_collects_the_ipynb_for_nbval_and_not_the_py_twins():
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "notebooks"]
    out = subprocess.run(command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    assert out.returncode == 0, out.stdout + out.stderr
    assert {i.split("::")[0] for i in ids} == {f"notebooks/{name}.ipynb" for name in NOTEBOOKS}


@pytest.mark.slow
def test_refresh_runs_an_edit_of_the_py_twin_and_leaves_the_pair_in_sync(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _copy_notebooks(folder)
    twin, ipynb = folder / "01_ingest.py", folder / "01_ingest.ipynb"
    # a new cell, added on the .py side only, whose output is worked out here: 6 * 7
    twin.write_text(twin.read_text() + '\n# %%\nprint("answer:", 6 * 7)\n')
    _make_newest(twin)

    pipeline.refresh_notebooks(["01_ingest"], notebooks_dir=folder, say=lambda _: None)

    nb = nbformat.read(ipynb, as_version=4)
    last = nb.cells[-1]
    assert last.source == 'print("answer:", 6 * 7)'
    assert [o.get("text") for o in last.outputs] == ["answer: 42\n"]
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")  # every cell ran
    assert _cells(twin) == _cells(ipynb)
    assert twin.stat().st_mtime >= ipynb.stat().st_mtime  # JupyterLab's jupytext reads the twin as current
    assert (tmp_path / "outputs" / "demo" / "data" / "raw").exists()  # ran in its folder: ../outputs/demo


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_jupyterlab_opens_the_py_twin_as_the_notebook_with_its_outputs(name):
    """What JupyterLab's jupytext contents manager (the server extension the dev extra installs) serves
    for the .py: the notebook's cells, with the outputs stored in the paired .ipynb."""
    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

    manager = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(config.NOTEBOOKS_DIR))
    opened = manager.get(f"{name}.py", content=True, type="notebook")["content"]
    stored = nbformat.read(config.NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in opened.cells] == [(c.cell_type, c.source) for c in stored.cells]
    assert [c.get("outputs") for c in opened.cells] == [c.get("outputs") for c in stored.cells]
