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

from .. import config, partitions, storage
from ..config import ADJ_CLOSE, CLOSE, DATE, HIGH, LOW, SYMBOL, VOLUME
from ..errors import UserError
from ..executor import resolve as resolve_executor
from .append import (
    TAIL_FILE,
    TAIL_SCHEMA,
    append_partitions,
    key_ranges,
    lookback_rows,
    read_tail,
    tail_rows,
    write_tail,
)
from .columns import _date_ticks, _numeric, sort_order
from .core import _symbol_key, compute_sorted
from .read import LATEST_FILE
from .window import WindowSpec, parse_window

STAGE = "features"
# Inside the published features dataset (see read.LATEST_FILE).
STATE_FILE = "_features_state.json"
STATE_VERSION = 3  # partitions by key, with their raw members' fingerprints and the raw epoch last seen


def _code_version() -> str:
    """This package's source: a partition computed by other code is never reused."""
    # partitions.py holds the partitioning scheme.
    files = sorted(Path(__file__).parent.glob("*.py"))
    return storage.code_digest(*files, storage.__file__, partitions.__file__, extra=(config.FEATURES_SCHEMA,))


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
    """One raw partition (a file, or its members: base, then its rows in the delta) with the ticker columns as (unified)
    dictionaries; a clear error if it is not one."""
    table = storage.read_partition(src, read_dictionary=list(config.TICKER_COLUMNS))
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
    src: str | os.PathLike | list, dst: str | os.PathLike, window=config.DEFAULT_WINDOW, min_periods=0
) -> tuple[dict, pa.Table]:
    """Read one raw partition (a file, or a list: its base and delta rows), add the features, write it to
    ``dst``; return its stats and latest rows."""
    stats, latest, _ = _process(src, dst, window, min_periods)
    return stats, latest


def _process(src, dst, window, min_periods) -> tuple[dict, pa.Table, pa.Table]:
    """``process_partition``, plus the partition's rows for the tail table (``append.TAIL_FILE``)."""
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
    return stats, latest_rows(out, starts), tail_rows(table, lookback_rows(spec))


def _process_item(item: tuple) -> tuple[str, dict, pa.Table, pa.Table]:
    """``_process`` on one ``(key, src files, dst, spec, min_periods)``: the unit of work an executor runs."""
    key, src, dst, spec, min_periods = item
    return key, *_process(src, dst, spec, min_periods)


def _compute(
    todo: list[tuple[str, list[Path], Path]], spec: WindowSpec, jobs: int, executor: str = "local", scheduler: str = ""
) -> tuple[dict[str, dict], dict[str, pa.Table], dict[str, pa.Table]]:
    """Compute whole partitions ``(key, raw files, dst)``: stats, latest rows and tail rows by key."""
    if not todo:  # a daily update: nothing to compute whole (and no progress bar to import)
        return {}, {}, {}
    from tqdm import tqdm  # a text bar: an executed notebook keeps a line, not a widget

    from ..executor import map_tasks

    stats: dict[str, dict] = {}
    latest: dict[str, pa.Table] = {}
    tails: dict[str, pa.Table] = {}
    bar = tqdm(total=len(todo), desc="features", unit="partition", disable=not todo, mininterval=0.5)
    # Largest partitions first so the workers finish together.
    todo = sorted(todo, key=lambda item: -sum(p.stat().st_size for p in item[1]))

    def on_done(_item, result) -> None:
        key, stats[key], latest[key], tails[key] = result
        bar.update()

    # Local: threads, not processes: Parquet reads and writes and Arrow compute, most of the time, release
    # the GIL, and a thread starts at once where a fresh worker process costs a second of imports.
    map_tasks(
        _process_item,
        [(key, files, dst, spec, spec.min_periods) for key, files, dst in todo],
        jobs=jobs,
        executor=executor,
        scheduler=scheduler,
        name="features",
        on_done=on_done,
        local_pool=lambda n: ThreadPoolExecutor(max_workers=n, thread_name_prefix="features"),
    )
    bar.close()
    return stats, latest, tails


