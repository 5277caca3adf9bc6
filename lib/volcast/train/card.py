"""What a trained model's card.json and reports/train.json say: built from the stage's results."""

from __future__ import annotations

import math
import resource
import time

import numpy as np

from ..config import VOLUME
from .data import _iso
from .forecast import LATEST_FILE
from .params import FEATURES, RF_MAX_ROWS
from .task_model import DERIVED_INPUTS, fingerprint_files

TARGET_TEXT = {
    0: "Volume of the same row (the task's same-day setup; vol_moving_avg contains it)",
    1: "Volume of the next trading day of the same Symbol",
}
PREDICTOR_TEXT = {
    "model": "task model (the two API features)",
    "forecast": "forecast model P50 (all inputs)",
    "har": "HAR: log volume on log 1/5/22-day means (OLS, train dates)",
    "baseline_vol_moving_avg": "vol_moving_avg",
    "baseline_today_volume": "today's Volume",
}


def _clean(obj):
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _library_versions() -> dict:
    from ..pipeline import (
        library_versions,  # one list of tracked packages for runs and cards
    )

    return library_versions()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _scoring_note(scored: int, total: int, seed: int) -> str:
    if scored == total:
        return f"every test row ({total:,})"
    return (
        f"a seeded uniform sample of {scored:,} of the {total:,} test rows (seed {seed + 2}); the metrics, "
        "tables and coverage are those of the sample"
    )


def _formulation_card(formulation: str, loss: str, model: str) -> dict:
    text = {
        "ratio": ("target / max(vol_moving_avg, 1)", "prediction * max(vol_moving_avg, 1)"),
        "log_ratio": (
            "log1p(target) - log1p(max(vol_moving_avg, 1))",
            "expm1(prediction + log1p(max(vol_moving_avg, 1)))",
        ),
        "raw": ("target", "prediction"),
    }[formulation]
    return {
        "name": formulation,
        "model_target": text[0],
        "back_transform": text[1] + ", clipped at 0",
        "loss": loss,
        "estimator": model,
    }


def _forecast_card(forecaster, finfo: dict, test_coverage) -> dict:
    return {
        **forecaster.card(),
        "estimator": "catboost",
        "loss": finfo["params"]["loss_function"],
        "params": finfo["params"],
        "learning_curve": "learning_curve_forecast.csv",
        "test_coverage_p10_p90": test_coverage,
        "nominal_coverage": 0.8,
        "validation_coverage_raw": finfo["validation_coverage_raw"],
        "validation_coverage": finfo["validation_coverage"],
        "fit_seconds": finfo["fit_seconds"],
    }


def _learning_curve_card(curve) -> dict:
    best = curve.loc[curve["validation_loss"].idxmin()] if curve["validation_loss"].notna().any() else None
    return {
        "file": "learning_curve.csv",
        "metric": str(curve["metric"].iloc[0]) if len(curve) else None,
        "iterations": len(curve),
        "best_validation_iteration": int(best["iteration"]) if best is not None else None,
        "best_validation_loss": float(best["validation_loss"]) if best is not None else None,
        "final_validation_loss": float(curve["validation_loss"].iloc[-1]) if len(curve) else None,
    }


