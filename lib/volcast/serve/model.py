"""The served model: ``Predictor`` (one loaded model, its rounding rule and answer cache) and
``ModelHolder`` (which model is current, and the hot swap when ``models/LATEST`` changes).

The holder re-reads LATEST (rate-limited, or from a background thread), builds the new predictor
fully and then swaps one reference, so a request (which reads the reference once) never mixes two
models and never sees a half-loaded one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volcast.config import PRICE_FEATURE, VOL_FEATURE, Layout

from .validate import clip

log = logging.getLogger("volcast.serve")


def round_volumes(raw: np.ndarray) -> np.ndarray:
    """Model output -> the nearest non-negative integers (halves round up), as int64."""
    raw = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(raw)):
        raise RuntimeError("the model returned a non-finite prediction")
    return np.maximum(np.floor(raw + 0.5), 0.0).astype(np.int64)


class ForecastRefused(Exception):
    """A symbol the model has no forecast for: ``status`` 404 (unknown) or 422 (too little history)."""

    def __init__(self, status: int, message: str, symbol: str):
        super().__init__(message)
        self.status, self.message, self.symbol = status, message, symbol


class Predictor:
    """A loaded model and what is derived from it once: its id (JSON-encoded) and answer caches.

    The model is a ``volcast.train.forecast.Bundle`` (task model, forecast model and the latest-row
    table of the same run, loaded together, so they swap together), or anything with ``model_id``
    and ``predict(vol, price)``. The cache maps an exact (vol_moving_avg, adj_close_rolling_med) pair
    to the rounded answer the model gave for it, so a cached answer is identical to the model's.
    """

    CACHE_SIZE = 65_536

    def __init__(self, model: Any, model_dir: Path | None = None):
        self.model = model
        self.model_id = str(model.model_id)
        self.model_dir = model_dir
        self.model_id_json = json.dumps(self.model_id)
        self._cache: dict[tuple[float, float], int] = {}
        self._predict = getattr(model, "predict_task", None) or model.predict
        ranges = getattr(model, "input_ranges", None) or {}
        everything = (-math.inf, math.inf)
        (self._vol_lo, self._vol_hi), (self._price_lo, self._price_hi) = (
            tuple(ranges.get(VOL_FEATURE, everything)),
            tuple(ranges.get(PRICE_FEATURE, everything)),
        )
        self.has_forecasts = hasattr(model, "forecast_one")
        self._forecast_json: dict[str, bytes] = {}

    @property
    def card(self) -> dict:
        return getattr(self.model, "card", {}) or {}

    def extrapolated_one(self, vol: float, price: float) -> bool:
        """True when an input lies outside the range the model was trained on (from its card)."""
        return not (self._vol_lo <= vol <= self._vol_hi and self._price_lo <= price <= self._price_hi)

    def extrapolated(self, vols: np.ndarray, prices: np.ndarray) -> np.ndarray:
        return (vols < self._vol_lo) | (vols > self._vol_hi) | (prices < self._price_lo) | (prices > self._price_hi)

    def forecast_json(self, symbol: str) -> bytes:
        """GET /forecast's answer for ``symbol`` as JSON bytes (built once per symbol and model), or
        ForecastRefused. A symbol not found is tried once more in upper case (aapl -> AAPL)."""
        cached = self._forecast_json.get(symbol)
        if cached is not None:
            return cached
        try:
            answer = self._forecast_one(symbol)
        except ForecastRefused as err:
            if err.status != 404 or symbol.upper() == symbol:
                raise
            try:
                answer = self._forecast_one(symbol.upper())
            except ForecastRefused:
                raise err from None
        body = json.dumps({**answer, "model_id": self.model_id}).encode("utf-8")
        if len(self._forecast_json) < self.CACHE_SIZE:
            self._forecast_json[symbol] = body
        return body

    def _forecast_one(self, symbol: str) -> dict:
        if not self.has_forecasts:
            raise ForecastRefused(503, f"model {self.model_id} has no forecasts; re-run the train stage", symbol)
        try:
            return self.model.forecast_one(symbol)
        except Exception as err:  # volcast.train.forecast's UnknownSymbol (404) / NotEnoughHistory (422)
            status = getattr(err, "status", None)
            if status not in (404, 422):
                raise
            raise ForecastRefused(status, str(getattr(err, "message", err)), symbol) from None

    def predict(self, vols: np.ndarray, prices: np.ndarray) -> np.ndarray:
        raw = self._predict(np.asarray(vols, dtype=np.float64), np.asarray(prices, dtype=np.float64))
        out = round_volumes(raw)
        if out.shape != (len(vols),):
            raise RuntimeError(f"the model returned shape {out.shape} for {len(vols)} rows")
        return out

    def cached(self, vol: float, price: float) -> int | None:
        return self._cache.get((vol, price))

    def predict_pairs(self, pairs: Sequence[tuple[float, float]]) -> list[int]:
        """Answers for (vol, price) pairs; misses go to the model in one call and into the cache."""
        answers: list[int | None] = [self._cache.get(pair) for pair in pairs]
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            vols = np.array([pairs[i][0] for i in missing])
            prices = np.array([pairs[i][1] for i in missing])
            got = self.predict(vols, prices).tolist()
            if len(self._cache) + len(missing) > self.CACHE_SIZE:
                self._cache.clear()  # crude but O(1) amortised; a full cache is rare in practice
            for i, value in zip(missing, got):
                answers[i] = value
                self._cache[pairs[i]] = value
        return answers  # type: ignore[return-value]

    def predict_one(self, vol: float, price: float) -> int:
        return self.predict_pairs([(vol, price)])[0]


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _default_locator(output_dir: Path) -> Path | None:
    """``models/<LATEST>``; None while there is no LATEST; ``ValueError`` saying why when it is unusable."""
    layout = Layout.at(output_dir)
    latest = layout.latest_file
    try:
        raw = latest.read_bytes()[:1024]
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ValueError("models/LATEST is a directory, not a file naming a model") from None
    except OSError as err:
        raise ValueError(f"models/LATEST cannot be read: {err.strerror}") from None
    name = raw.decode("utf-8", "replace").strip()
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"models/LATEST does not name a model directory (it holds {clip(name)!r})")
    model_dir = layout.models_dir / name
    if not (model_dir / "card.json").is_file():
        raise ValueError(f"models/LATEST names {name}, which is not a model directory (no card.json)")
    return model_dir


def _default_loader(model_dir: Path) -> Any:
    from volcast.train.forecast import load_bundle

    return load_bundle(model_dir)  # the task model, the forecast model and the latest-row table


class ModelHolder:
    """The current model of an output directory, swapped atomically when ``models/LATEST`` changes.

    ``current`` is one attribute: readers take it once per request. ``refresh()`` locates the latest
    model dir; when it differs from the loaded one it loads the new model *fully* (outside any
    reader's way) and only then replaces the reference. If loading fails the old model stays.
    A candidate must also answer ``PROBE`` with a finite value. ``load_model`` defaults to
    ``volcast.train.forecast.load_bundle`` and ``latest_model_dir`` to reading LATEST here; tests may inject others.
    """

    RETRY_FAILED_AFTER = 30.0
    # A known, ordinary input (1 M shares a day at $25) that a candidate model must answer with a
    # finite value before it is swapped in: a model that loads but cannot predict is refused.
    PROBE = (1_000_000.0, 25.0)

    def __init__(
        self,
        output_dir: str | os.PathLike | None,
        *,
        load_model: Callable[[Path], Any] | None = None,
        latest_model_dir: Callable[[Path], Path | None] | None = None,
        check_interval: float = 1.0,
    ):
        self.output_dir = Layout.at(output_dir).output_dir
        self._load = load_model or _default_loader
        self._locate = latest_model_dir or _default_locator
        self.check_interval = check_interval
        self.current: Predictor | None = None
        self.error: str | None = None
        self._key: str | None = None
        self._failed: tuple[str, float] | None = None
        self._last_check = -math.inf
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _set_error(self, text: str | None) -> None:
        if text and text != self.error:  # logged once per new problem, not once per check
            log.error(text)
        self.error = text

    def refresh(self) -> bool:
        """Load the latest model if it changed. True when a new model was swapped in.

        ``error`` says why the latest model is not the one serving (LATEST missing, unreadable, or
        naming a model that fails to load or to answer the probe); None when all is well.
        """
        with self._lock:
            self._last_check = time.monotonic()
            try:
                model_dir = self._locate(self.output_dir)
            except Exception as err:  # a broken LATEST must not take the server down
                self._set_error(str(err) if isinstance(err, ValueError) else f"cannot read models/LATEST: {err}")
                return False
            if model_dir is None:  # keep serving what we have (nothing, or the last good model)
                self._set_error("models/LATEST is missing" if self.current is not None else None)
                return False
            model_dir = Path(model_dir)
            key = str(model_dir.resolve())
            if key == self._key:
                self._set_error(None)  # LATEST points back at the model serving
                return False
            if self._failed and self._failed[0] == key and time.monotonic() - self._failed[1] < self.RETRY_FAILED_AFTER:
                return False
            step = "could not be loaded"
            try:
                predictor = Predictor(self._load(model_dir), model_dir)
                step = f"was refused: it cannot answer the probe input {self.PROBE}"
                self._probe(predictor)
            except Exception as err:
                self._failed = (key, time.monotonic())
                self._set_error(f"model {model_dir.name} {step}: {type(err).__name__}: {clip(str(err), 300)}")
                return False
            old = self.current
            self.current = predictor  # the swap: one reference assignment
            self._key, self._failed, self.error = key, None, None
            log.info("serving model %s%s", predictor.model_id, f" (was {old.model_id})" if old else "")
            return True

    def _probe(self, predictor: Predictor) -> None:
        vol, price = self.PROBE
        predictor.predict(np.array([vol]), np.array([price]))  # raises unless one finite answer
        self_check = getattr(predictor.model, "self_check", None)
        if self_check is not None:  # a bundle checks its forecast model too
            self_check()

    def status(self) -> tuple[Predictor | None, str | None]:
        """(the model serving, why the latest model is not it); read once, for /health."""
        return self.current, self.error

    def get(self) -> Predictor | None:
        """The current predictor, after a rate-limited check for a new one (for callers without a poller)."""
        if time.monotonic() - self._last_check >= self.check_interval:
            self.refresh()
        return self.current

    def start_polling(self) -> ModelHolder:
        """Check for a new model every ``check_interval`` seconds in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="volcast-model-poller", daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.check_interval):
            try:
                self.refresh()
            except Exception:  # pragma: no cover - refresh already catches; belt and braces
                log.exception("model refresh failed")

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
