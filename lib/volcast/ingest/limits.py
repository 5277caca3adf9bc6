"""What ingest refuses: the size limits of a source file and its lines, and whether links are followed.

Every limit is a parameter of ``ingest.run`` (and of the 01_ingest notebook) with the default below. A file
over a limit is set aside with its reason in ``reports/ingest.json`` and the run goes on with the others;
a line over a limit is quarantined alone. Sizes are checked from the zip directory or ``stat`` before a
file is read, so what one worker holds at once stays bounded by ``max_file_bytes`` (times a small factor
for the parsed columns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# The defaults (the notebook's parameters cell repeats them; a test keeps the two equal).
MAX_FILE_BYTES = 1 << 30  # uncompressed; the largest file of the Kaggle dataset is under 2 MB
MAX_COMPRESSION_RATIO = 100.0  # a zip member's size over its compressed size; CSV text compresses 3-10x
MAX_LINE_BYTES = 1 << 20  # a data line of the dataset is under 100 bytes
MAX_HEADER_BYTES = 64 << 10
MAX_COLUMNS = 1000
ALLOW_LINKS = False  # True: symbolic links whose target is a regular file inside the source folder are read


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = MAX_FILE_BYTES
    max_compression_ratio: float = MAX_COMPRESSION_RATIO
    max_line_bytes: int = MAX_LINE_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    max_columns: int = MAX_COLUMNS
    allow_links: bool = ALLOW_LINKS

    def __post_init__(self) -> None:
        from ..errors import UserError

        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "allow_links" and not (isinstance(value, (int, float)) and value > 0):
                raise UserError(f"ingest limit {f.name} must be a positive number, got {value!r}")

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_LIMITS = Limits()


class Refused(ValueError):
    """A source file set aside unread: its message is the reason the report gives."""


def file_problem(size: int, limits: Limits, compressed: int | None = None) -> str | None:
    """Why a file of ``size`` bytes (``compressed`` in its zip) is set aside unread, or None."""
    if size > limits.max_file_bytes:
        return f"file is {size:,} bytes, over the limit max_file_bytes={limits.max_file_bytes:,}"
    if compressed is not None and size > 0 and size / max(compressed, 1) > limits.max_compression_ratio:
        return (
            f"zip member expands {size / max(compressed, 1):,.0f}x ({compressed:,} -> {size:,} bytes), "
            f"over the limit max_compression_ratio={limits.max_compression_ratio:g}"
        )
    return None
