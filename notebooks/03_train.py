# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Train: next-day volume from the two API features
#
# Reads `DIR/data/features`, fits the model (`volcast.train.run`), publishes `DIR/models/<model_id>/` (model file, `card.json`, `learning_curve.csv`), then `DIR/models/LATEST`, then `DIR/reports/train.json`.
#
# - **Target**: the Volume of the next trading day of the same ticker (`target_shift=1`; 0 = the task's same-day setup, where `vol_moving_avg` already contains the answer).
# - **Split**: chronological, the last 20 % of dates are the test set; the last 10 % of the remaining dates are a validation slice (the learning curve), held out of fitting.
# - **Model**: CatBoost on the ratio *next Volume / vol_moving_avg* with a quantile loss just below the median, scaled back by `vol_moving_avg`. Inputs are only `vol_moving_avg` and `adj_close_rolling_med`.
# - **Baselines** on the same test rows: predict `vol_moving_avg`; predict today's Volume.

# %% tags=["parameters"]
output_dir = "../outputs/demo"
model = "catboost"
target_shift = 1
split = "chronological"
test_fraction = 0.2
max_train_rows = 300000
iterations = 300
seed = 42
depth = 6
learning_rate = 0.1
formulation = "auto"
loss = "auto"
validation_fraction = 0.1
jobs = 0
progress = True

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from volcast import train

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3.5)})

report = train.run(output_dir, model=model, target_shift=target_shift, split=split,
                   test_fraction=test_fraction, max_train_rows=max_train_rows, iterations=iterations,
                   seed=seed, depth=depth, learning_rate=learning_rate, formulation=formulation,
                   loss=loss, validation_fraction=validation_fraction, jobs=jobs, progress=progress)
model_dir = train.latest_model_dir(output_dir)
card = train.load_card(model_dir)
print("model", report["model_id"], "in", report["seconds"]["total"], "s")

# %% [markdown]
# ## Metrics on the test set, against the naive baselines (same rows)

# %%
# NBVAL_CHECK_OUTPUT
print("target:", report["target"])
print("split:", report["split"]["kind"], "| test from", report["split"]["test_start"],
      "| validation from", report["split"]["validation_start"])
print(f"rows: fitted {report['train_rows']:,} (sampled), validation {report['validation_rows']:,}, "
      f"test {report['test_rows']:,}; dropped {report['dropped_rows']['dropped']:,} "
      f"(no features {report['dropped_rows']['no_features']:,}, no target {report['dropped_rows']['no_target']:,})")
train.metrics_table(report, digits=2)

# %% [markdown]
# `mae_vs_vol_moving_avg` / `medape_vs_vol_moving_avg` below 1 mean the model beats the baseline that predicts the 30-day mean (goal on all real tickers: ≤ 0.90 and ≤ 0.85; see `benchmarks/results/model_eval.md` for what these two inputs can reach).

# %% [markdown]
# ## Learning curve (loss per iteration on the fitted rows and the validation slice)

# %%
curve = train.load_learning_curve(model_dir)
fig, ax = plt.subplots()
ax.plot(curve["iteration"], curve["train_loss"], label="train (fitted rows)")
ax.plot(curve["iteration"], curve["validation_loss"], label="validation (later dates)")
ax.set_xlabel("iteration"); ax.set_ylabel(curve["metric"].iloc[0]); ax.legend()
ax.set_title("learning curve"); plt.show()

# %% [markdown]
# ## Predicted vs actual (a sample of test rows, log-log)

# %%
rows = train.load_test_sample(model_dir)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), sharex=True, sharey=True)
for ax, col, title in zip(axes, ["prediction", "baseline"], ["model", "baseline: vol_moving_avg"]):
    ax.loglog(rows["target"].clip(lower=1), rows[col].clip(lower=1), ".", ms=2, alpha=0.3)
    lim = [1, max(rows["target"].max(), rows[col].max()) * 1.5]
    ax.plot(lim, lim, "k--", lw=0.8); ax.set_title(title); ax.set_xlabel("actual next-day volume")
axes[0].set_ylabel("predicted"); plt.tight_layout(); plt.show()

# %% [markdown]
# ## Error by decile of the actual volume (all test rows)

# %%
# NBVAL_CHECK_OUTPUT
deciles = pd.DataFrame(card["error_by_volume_decile"]).set_index("decile")
shown = deciles.assign(mae_ratio=deciles["mae_model"] / deciles["mae_baseline"])
cols = ["volume_from", "volume_to", "mae_model", "mae_baseline"]
shown[cols] = shown[cols].round(0).astype("int64")
shown.round(2)

# %%
fig, ax = plt.subplots()
x = np.arange(len(deciles))
ax.bar(x - 0.2, deciles["medape_model"], 0.4, label="model")
ax.bar(x + 0.2, deciles["medape_baseline"], 0.4, label="baseline: vol_moving_avg")
ax.set_xticks(x, deciles.index); ax.set_xlabel("decile of actual volume (1 = lowest)")
ax.set_ylabel("median APE"); ax.legend(); plt.show()
