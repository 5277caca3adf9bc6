"""The features stage: ``DIR/data/raw`` -> ``DIR/data/features`` (+ ``_latest.parquet`` inside it, and
``DIR/reports/features.json``), one partition file at a time, in threads, recomputing only the
partitions whose raw file changed. Each partition goes through ``core.compute_sorted``."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import config, storage
from ..config import ADJ_CLOSE, CLOSE, DATE, HIGH, LOW, SYMBOL, VOLUME
from ..errors import UserError
from ..executor import resolve as resolve_executor
from .columns import _date_ticks, _numeric, sort_order
from .core import _symbol_key, compute_sorted
from .read import LATEST_FILE
from .window import WindowSpec, parse_window

STAGE = "features"
# Inside the published features dataset (see read.LATEST_FILE).
STATE_FILE = "_features_state.json"


def _code_version() -> str:
    """This package's source: a partition computed by other code is never reused."""
    # storage.py holds the partitioning scheme.
    files = sorted(Path(__file__).parent.glob("*.py"))
    return storage.code_digest(*files, storage.__file__, extra=(config.FEATURES_SCHEMA,))


def _partition_stats(
    starts: np.ndarray,
    n: int,
    names: list[str],
    dates: tuple[np.ndarray, int] | None,
    spec: WindowSpec,
    vol: np.ndarray,
    med: np.ndarray,
) -> dict:
    """Counts for the report; ``names`` are the tickers in ``starts`` order."""
    ends = np.append(starts[1:], n)
    if spec.rows is not None:
        full = np.maximum(ends - starts - (spec.rows - 1), 0)  # per ticker: rows from the window-th on
        short = (ends - starts) < spec.rows
    else:
        # An offset window is "full" when the ticker already traded at the window's far end.
        ticks, span = dates[0], spec.span_ticks(dates[1])
        full = ticks - np.repeat(ticks[starts], ends - starts) >= span
        short = (ticks[ends - 1] - ticks[starts]) < span if n else np.zeros(0, bool)
    return {
        "rows": int(n),
        "tickers": len(starts),
        "rows_with_full_window": int(full.sum()),
        "rows_with_features": int((~np.isnan(vol) & ~np.isnan(med)).sum()),
        "short_tickers": [name for name, is_short in zip(names, short.tolist()) if is_short],
    }


# Symbol and Security Name are read as Arrow dictionaries and written back as they are: no string is
# materialised or hashed per row.
_FEATURES_WRITE_SCHEMA = pa.schema(
    [
        *config.RAW_DICTIONARY_SCHEMA,
        *[config.FEATURES_SCHEMA.field(c) for c in config.FEATURE_COLUMNS],
        *[config.FEATURES_SCHEMA.field(c) for c in config.FORECAST_INPUTS],
    ]
)


