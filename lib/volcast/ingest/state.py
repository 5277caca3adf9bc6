"""The ingest stage's record of a run: the state file kept inside the raw dataset version (what the next
incremental run compares the source with: files, their CRCs and stamps, the code and source identity) and the
stage report (``reports/ingest.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import partitions, storage
from ..config import RAW_SCHEMA, Layout
from .sources import ResolvedSource

STAGE = "ingest"
STATE_FILE = "_ingest_state.json"  # inside the raw dataset version: published atomically with the data
STATE_VERSION = 1


def _code_fingerprint() -> str:
    """Incremental runs reuse earlier output only if the parsing code and schemas are the same."""
    # Every file of this package; partitions.py holds the partitioning scheme.
    package = sorted(Path(__file__).parent.glob("*.py"))
    return storage.code_digest(*package, storage.__file__, partitions.__file__, extra=(RAW_SCHEMA, STATE_VERSION))


def _source_identity(src: ResolvedSource) -> dict:
    return {"kind": src.kind, "path": str(src.path), "label": src.label}


def state_path(layout: Layout) -> Path | None:
    """Where the current raw version keeps ingest's state file, or None when there is no raw version yet."""
    current = storage.current_version(layout.raw_dir)
    return None if current is None else current / STATE_FILE


def _load_state(layout: Layout) -> dict | None:
    path = state_path(layout)
    if path is None:
        return None
    try:
        return storage.read_json(path)
    except (OSError, ValueError):
        return None


def _write_state(path: Path, state: dict) -> None:
    # Compact: json's C encoder (an indent makes it use the pure-Python one, slow on thousands of files).
    storage.atomic_write_text(path, json.dumps(state, separators=(",", ":")) + "\n")


def write_report(path: Path, report: dict) -> None:
    """The report as JSON, one key a line and a list of records (``files``) one record a line: json's C encoder
    on each (``indent`` would make json use its pure-Python encoder, slow on thousands of files)."""

    def value(v) -> str:
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            return "[\n" + ",\n".join("    " + json.dumps(x, default=str) for x in v) + "\n  ]"
        return json.dumps(v, default=str)

    lines = ",\n".join(f"  {json.dumps(k)}: {value(v)}" for k, v in report.items())
    storage.atomic_write_text(path, "{\n" + lines + "\n}\n")


def _state(src, catalog, code_fp, entries, stamps) -> dict:
    return {
        "version": STATE_VERSION,
        "code": code_fp,
        "source": _source_identity(src),
        "meta": catalog.meta_fingerprint,
        "files": list(entries.values()),  # parsed files (rejected ones included), not catalog.rejected
        "stamps": list(stamps.values()),
    }


def _report(src, catalog, names, meta_note, entries, plan, changed_partitions, seconds, this_run=None) -> dict:
    files = list(entries.values()) + catalog.rejected
    ok = [e for e in files if not e.get("error")]
    rejected = [{"file": e["file"], "symbol": e["symbol"], "reason": e["error"]} for e in files if e.get("error")]
    sums = {
        k: sum(e.get(k, 0) for e in files)
        for k in ("lines", "rows_read", "rows_kept", "rows_quarantined", "zero_volume_rows", "nonpositive_price_rows")
    }
    without_meta = sorted(e["symbol"] for e in ok if e.get("rows_kept") and e["symbol"] not in names)
    # Speed counts only the rows parsed in this run (an incremental run rereads few files).
    this_run = this_run or {}
    appended = {f for f, r in this_run.items() if r.get("update") == "appended"}
    fell_back = {f: r["update_reason"] for f, r in this_run.items() if r.get("update_reason")}
    reread = {f.rel[len(catalog.root) :] for f in catalog.files if f.rel in plan["read"]} | set(fell_back)
    rows_this_run = sum(e.get("rows_read", 0) for e in files if e["file"] in reread) + sum(
        this_run[f].get("rows_parsed", 0) for f in appended
    )
    rows_per_s = rows_this_run / seconds if seconds > 0 and rows_this_run else None
    return {
        "stage": STAGE,
        "source": _source_identity(src) | {"generated": src.kind == "demo"},
        "totals": {
            "files": len(files),
            "files_ingested": len(ok),
            "files_rejected": len(rejected),
            "tickers": sum(1 for e in ok if e.get("rows_kept")),
            **sums,
        },
        "rejected_files": rejected,
        "tickers_without_metadata": without_meta,
        "meta_note": meta_note,
        "incremental": plan["incremental"],
        "incremental_reason": plan["why"],
        "changed_partitions": changed_partitions,
        "files_reread": len(reread),
        # Append-aware ingest: files whose new lines only were parsed; files read whole; files carried over.
        "files_appended": len(appended),
        "files_unchanged": len(catalog.files) - len(appended) - len(reread),
        "append_fallbacks": [{"file": f, "reason": r} for f, r in sorted(fell_back.items())],
        "rows_read_this_run": rows_this_run,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows_per_s) if rows_per_s else None,
        "files": [{k: v for k, v in e.items() if k != "crc32"} for e in files],
    }
