"""Training stage (DESIGN.md, Problem 3): two models per run, both in the card and the report.

- ``task``: next-day Volume from the two API features only (``/predict``): ``task_model``.
- ``forecast``: next-day Volume with a P10-P90 interval from every forecasting input: ``forecast_model``.

Files: ``params`` (defaults and checks), ``data`` (target and split rules), ``rows`` (reading the chosen
rows of the features in one pass per column set), ``warm`` (warm start), ``scoring``
(metrics, references, tables, coverage), ``task_model``, ``forecast_model``, ``stage`` (``run``: fit,
evaluate, publish), ``forecast`` (``load_bundle``: what the server loads from a model directory).
"""
from .data import (
                   RowPlan,
                   _distinct,
                   feature_files,
                   make_supervised,
                   plan_rows,
                   split_frame,
                   split_mask,
                   supervised_rows,
)
from .forecast import (
                   Bundle,
                   ForecastError,
                   NotEnoughHistory,
                   UnknownSymbol,
                   load_bundle,
                   load_test_forecasts,
)
from .forecast_model import ForecastModel, fit_forecast
from .params import (
                   DEFAULT_DEPTH,
                   DEFAULT_FORECAST_ITERATIONS,
                   DEFAULT_FORECAST_LEARNING_RATE,
                   DEFAULT_ITERATIONS,
                   DEFAULT_LEARNING_RATE,
                   DEFAULT_MAX_TEST_ROWS,
                   DEFAULT_MAX_TRAIN_ROWS,
                   DEFAULT_RATIO_LOSS,
                   DEFAULT_VALIDATION_FRACTION,
                   DEFAULT_WARM_START,
                   FEATURES,
                   FORECAST_MODEL_INPUTS,
                   FORMULATIONS,
                   MARKET_INPUT,
                   MODELS,
                   QUANTILES,
                   RF_MAX_ROWS,
                   RF_MIN_SAMPLES_LEAF,
                   RF_TREES,
                   SPLITS,
                   STAGE,
                   TARGET,
                   VALIDATION_MAX_ROWS,
)
from .rows import TrainRows, load_rows, market_ratio
from .scoring import (
                   BASELINES,
                   baseline_predictions,
                   coverage,
                   error_by_decile,
                   evaluate,
                   fit_har,
                   metrics,
                   predict_har,
                   ratios_vs_baseline,
                   table_by,
)
from .stage import (
                   PREDICTORS,
                   TARGET_TEXT,
                   TEST_FORECAST_DATES,
                   TEST_SAMPLE_ROWS,
                   _library_versions,
                   load_card,
                   load_learning_curve,
                   load_test_sample,
                   metrics_table,
                   read_report,
                   run,
)
from .task_model import (
                   DERIVED_INPUTS,
                   MODEL_FILES,
                   TEST_SAMPLE_FILE,
                   FitResult,
                   VolumeModel,
                   design_matrix,
                   fingerprint_files,
                   fit_model,
                   from_model_output,
                   latest_model_dir,
                   load_model,
                   new_model_id,
                   resolve_formulation,
                   save_model,
                   to_model_target,
)

__all__ = ['BASELINES', 'DEFAULT_DEPTH', 'DEFAULT_FORECAST_ITERATIONS', 'DEFAULT_FORECAST_LEARNING_RATE', 'DEFAULT_MAX_TEST_ROWS', 'DEFAULT_WARM_START', 'FORECAST_MODEL_INPUTS', 'MARKET_INPUT', 'DEFAULT_ITERATIONS', 'DEFAULT_LEARNING_RATE', 'DEFAULT_MAX_TRAIN_ROWS', 'DEFAULT_RATIO_LOSS', 'DEFAULT_VALIDATION_FRACTION', 'DERIVED_INPUTS', 'FEATURES', 'FORMULATIONS', 'MODELS', 'MODEL_FILES', 'PREDICTORS', 'QUANTILES', 'RF_MAX_ROWS', 'RF_MIN_SAMPLES_LEAF', 'RF_TREES', 'SPLITS', 'STAGE', 'TARGET', 'TARGET_TEXT', 'TEST_FORECAST_DATES', 'TEST_SAMPLE_FILE', 'TEST_SAMPLE_ROWS', 'VALIDATION_MAX_ROWS', 'Bundle', 'FitResult', 'ForecastError', 'ForecastModel', 'NotEnoughHistory', 'RowPlan', 'TrainRows', 'UnknownSymbol', 'VolumeModel', '_distinct', '_library_versions', 'baseline_predictions', 'coverage', 'design_matrix', 'error_by_decile', 'evaluate', 'feature_files', 'fingerprint_files', 'fit_forecast', 'fit_har', 'fit_model', 'from_model_output', 'latest_model_dir', 'load_bundle', 'load_card', 'load_learning_curve', 'load_model', 'load_rows', 'market_ratio', 'load_test_forecasts', 'load_test_sample', 'make_supervised', 'metrics', 'metrics_table', 'new_model_id', 'plan_rows', 'predict_har', 'ratios_vs_baseline', 'read_report', 'resolve_formulation', 'run', 'save_model', 'split_frame', 'split_mask', 'supervised_rows', 'table_by', 'to_model_target']
