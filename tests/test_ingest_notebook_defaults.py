"""The 01_ingest notebook's parameter defaults are the library's: one value per setting (issue 12)."""

from __future__ import annotations

import inspect

from volcast import config, ingest, pipeline


def test_notebook_parameters_default_to_ingest_run_defaults():
    declared = pipeline.notebook_parameters("ingest")
    defaults = {
        name: p.default
        for name, p in inspect.signature(ingest.run).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    shared = sorted(set(declared) & set(defaults))
    limits = [
        "max_file_bytes",
        "max_compression_ratio",
        "max_line_bytes",
        "max_header_bytes",
        "max_columns",
        "allow_links",
    ]
    assert set(limits + ["demo_seed", "demo_tickers", "demo_years", "jobs", "incremental"]) <= set(shared)
    assert {name: declared[name] for name in shared} == {name: defaults[name] for name in shared}
    assert {name: defaults[name] for name in limits} == ingest.limits.Limits().as_dict()
    assert (defaults["demo_seed"], defaults["demo_tickers"], defaults["demo_years"]) == (
        config.DEMO_SEED,
        config.DEMO_TICKERS,
        config.DEMO_YEARS,
    )