def _read_raw_partition(src) -> pa.Table:
    """One raw partition with the ticker columns as (unified) dictionaries; a clear error if it is not one."""
    table = pq.read_table(src, read_dictionary=list(config.TICKER_COLUMNS))
    missing = [c for c in config.RAW_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{src}: not a raw volcast partition (missing {', '.join(missing)}); re-run ingest")
    try:
        table = table.select(list(config.RAW_COLUMNS)).cast(config.RAW_DICTIONARY_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UserError(f"{src}: columns do not match the raw schema ({exc}); re-run ingest") from None
    # Each row group brings its own dictionary: one shared dictionary per column, so rows compare by
    # index and the writer takes the column as it is (no copy of the row groups into one chunk).
    return table.unify_dictionaries()


def latest_rows(table: pa.Table, starts: np.ndarray) -> pa.Table:
    """Each ticker's last row (plain strings) and ``rows``, its number of rows: the latest-row table."""
    n = table.num_rows
    ends = np.append(starts[1:], n)
    last = table.take(pa.array(ends - 1)).cast(config.FEATURES_SCHEMA)
    return last.append_column("rows", pa.array(ends - starts, type=pa.int64()))


def process_partition(
    src: str | os.PathLike, dst: str | os.PathLike, window=config.DEFAULT_WINDOW, min_periods=0
) -> tuple[dict, pa.Table]:
    """Read one raw partition file, add the features, write it to ``dst``; return its stats and latest rows."""
    spec = parse_window(window, min_periods)
    table = _read_raw_partition(src)
    order = sort_order(_symbol_key(table[SYMBOL]), table[DATE].combine_chunks())
    if order.order is not None:  # the raw contract says sorted; keep the output sorted regardless
        table = table.take(pa.array(order.order))
    ticks = _date_ticks(table[DATE].combine_chunks())
    cols = compute_sorted(
        order.starts,
        ticks,
        _numeric(table[VOLUME], VOLUME),
        _numeric(table[ADJ_CLOSE], ADJ_CLOSE),
        spec,
        config.FORECAST_INPUTS,
        *(_numeric(table[c], c) for c in (HIGH, LOW, CLOSE)),
    )
    out = table
    for name, values in cols.items():
        out = out.append_column(name, pa.array(values))
    out = out.cast(_FEATURES_WRITE_SCHEMA)
    storage.write_parquet(out, dst, arrow_schema=False)
    starts = order.starts
    names = table[SYMBOL].take(pa.array(starts)).cast(pa.string()).to_pylist() if len(starts) else []
    stats = _partition_stats(
        starts,
        table.num_rows,
        names,
        ticks if spec.is_offset else None,
        spec,
        cols[config.VOL_FEATURE],
        cols[config.PRICE_FEATURE],
    )
    return stats, latest_rows(out, starts)


def _process_item(item: tuple) -> tuple[str, dict, pa.Table]:
    """``process_partition`` on one ``(src, dst, spec, min_periods)``: the unit of work an executor runs."""
    src, dst, spec, min_periods = item
    stats, latest = process_partition(src, dst, spec, min_periods)
    return Path(src).name, stats, latest


def _compute(
    todo: list[tuple[Path, Path]], spec: WindowSpec, jobs: int, executor: str = "local", scheduler: str = ""
) -> tuple[dict[str, dict], dict[str, pa.Table]]:
    from tqdm import tqdm  # a text bar: an executed notebook keeps a line, not a widget

    from ..executor import map_tasks

    stats: dict[str, dict] = {}
    latest: dict[str, pa.Table] = {}
    bar = tqdm(total=len(todo), desc="features", unit="partition", disable=not todo, mininterval=0.5)
    # Largest partitions first so the workers finish together.
    todo = sorted(todo, key=lambda item: -item[0].stat().st_size)

    def on_done(_item, result) -> None:
        name, stats[name], latest[name] = result
        bar.update()

    # Local: threads, not processes: Parquet reads and writes and Arrow compute, most of the time, release
    # the GIL, and a thread starts at once where a fresh worker process costs a second of imports.
    map_tasks(
        _process_item,
        [(src, dst, spec, spec.min_periods) for src, dst in todo],
        jobs=jobs,
        executor=executor,
        scheduler=scheduler,
        name="features",
        on_done=on_done,
        local_pool=lambda n: ThreadPoolExecutor(max_workers=n, thread_name_prefix="features"),
    )
    bar.close()
    return stats, latest


def _latest_table(staging: Path, computed: dict[str, pa.Table], reused: set[str]) -> pa.Table:
    """The new latest-row table: computed partitions' rows, plus the reused partitions' rows from the
    previous table (hard-linked into ``staging``), sorted by Symbol."""
    parts = list(computed.values())
    previous = staging / LATEST_FILE
    if reused and previous.exists():
        old = pq.read_table(previous)
        keys = np.array([storage.partition_file(storage.partition_key(s)) for s in old[SYMBOL].to_pylist()])
        parts.append(old.filter(pa.array(np.isin(keys, list(reused)))) if len(keys) else old)
    schema = pa.schema([*config.FEATURES_SCHEMA, pa.field("rows", pa.int64())])
    table = pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()
    return table.sort_by([(SYMBOL, "ascending")])


def run(
    output_dir, window=config.DEFAULT_WINDOW, min_periods=0, jobs=0, incremental=True, executor="local", scheduler=""
) -> dict:
    """The features stage: ``DIR/data/raw`` -> ``DIR/data/features`` + ``DIR/reports/features.json``.

    Incremental: a partition whose raw file, parameters and this code are unchanged since the last
    run is carried over (hard link) instead of recomputed; the result equals a full run.
    ``executor="dask"`` computes the partitions on a dask cluster (``volcast.executor``), with the same result.
    """
    t0 = time.perf_counter()
    spec = parse_window(window, min_periods)
    jobs = config.resolve_jobs(jobs)
    executor, scheduler = resolve_executor(executor, scheduler)
    layout = config.Layout.at(output_dir)
    raw = storage.current_version(layout.raw_dir)
    if raw is None:
        raise UserError(
            f"no raw dataset at {layout.raw_dir}; run the ingest stage first (python run_pipeline.py --stages ingest)"
        )
    sources = {p.name: p for p in sorted(raw.glob(f"{storage.PARTITION_PREFIX}*.parquet"))}
    # Ingest hard-links unchanged partitions into each new raw version and rewrites changed ones, so a
    # partition's stat fingerprint (size, mtime) changes exactly when its content may have.
    fingerprints = {name: storage.fingerprint_path(path) for name, path in sources.items()}
    params = {**spec.state(), "code": _code_version()}

    current = storage.current_version(layout.features_dir)
    # incremental=False (the pipeline's --force): recompute every partition.
    previous = storage.read_json(current / STATE_FILE, default=None) if current and incremental else None
    reusable: dict[str, dict] = {}
    # Reused partitions' latest rows come from the previous latest-row table: without it, nothing is reused.
    if isinstance(previous, dict) and previous.get("params") == params and (current / LATEST_FILE).exists():
        for name, entry in previous.get("partitions", {}).items():
            if fingerprints.get(name) == entry.get("fingerprint") and (current / name).is_file():
                reusable[name] = entry["stats"]
    todo_names = [name for name in sources if name not in reusable]
    stale = bool(current) and any(p.name not in sources for p in current.glob(f"{storage.PARTITION_PREFIX}*.parquet"))

    computed: dict[str, dict] = {}
    if todo_names or stale or current is None:
        with storage.publish_dir(layout.features_dir, seed_from_current=bool(reusable)) as staging:
            for item in staging.iterdir():  # seeded: drop what is not carried over
                if item.name not in reusable and item.name != LATEST_FILE:
                    item.unlink()
            computed, latest = _compute(
                [(sources[name], staging / name) for name in todo_names], spec, jobs, executor, scheduler
            )
            table = _latest_table(staging, latest, set(reusable))
            storage.write_parquet(table, staging / LATEST_FILE)
            state = {
                "params": params,
                "partitions": {
                    name: {"fingerprint": fingerprints[name], "stats": reusable.get(name) or computed[name]}
                    for name in sources
                },
            }
            storage.atomic_write_json(staging / STATE_FILE, state)
    all_stats = [reusable.get(name) or computed[name] for name in sources]

    short = sorted(t for s in all_stats for t in s["short_tickers"])
    report = {
        "stage": STAGE,
        "rows": sum(s["rows"] for s in all_stats),
        "tickers": sum(s["tickers"] for s in all_stats),
        "window": spec.label,
        "min_periods": spec.min_periods,
        "rows_with_full_window": sum(s["rows_with_full_window"] for s in all_stats),
        "rows_with_features": sum(s["rows_with_features"] for s in all_stats),
        "tickers_shorter_than_window": len(short),
        "tickers_shorter_than_window_list": short,
        "partitions": len(sources),
        "partitions_recomputed": len(todo_names),
        "partitions_reused": len(sources) - len(todo_names),
        "jobs": jobs,
        "executor": executor,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    storage.atomic_write_json(layout.report(STAGE), report)
    return report
