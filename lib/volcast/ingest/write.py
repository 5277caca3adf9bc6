"""Writing partitions: Parquet files in bounded row groups, the raw one with its summary footer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage
from ..config import RAW_DICTIONARY_SCHEMA, RAW_SCHEMA, TICKER_COLUMNS

SUMMARY_KEY = "volcast.summary"  # a raw partition's footer: rows per Symbol and per year, first and last Date,
# each Symbol's last Date
ROW_GROUP_ROWS = 1 << 20


class _BufferedParquet:
    """Write tables in order to one Parquet file in row groups of ~1M rows (memory stays bounded)."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.writer = None

    def add(self, table: pa.Table | None) -> None:
        if table is None or not table.num_rows:
            return
        self.buffer.append(table)
        self.buffered += table.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, self.schema, **storage.parquet_options(self.schema))
        self.writer.write_table(pa.concat_tables(self.buffer), row_group_size=ROW_GROUP_ROWS)
        self.rows += self.buffered
        self.buffer, self.buffered = [], 0

    def close(self) -> int:
        """Finish the file (replacing any hard-linked previous version); no rows -> no file."""
        self._flush()
        if self.path.exists():
            self.path.unlink()  # a hard link to the previous version: never write through it
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.path)
        return self.rows


class _RawParquet(_BufferedParquet):
    """The raw partition writer: each piece added is one ticker's rows, so Symbol and Security Name are
    handed to Parquet as ready-made dictionary columns (no hashing of a string per row).

    The file stores no Arrow schema: its Parquet types read back exactly as ``RAW_SCHEMA`` (plain strings).
    """

    def __init__(self, path: Path):
        super().__init__(path, RAW_SCHEMA)
        self.tickers: list[tuple[str, str | None, int]] = []
        self.rows_per_symbol: dict[str, int] = {}
        self.rows_per_year: dict[str, int] = {}
        self.date_range: list[str] = []
        self.last_date: dict[str, str] = {}

    def add(self, table: pa.Table | None, symbol: str = "", name: str | None = None) -> None:
        if table is None or not table.num_rows:
            return
        self.tickers.append((symbol, name, table.num_rows))
        self.rows_per_symbol[symbol] = self.rows_per_symbol.get(symbol, 0) + table.num_rows
        # Pieces of a ticker come in Date order: the last one's last row is its last date (daily appends
        # check new rows against it without reading the stored rows).
        self.last_date[symbol] = table["Date"][table.num_rows - 1].as_py()
        super().add(table.drop_columns([c for c in TICKER_COLUMNS if c in table.column_names]))

    def close(self) -> int:
        """Finish the file with its summary in the footer (see ``summarize_raw``)."""
        self._flush()
        if self.writer is not None:
            self.writer.add_key_value_metadata(
                {
                    SUMMARY_KEY: json.dumps(
                        {
                            "rows_per_symbol": self.rows_per_symbol,
                            "rows_per_year": self.rows_per_year,
                            "date_min": min(self.date_range),
                            "date_max": max(self.date_range),
                            "last_date": self.last_date,
                        }
                    )
                }
            )
        return super().close()

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(
                self.tmp, RAW_DICTIONARY_SCHEMA, store_schema=False, **storage.parquet_options(RAW_SCHEMA)
            )
        rows = np.array([n for _, _, n in self.tickers], np.int64)
        columns = {}
        for pos, name in enumerate(TICKER_COLUMNS):
            values = [t[pos] for t in self.tickers]
            unique = list(dict.fromkeys(v for v in values if v is not None))
            code = {v: i for i, v in enumerate(unique)}
            per_piece = np.array([code.get(v, -1) for v in values], np.int32)
            idx = np.repeat(per_piece, rows)
            columns[name] = pa.DictionaryArray.from_arrays(pa.array(idx, mask=idx < 0), pa.array(unique, pa.string()))
        body = pa.concat_tables(self.buffer)
        # Counted here, where every row passes once, so the notebook's summary reads footers, not rows.
        # A valid Date is YYYY-MM-DD: its year is 4 characters.
        years = pc.value_counts(pc.utf8_slice_codeunits(body["Date"], 0, 4))
        for year, n in zip(years.field("values").to_pylist(), years.field("counts").to_pylist()):
            self.rows_per_year[year] = self.rows_per_year.get(year, 0) + n
        self.date_range += [d for d in pc.min_max(body["Date"]).as_py().values() if d is not None]
        table = pa.table({**columns, **{c: body[c] for c in body.column_names}}, schema=RAW_DICTIONARY_SCHEMA)
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += self.buffered
        self.buffer, self.buffered, self.tickers = [], 0, []
