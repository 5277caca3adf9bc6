"""The trading calendar, approximated: weekdays minus the regular US market (NYSE) holidays.

Used for the forecasting inputs that describe the TARGET day (the next trading day after a row's date),
which are known in advance, so the same rule gives them in training and when serving the latest row:

- ``next_weekday``: 0 = Monday .. 4 = Friday of the next trading day;
- ``next_gap_days``: calendar days from the row's date to it (1, 3 over a weekend, more over a holiday);
- ``next_expiration``: 1 if it is the monthly options expiration (the third Friday; the Thursday before
  when that Friday is a holiday), 2 if that month is March, June, September or December (quarterly
  "triple witching", index rebalancing), else 0;
- ``next_month_end``: 1 if it is the last trading day of its month, 2 of its quarter, else 0;
- ``next_pre_holiday``: 1 if the trading day after it is more than one weekday later (a holiday follows:
  often a shortened, quiet session), else 0.

The rule: Saturday and Sunday are closed; so are New Year's Day, Martin Luther King Jr. Day (from 1998),
Presidents' Day, Good Friday, Memorial Day, Juneteenth (from 2022), Independence Day, Labor Day,
Thanksgiving and Christmas, a Saturday holiday observed on the Friday before (except New Year's Day) and a
Sunday one on the Monday after. One-off closures (9/11, hurricane Sandy, national days of mourning) are
not in the rule: on those few dates the inputs describe the day the market was expected to open.
"""

from __future__ import annotations

import datetime as dt
from functools import cache, lru_cache

import numpy as np

EPOCH = dt.date(1970, 1, 1)
CALENDAR_INPUTS = ("next_weekday", "next_gap_days", "next_expiration", "next_month_end", "next_pre_holiday")


def _easter(year: int) -> dt.date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    m = (32 + 2 * e + 2 * i - h - k) % 7
    n = (a + 11 * h + 22 * m) // 451
    month, day = divmod(h + m - 7 * n + 114, 31)
    return dt.date(year, month, day + 1)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    """The ``n``-th ``weekday`` (0 = Monday) of the month; n = -1: the last."""
    if n > 0:
        first = dt.date(year, month, 1)
        return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = dt.date(year + (month == 12), month % 12 + 1, 1) - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def _observed(day: dt.date, saturday_to_friday: bool = True) -> dt.date | None:
    if day.weekday() == 5:
        return day - dt.timedelta(days=1) if saturday_to_friday else None
    if day.weekday() == 6:
        return day + dt.timedelta(days=1)
    return day


@cache
def holidays(year: int) -> frozenset:
    """The regular market holidays of ``year`` (see the module docstring)."""
    days = [
        _observed(dt.date(year, 1, 1), saturday_to_friday=False),
        _nth_weekday(year, 2, 0, 3),
        _easter(year) - dt.timedelta(days=2),
        _nth_weekday(year, 5, 0, -1),
        _observed(dt.date(year, 7, 4)),
        _nth_weekday(year, 9, 0, 1),
        _nth_weekday(year, 11, 3, 4),
        _observed(dt.date(year, 12, 25)),
    ]
    if year >= 1998:
        days.append(_nth_weekday(year, 1, 0, 3))
    if year >= 2022:
        days.append(_observed(dt.date(year, 6, 19)))
    # New Year's Day of next year on a Saturday is not observed on this year's Dec 31.
    return frozenset(d for d in days if d is not None)


def is_trading_day(day: dt.date) -> bool:
    return day.weekday() < 5 and day not in holidays(day.year)


def next_trading_day(day: dt.date) -> dt.date:
    day += dt.timedelta(days=1)
    while not is_trading_day(day):
        day += dt.timedelta(days=1)
    return day


def _expiration(day: dt.date) -> int:
    """1 = monthly options expiration day, 2 = a quarterly one, 0 = neither (for a trading day)."""
    third_friday = _nth_weekday(day.year, day.month, 4, 3)
    expiry = third_friday if is_trading_day(third_friday) else third_friday - dt.timedelta(days=1)
    if day != expiry:
        return 0
    return 2 if day.month % 3 == 0 else 1


@lru_cache(maxsize=1 << 16)
def _of_day(days: int) -> tuple[float, ...]:
    today = EPOCH + dt.timedelta(days=days)
    nxt = next_trading_day(today)
    after = next_trading_day(nxt)
    month_end = 0 if after.month == nxt.month else (2 if nxt.month % 3 == 0 else 1)
    weekdays_between = np.busday_count(nxt, after)  # weekdays in [nxt, after): 1 when nothing is skipped
    return (
        float(nxt.weekday()),
        float((nxt - today).days),
        float(_expiration(nxt)),
        float(month_end),
        float(weekdays_between > 1),
    )


def calendar_inputs(days: np.ndarray, names=CALENDAR_INPUTS) -> dict[str, np.ndarray]:
    """The calendar inputs ``names`` (float64) for rows dated ``days`` (integer days since 1970-01-01);
    computed once per distinct date."""
    days = np.asarray(days, dtype=np.int64)
    distinct, inverse = np.unique(days, return_inverse=True)
    table = np.array([_of_day(int(d)) for d in distinct.tolist()], dtype=np.float64).reshape(len(distinct), -1)
    return {name: table[inverse, CALENDAR_INPUTS.index(name)] for name in names}
