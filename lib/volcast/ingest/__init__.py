"""Ingest: a Kaggle-layout source (folder, .zip, ``kaggle`` download or generated ``demo``) to the raw dataset.

``from volcast import ingest; ingest.run(output_dir, source=...)``. The package's parts, from pure to I/O:

* ``values``, ``lines``, ``parse``, ``quarantine``: one ticker CSV's bytes to kept rows and rows set aside
  (``parse_csv``); ``batch``: the same for many clean files in one Arrow read (``parse_csv_batch``).
* ``limits``: what a source file or line may be before it is set aside unread.
* ``sources``, ``kaggle``, ``demo``: what ``source`` means and which files it holds.
* ``read``, ``write``, ``task``, ``workers``: one task per storage partition (two-letter ticker prefix),
  reading its files, parsing them and writing its Parquet files, on a pool of worker processes.
* ``stage``: ``run``, the incremental plan (only partitions whose files changed are rewritten), the report.
* ``summary``: reading the raw dataset back (``load_raw``, ``summarize_raw``).
"""

from .batch import BATCH_BYTES, CANONICAL_HEADER, parse_csv_batch
from .demo import DEMO_END, DEMO_VERSION, generate_demo_market
from .kaggle import (
    CREDENTIALS_HELP,
    describe_default_source,
    download_kaggle,
    has_kaggle_credentials,
    kaggle_credentials_location,
)
from .limits import DEFAULT_LIMITS, Limits
from .parse import ParsedFile, parse_csv
from .quarantine import QUARANTINE_SCHEMA, load_quarantine
from .sources import (
    Catalog,
    ResolvedSource,
    SourceFile,
    parse_meta,
    resolve_default_source,
    resolve_source,
    scan_source,
)
from .stage import STAGE, STATE_FILE, run
from .summary import load_raw, summarize_raw
from .task import LinesNotAccounted
from .workers import start_worker_server
from .write import ROW_GROUP_ROWS, SUMMARY_KEY

__all__ = [
    "BATCH_BYTES",
    "CANONICAL_HEADER",
    "CREDENTIALS_HELP",
    "DEMO_END",
    "DEMO_VERSION",
    "QUARANTINE_SCHEMA",
    "DEFAULT_LIMITS",
    "ROW_GROUP_ROWS",
    "STAGE",
    "STATE_FILE",
    "SUMMARY_KEY",
    "Catalog",
    "Limits",
    "LinesNotAccounted",
    "ParsedFile",
    "ResolvedSource",
    "SourceFile",
    "describe_default_source",
    "download_kaggle",
    "generate_demo_market",
    "has_kaggle_credentials",
    "kaggle_credentials_location",
    "load_quarantine",
    "load_raw",
    "parse_csv",
    "parse_csv_batch",
    "parse_meta",
    "resolve_default_source",
    "resolve_source",
    "run",
    "scan_source",
    "start_worker_server",
    "summarize_raw",
]
