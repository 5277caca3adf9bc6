"""A dataset version's partitions: file names, the daily delta file, and reading a partition back (writing the
delta and choosing folds: ``volcast.delta_write``).

A dataset version holds one base file per partition key, ``part-<key>.parquet`` (a ticker's rows live in the
partition of its first two bytes, hex-encoded), and at most one shared delta file, ``part-~<seq>.parquet``,
that a daily update writes (issue 16): every row appended since each partition's base was written, ONE ROW
GROUP PER PARTITION KEY (keys in order, then Symbol, then Date), with a map key -> row groups (+ a stamp that
changes whenever rows are added to that key's group) in its key-value metadata (``DELTA_KEY``). A partition's
rows are its base, then its row groups of the delta: a per-partition reader reads only those row groups.

'~' sorts after every character of a base name, so in path order (the order pandas, pyarrow and dask read a
dataset directory in) the delta comes after every base: each ticker's rows are in Date order in a plain read,
and a stable sort by Symbol gives the Symbol-then-Date order volcast's own readers return.

Datasets written before the shared delta have per-partition delta files, ``part-<key>~<seq>.parquet``
("legacy" deltas, read after their base); they are still read correctly, and ingest folds a partition's
legacy deltas into its base the next time it appends to it.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PARTITION_PREFIX = "part-"
DELTA_MARK = "~"
DELTA_DIGITS = 6
DELTA_KEY = "volcast.delta"  # the shared delta's footer: {"parts": {key: {"row_groups", "rows", "stamp"}}}
# Fold by size: a run folds partitions (largest delta first) back into their bases once the delta would carry
# more than this share of the dataset's rows. See README "Daily updates" (Compaction) for why a size bound.
DELTA_FRACTION = 0.02

__all__ = [
    "DELTA_FRACTION",
    "DELTA_KEY",
    "DELTA_MARK",
    "PARTITION_PREFIX",
    "DeltaPart",
    "delta_file",
    "delta_footer",
    "delta_parts",
    "is_partition_file",
    "legacy_deltas",
    "legacy_deltas_by_key",
    "member_id",
    "new_stamp",
    "partition_file",
    "partition_groups",
    "partition_key",
    "partition_members",
    "read_dataset",
    "read_file",
    "read_member",
    "read_partition",
    "read_parts",
    "shared_delta_file",
    "shared_deltas",
    "sort_by_symbol",
    "split_delta_name",
    "split_partition_name",
]


def partition_key(symbol: str) -> str:
    """The partition a ticker's rows live in: its first two bytes, hex-encoded.

    Hex keeps file-name order equal to Symbol order (pyarrow reads a dataset's files in sorted path
    order; a one-letter ticker's ``part-41.`` sorts before ``part-41xx`` because '.' < any hex digit),
    so the dataset reads back sorted by Symbol then Date. Two letters rather than one: the real data
    on hand only spans A-D, and a change to one ticker should rewrite a few dozen tickers' rows, not
    a quarter of the dataset; it also gives the worker pool enough pieces to balance.
    """
    return symbol.encode("utf-8")[:2].hex() or "00"


def partition_file(key: str) -> str:
    return f"{PARTITION_PREFIX}{key}.parquet"


def delta_file(key: str, seq: int) -> str:
    """A legacy per-partition delta's name (datasets written before the shared delta)."""
    return f"{PARTITION_PREFIX}{key}{DELTA_MARK}{seq:0{DELTA_DIGITS}d}.parquet"


def shared_delta_file(seq: int) -> str:
    """The shared delta's name: ``part-~000007.parquet``, after every base in path order."""
    return f"{PARTITION_PREFIX}{DELTA_MARK}{seq:0{DELTA_DIGITS}d}.parquet"


def split_partition_name(name: str) -> tuple[str, int] | None:
    """``part-4141.parquet`` -> ("4141", 0); a legacy delta ``part-4141~000003.parquet`` -> ("4141", 3); anything
    else (the shared delta included: see ``split_delta_name``) None."""
    if not (name.startswith(PARTITION_PREFIX) and name.endswith(".parquet")):
        return None
    stem = name[len(PARTITION_PREFIX) : -len(".parquet")]
    key, mark, seq = stem.partition(DELTA_MARK)
    if not key or (mark and not (seq.isdigit() and seq.isascii() and int(seq) > 0)):
        return None
    return key, int(seq) if mark else 0


def split_delta_name(name: str) -> int | None:
    """``part-~000007.parquet`` -> 7; anything else None."""
    prefix = PARTITION_PREFIX + DELTA_MARK
    if not (name.startswith(prefix) and name.endswith(".parquet")):
        return None
    seq = name[len(prefix) : -len(".parquet")]
    return int(seq) if seq.isdigit() and seq.isascii() and int(seq) > 0 else None


def is_partition_file(name: str) -> bool:
    """A base, a legacy delta or the shared delta."""
    return split_partition_name(name) is not None or split_delta_name(name) is not None


def new_stamp(seq: int) -> str:
    """A fresh identity for a partition's rows (an epoch, a delta group's stamp): the run's number + a random tag."""
    return f"{seq}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class DeltaPart:
    """One partition's rows in a shared delta file: row groups ``row_groups`` of ``path`` (``rows`` rows).
    ``stamp`` changes whenever rows are added to them. A path-like (``os.fspath`` gives the file's path) that
    volcast's readers (``read_member``, ``read_partition``) read as those row groups only."""

    path: Path
    key: str
    row_groups: tuple[int, ...]
    rows: int = 0
    stamp: str = ""

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def stat(self):
        return self.path.stat()

    def __str__(self) -> str:
        return f"{self.path}[{self.key}]"


@functools.lru_cache(maxsize=8)
def _cached_footer(path: str, mtime_ns: int, size: int) -> pq.FileMetaData:
    return pq.read_metadata(path)


def delta_footer(path: str | os.PathLike) -> pq.FileMetaData:
    """A delta file's parsed footer, parsed once per file version (by path, mtime and size): every partition
    read from the delta then skips the parse (one row group per partition makes the footer large)."""
    st = os.stat(path)
    return _cached_footer(os.fspath(path), st.st_mtime_ns, st.st_size)


def delta_parts(path: str | os.PathLike) -> dict[str, DeltaPart]:
    """The partitions of a shared delta file, from its footer's map."""
    path = Path(path)
    meta = delta_footer(path).metadata or {}
    raw = meta.get(DELTA_KEY.encode())
    if raw is None:
        raise ValueError(
            f"{path}: a delta file without its {DELTA_KEY} map (not written by volcast); re-run with --force"
        )
    parts = json.loads(raw).get("parts", {})
    return {
        key: DeltaPart(
            path, key, tuple(int(i) for i in v["row_groups"]), int(v.get("rows", 0)), str(v.get("stamp", ""))
        )
        for key, v in sorted(parts.items())
    }


def partition_groups(version_dir: str | os.PathLike) -> dict[str, list]:
    """A dataset version's members by partition key, sorted by key: each key's base file (if any), its legacy
    delta files in sequence order, then its ``DeltaPart`` of the shared delta. Read a partition as the
    concatenation of its members (``read_partition``)."""
    groups: dict[str, list[tuple[int, object]]] = {}
    shared: list[tuple[int, Path]] = []
    for path in Path(version_dir).iterdir():
        if not path.is_file():
            continue
        parsed = split_partition_name(path.name)
        if parsed is not None:
            groups.setdefault(parsed[0], []).append((parsed[1], path))
        elif (seq := split_delta_name(path.name)) is not None:
            shared.append((seq, path))
    for seq, path in sorted(shared):
        for key, part in delta_parts(path).items():
            groups.setdefault(key, []).append((10**DELTA_DIGITS + seq, part))  # after legacy deltas
    return {key: [m for _, m in sorted(files, key=lambda item: item[0])] for key, files in sorted(groups.items())}


def shared_deltas(version_dir: str | os.PathLike) -> list[Path]:
    """The shared delta file(s) of a version (normally at most one)."""
    return sorted(
        p for p in Path(version_dir).glob(f"{PARTITION_PREFIX}{DELTA_MARK}*.parquet") if split_delta_name(p.name)
    )


def legacy_deltas(base: str | os.PathLike) -> list[Path]:
    """A partition's legacy per-partition delta files beside its base, in sequence order."""
    base = Path(base)
    parsed = split_partition_name(base.name)
    if parsed is None or not base.parent.is_dir():
        return []
    return legacy_deltas_by_key(base.parent, f"{PARTITION_PREFIX}{parsed[0]}{DELTA_MARK}*.parquet").get(parsed[0], [])


def legacy_deltas_by_key(directory: str | os.PathLike, pattern: str = "*.parquet") -> dict[str, list[Path]]:
    """Every legacy per-partition delta file in ``directory`` (among the names matching ``pattern``), by partition
    key, each key's in sequence order: one listing for all partitions."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in Path(directory).glob(pattern):
        parsed = split_partition_name(path.name)
        if parsed is not None and parsed[1]:
            found.setdefault(parsed[0], []).append((parsed[1], path))
    return {key: [path for _, path in sorted(paths)] for key, paths in found.items()}


def partition_members(base: str | os.PathLike) -> list:
    """A partition's members in read order, named by its base file's path: the base (if it exists), its legacy
    delta files, then its ``DeltaPart`` of the directory's shared delta."""
    base = Path(base)
    parsed = split_partition_name(base.name)
    if parsed is None or not base.parent.is_dir():
        return []
    members: list = ([base] if base.is_file() else []) + legacy_deltas(base)
    for path in shared_deltas(base.parent):
        part = delta_parts(path).get(parsed[0])
        if part is not None:
            members.append(part)
    return members


def sort_by_symbol(table: pa.Table, column: str = "Symbol") -> pa.Table:
    """``table`` stably sorted by ``column`` (plain or dictionary strings): each ticker's rows keep their
    order, so a partition read base-then-delta comes out sorted by Symbol then Date."""
    if not table.num_rows:
        return table
    keys = table[column]
    if pa.types.is_dictionary(keys.type):
        keys = keys.cast(pa.string())
    order = pc.sort_indices(keys)  # Arrow's sort is stable
    if np.array_equal(order.to_numpy(), np.arange(table.num_rows)):
        return table
    return table.take(order)


def read_file(path, columns=None, read_dictionary=None, **kwargs) -> pa.Table:
    """One Parquet file, or one ``DeltaPart``, as a table: ``pyarrow.parquet.read_table``'s result, through
    ``ParquetFile`` when no other option (``filters``, ``schema``, ...) is given: a small file then costs about
    half the time (no dataset discovery)."""
    if isinstance(path, DeltaPart):
        return read_member(path, columns=columns, read_dictionary=read_dictionary, **kwargs)
    if kwargs or Path(path).is_dir():
        return pq.read_table(path, columns=columns, read_dictionary=read_dictionary, **kwargs)
    return pq.ParquetFile(path, read_dictionary=read_dictionary).read(columns=columns)


def read_member(member, columns=None, read_dictionary=None, filters=None, schema=None, **kwargs) -> pa.Table:
    """A partition member (a file or a ``DeltaPart``: its row groups only) as a table; ``schema`` casts it,
    ``filters`` (pyarrow's DNF form) keep the matching rows."""
    if not isinstance(member, DeltaPart):
        options = {k: v for k, v in (("filters", filters), ("schema", schema)) if v is not None}
        return read_file(member, columns=columns, read_dictionary=read_dictionary, **options, **kwargs)
    file = pq.ParquetFile(member.path, metadata=delta_footer(member.path), read_dictionary=read_dictionary)
    names = columns if columns is not None else (schema.names if schema is not None else None)
    if filters is not None and names is not None:
        needed = {c for c in _filter_columns(filters)} - set(names)
        table = file.read_row_groups(list(member.row_groups), columns=[*names, *sorted(needed)])
    else:
        table = file.read_row_groups(list(member.row_groups), columns=names)
    if schema is not None:
        table = table.cast(
            pa.schema([schema.field(n) if n in schema.names else table.schema.field(n) for n in table.column_names])
        )
    if filters is not None:
        table = table.filter(pq.filters_to_expression(filters))
        if names is not None:
            table = table.select(names)
    return table


def read_parts(parts, columns=None, read_dictionary=None) -> dict:
    """Several ``DeltaPart`` read at once, ``{part: table}``: each delta file opened (its footer parsed) once and
    all the parts' row groups read in one call, then sliced per part."""
    out: dict = {}
    by_path: dict = {}
    for part in parts:
        by_path.setdefault(part.path, []).append(part)
    for path, group in by_path.items():
        footer = delta_footer(path)
        file = pq.ParquetFile(path, metadata=footer, read_dictionary=read_dictionary)
        wanted = sorted({i for part in group for i in part.row_groups})
        table = file.read_row_groups(wanted, columns=columns)
        start, at = 0, {}
        for i in wanted:
            at[i] = start
            start += footer.row_group(i).num_rows
        for part in group:
            rows = sum(footer.row_group(i).num_rows for i in part.row_groups)
            # A part's row groups are consecutive (written in one go), so its rows are one slice.
            out[part] = table.slice(at[part.row_groups[0]], rows) if part.row_groups else table.slice(0, 0)
    return out


def _filter_columns(filters) -> list[str]:
    items = filters if filters and isinstance(filters[0], list) else [filters]
    return [f[0] for group in items for f in group]


def read_partition(files, **kwargs) -> pa.Table:
    """A partition read as one table sorted by Symbol then Date: its members (base first, then deltas; a path,
    a ``DeltaPart`` or a list of them, see ``partition_members``) concatenated and stably sorted by Symbol.
    ``kwargs`` go to ``pyarrow.parquet.read_table`` (``read_member`` for a ``DeltaPart``)."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    tables = [read_member(f, **kwargs) for f in files]
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables, promote_options="permissive")
    if "Symbol" not in table.column_names:
        return table
    if pa.types.is_dictionary(table["Symbol"].type):
        table = table.unify_dictionaries()
    return sort_by_symbol(table)


def read_dataset(version_dir: str | os.PathLike, columns: list[str] | None = None, **kwargs) -> pa.Table:
    """A dataset version read in the contract order, sorted by Symbol then Date: as ``pyarrow.parquet.read_table``
    of the directory when it has no delta, else partition by partition (``read_partition``), the shared delta
    read once. ``kwargs`` (``filters``, ``schema``, ...) go to ``read_table``."""
    groups = partition_groups(version_dir)
    if all(len(files) == 1 and not isinstance(files[0], DeltaPart) for files in groups.values()):
        return pq.read_table(version_dir, columns=columns, **kwargs)
    from concurrent.futures import ThreadPoolExecutor

    wanted = None if columns is None else list(dict.fromkeys([*columns, "Symbol"]))
    # The shared delta's row groups, read one after another from one open file, before the bases (in threads).
    in_delta = [m for files in groups.values() for m in files if isinstance(m, DeltaPart)]
    if kwargs:
        parts = {m: read_member(m, columns=wanted, **kwargs) for m in in_delta}
    else:
        parts = read_parts(in_delta, columns=wanted)

    def one(files):
        tables = [parts[m] if isinstance(m, DeltaPart) else read_member(m, columns=wanted, **kwargs) for m in files]
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        if len(tables) > 1 and "Symbol" in table.column_names:
            if pa.types.is_dictionary(table["Symbol"].type):
                table = table.unify_dictionaries()
            table = sort_by_symbol(table)
        return table

    with ThreadPoolExecutor(max_workers=2) as pool:  # Arrow releases the GIL while decoding
        tables = list(pool.map(one, groups.values()))
    table = pa.concat_tables(tables, promote_options="permissive")
    return table if columns is None else table.select(columns)


def member_id(member) -> tuple[str, str]:
    """(a label stable across versions, a fingerprint that changes when the member's rows may have): a file's
    name and stat fingerprint (size, mtime: unchanged files are hard links), a ``DeltaPart``'s ``~<key>`` and its
    stamp."""
    if isinstance(member, DeltaPart):
        return f"{DELTA_MARK}{member.key}", f"{member.stamp}:{member.rows}"
    from .storage import fingerprint_path

    return Path(member).name, fingerprint_path(member)
