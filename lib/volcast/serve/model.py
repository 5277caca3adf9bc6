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
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from volcast.config import Layout

log = logging.getLogger("volcast.serve")


def round_volumes(raw: np.ndarray) -> np.ndarray:
    """Model output -> the nearest non-negative integers (halves round up), as int64."""
    raw = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(raw)):
        raise RuntimeError("the model returned a non-finite prediction")
    return np.maximum(np.floor(raw + 0.5), 0.0).astype(np.int64)


class Predictor:
    """A loaded model and what is derived from it once: its id (JSON-encoded) and an answer cache.

    The cache maps an exact (vol_moving_avg, adj_close_rolling_med) pair to the rounded answer the
    model gave for it, so a cached answer is by construction identical to ``model.predict``.
    """

    CACHE_SIZE = 65_536

    def __init__(self, model: Any, model_dir: Path | None = None):
        self.model = model
        self.model_id = str(model.model_id)
        self.model_dir = model_dir
        self.model_id_json = json.dumps(self.model_id)
        self._cache: dict[tuple[float, float], int] = {}

    @property
    def card(self) -> dict:
        return getattr(self.model, "card", {}) or {}

    def predict(self, vols: np.ndarray, prices: np.ndarray) -> np.ndarray:
        raw = self.model.predict(np.asarray(vols, dtype=np.float64), np.asarray(prices, dtype=np.float64))
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


def _default_locator(output_dir: Path) -> Path | None:
    from volcast.train import latest_model_dir

    return latest_model_dir(output_dir)


def _default_loader(model_dir: Path) -> Any:
    from volcast.train import load_model

    return load_model(model_dir)


class ModelHolder:
    """The current model of an output directory, swapped atomically when ``models/LATEST`` changes.

    ``current`` is one attribute: readers take it once per request. ``refresh()`` locates the latest
    model dir; when it differs from the loaded one it loads the new model *fully* (outside any
    reader's way) and only then replaces the reference. If loading fails the old model stays.
    ``load_model`` / ``latest_model_dir`` default to ``volcast.train``'s; tests may inject others.
    """

    RETRY_FAILED_AFTER = 30.0

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

    def refresh(self) -> bool:
        """Load the latest model if it changed. True when a new model was swapped in."""
        with self._lock:
            self._last_check = time.monotonic()
            try:
                model_dir = self._locate(self.output_dir)
            except Exception as err:  # a broken LATEST must not take the server down
                self.error = f"cannot read {self.output_dir / 'models' / 'LATEST'}: {err}"
                log.warning(self.error)
                return False
            if model_dir is None:
                return False  # keep serving what we have (nothing, or the last good model)
            model_dir = Path(model_dir)
            key = str(model_dir.resolve())
            if key == self._key:
                return False
            if self._failed and self._failed[0] == key and time.monotonic() - self._failed[1] < self.RETRY_FAILED_AFTER:
                return False
            try:
                predictor = Predictor(self._load(model_dir), model_dir)
            except Exception as err:
                self._failed = (key, time.monotonic())
                self.error = f"model {model_dir.name} could not be loaded: {type(err).__name__}: {err}"
                log.error(self.error)
                return False
            old = self.current
            self.current = predictor  # the swap: one reference assignment
            self._key, self._failed, self.error = key, None, None
            log.info("serving model %s%s", predictor.model_id, f" (was {old.model_id})" if old else "")
            return True

    def get(self) -> Predictor | None:
        """The current predictor, after a rate-limited check for a new one (for callers without a poller)."""
        if time.monotonic() - self._last_check >= self.check_interval:
            self.refresh()
        return self.current

    def start_polling(self) -> "ModelHolder":
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