def _assembled(old: pa.Table | None, kept: set[str], pieces: dict[str, pa.Table], schema: pa.Schema) -> pa.Table:
    """A per-ticker table of the new version (latest rows, tail rows), sorted by Symbol: each partition's
    rows from ``pieces``, or for the ``kept`` partitions from ``old`` (the current version's table).
    Partition-key order is Symbol order, so the pieces are put in key order, not sorted."""
    ranges = key_ranges(old[SYMBOL]) if old is not None and kept else {}
    parts = []
    for key in sorted(set(pieces) | (set(kept) & set(ranges))):
        parts.append(pieces[key].cast(schema) if key in pieces else old.slice(*ranges[key]).cast(schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


LATEST_SCHEMA = pa.schema([*config.FEATURES_SCHEMA, pa.field("rows", pa.int64())])


def _write_delta(staging: Path, groups: dict, mine: dict, reuse: dict, appended: dict) -> None:
    """The features dataset's shared delta, named as the raw one: for each partition with raw delta rows, its
    features delta rows: carried over from the current delta (a reused partition) or as ``append_partitions``
    left them (an appended one). A recomputed partition has none (all its rows are in its new base)."""
    raw_parts = {k: m for k, members in groups.items() for m in members if isinstance(m, storage.DeltaPart)}
    if not raw_parts:
        return
    old = {k: m for k in reuse for m in mine.get(k, []) if isinstance(m, storage.DeltaPart)}
    writer = storage.DeltaWriter(
        staging / next(iter(raw_parts.values())).name,
        _FEATURES_WRITE_SCHEMA,
        arrow_schema=False,
        options=storage.parquet_options(config.FEATURES_SCHEMA),
    )
    carried = storage.read_parts(old.values(), read_dictionary=list(config.TICKER_COLUMNS))
    for key in sorted(raw_parts):
        if key in old:
            writer.add(key, carried[old[key]].cast(_FEATURES_WRITE_SCHEMA), old[key].stamp)
        elif key in appended and appended[key].delta is not None:
            writer.add(key, appended[key].delta, raw_parts[key].stamp)
    writer.close()


def _plan(layout, raw: Path, spec: WindowSpec, incremental: bool) -> dict:
    """Per raw partition: reuse its features files, append to them, or compute them (``todo``)."""
    groups = storage.partition_groups(raw)
    # Ingest hard-links unchanged files into each new raw version and writes changed ones anew, so a file's
    # stat fingerprint (size, mtime) changes exactly when its content may have; a partition's rows in the
    # shared delta carry a stamp that changes whenever rows are added to them (``storage.member_id``).
    fingerprints = {key: dict(storage.member_id(p) for p in files) for key, files in groups.items()}
    epochs = storage.read_partitions_file(raw)["epochs"]
    params = {**spec.state(), "code": _code_version()}
    current = storage.current_version(layout.features_dir)
    # incremental=False (the pipeline's --force): recompute every partition.
    previous = storage.read_json(current / STATE_FILE, default=None) if current and incremental else None
    ok = (
        isinstance(previous, dict)
        and previous.get("version") == STATE_VERSION
        and previous.get("params") == params
        and (current / LATEST_FILE).exists()
    )
    entries = previous.get("partitions", {}) if ok else {}
    mine = storage.partition_groups(current) if current else {}
    # New rows only for a row-count window (an offset window's report counts need a ticker's first date),
    # with the tail table at hand, on a partition whose raw rows only grew since (same epoch).
    can_append = ok and spec.rows is not None and (current / TAIL_FILE).exists()
    reuse, append, todo = {}, {}, []
    for key in groups:
        entry = entries.get(key)
        if entry and key in mine and entry["raw"] == fingerprints[key]:
            reuse[key] = entry["stats"]
        elif can_append and entry and key in mine and epochs.get(key) and epochs.get(key) == entry.get("epoch"):
            changed = [p for p in groups[key] if entry["raw"].get(storage.member_id(p)[0]) != storage.member_id(p)[1]]
            append[key] = (changed, groups[key], entry["stats"])
        else:
            todo.append(key)
    return {
        "groups": groups,
        "fingerprints": fingerprints,
        "epochs": epochs,
        "params": params,
        "current": current,
        "mine": mine,
        "reuse": reuse,
        "append": append,
        "todo": todo,
        "stale": bool(current) and any(k not in groups for k in mine),
    }


def run(
    output_dir, window=config.DEFAULT_WINDOW, min_periods=0, jobs=0, incremental=True, executor="local", scheduler=""
) -> dict:
    """The features stage: ``DIR/data/raw`` -> ``DIR/data/features`` + ``DIR/reports/features.json``.

    Incremental: a partition whose raw files, parameters and this code are unchanged since the last run is
    carried over (hard links); one whose raw rows only grew (a daily append, ``volcast.ingest.delta``) has
    only its new rows computed (``append.append_partitions``) and added to the features delta; any other is
    recomputed. The result equals a full run. ``executor="dask"`` computes the recomputed partitions on a
    dask cluster (``volcast.executor``), with the same result.
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
    plan = _plan(layout, raw, spec, incremental)
    groups, reuse, append, todo, current = plan["groups"], plan["reuse"], plan["append"], plan["todo"], plan["current"]

    computed: dict[str, dict] = {}
    appended: dict = {}
    if todo or append or plan["stale"] or current is None:
        carried = set(reuse) | set(append)
        with storage.publish_dir(layout.features_dir, seed_from_current=bool(carried)) as staging:
            for item in staging.iterdir():  # seeded: drop what is not carried over, and the delta (written anew)
                parsed = storage.split_partition_name(item.name)
                if (parsed is None and item.name not in (LATEST_FILE, TAIL_FILE)) or (
                    parsed is not None and parsed[0] not in carried
                ):
                    item.unlink()
            old_latest = storage.read_file(staging / LATEST_FILE) if carried else None
            old_tail = read_tail(staging / TAIL_FILE) if carried and (staging / TAIL_FILE).exists() else None
            if append:
                appended = append_partitions(
                    append,
                    staging,
                    old_latest,
                    old_tail,
                    _FEATURES_WRITE_SCHEMA,
                    spec,
                    spec.min_periods,
                    jobs,
                    {k: plan["mine"].get(k, []) for k in append},
                )
            computed, latest, tails = _compute(
                [(key, groups[key], staging / storage.partition_file(key)) for key in todo],
                spec,
                jobs,
                executor,
                scheduler,
            )
            _write_delta(staging, groups, plan["mine"], reuse, appended)
            table = _assembled(
                old_latest, set(reuse), {**{k: a.latest for k, a in appended.items()}, **latest}, LATEST_SCHEMA
            )
            storage.write_parquet(table, staging / LATEST_FILE)
            tail = _assembled(old_tail, set(reuse), {**{k: a.tail for k, a in appended.items()}, **tails}, TAIL_SCHEMA)
            write_tail(tail, staging / TAIL_FILE)
            stats = {**reuse, **{k: a.stats for k, a in appended.items()}, **computed}
            state = {
                "version": STATE_VERSION,
                "params": plan["params"],
                "partitions": {
                    key: {"raw": plan["fingerprints"][key], "epoch": plan["epochs"].get(key), "stats": stats[key]}
                    for key in groups
                },
            }
            storage.atomic_write_json(staging / STATE_FILE, state)
    all_stats = [reuse.get(k) or (appended[k].stats if k in appended else computed[k]) for k in groups]

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
        "partitions": len(groups),
        "partitions_recomputed": len(todo),
        "partitions_appended": len(append),
        "partitions_reused": len(reuse),
        "jobs": jobs,
        "executor": executor,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    storage.atomic_write_json(layout.report(STAGE), report)
    return report
