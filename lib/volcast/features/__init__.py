"""Feature stage (DESIGN.md, Problem 2): per ticker, the two task columns and the forecasting inputs.

Semantics (the same as pandas ``groupby("Symbol").rolling(...)`` on rows ordered by Date):

- ``vol_moving_avg``: mean of ``Volume`` over the window; ``adj_close_rolling_med``: median of
  ``Adj Close`` (not Close) over the same window; both float64.
- ``window=30``: the current row and the 29 rows before it of the SAME Symbol. ``min_periods=0``
  means "= window": NaN until 30 rows exist. ``min_periods`` < window gives partial windows that
  still never reach into the previous ticker.
- ``window="30D"`` (any fixed pandas offset): the rows of the same Symbol whose Date lies in
  ``(t - 30 days, t]``. ``min_periods=0`` then means 1, as in pandas for offset windows.
- Missing values (NaN/null) are skipped and ``min_periods`` counts the non-missing ones, as in pandas.
- The forecasting inputs (``config.FORECAST_INPUTS``, defined in ``inputs``) use the current and earlier
  rows of the same ticker only.

Files: ``window`` (parameters), ``columns`` (input columns, sort order), ``rolling`` (exact task-column
kernels), ``inputs`` (forecasting inputs), ``core`` (the pure core: ``compute_sorted``, ``add_features``),
``stage`` (``run``: partitions, incremental reuse, the latest-row table), ``read`` (loading the dataset).
"""

from .core import NEEDED_COLUMNS, add_features, compute_sorted, feature_arrays
from .inputs import forecast_inputs, market_volume_ratio
from .read import LATEST_FILE, load_features, load_latest, most_rows_symbol
from .stage import STAGE, STATE_FILE, process_partition, run
from .window import WindowSpec, parse_window

__all__ = [
    "LATEST_FILE",
    "NEEDED_COLUMNS",
    "STAGE",
    "STATE_FILE",
    "WindowSpec",
    "add_features",
    "compute_sorted",
    "feature_arrays",
    "forecast_inputs",
    "load_features",
    "load_latest",
    "market_volume_ratio",
    "most_rows_symbol",
    "parse_window",
    "process_partition",
    "run",
]
