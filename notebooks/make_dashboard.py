"""Writes dashboard.ipynb, the Voilà dashboard (`python run_pipeline.py serve` starts it).

The notebook only wires widgets; the logic is in `volcast.dashboard` (tested without a browser)
and prediction goes through `volcast.serve`, the same code as the JSON API.
"""
from nbformat.v4 import new_code_cell, new_markdown_cell

from _nbgen import write_notebook

cells = [
    new_markdown_cell(
        "# volcast · next-day trading volume\n\n"
        "Predict a ticker's next-day volume from its 30-day features, see how the current model compares "
        "with the naive baselines, and explore the data it was trained on. The JSON API serves the same "
        "model (`GET /predict?vol_moving_avg=…&adj_close_rolling_med=…`)."
    ),
    new_code_cell('output_dir = "../outputs/demo"', metadata={"tags": ["parameters"]}),
    new_code_cell(
        "from volcast.dashboard import Dashboard, output_dir_from_env\n\n"
        "# `serve` passes its --output-dir in VOLCAST_OUTPUT_DIR (Voilà takes no notebook parameters).\n"
        "output_dir = output_dir_from_env(output_dir)\n"
        "app = Dashboard(output_dir)"
    ),
    new_markdown_cell("## Predict"),
    new_code_cell("app.predictor"),
    new_markdown_cell("## Model card: test metrics against the baselines, learning curve"),
    new_code_cell("app.model_card"),
    new_markdown_cell("## Symbol explorer: price, volume and both features over time"),
    new_code_cell("app.explorer"),
]

write_notebook(cells, "dashboard.ipynb")
