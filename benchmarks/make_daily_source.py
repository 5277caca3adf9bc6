"""A Kaggle-layout source that grows one trading day at a time, for testing and timing daily updates.

    python benchmarks/make_daily_source.py init SRC OUT --hold-back 20   # OUT = version 0
    python benchmarks/make_daily_source.py release OUT next              # version 1, 2, ... (or a number, or "all")
    python benchmarks/make_daily_source.py status OUT

SRC is a Kaggle-layout folder or .zip (``../shared/data/stock-market-sample.zip``), a long-form parquet
(``../shared/data/nasdaq-2023.parquet``, written out by ``make_kaggle_scale.build``, any ``--scale``), or
``demo`` (``volcast.ingest.generate_demo_market``).

The trading days are the distinct dates of all files. Version 0 holds back the last N of them; version k
releases the k-th held-back day to every ticker that traded that day; version N is the source itself, byte
for byte. OUT is always one tree (``stocks/``, ``etfs/``, ``symbols_valid_meta.csv``, the meta unchanged in
every version), rewritten in place by ``release``: a file grows by appending bytes, so its previous
content is an exact byte prefix of the new one (what append-aware ingest relies on), and a file whose rows
did not change is not touched (same size and mtime). A ticker with no row yet (it listed during the held-back
days) has no file until its first day is released. Going back to an earlier version truncates files instead
(useful to test ingest's fallback for a file that shrank).

A file's version-k content is its bytes up to the first line whose date is a held-back day not yet
released; for a file sorted by date (every Kaggle file) that is exactly its rows up to that day. Lines
whose first field is not a date (empty values, junk) stay with the rows before them.

The full source and the per-version byte offsets live in ``OUT/.daily/`` (a hidden folder that ingest's
source scan and the pipeline's fingerprints do not look into). ``release`` works from the files' actual
sizes, so it is idempotent and finishes the job after an interruption; do not run it while an ingest of
OUT is running (an append is not atomic: a reader could see half a day).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

STATE_DIR = ".daily"
STATE_FILE = "state.json"
FULL_DIR = "full"
META_FILE = "symbols_valid_meta.csv"
SUBDIRS = ("stocks", "etfs")
_DATE = re.compile(rb"\d{4}-\d{2}-\d{2}\Z")


# ---------------------------------------------------------------------------------------------
# Materialising the full source


def _extract_zip(src: Path, dest: Path) -> None:
    """The Kaggle layout of a zip into ``dest`` (members may sit under one top-level folder)."""
    with zipfile.ZipFile(src) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        tickers = [n for n in names if len(Path(n).parts) >= 2 and Path(n).parts[-2] in SUBDIRS and n.endswith(".csv")]
        if not tickers:
            raise SystemExit(f"error: {src} has no stocks/*.csv or etfs/*.csv")
        roots = {str(Path(*Path(n).parts[:-2])) for n in tickers}
        if len(roots) > 1:
            raise SystemExit(f"error: {src} holds more than one Kaggle layout ({', '.join(sorted(roots))})")
        root = Path(roots.pop())
        for sub in SUBDIRS:
            (dest / sub).mkdir(parents=True, exist_ok=True)
        for name in tickers:
            parts = Path(name).parts
            (dest / parts[-2] / parts[-1]).write_bytes(zf.read(name))
        for name in names:  # the meta file, and anything else beside stocks/ and etfs/
            if Path(name).parent == root and not Path(name).name.startswith("."):
                (dest / Path(name).name).write_bytes(zf.read(name))


def _copy_dir(src: Path, dest: Path) -> None:
    found = False
    for sub in SUBDIRS:
        if (src / sub).is_dir():
            found = True
            shutil.copytree(src / sub, dest / sub, copy_function=shutil.copyfile)
        else:
            (dest / sub).mkdir(parents=True, exist_ok=True)
    if not found:
        raise SystemExit(f"error: {src} has no stocks/ or etfs/ folder; give a folder in the Kaggle layout")
    for path in src.iterdir():  # the meta file, and anything else beside stocks/ and etfs/ (GENERATED.txt)
        if path.is_file() and not path.name.startswith("."):
            shutil.copyfile(path, dest / path.name)


def _sibling(name: str):
    """A script beside this one, imported by path (sys.path is left alone: tests import this module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def materialise(
    src: str,
    dest: Path,
    scale: int = 1,
    jobs: int = 0,
    demo_tickers: int = 200,
    demo_years: int = 10,
    demo_seed: int = 42,
) -> str:
    """Write the full source tree into ``dest`` (created); return a label saying what it is."""
    if src == "demo":
        from volcast.ingest import generate_demo_market

        generate_demo_market(dest, n_tickers=demo_tickers, years=demo_years, seed=demo_seed)
        return f"demo market (seed {demo_seed}, {demo_tickers} tickers, {demo_years} years)"
    path = Path(src).expanduser().resolve()
    if not path.exists():
        raise SystemExit(f"error: {src}: no such file or directory")
    if path.suffix == ".parquet":
        make_kaggle_scale = _sibling("make_kaggle_scale")
        meta_zip = make_kaggle_scale.DEFAULT_META_ZIP if make_kaggle_scale.DEFAULT_META_ZIP.exists() else None
        make_kaggle_scale.build(path, dest, scale, jobs or (os.cpu_count() or 1), meta_zip, progress=False)
        return f"{path} x{scale}"
    if scale != 1:
        raise SystemExit("error: --scale applies to a parquet source only")
    dest.mkdir(parents=True)
    if path.is_dir():
        _copy_dir(path, dest)
    elif zipfile.is_zipfile(path):
        _extract_zip(path, dest)
    else:
        raise SystemExit(f"error: {src}: not a folder, .zip, .parquet or 'demo'")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Versions


def _header_end(data: bytes) -> int:
    end = data.find(b"\n")
    return len(data) if end < 0 else end + 1


def _lines(data: bytes) -> tuple[list[int], list[bytes]]:
    """Start offset and date field of every line after the header (the field is b"" when not a date)."""
    starts, dates = [], []
    pos, n = _header_end(data), len(data)
    while pos < n:
        end = data.find(b"\n", pos)
        end = n if end < 0 else end
        comma = data.find(b",", pos, end)
        field = data[pos : end if comma < 0 else comma].strip()
        starts.append(pos)
        dates.append(field if _DATE.match(field) else b"")
        pos = end + 1
    return starts, dates


def count_lines(chunk: bytes) -> int:
    """Lines in a run of whole lines (the last one may lack its newline)."""
    return chunk.count(b"\n") + (bool(chunk) and not chunk.endswith(b"\n"))


def trading_days(full: Path, files: list[str]) -> list[str]:
    days: set[bytes] = set()
    for rel in files:
        days.update(_lines((full / rel).read_bytes())[1])
    days.discard(b"")
    return sorted(d.decode() for d in days)


def cut_offsets(data: bytes, held: list[str]) -> list[int | None]:
    """Byte length of the file at each version 0..N (None: no file yet at that version).

    Version k ends where the first line dated on or after held day k+1 starts. That is the first line
    whose running maximum of dates reaches the day, and running maxima never decrease: a binary search.
    """
    import bisect

    starts, dates = _lines(data)
    running, top = [], b""
    for d in dates:
        top = max(top, d)
        running.append(top)
    header_end = _header_end(data)
    out: list[int | None] = []
    for day in held:
        i = bisect.bisect_left(running, day.encode())
        cut = starts[i] if i < len(starts) else len(data)
        out.append(None if cut <= header_end < len(data) else cut)
    out.append(len(data))
    return out


def ticker_files(root: Path) -> list[str]:
    return sorted(
        f"{sub}/{p.name}" for sub in SUBDIRS if (root / sub).is_dir() for p in (root / sub).iterdir() if p.is_file()
    )


def init(src: str, out: Path, hold_back: int, release_to: int = 0, **kwargs) -> dict:
    """Write OUT as version ``release_to`` (default 0) of SRC with the last ``hold_back`` days held back."""
    if hold_back < 1:
        raise SystemExit("error: --hold-back must be at least 1")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        full = staging / STATE_DIR / FULL_DIR
        full.parent.mkdir()
        label = materialise(src, full, **kwargs)
        files = ticker_files(full)
        days = trading_days(full, files)
        if len(days) <= hold_back:
            raise SystemExit(f"error: the source has {len(days)} trading days; --hold-back must be fewer")
        held = days[-hold_back:]
        offsets = {rel: cut_offsets((full / rel).read_bytes(), held) for rel in files}
        state = {"source": label, "held_back": held, "version": None, "offsets": offsets}
        _write_state(staging, state)
        for sub in SUBDIRS:
            (staging / sub).mkdir()
        for p in full.iterdir():  # the meta file (and the demo's GENERATED.txt): the same in every version
            if p.is_file():
                shutil.copyfile(p, staging / p.name)
        release(staging, release_to)
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return status(out)


def _read_state(out: Path) -> dict:
    path = Path(out) / STATE_DIR / STATE_FILE
    if not path.is_file():
        raise SystemExit(f"error: {out} is not a daily source (no {STATE_DIR}/{STATE_FILE}); create it with 'init'")
    return json.loads(path.read_text())


def _write_state(out: Path, state: dict) -> None:
    path = Path(out) / STATE_DIR / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def release(out: Path, version: int | str) -> dict:
    """Rewrite OUT in place to ``version`` (0..N, "next" or "all"); return what changed."""
    out = Path(out)
    state = _read_state(out)
    n = len(state["held_back"])
    current = state["version"]
    if version == "next":
        version = 0 if current is None else current + 1
    elif version == "all":
        version = n
    version = int(version)
    if not 0 <= version <= n:
        raise SystemExit(f"error: version {version} out of range: this source has versions 0..{n}")
    full = out / STATE_DIR / FULL_DIR
    appended = created = truncated = removed = 0
    rows_added = 0
    for rel, offsets in state["offsets"].items():
        target = offsets[version]
        path = out / rel
        size = path.stat().st_size if path.exists() else None
        if size == target:
            continue
        if target is None:
            path.unlink()
            removed += 1
            continue
        with open(full / rel, "rb") as handle:
            if size is None or size > target:
                data = handle.read(target)
                if size is None:
                    # a new file appears whole, never half-written
                    tmp = path.with_name(f".{path.name}.tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
                    created += 1
                    rows_added += count_lines(data[_header_end(data) :])
                else:
                    os.truncate(path, target)
                    truncated += 1
                continue
            handle.seek(size)
            chunk = handle.read(target - size)
        with open(path, "ab") as dest:
            dest.write(chunk)
        appended += 1
        rows_added += count_lines(chunk)
    state["version"] = version
    _write_state(out, state)
    return {
        "version": version,
        "of": n,
        "day": state["held_back"][version - 1] if version else None,
        "files_appended": appended,
        "files_created": created,
        "files_truncated": truncated,
        "files_removed": removed,
        "rows_added": rows_added,
    }


def status(out: Path) -> dict:
    state = _read_state(out)
    n = len(state["held_back"])
    v = state["version"]
    return {
        "out": str(out),
        "source": state["source"],
        "version": v,
        "of": n,
        "last_day": state["held_back"][v - 1] if v else None,
        "held_back": f"{state['held_back'][0]} .. {state['held_back'][-1]}",
        "files": sum(o[v] is not None for o in state["offsets"].values()),
    }


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="write OUT as version 0 (or --release K) of SRC")
    p_init.add_argument("src", help="Kaggle-layout folder or .zip, long-form .parquet, or 'demo'")
    p_init.add_argument("out", type=Path, help="folder to write (replaced if it exists)")
    p_init.add_argument("--hold-back", type=int, default=20, help="trading days held back (default 20)")
    p_init.add_argument("--release", type=int, default=0, help="start at this version instead of 0")
    p_init.add_argument("--scale", type=int, default=1, help="parquet source: copies of every ticker")
    p_init.add_argument("--jobs", type=int, default=0, help="parquet source: writer threads (0 = all cores)")
    p_init.add_argument("--demo-tickers", type=int, default=200)
    p_init.add_argument("--demo-years", type=int, default=10)
    p_init.add_argument("--demo-seed", type=int, default=42)
    p_rel = sub.add_parser("release", help="rewrite OUT in place to a version: a number, 'next' or 'all'")
    p_rel.add_argument("out", type=Path)
    p_rel.add_argument("version", help="0..N, 'next' or 'all'")
    p_status = sub.add_parser("status", help="which version OUT holds")
    p_status.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.command == "init":
        result = init(
            args.src,
            args.out,
            args.hold_back,
            args.release,
            scale=args.scale,
            jobs=args.jobs,
            demo_tickers=args.demo_tickers,
            demo_years=args.demo_years,
            demo_seed=args.demo_seed,
        )
    elif args.command == "release":
        version = args.version if args.version in ("next", "all") else int(args.version)
        result = release(args.out, version)
    else:
        result = status(args.out)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
