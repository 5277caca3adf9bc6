"""The ingest stage: ``run`` and the incremental plan (what a run reads, appends or carries over); the state file
and the report it writes are ``ingest.state``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from isal.isal_zlib import crc32  # zlib's CRC-32 with the same values, faster (ISA-L)

from .. import config, storage
from ..config import Layout
from ..executor import resolve as resolve_executor
from . import delta
from . import limits as limits_mod
from .append import Candidate
from .limits import Limits
from .sources import (
    Catalog,
    ResolvedSource,
    SourceFile,
    parse_meta,
    resolve_source,
    scan_source,
)
from .state import (
    STAGE,
    STATE_FILE,
    STATE_VERSION,
    _code_fingerprint,
    _load_state,
    _report,
    _state,
    _write_state,
    write_report,
)
from .task import _Task
from .workers import _execute

_RUN_ONLY = ("update", "update_reason", "rows_parsed")  # entry keys about this run only: not kept in the state


def run(
    output_dir,
    source="demo",
    jobs=0,
    demo_seed=config.DEMO_SEED,
    demo_tickers=config.DEMO_TICKERS,
    demo_years=config.DEMO_YEARS,
    incremental=True,
    *,
    max_file_bytes=limits_mod.MAX_FILE_BYTES,
    max_compression_ratio=limits_mod.MAX_COMPRESSION_RATIO,
    max_line_bytes=limits_mod.MAX_LINE_BYTES,
    max_header_bytes=limits_mod.MAX_HEADER_BYTES,
    max_columns=limits_mod.MAX_COLUMNS,
    allow_links=limits_mod.ALLOW_LINKS,
    executor="local",
    scheduler="",
) -> dict:
    """Ingest ``source`` into ``output_dir/data/raw`` (+ quarantine) and write ``reports/ingest.json``.

    ``source``: a Kaggle-layout folder or .zip, ``"kaggle"``, ``"demo"`` or None (Kaggle when
    credentials exist, else the demo). Re-running on the same source rereads only changed files;
    the report's ``changed_partitions`` lists the partition keys rewritten (empty: nothing changed).
    ``incremental=False`` (the pipeline's ``--force``) ignores the previous run and re-reads everything.
    With ``jobs`` > 1 files are parsed in worker processes (forkserver): a script that calls this must
    keep its top level under ``if __name__ == "__main__":``, as multiprocessing requires.

    Limits (``volcast.ingest.limits``): a file over ``max_file_bytes`` (uncompressed) or, in a zip, expanding
    more than ``max_compression_ratio`` times, or whose header is over ``max_header_bytes`` or
    ``max_columns``, is set aside with its reason; a line over ``max_line_bytes`` is quarantined. Links
    and special files in a folder source are refused (``allow_links=True`` reads links to regular files
    inside the folder). ``executor="dask"`` runs the partition tasks on the dask scheduler at ``scheduler``
    (or ``$VOLCAST_DASK_SCHEDULER``, or a LocalCluster of ``jobs`` processes): see ``volcast.executor``.
    Every non-blank data line of a file read ends as a kept or a quarantined row:
    the stage raises ``LinesNotAccounted`` (and publishes nothing) if it counts otherwise.
    """
    t0 = time.perf_counter()
    limits = Limits(
        int(max_file_bytes),
        float(max_compression_ratio),
        int(max_line_bytes),
        int(max_header_bytes),
        int(max_columns),
        bool(allow_links),
    )
    layout = Layout.at(output_dir)
    jobs = config.resolve_jobs(jobs)
    executor, scheduler = resolve_executor(executor, scheduler)
    src = resolve_source(
        source, layout.cache_dir, demo_seed=int(demo_seed), demo_tickers=int(demo_tickers), demo_years=int(demo_years)
    )
    print(f"ingest: source {src.label}" + (" -- NOT real market data" if src.kind == "demo" else ""))
    catalog = scan_source(src, limits)
    names, meta_note = parse_meta(catalog.meta)
    state = _load_state(layout) if incremental else None
    code_fp = f"{_code_fingerprint()}:{storage.code_digest(extra=sorted(limits.as_dict().items()))}"
    plan = _plan(catalog, state, src, code_fp, layout)

    entries: dict[str, dict] = {}  # file -> per-file entry
    this_run: dict[str, dict] = {}
    changed_partitions: list[str] = []
    if plan["incremental"] and not plan["rewrite"]:
        # Nothing changed: keep the dataset, refresh the stamps of touched-but-equal files.
        entries = {e["file"]: e for e in state["files"]}
        if plan["stamps_refreshed"]:
            _write_state(
                storage.current_version(layout.raw_dir) / STATE_FILE,
                _state(src, catalog, code_fp, entries, plan["stamps"]),
            )
    else:
        entries, this_run = _write_partitions(
            layout, src, catalog, names, plan, jobs, state, code_fp, limits, executor, scheduler
        )
        changed_partitions = sorted(plan["rewrite"])

    report = _report(
        src, catalog, names, meta_note, entries, plan, changed_partitions, time.perf_counter() - t0, this_run
    )
    report["limits"] = limits.as_dict()
    report["executor"] = executor
    write_report(layout.report(STAGE), report)
    t = report["totals"]
    print(
        f"ingest: {t['files_ingested']:,} files, {t['rows_kept']:,} rows kept, "
        f"{t['rows_quarantined']:,} rows quarantined, {t['files_rejected']} files set aside, "
        f"{len(report['tickers_without_metadata'])} tickers without metadata"
        + (
            ""
            if not plan["incremental"]
            else f"; incremental: {len(changed_partitions)} partitions rewritten, "
            f"files {report['files_appended']:,} appended, {report['files_reread']:,} re-read, "
            f"{report['files_unchanged']:,} unchanged"
        )
    )
    return report


def _plan(catalog: Catalog, state: dict | None, src: ResolvedSource, code_fp: str, layout: Layout) -> dict:
    """Decide full or incremental, and which partitions to rewrite and which files to read."""
    full = {
        "incremental": False,
        "rewrite": {storage.partition_key(f.symbol) for f in catalog.files},
        "read": {f.rel for f in catalog.files},
        "stamps": {},
        "stamps_refreshed": False,
        "why": "first run",
    }
    if state is None:
        return full
    if state.get("version") != STATE_VERSION or state.get("code") != code_fp:
        return {**full, "why": "ingest code or limits changed"}
    if state.get("source", {}).get("path") != str(src.path) or state.get("source", {}).get("kind") != src.kind:
        return {**full, "why": "different source"}
    if state.get("meta") != catalog.meta_fingerprint:
        return {**full, "why": "symbols_valid_meta.csv changed"}
    previous = {e["rel"]: e for e in state.get("stamps", [])}
    if len(state.get("files", [])) != len(previous):
        return {**full, "why": "state incomplete"}
    rewrite, read, stamps, refreshed = set(), set(), {}, False
    append: dict[str, dict] = {}  # rel -> {"size", "crc32"} as last read: maybe grown by appended lines
    entries = {e["file"]: e for e in state.get("files", [])}
    current = {f.rel for f in catalog.files}
    for f in catalog.files:
        old = previous.get(f.rel)
        stamps[f.rel] = {
            "rel": f.rel,
            "symbol": f.symbol,
            "size": f.size,
            "stamp": f.stamp,
            "crc32": old.get("crc32") if old else None,
        }
        if old and old["size"] == f.size and old["stamp"] == f.stamp and old.get("symbol") == f.symbol:
            continue
        if old and old["size"] == f.size and old.get("crc32") and src.path.is_dir():
            # Touched but maybe not modified: compare content (a CRC-32, cheap beside a parse) before rereading.
            crc = f"{crc32((src.path / f.rel).read_bytes()):08x}"
            if crc == old["crc32"]:
                refreshed = True
                continue
        rewrite.add(storage.partition_key(f.symbol))
        entry = entries.get(f.rel[len(catalog.root) :])
        if (
            old
            and old.get("crc32")
            and old.get("symbol") == f.symbol
            and f.size > old["size"]
            and src.path.is_dir()
            and entry
            and not entry.get("error")
            and "lines" in entry
        ):
            append[f.rel] = {"size": old["size"], "crc32": old["crc32"], "entry": entry}
        else:
            read.add(f.rel)
    for rel, old in previous.items():
        if rel not in current:
            rewrite.add(storage.partition_key(old["symbol"]))
    return {
        "incremental": True,
        "rewrite": rewrite,
        "read": read,
        "append": append,
        "stamps": stamps,
        "stamps_refreshed": refreshed,
        "why": "same source as the last run",
    }


def _write_partitions(
    layout, src, catalog, names, plan, jobs, state, code_fp, limits, executor="local", scheduler=""
) -> dict[str, dict]:
    by_key: dict[str, list[SourceFile]] = {}
    for f in catalog.files:
        by_key.setdefault(storage.partition_key(f.symbol), []).append(f)
    old_entries = {e["file"]: e for e in (state or {}).get("files", [])} if plan["incremental"] else {}
    entries: dict[str, dict] = {}
    # Entries of files not reread come from the last run (their rows are carried over unchanged).
    for f in catalog.files:
        short = f.rel[len(catalog.root) :]
        if f.rel not in plan["read"] and f.rel not in plan.get("append", {}) and short in old_entries:
            entries[short] = old_entries[short]

    this_run: dict[str, dict] = {}  # file -> how this run read it (update, update_reason, rows_parsed)
    previous_raw = storage.current_version(layout.raw_dir) if plan["incremental"] else None
    previous_q = storage.current_version(layout.quarantine_dir) if plan["incremental"] else None
    incremental = plan["incremental"]
    partitions = storage.read_partitions_file(previous_raw)
    seq = partitions["seq"] + 1
    previous_stamps = {e["rel"]: e for e in (state or {}).get("stamps", [])}
    eligible = delta.eligible_keys(plan, catalog, previous_stamps, incremental and src.path.is_dir())
    # The previous version's members per partition (its base, legacy deltas, its part of the shared delta).
    old_raw = storage.partition_groups(previous_raw) if previous_raw else {}
    old_q = storage.partition_groups(previous_q) if previous_q else {}
    raw_parts = _delta_parts(old_raw)
    q_parts = _delta_parts(old_q)
    total_rows = sum(e.get("rows_kept", 0) for e in old_entries.values())
    fold = storage.keys_to_fold({k: p.rows for k, p in raw_parts.items()}, total_rows)
    delta_last = _delta_last_dates(raw_parts)
    with (
        storage.publish_dir(layout.raw_dir, seed_from_current=incremental) as raw_stage,
        storage.publish_dir(layout.quarantine_dir, seed_from_current=incremental) as q_stage,
    ):
        # The shared delta (hard-linked from the current version) is written anew below, and a rewritten
        # partition's legacy delta files go: whatever the task writes holds their rows. Tasks read the previous
        # version, never the staging directory.
        for stage_dir in (raw_stage, q_stage):
            for name in os.listdir(stage_dir):
                legacy = storage.split_partition_name(name)
                if storage.split_delta_name(name) or (legacy and legacy[1] and legacy[0] in plan["rewrite"]):
                    os.unlink(stage_dir / name)
        tasks = []
        for key in sorted(plan["rewrite"]):
            files = by_key.get(key, [])
            part = storage.partition_file(key)
            to_parse = [(f.rel, f.symbol, names.get(f.symbol)) for f in files if f.rel in plan["read"]]
            grown = plan.get("append", {})
            keep = [f.symbol for f in files if f.rel not in plan["read"] and f.rel not in grown]
            append = tuple(
                Candidate(
                    f.rel,
                    f.symbol,
                    names.get(f.symbol),
                    grown[f.rel]["size"],
                    grown[f.rel]["crc32"],
                    grown[f.rel]["entry"],
                )
                for f in files
                if f.rel in grown
            )
            tasks.append(
                _Task(
                    key,
                    str(src.path),
                    catalog.root,
                    to_parse,
                    keep,
                    str(previous_raw / part) if previous_raw else None,
                    str(previous_q / part) if previous_q else None,
                    str(raw_stage / part),
                    str(q_stage / part),
                    sum(f.size for f in files if f.rel in plan["read"] or f.rel in grown),
                    limits,
                    append,
                    tuple(old_raw.get(key, ())),
                    tuple(old_q.get(key, ())),
                )
            )
        items = [
            _as_delta(t, eligible, raw_stage, q_stage, seq, fold, old_raw.get(key, ()), delta_last)
            if (key := t.key) in eligible
            else t
            for t in tasks
        ]
        if any(isinstance(i, delta._DeltaTask) for i in items):
            results = delta.run_tasks(items, jobs, executor, scheduler)
        else:
            n_files = sum(len(t.parse) + len(t.append) for t in tasks)
            results = [(None, delta.REWRITE, _execute(tasks, jobs, n_files, executor, scheduler), None)]
        epochs = dict(partitions["epochs"]) if incremental else {}
        rewritten = {key for key, mode, _, _ in results if mode == delta.REWRITE}
        if any(key is None for key in rewritten):
            rewritten = set(plan["rewrite"])
        for key in rewritten:
            epochs[key] = delta.new_epoch(seq)
        # Keys whose delta rows are now in a new base: rewritten or folded (a task that returned no rows).
        in_base = rewritten | {key for key, mode, _, rows in results if mode == delta.DELTA and rows is None}
        new_rows = {key: rows for key, mode, _, rows in results if rows is not None}
        delta.write_delta(raw_stage, q_stage, seq, raw_parts, q_parts, in_base, new_rows)
        for _, _, found, _ in results:
            for entry in found:
                entries[entry["file"]] = entry
                this_run[entry["file"]] = {k: entry.pop(k) for k in _RUN_ONLY if k in entry}
        present = set(storage.partition_groups(raw_stage))
        storage.write_partitions_file(raw_stage, seq, {k: v for k, v in sorted(epochs.items()) if k in present})
        ordered = {f.rel[len(catalog.root) :]: None for f in catalog.files}
        entries = {k: entries[k] for k in ordered if k in entries}
        stamps = plan["stamps"] or {
            f.rel: {"rel": f.rel, "size": f.size, "stamp": f.stamp, "symbol": f.symbol} for f in catalog.files
        }
        for f in catalog.files:
            e = entries.get(f.rel[len(catalog.root) :], {})
            if e.get("crc32"):
                stamps[f.rel]["crc32"] = e["crc32"]
        _write_state(raw_stage / STATE_FILE, _state(src, catalog, code_fp, entries, stamps))
    return entries, this_run


def _as_delta(
    task: _Task, eligible: dict, raw_stage: Path, q_stage: Path, seq: int, fold: set, members, delta_last: dict
) -> delta._DeltaTask:
    """The delta form of a partition task (``delta.py``): its new files parsed whole, the rest appended. It folds
    (writes a new base) when chosen to (``fold``), when it has no base yet, or legacy per-partition deltas."""
    new_rels = {f.rel for f in eligible[task.key]}
    has_base = task.previous_raw is not None and Path(task.previous_raw).is_file()
    legacy = any(isinstance(m, Path) and m.name != storage.partition_file(task.key) for m in members)
    return delta._DeltaTask(
        task,
        tuple(p for p in task.parse if p[0] in new_rels),
        str(raw_stage),
        str(q_stage),
        seq,
        not has_base or legacy or task.key in fold,
        delta_last.get(task.key, {}),
    )


def _delta_parts(groups: dict) -> dict:
    """``{key: DeltaPart}`` of a version's shared delta (a version has at most one)."""
    return {key: m for key, members in groups.items() for m in members if isinstance(m, storage.DeltaPart)}


def _delta_last_dates(parts: dict) -> dict[str, dict[str, str]]:
    """``{key: {ticker: its last Date}}`` in the shared delta, from its footer's summary (``write._RawParquet``)."""
    by_key: dict[str, dict[str, str]] = {}
    if parts:
        for symbol, day in delta.last_dates([next(iter(parts.values())).path]).items():
            by_key.setdefault(storage.partition_key(symbol), {})[symbol] = day
    return by_key
