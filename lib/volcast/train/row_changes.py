"""What changed in the features dataset since a warm start's parent read it (``volcast.train.row_store``): the
parent's members by name and stat (files) or stamp (a partition's rows in the shared delta file), and the
members a warm start reads again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import storage
from ..features.stage import STATE_FILE as FEATURES_STATE_FILE

PART = "part"  # file_digests: the entry of a partition's rows in the shared delta file


def file_digests(paths, known: dict | None = None) -> dict:
    """{name: [size, mtime_ns, sha256 of the content]} of the files of ``paths`` (partition members: a
    ``storage.DeltaPart`` stands for its delta file, each file digested once), plus for each ``DeltaPart``
    ``{"~<key>": ["part", stamp, rows]}`` (its rows' identity: see ``_plan``). A file whose name, size and mtime
    are in ``known`` keeps its digest there (the stat check every up-to-date decision of volcast makes)."""
    known = known or {}
    out = {}
    for member in paths:
        if isinstance(member, storage.DeltaPart):
            out[storage.member_id(member)[0]] = [PART, member.stamp, member.rows]
        path = Path(member)
        if path.name in out:
            continue
        st = path.stat()
        old = known.get(path.name)
        if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            out[path.name] = old
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        out[path.name] = [st.st_size, st.st_mtime_ns, digest.hexdigest()]
    return out


def fingerprint(digests: dict) -> str:
    """The card's data fingerprint: every file's name, size and content digest (the same data gives the same
    value anywhere; mtimes and the delta parts' stamps are left out: the delta file's digest covers them)."""
    digest = hashlib.sha256()
    for name in sorted(digests):
        if digests[name][0] != PART:
            digest.update(f"{name}|{digests[name][0]}|{digests[name][2]}\n".encode())
    return digest.hexdigest()[:16]


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def features_state(features_dir) -> dict:
    """What the features stage records of its dataset: each partition's epoch (``storage.PARTITIONS_FILE``: it
    changes whenever the partition's rows may have changed other than by rows appended after them) and the
    stage's parameters and code (a change recomputes every row)."""
    state = storage.read_json(Path(features_dir).resolve() / FEATURES_STATE_FILE, default=None)
    parts = state.get("partitions") if isinstance(state, dict) else None
    epochs = {k: (v or {}).get("epoch") for k, v in parts.items()} if isinstance(parts, dict) else {}
    return json_params(epochs=epochs, params=state.get("params") if isinstance(state, dict) else None)


def _same(member, stored: dict) -> bool:
    """Whether a partition member is the one the parent read: a file by its name, size and mtime (unchanged files
    are hard links), a ``storage.DeltaPart`` by its stamp (it changes whenever rows are added to the part)."""
    label, _ = storage.member_id(member)
    entry = stored.get(label)
    if isinstance(member, storage.DeltaPart):
        return bool(entry) and entry[0] == PART and entry[1] == member.stamp
    return bool(entry) and entry[0] != PART and _stat(Path(member)) == tuple(entry[:2])


def _stored_key(label: str) -> str | None:
    """The partition a stored entry belongs to (None: the shared delta file itself, not a partition member)."""
    if label.startswith(storage.DELTA_MARK):
        return label[len(storage.DELTA_MARK) :]
    parsed = storage.split_partition_name(label)
    return parsed[0] if parsed else None


def plan(meta: dict, groups: dict, current: dict) -> tuple[list, str]:
    """The members to read per partition (whose rows after each ticker's stored last date are new), or a reason
    why the store does not apply.

    A partition whose stored members are all unchanged has only gained members; one whose members changed (its
    delta rows with the day added, a base folded with its delta rows) keeps its stored rows while its epoch is
    the stored one (it only grew): its changed members are read. Any other change means a full read."""
    stored, stored_epochs = meta["files"], (meta.get("features") or {}).get("epochs", {})
    epochs = current["epochs"] if (meta.get("features") or {}).get("params") == current["params"] else {}
    by_key: dict[str, list[str]] = {}
    for label in stored:
        key = _stored_key(label)
        if key is not None:
            by_key.setdefault(key, []).append(label)
    gone = sorted(set(by_key) - set(groups))
    if gone:
        return [], f"features partition {gone[0]} the parent read is gone"
    todo = []
    for key, paths in groups.items():
        same = [_same(p, stored) for p in paths]
        kept = {storage.member_id(p)[0] for p, ok in zip(paths, same) if ok}
        added_only = key not in by_key or all(label in kept for label in by_key[key])
        if not added_only and (stored_epochs.get(key) is None or epochs.get(key) != stored_epochs.get(key)):
            changed = next((str(p) for p, ok in zip(paths, same) if not ok), key)
            why = "rewritten" if epochs else "the features stage's parameters or code changed"
            return [], f"features file {changed} changed since the parent read it (partition {key}: {why})"
        fresh = [p for p, ok in zip(paths, same) if not ok]
        if fresh:  # members only added: none of their rows may be stored already; else the stored ones are skipped
            todo.append((fresh, not added_only))
    return todo, ""


def json_params(**params) -> dict:
    """The row parameters a store must match, JSON-normalised (what meta.json reads back)."""
    return json.loads(json.dumps(params))
