"""Each stage notebook declares exactly the parameters the pipeline and its library function use.

A renamed parameter must fail here rather than be silently ignored by papermill.
"""
import inspect

import nbformat
import papermill
import pytest

from volcast import config, pipeline


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


def test_dashboard_has_a_parameters_cell_with_output_dir():
    declared = papermill.inspect_notebook(str(config.NOTEBOOKS_DIR / config.DASHBOARD_NOTEBOOK))
    assert "output_dir" in declared
