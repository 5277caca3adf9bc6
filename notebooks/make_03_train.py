"""Writes 03_train.ipynb (run it, then execute the notebook to store outputs:
`python -c "from volcast import pipeline; pipeline.refresh_notebooks(['03_train.ipynb'])"`)."""
from nbformat.v4 import new_code_cell, new_markdown_cell

from _nbgen import write_notebook

cells = [
    new_markdown_cell(
        "# 03 · Train: next-day volume from the two API features\n\n"
        "Reads `DIR/data/features`, fits the model (`volcast.train.run`), publishes "
        "`DIR/models/<model_id>/` (model file, `card.json`, `learning_curve.csv`), then `DIR/models/LATEST`, "
        "then `DIR/reports/train.json`.\n\n"
        "- **Target**: the Volume of the next trading day of the same ticker (`target_shift=1`; 0 = the task's "
        "same-day setup, where `vol_moving_avg` already contains the answer).\n"
        "- **Split**: chronological, the last 20 % of dates are the test set; the last 10 % of the remaining "
        "dates are a validation slice (the learning curve), held out of fitting.\n"
        "- **Model**: CatBoost on the ratio *next Volume / vol_moving_avg* with a quantile loss just below the "
        "median, scaled back by `vol_moving_avg`. Inputs are only `vol_moving_avg` and `adj_close_rolling_med`.\n"
        "- **Baselines** on the same test rows: predict `vol_moving_avg`; predict today's Volume."
    ),
    new_code_cell(
        'output_dir = "../outputs/demo"\n'
        'model = "catboost"\n'
        "target_shift = 1\n"
        'split = "chronological"\n'
        "test_fraction = 0.2\n"
        "max_train_rows = 300000\n"
        "iterations = 300\n"
        "seed = 42\n"
        "depth = 6\n"
        "learning_rate = 0.1\n"
        'formulation = "auto"\n'
        'loss = "auto"\n'
        "validation_fraction = 0.1\n"
        "jobs = 0\n"
        "progress = True",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "import pandas as pd\n\n"
        "from volcast import train\n\n"
        'plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.5)})\n\n'
        "report = train.run(output_dir, model=model, target_shift=target_shift, split=split,\n"
        "                   test_fraction=test_fraction, max_train_rows=max_train_rows, iterations=iterations,\n"
        "                   seed=seed, depth=depth, learning_rate=learning_rate, formulation=formulation,\n"
        "                   loss=loss, validation_fraction=validation_fraction, jobs=jobs, progress=progress)\n"
        "model_dir = train.latest_model_dir(output_dir)\n"
        "card = train.load_card(model_dir)\n"
        'print("model", report["model_id"], "in", report["seconds"]["total"], "s")'
    ),
    new_markdown_cell("## Metrics on the test set, against the naive baselines (same rows)"),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        'print("target:", report["target"])\n'
        'print("split:", report["split"]["kind"], "| test from", report["split"]["test_start"],\n'
        '      "| validation from", report["split"]["validation_start"])\n'
        'print(f"rows: fitted {report[\'train_rows\']:,} (sampled), validation {report[\'validation_rows\']:,}, "\n'
        '      f"test {report[\'test_rows\']:,}; dropped {report[\'dropped_rows\'][\'dropped\']:,} "\n'
        '      f"(no features {report[\'dropped_rows\'][\'no_features\']:,}, no target {report[\'dropped_rows\'][\'no_target\']:,})")\n'
        "train.metrics_table(report, digits=2)"
    ),
    new_markdown_cell(
        "`mae_vs_vol_moving_avg` / `medape_vs_vol_moving_avg` below 1 mean the model beats the baseline that "
        "predicts the 30-day mean (goal on all real tickers: ≤ 0.90 and ≤ 0.85; see "
        "`benchmarks/results/model_eval.md` for what these two inputs can reach)."
    ),
    new_markdown_cell("## Learning curve (loss per iteration on the fitted rows and the validation slice)"),
    new_code_cell(
        "curve = train.load_learning_curve(model_dir)\n"
        "fig, ax = plt.subplots()\n"
        'ax.plot(curve["iteration"], curve["train_loss"], label="train (fitted rows)")\n'
        'ax.plot(curve["iteration"], curve["validation_loss"], label="validation (later dates)")\n'
        'ax.set_xlabel("iteration"); ax.set_ylabel(curve["metric"].iloc[0]); ax.legend()\n'
        'ax.set_title("learning curve"); plt.show()'
    ),
    new_markdown_cell("## Predicted vs actual (a sample of test rows, log-log)"),
    new_code_cell(
        "rows = train.load_test_sample(model_dir)\n"
        "fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), sharex=True, sharey=True)\n"
        'for ax, col, title in zip(axes, ["prediction", "baseline"], ["model", "baseline: vol_moving_avg"]):\n'
        '    ax.loglog(rows["target"].clip(lower=1), rows[col].clip(lower=1), ".", ms=2, alpha=0.3)\n'
        '    lim = [1, max(rows["target"].max(), rows[col].max()) * 1.5]\n'
        '    ax.plot(lim, lim, "k--", lw=0.8); ax.set_title(title); ax.set_xlabel("actual next-day volume")\n'
        'axes[0].set_ylabel("predicted"); plt.tight_layout(); plt.show()'
    ),
    new_markdown_cell("## Error by decile of the actual volume (all test rows)"),
    new_code_cell(
        "# NBVAL_CHECK_OUTPUT\n"
        'deciles = pd.DataFrame(card["error_by_volume_decile"]).set_index("decile")\n'
        'shown = deciles.assign(mae_ratio=deciles["mae_model"] / deciles["mae_baseline"])\n'
        'cols = ["volume_from", "volume_to", "mae_model", "mae_baseline"]\n'
        'shown[cols] = shown[cols].round(0).astype("int64")\n'
        "shown.round(2)"
    ),
    new_code_cell(
        "fig, ax = plt.subplots()\n"
        "x = np.arange(len(deciles))\n"
        'ax.bar(x - 0.2, deciles["medape_model"], 0.4, label="model")\n'
        'ax.bar(x + 0.2, deciles["medape_baseline"], 0.4, label="baseline: vol_moving_avg")\n'
        'ax.set_xticks(x, deciles.index); ax.set_xlabel("decile of actual volume (1 = lowest)")\n'
        'ax.set_ylabel("median APE"); ax.legend(); plt.show()'
    ),
]

write_notebook(cells, "03_train.ipynb")
