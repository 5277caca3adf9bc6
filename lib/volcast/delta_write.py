"""Writing a dataset version's shared delta file and its partition record (issue 16): ``DeltaWriter`` (one row
group per partition key, the key -> row groups map in the footer, renamed into place), ``keys_to_fold`` (which
partitions go back into their bases, by the delta's size) and ``_partitions.json`` (the version's sequence number
and each partition's epoch). The layout they write, and reading it back, is ``volcast.partitions``; both are
re-exported by ``volcast.storage``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import partitions
from .partitions import DELTA_KEY

__all__ = [
    "DELTA_COMPRESSION",
    "PARTITIONS_FILE",
    "DeltaWriter",
    "keys_to_fold",
    "read_partitions_file",
    "write_partitions_file",
]

DELTA_COMPRESSION = "snappy"


def keys_to_fold(delta_rows: dict[str, int], total_rows: int, fraction: float | None = None) -> set[str]:
    """The partitions to fold into their bases so that the delta carries at most ``fraction`` (default
    ``partitions.DELTA_FRACTION``) of ``total_rows``: the largest delta groups first. Growth one day at a time
    then folds a few partitions a day (the largest, i.e. oldest, groups), not all of them on one day."""
    limit = (partitions.DELTA_FRACTION if fraction is None else fraction) * max(total_rows, 0)
    carried = sum(delta_rows.values())
    fold: set[str] = set()
    for key, rows in sorted(delta_rows.items(), key=lambda kv: (-kv[1], kv[0])):
        if carried <= limit:
            break
        fold.add(key)
        carried -= rows
    return fold


class DeltaWriter:
    """Write a shared delta file: ``add(key, table, stamp)`` once per partition key, in key order, each as its own
    row group(s); ``close()`` adds the key -> row groups map and renames the file into place (no rows: no file)."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, *, arrow_schema: bool = True, options=None):
        from .storage import parquet_options

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.schema = schema
        # Snappy, not the datasets' zstd: a delta is small and rewritten every day, one row group per partition,
        # and zstd's per-column-chunk cost made the write twice as slow (README "Daily updates"). No dictionary
        # pages either: a row group holds a few rows per ticker, and building one dictionary per column chunk
        # cost about half of the write (readers dictionary-encode the ticker columns as they read, as for a base).
        self.options = {
            "store_schema": arrow_schema,
            **(options or parquet_options(schema)),
            "compression": DELTA_COMPRESSION,
            "compression_level": None,
            "use_dictionary": False,
        }
        self.writer = None
        self.groups = 0
        self.parts: dict[str, dict] = {}

    def add(self, key: str, table: pa.Table | None, stamp: str) -> None:
        if table is None or not table.num_rows:
            return
        if self.parts and key <= max(self.parts):
            raise ValueError(f"delta partitions must come in key order ({key} after {max(self.parts)})")
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, self.schema, **self.options)
        size = 1 << 20
        self.writer.write_table(table, row_group_size=size)
        n = -(-table.num_rows // size)
        self.parts[key] = {
            "row_groups": list(range(self.groups, self.groups + n)),
            "rows": table.num_rows,
            "stamp": stamp,
        }
        self.groups += n

    def close(self, metadata: dict | None = None) -> Path | None:
        if self.writer is None:
            return None
        try:
            self.writer.add_key_value_metadata({DELTA_KEY: json.dumps({"parts": self.parts}), **(metadata or {})})
            self.writer.close()
            os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
        return self.path


# A raw dataset version's partition record, written by ingest: the version's sequence number (each run that
# writes raw adds one: it names the delta file) and each partition's "epoch", which changes whenever the
# partition's stored rows may have changed other than by rows appended after them.
PARTITIONS_FILE = "_partitions.json"


def read_partitions_file(version_dir: str | os.PathLike | None) -> dict:
    """``{"seq": int, "epochs": {key: str}}`` of a dataset version (``seq`` 0 and no epochs when absent)."""
    from .storage import read_json

    data = read_json(Path(version_dir) / PARTITIONS_FILE, default=None) if version_dir else None
    if not isinstance(data, dict):
        return {"seq": 0, "epochs": {}}
    return {"seq": int(data.get("seq", 0)), "epochs": dict(data.get("epochs", {}))}


def write_partitions_file(version_dir: str | os.PathLike, seq: int, epochs: dict[str, str]) -> None:
    from .storage import atomic_write_text

    atomic_write_text(Path(version_dir) / PARTITIONS_FILE, json.dumps({"seq": seq, "epochs": epochs}) + "\n")