def build_card(
    *,
    model_id,
    model,
    parameters: dict,
    warm_entry,
    fit,
    forecaster,
    finfo: dict,
    input_ranges: dict,
    target_shift,
    formulation,
    loss,
    har_coef,
    split_info: dict,
    valid_info: dict,
    validation_fraction,
    seed,
    max_train_rows,
    rows: dict,
    dates,
    files,
    evaluation,
    fingerprint: str | None = None,
) -> dict:
    """The model's card.json (JSON-safe); ``evaluation`` is the stage's ``_evaluate`` result."""
    ev = evaluation
    return _clean(
        {
            "model_id": model_id,
            "model_kind": model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "parameters": parameters,
            "warm_start": warm_entry,
            "estimator_params": fit.params,
            "features": list(FEATURES),
            "derived_inputs": list(DERIVED_INPUTS),
            "input_ranges": input_ranges,
            "target": {
                "column": VOLUME,
                "shift": target_shift,
                "description": TARGET_TEXT.get(target_shift, f"Volume {target_shift} trading days later, same Symbol"),
            },
            "formulation": _formulation_card(formulation, loss, model),
            "models": {
                "task": {
                    "model_file": None,
                    "inputs": list(FEATURES),
                    "estimator": model,
                    "formulation": formulation,
                    "loss": loss,
                },
                "forecast": _forecast_card(forecaster, finfo, ev.test_coverage),
            },
            "references": {
                "har": {
                    "coefficients": [float(c) for c in har_coef],
                    "design": "log1p(next) ~ 1 + log1p(Volume) + log1p(mean5) + log1p(mean22)",
                }
            },
            "predictors": PREDICTOR_TEXT,
            "split": {
                **split_info,
                "validation_start": _iso(valid_info.get("test_start"))
                if valid_info.get("test_start") is not None
                else None,
                "validation_fraction": validation_fraction,
            },
            "sample": {
                "fit_rows": rows["fit"],
                "of_rows": rows["fit_pool"],
                "seed": seed,
                "max_train_rows": max_train_rows,
                "note": (
                    "uniform random sample of the train rows outside the validation slice"
                    + (
                        f"; RandomForest capped at {RF_MAX_ROWS:,} rows (fully grown trees on 1 M rows exhaust memory)"
                        if model == "random_forest"
                        else ""
                    )
                ),
            },
            "rows": rows,
            "test_scoring": _scoring_note(rows["test_scored"], rows["test"], seed),
            "dates": dates,
            "data": {
                "features_files": [p.name for p in files],
                "fingerprint": fingerprint if fingerprint is not None else fingerprint_files(files),
            },
            "metrics": ev.all_metrics,
            "ratios_vs_vol_moving_avg": ev.ratios_all["model"],
            "ratios_all_vs_vol_moving_avg": ev.ratios_all,
            "coverage_p10_p90": ev.test_coverage,
            "error_by_volume_decile": ev.deciles.to_dict(orient="records"),
            "by_year": ev.by_year.to_dict(orient="records"),
            "by_decile": ev.by_decile.to_dict(orient="records"),
            "learning_curve": _learning_curve_card(fit.learning_curve),
            "latest": {"file": LATEST_FILE, "tickers_with_forecast": None},
            "library_versions": _library_versions(),
            "fit_seconds": round(fit.seconds, 2),
        }
    )


def build_report(
    *,
    card: dict,
    split,
    split_info: dict,
    test_fraction,
    rows: dict,
    warm_entry,
    seed,
    model_dir,
    seconds: dict,
    started: float,
    cpu_started: float,
    evaluation,
) -> dict:
    """reports/train.json (JSON-safe); the totals are measured now, so call it last."""
    ev = evaluation
    return _clean(
        {
            "model_id": card["model_id"],
            "target": card["target"]["description"],
            "split": {
                "kind": split,
                "test_start": split_info["test_start"],
                "test_fraction": test_fraction,
                "validation_start": card["split"]["validation_start"],
            },
            "metrics": ev.all_metrics,
            "ratios_all_vs_vol_moving_avg": ev.ratios_all,
            "coverage_p10_p90": ev.test_coverage,
            "train_rows": rows["fit"],
            "test_rows": rows["test"],
            "test_scored_rows": rows["test_scored"],
            "warm_start": warm_entry,
            "test_scoring": _scoring_note(rows["test_scored"], rows["test"], seed),
            "train_period_rows": rows["train_period"],
            "validation_rows": rows["validation"],
            "dropped_rows": rows["dropped"],
            "ratios_vs_vol_moving_avg": ev.ratios_all["model"],
            "params": card["parameters"],
            "formulation": card["formulation"],
            "models": card["models"],
            "by_year": card["by_year"],
            "by_decile": card["by_decile"],
            "model_dir": str(model_dir),
            "learning_curve": str(model_dir / "learning_curve.csv"),
            "seconds": {
                **{k: round(v, 2) for k, v in seconds.items()},
                "total": round(time.perf_counter() - started, 2),
            },
            "cpu_seconds": round(
                time.process_time() - cpu_started, 2
            ),  # every thread: what a busy machine cannot inflate
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }
    )
