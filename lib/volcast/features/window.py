"""Window parameters of the two task columns: ``window`` (rows or a fixed offset) and ``min_periods``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import config
from ..errors import UserError


@dataclass(frozen=True)
class WindowSpec:
    """A parsed ``window``/``min_periods`` pair: exactly one of ``rows`` and ``span_ns`` is set."""

    label: int | str  # as the user wrote it (30 or "30D"), for reports
    rows: int | None
    span_ns: int | None
    min_periods: int  # effective: never 0

    @property
    def is_offset(self) -> bool:
        return self.span_ns is not None

    def span_ticks(self, unit_ns: int) -> int:
        """The span in whole date ticks: ``t_j > t - span`` holds for integer ticks iff it holds for
        ``t_j > t - ceil(span / unit)``."""
        return -(-self.span_ns // unit_ns)

    def state(self) -> dict:
        return {"rows": self.rows, "span_ns": self.span_ns, "min_periods": self.min_periods}


def parse_window(window=config.DEFAULT_WINDOW, min_periods=0) -> WindowSpec:
    """Check ``window`` (rows, or a fixed offset such as ``"30D"``) and ``min_periods``.

    ``min_periods=0`` means the whole window for a row count, and 1 for an offset (pandas' defaults).
    """
    if isinstance(window, WindowSpec):
        return window
    hint = "window must be a positive number of rows (e.g. 30) or a fixed calendar offset (e.g. '30D')"
    if isinstance(window, str) and window.strip().isdigit():
        window = int(window.strip())
    if isinstance(window, (bool, np.bool_)) or window is None:
        raise UserError(f"{hint}; got {window!r}")
    if isinstance(window, (float, np.floating)) and float(window).is_integer():
        window = int(window)
    rows = span_ns = None
    if isinstance(window, (int, np.integer)):
        if window < 1:
            raise UserError(f"{hint}; got {window!r}")
        rows = label = int(window)
    elif isinstance(window, (str, pd.Timedelta, np.timedelta64)) or hasattr(window, "total_seconds"):
        label = window.strip() if isinstance(window, str) else str(pd.Timedelta(window))
        try:
            offset = pd.tseries.frequencies.to_offset(
                window.strip() if isinstance(window, str) else pd.Timedelta(window)
            )
            span_ns = int(pd.Timedelta(offset).value)  # only fixed offsets (D, h, min...) convert
        except (ValueError, TypeError):
            raise UserError(f"{hint}; {window!r} is not a fixed offset (months and years vary in length)") from None
        if span_ns <= 0:
            raise UserError(f"{hint}; got {window!r}")
    else:
        raise UserError(f"{hint}; got {window!r}")

    if isinstance(min_periods, str) and min_periods.strip().isdigit():
        min_periods = int(min_periods.strip())
    if min_periods is None:
        min_periods = 0
    if isinstance(min_periods, (bool, np.bool_)) or not isinstance(min_periods, (int, np.integer)) or min_periods < 0:
        raise UserError(f"min_periods must be a whole number >= 0 (0 = the window's default); got {min_periods!r}")
    min_periods = int(min_periods)
    if rows is not None:
        if min_periods > rows:
            raise UserError(f"min_periods ({min_periods}) cannot exceed window ({rows}); lower it or use 0 (= window)")
        min_periods = min_periods or rows
    else:
        min_periods = min_periods or 1
    return WindowSpec(label, rows, span_ns, min_periods)
