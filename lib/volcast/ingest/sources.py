"""Sources: what ``source`` means (folder, .zip, ``kaggle``, ``demo``), the one rule for its default, and the
list of ticker files in it, with those refused before reading (over a limit, links, special files)."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from .. import config
from ..errors import UserError
from .demo import _demo_dir, generate_demo_market
from .kaggle import describe_default_source, download_kaggle, has_kaggle_credentials
from .limits import DEFAULT_LIMITS, Limits, file_problem
from .parse import _zero_counts


class ResolvedSource(NamedTuple):
    kind: str  # "dir", "zip", "kaggle" (a downloaded zip or folder), "demo" (a generated folder)
    path: Path
    label: str  # what to call it in reports and notebooks


class SourceFile(NamedTuple):
    rel: str  # path inside the source, "stocks/AAPL.csv"
    symbol: str
    size: int
    stamp: str  # cheap change stamp: mtime_ns for folders, CRC32 for zip members (from the directory)


class Catalog(NamedTuple):
    files: list[SourceFile]
    meta: bytes | None
    meta_fingerprint: str | None
    rejected: list[dict]  # files set aside unread: same ticker twice, over a limit, links, special files
    root: str  # folder or zip prefix holding stocks/ and etfs/


def resolve_default_source(source: str | os.PathLike | None, say=print, name: str = "source") -> str:
    """The ``source`` parameter with its default decided, as a string a notebook parameter can carry.

    None or "" -> "kaggle" when Kaggle credentials exist, else "demo" (and says which, and why, through
    ``say``); "demo" and "kaggle" as they are; a path -> absolute. A path that does not exist is a
    ``UserError`` whose message starts with ``name`` (the pipeline passes "--source"). The one place the
    default is chosen: ``resolve_source`` and the pipeline both call this.
    """
    if source is None or str(source).strip() == "":
        say(describe_default_source())
        return "kaggle" if has_kaggle_credentials() else "demo"
    source = str(source)
    if source in ("demo", "kaggle"):
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(
            f"{name} {source}: no such file or directory; give a Kaggle-layout folder or .zip, 'kaggle' or 'demo'"
        )
    return str(path.resolve())


def resolve_source(
    source: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    *,
    demo_seed: int = config.DEMO_SEED,
    demo_tickers: int = config.DEMO_TICKERS,
    demo_years: int = config.DEMO_YEARS,
    say=print,
) -> ResolvedSource:
    """Turn the ``source`` parameter into something to read: (kind, path, label).

    ``None`` picks Kaggle when credentials exist, else the demo (``resolve_default_source``).
    The demo is generated once per (seed, tickers, years) into ``cache_dir`` and reused.
    """
    cache_dir = Path(cache_dir)
    source = resolve_default_source(source, say)
    if source == "demo":
        path = _demo_dir(cache_dir, demo_seed, demo_tickers, demo_years)
        if not (path / "GENERATED.txt").is_file():
            generate_demo_market(path, demo_tickers, demo_years, demo_seed)
        label = f"generated demo data (seed {demo_seed}, {demo_tickers} tickers, {demo_years} years)"
        return ResolvedSource("demo", path, label)
    if source == "kaggle":
        path = download_kaggle(cache_dir / "kaggle")
        return ResolvedSource("kaggle", path, f"Kaggle {config.KAGGLE_DATASET}")
    path = Path(source)
    if path.is_dir():
        return ResolvedSource("dir", path, path.name)
    if path.is_file() and zipfile.is_zipfile(path):  # is_file first: opening a FIFO or device would block
        return ResolvedSource("zip", path, path.name)
    raise UserError(f"source {source}: not a folder or a .zip; give a Kaggle-layout folder or .zip, 'kaggle' or 'demo'")


_LAYOUT_RE = re.compile(r"^(?P<root>(?:.*/)?)(?P<sub>stocks|etfs)/(?P<name>[^/]+)$")


def _split_members(paths: Iterable[str]) -> tuple[str, list[str], str | None]:
    """Pick the root holding stocks/ and etfs/ among relative paths; return (root, csv members, meta)."""
    roots: dict[str, list[str]] = {}
    for p in paths:
        if "__MACOSX" in p.split("/"):
            continue
        m = _LAYOUT_RE.match(p)
        if m and not m["name"].startswith(".") and m["name"].lower().endswith(".csv"):
            roots.setdefault(m["root"], []).append(p)
    if not roots:
        raise UserError("source has no stocks/*.csv or etfs/*.csv; give a folder or .zip in the Kaggle layout")
    if len(roots) > 1:
        shown = ", ".join(sorted(r or "." for r in roots))
        raise UserError(f"source holds more than one Kaggle layout ({shown}); point --source at one of them")
    root, members = next(iter(roots.items()))
    return root, sorted(members), root + config.META_FILE


LINK_REFUSED = "symbolic link (refused; allow_links=True reads links to files inside the source folder)"


def _entry_problem(entry: os.DirEntry, root_real: str, limits: Limits) -> str | None:
    """Why a ticker file of a folder source is refused before it is read: a link (unless allowed and to a
    regular file inside the folder), or no regular file (a FIFO, socket or device); None when it is fine."""
    if entry.is_symlink():
        target = os.path.realpath(entry.path)
        if not os.path.exists(target):
            return "dangling symbolic link (its target does not exist)"
        if not limits.allow_links:
            return LINK_REFUSED
        if os.path.commonpath([root_real, target]) != root_real:
            return "symbolic link to a file outside the source folder (refused)"
        regular = stat.S_ISREG(os.stat(target).st_mode)
        return None if regular else "symbolic link to something that is not a regular file"
    if not entry.is_file(follow_symlinks=False):
        return "not a regular file (a FIFO, socket or device): refused"
    return None


def _folder_dirs(path: Path, limits: Limits) -> tuple[list[Path], list[dict]]:
    """The stocks/ and etfs/ folders to list (at the top or one level down), and the linked folders refused."""
    root_real = os.path.realpath(path)
    dirs, refused = [], []
    tops = [path, *sorted(p for p in path.iterdir() if p.is_dir())]
    for sub in config.SOURCE_SUBDIRS:
        for top in tops:
            d = top / sub
            if not d.is_dir():
                continue
            linked = [p for p in (top, d) if p.is_symlink()]
            inside = os.path.commonpath([root_real, os.path.realpath(d)]) == root_real
            if linked and not (limits.allow_links and inside):
                rel = str(linked[0].relative_to(path))
                if all(r["file"] != rel for r in refused):
                    refused.append(
                        {
                            "file": rel,
                            "symbol": "",
                            **_zero_counts(),
                            "error": "symbolic link to a folder (refused)"
                            if inside or not limits.allow_links
                            else "symbolic link to a folder outside the source (refused)",
                        }
                    )
                continue
            dirs.append(d)
    return dirs, refused


def scan_source(src: ResolvedSource, limits: Limits = DEFAULT_LIMITS) -> Catalog:
    """List the ticker files of a source with their sizes and change stamps (no file is read).

    Files over a limit (from ``stat`` or the zip directory), links and special files are set aside in
    ``Catalog.rejected`` with their reason; nothing outside a folder source is read."""
    path = src.path
    entries: dict[str, tuple[int, str]] = {}
    refused: dict[str, str] = {}  # rel -> reason
    rejected: list[dict] = []
    meta: bytes | None = None
    meta_fp = None
    if path.is_dir():
        root_real = os.path.realpath(path)
        dirs, rejected = _folder_dirs(path, limits)
        found = {}  # rel -> its scandir entry (strings, not Paths: thousands of files a run)
        for d in dirs:
            prefix = "" if d == path else str(d.relative_to(path)) + os.sep
            for entry in os.scandir(d):
                rel = prefix + entry.name
                problem = _entry_problem(entry, root_real, limits)
                if problem:
                    refused[rel] = problem
                elif entry.is_file():
                    found[rel] = entry
        root, members, meta_rel = _split_members(list(found) + list(refused))
        refused = {rel: refused[rel] for rel in members if rel in refused}  # only files of the chosen layout
        for rel in members:
            if rel in refused:
                continue
            st = found[rel].stat()  # follows a link, as os.stat does
            entries[rel] = (st.st_size, str(st.st_mtime_ns))
            problem = file_problem(st.st_size, limits)
            if problem:
                refused[rel] = problem
        meta_path = path / meta_rel
        if os.path.lexists(meta_path):
            entry = next(e for e in os.scandir(meta_path.parent) if e.name == meta_path.name)
            problem = _entry_problem(entry, root_real, limits) or file_problem(os.stat(meta_path).st_size, limits)
            if problem:
                rejected.append({"file": config.META_FILE, "symbol": "", **_zero_counts(), "error": problem})
            else:
                meta = meta_path.read_bytes()
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
                root, members, meta_rel = _split_members(infos)
                for rel in members:
                    info = infos[rel]
                    entries[rel] = (info.file_size, f"crc{info.CRC:08x}")
                    problem = file_problem(info.file_size, limits, info.compress_size)
                    if problem:
                        refused[rel] = problem
                if meta_rel in infos:
                    problem = file_problem(infos[meta_rel].file_size, limits, infos[meta_rel].compress_size)
                    if problem:
                        rejected.append({"file": config.META_FILE, "symbol": "", **_zero_counts(), "error": problem})
                    else:
                        meta = zf.read(meta_rel)
        except zipfile.BadZipFile as exc:
            raise UserError(f"source {path}: broken zip ({exc}); download it again") from None
    if meta is not None:
        meta_fp = hashlib.blake2b(meta, digest_size=16).hexdigest()
    files, seen = [], {}
    stem = lambda rel: os.path.splitext(os.path.basename(rel))[0]  # noqa: E731 (Path(rel).stem, cheaper)
    for rel in sorted(set(entries) | set(refused), key=lambda r: (stem(r), r)):
        symbol = stem(rel)
        short = rel[len(root) :]
        if rel in refused:
            rejected.append({"file": short, "symbol": symbol, **_zero_counts(), "error": refused[rel]})
            continue
        if symbol in seen:
            rejected.append(
                {
                    "file": short,
                    "symbol": symbol,
                    **_zero_counts(),
                    "error": f"same ticker as {seen[symbol]}; only the first is ingested",
                }
            )
            continue
        seen[symbol] = short
        size, stamp = entries[rel]
        files.append(SourceFile(rel, symbol, size, stamp))
    return Catalog(files, meta, meta_fp, rejected, root)


def parse_meta(data: bytes | None) -> tuple[dict[str, str | None], str | None]:
    """``symbols_valid_meta.csv`` -> {NASDAQ Symbol: Security Name}, and a note when something is off.

    The meta's ``Symbol`` column spells some tickers differently from the file names (``AGM$A`` for
    ``AGM-A.csv``); ``NASDAQ Symbol`` spells them as the files do, so that is the key.
    """
    if data is None:
        return {}, "no symbols_valid_meta.csv in the source: Security Name is null for every ticker"
    text = data.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    if "Security Name" not in fields:
        return {}, "symbols_valid_meta.csv has no 'Security Name' column: Security Name is null for every ticker"
    key, note = "NASDAQ Symbol", None
    if key not in fields:
        key, note = "Symbol", "symbols_valid_meta.csv has no 'NASDAQ Symbol' column; matched on 'Symbol'"
        if key not in fields:
            return {}, "symbols_valid_meta.csv has neither 'NASDAQ Symbol' nor 'Symbol': Security Name is null"
    names: dict[str, str | None] = {}
    for row in reader:
        sym = (row.get(key) or "").strip()
        if sym and sym not in names:
            names[sym] = row.get("Security Name") or None
    return names, note
