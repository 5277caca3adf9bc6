"""What a warm start reads (``row_store.load_warm``): the rows of the features written since its parent (a daily
update's share of the shared delta file, read in one go), and the parent's stored segments, memory-mapped so that
only the rows taken are copied."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .. import storage
from ..config import SYMBOL, VOLUME
from ..errors import UserError
from .data import _day_numbers, _read_group
from .params import FEATURES, MARKET_INPUT
from .rows import _SCAN_COLUMNS

SEGMENT_KEYS = ("day", "next_day", "ticker", "floats", "x", "bits")  # the arrays of a segment of stored rows


def npy_map(path) -> np.ndarray:
    """A ``.npy`` file as a read-only array on its memory map, mapped whole at once (``MAP_POPULATE``: one call
    instead of a page fault per few pages as the rows are read; the store's files are read almost whole)."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset, count = handle.tell(), int(np.prod(shape))
        if not populate or not count or dtype.hasobject:
            return np.load(path, mmap_mode="r")
        mapped = mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")


def _read_new(groups_new: list, inputs: list, last_day: dict) -> dict | None:
    """The rows of these files dated after their ticker's last stored date (``last_day``): names, days, the four
    scan floats and the inputs (market column left NaN). None when a file that was only added holds a row
    dated at or before its ticker's stored last date (history inserted: not an append)."""
    file_inputs = [n for n in inputs if n != MARKET_INPUT]
    names, days, floats, xs = [], [], [], []
    for table, may_repeat in _tables(groups_new, list(dict.fromkeys([*_SCAN_COLUMNS, *file_inputs]))):
        name = np.asarray(table[SYMBOL].to_numpy(), dtype=object)
        day = _day_numbers(table["Date"].combine_chunks())
        uniq, inverse = np.unique(name.astype(str), return_inverse=True)
        after = np.asarray([last_day.get(t, -(1 << 30)) for t in uniq.tolist()], np.int64)[inverse]
        is_new = day > after
        if bool(np.any(~is_new & ~may_repeat)):
            return None
        new = np.flatnonzero(is_new)
        names.append(name[new])
        days.append(day[new])
        floats.append(
            np.vstack(
                [np.asarray(table[c].to_numpy(), np.float64)[new] for c in (VOLUME, *FEATURES, _SCAN_COLUMNS[-1])]
            )
        )
        x = np.full((len(new), len(inputs)), np.nan, np.float32)
        for j, col in enumerate(inputs):
            if col != MARKET_INPUT:
                x[:, j] = table[col].to_numpy()[new]
        xs.append(x)
    return {
        "name": np.concatenate(names) if names else np.zeros(0, object),
        "day": np.concatenate(days) if days else np.zeros(0, np.int32),
        "floats": np.concatenate(floats, axis=1) if floats else np.zeros((4, 0)),
        "x": np.concatenate(xs) if xs else np.zeros((0, len(inputs)), np.float32),
    }


def _tables(groups_new: list, columns: list):
    """``(table, may_repeat per row)`` of the partitions in ``groups_new``: those whose only new member is their
    share of a shared delta file are read together, in one read of that file's row groups (a daily update:
    about one per partition), the others one partition at a time."""
    shared: dict = {}
    for paths, may_repeat in groups_new:
        if len(paths) == 1 and isinstance(paths[0], storage.DeltaPart):
            shared.setdefault(paths[0].path, []).append((paths[0], may_repeat))
        else:
            table = _read_group(paths, columns)
            yield table, np.full(table.num_rows, bool(may_repeat))
    for path, members in shared.items():
        footer = storage.delta_footer(path)
        missing = [c for c in columns if c not in footer.schema.to_arrow_schema().names]
        if missing:
            raise UserError(f"{path} lacks column(s) {', '.join(missing)}; re-run the features stage")
        groups = [g for member, _ in members for g in member.row_groups]
        flags = [flag for member, flag in members for _ in member.row_groups]
        table = pq.ParquetFile(path, metadata=footer).read_row_groups(groups, columns=columns)
        sizes = [footer.row_group(g).num_rows for g in groups]
        yield table, np.repeat(np.asarray(flags, bool), sizes)


class _Segments:
    """A store's segments, memory-mapped: a row is copied out only when taken (no copy of the whole store)."""

    def __init__(self, paths: list[Path]):
        self.parts = [{k: npy_map(p / f"{k}.npy") for k in SEGMENT_KEYS} for p in paths]
        self.starts = np.cumsum([0] + [len(part["day"]) for part in self.parts])

    def whole(self, key: str) -> np.ndarray:
        return np.concatenate([np.asarray(part[key]) for part in self.parts])

    def take(self, key: str, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = stored[key][rows[i]]`` (``floats``: along its rows axis); ``rows`` ascending."""
        cuts = np.searchsorted(rows, self.starts)
        for part, start, lo, hi in zip(self.parts, self.starts, cuts, cuts[1:]):
            local = rows[lo:hi] - start
            if key == "floats":  # (4, n): one contiguous output row at a time
                for i in range(out.shape[0]):
                    np.take(part[key][i], local, out=out[i, lo:hi], mode="clip")
            else:
                np.take(part[key], local, axis=0, out=out[lo:hi], mode="clip")
