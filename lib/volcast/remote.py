"""An output directory on object storage (``s3://bucket/prefix``, any fsspec URL): versions and pointers.

Object stores have no rename, so a dataset is published the way the local layout does it, with the
pointer made explicit: each version's files go under their own prefix (``data/.raw.v<stamp>-<id>/``, the
same name as the local version directory) and a small pointer object, ``data/raw.current``, holding that
name is written last. ``models/<model_id>/`` and ``models/LATEST`` already work that way. A writer killed
midway leaves the pointer, and so every reader, on the previous version; the version it replaced is
kept one round for readers that read the old pointer a moment ago.

The stages work on a local working copy (``Remote.mirror``, one per URL under ``$VOLCAST_CACHE`` or
``~/.cache/volcast/remote``): ``pull`` brings the current versions down when the pointers moved,
``push`` sends a new version up, then its pointer. ``model_locator`` lets the API's ``ModelHolder``
follow ``models/LATEST`` on the store.

Endpoint: ``--endpoint-url`` (``use_endpoint``), else ``VOLCAST_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``, for
MinIO, Ceph and other S3-compatible stores. Credentials come from botocore's usual chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/credentials``, instance roles);
this module never reads, prints or logs them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from . import storage
from .config import Layout
from .errors import UserError

DATASETS = {"raw_dir": "raw", "quarantine_dir": "quarantine", "features_dir": "features"}
POINTER_SUFFIX = storage.POINTER_SUFFIX  # data/raw.current, the same name as in a local output dir
ENDPOINT_ENVS = ("VOLCAST_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CACHE_ENV = "VOLCAST_CACHE"
# What a pointer may name: a version directory of that dataset, a model id. Anything else (a path with
# "/" or "..") is refused rather than followed.
_VERSION = re.compile(r"^\.(?P<name>[a-z]+)\.v[0-9A-Za-z_.-]+$")
_MODEL_ID = re.compile(r"^[0-9A-Za-z_.-]+$")


def use_endpoint(url: str | None) -> None:
    """``--endpoint-url``: the S3 endpoint for this process and the ones it starts (kernels, API workers),
    ahead of ``AWS_ENDPOINT_URL``. An ``http(s)://HOST[:PORT]`` URL; credentials in it are refused."""
    if not url:
        return
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.username is not None or parts.password is not None:
        raise UserError(
            f"--endpoint-url {shown_endpoint(url)}: no credentials in the URL; use AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise UserError(f"--endpoint-url {shown_endpoint(url)}: expected http(s)://HOST[:PORT]")
    os.environ[ENDPOINT_ENVS[0]] = url.strip()


def endpoint() -> str | None:
    """The S3 endpoint in effect (None: AWS's own)."""
    return next((os.environ[e] for e in ENDPOINT_ENVS if os.environ.get(e)), None)


def shown_endpoint(url: str | None) -> str | None:
    """An endpoint as it may be printed: any user:password and query string removed."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url.strip())
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, ("***@" if "@" in parts.netloc else "") + host, parts.path, "", ""))


def is_remote(output_dir) -> bool:
    """True for a URL such as ``s3://bucket/prefix`` (``file://`` and plain paths are local)."""
    return isinstance(output_dir, str) and "://" in output_dir and not output_dir.startswith("file://")


def storage_options(url: str) -> dict:
    """fsspec options for ``url``: the S3 endpoint from the environment, short timeouts and few retries
    (an unreachable store must fail a poll in seconds, not minutes). No credentials here."""
    if url.split("://", 1)[0] not in ("s3", "s3a"):
        return {}
    endpoint_url = endpoint()
    options: dict = {
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2, "mode": "standard"}}
    }
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return options


def default_mirror(url: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "volcast") / "remote"
    readable = re.sub(r"[^0-9A-Za-z_.-]+", "-", url.split("://", 1)[-1]).strip("-")[:60]
    return root / f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


class Remote:
    """One output directory URL, its filesystem and its local working copy."""

    def __init__(self, url: str, mirror: str | os.PathLike | None = None):
        try:
            import fsspec
        except ImportError:  # pragma: no cover - fsspec comes with the [s3] extra
            raise UserError(f"{url}: object storage needs fsspec and s3fs: pip install 'volcast[s3]'") from None
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options(self.url))
        except (ImportError, ValueError) as exc:
            raise UserError(f"{self.url}: {exc}") from None
        self.root = self.root.rstrip("/")
        self.mirror = Path(mirror or default_mirror(self.url)).resolve()
        self.layout = Layout.at(self.mirror)
        self.transfers: dict[str, dict[str, int]] = {}  # version pushed -> files uploaded / copied on the store

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    # -- pointers ---------------------------------------------------------------------------------

    def read_text(self, rel: str) -> str | None:
        """A small object's text (a pointer), read fresh; None when it does not exist."""
        try:
            return self.fs.cat_file(self.key(rel)).decode("utf-8").strip() or None
        except FileNotFoundError:
            return None

    def write_text(self, rel: str, text: str) -> None:
        """One PUT: an object store replaces a whole object atomically."""
        self.fs.pipe_file(self.key(rel), text.encode("utf-8"))

    def dataset_version(self, name: str) -> str | None:
        """The version directory ``data/<name>.current`` names, checked; None when unpublished."""
        version = self.read_text(f"data/{name}{POINTER_SUFFIX}")
        if version is None:
            return None
        match = _VERSION.match(version)
        if not match or match["name"] != name:
            raise UserError(f"{self.url}/data/{name}{POINTER_SUFFIX} does not name a {name} version ({version[:80]!r})")
        return version

    def model_id(self) -> str | None:
        model_id = self.read_text("models/LATEST")
        if model_id is not None and not _MODEL_ID.match(model_id):
            raise UserError(f"{self.url}/models/LATEST does not name a model ({model_id[:80]!r})")
        return model_id

    # -- up ---------------------------------------------------------------------------------------

    def _put(self, pairs: list[tuple[Path, str]]) -> None:
        if pairs:  # one call: s3fs uploads the files concurrently
            self.fs.put([str(p) for p, _ in pairs], [self.key(r) for _, r in pairs])

    def push(self, outputs: Iterable[str] = (*DATASETS, "models_dir"), reports: bool = True) -> list[str]:
        """Publish the working copy's current versions of ``outputs`` (Layout attribute names) that the
        store does not have yet: every file first, then the pointers. Returns what moved."""
        moved: list[tuple[str, str, str | None]] = []  # (pointer rel, new value, old value)
        for attr in outputs:
            if attr == "models_dir":
                latest = self.layout.latest_file
                if not latest.is_file():
                    continue
                model_id = latest.read_text(encoding="utf-8").strip()
                old = self.model_id()
                if model_id == old or not _MODEL_ID.match(model_id):
                    continue
                model_dir = self.layout.models_dir / model_id
                self._put(
                    [
                        (p, f"models/{model_id}/{p.relative_to(model_dir).as_posix()}")
                        for p in sorted(model_dir.rglob("*"))
                        if p.is_file()
                    ]
                )
                moved.append(("models/LATEST", model_id, old))
                continue
            name = DATASETS[attr]
            current = storage.current_version(getattr(self.layout, attr))
            if current is None or not _VERSION.match(current.name):
                continue
            old = self.dataset_version(name)
            if current.name == old:
                continue
            self._push_version(current, old)
            moved.append((f"data/{name}{POINTER_SUFFIX}", current.name, old))
        for rel, value, _old in moved:  # the pointers, last
            self.write_text(rel, value)
        for rel, value, old in moved:
            if rel.startswith("data/"):
                self._prune(rel[len("data/") : -len(POINTER_SUFFIX)], keep={value, old})
        if reports and self.layout.reports_dir.is_dir():
            self._put([(p, f"reports/{p.name}") for p in sorted(self.layout.reports_dir.glob("*.json"))])
        return [rel for rel, _, _ in moved]

    def _push_version(self, local: Path, previous: str | None) -> None:
        """Upload a version directory. A file hard-linked from the version already on the store (an
        incremental run's unchanged partition) is copied there server-side instead of uploaded."""
        prev_local = local.parent / previous if previous else None
        uploads, copies = [], []
        for path in sorted(local.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(local).as_posix()
            twin = prev_local / rel if prev_local is not None else None
            if twin is not None and twin.exists() and twin.stat().st_ino == path.stat().st_ino:
                copies.append((f"data/{previous}/{rel}", f"data/{local.name}/{rel}"))
            else:
                uploads.append((path, f"data/{local.name}/{rel}"))
        for src, dst in copies:
            self.fs.copy(self.key(src), self.key(dst))
        self._put(uploads)
        self.transfers[local.name] = {"uploaded": len(uploads), "copied": len(copies)}

    def _prune(self, name: str, keep: set) -> None:
        """Remove the store's older versions of ``name`` (all but the current and the one it replaced)."""
        try:
            entries = self.fs.ls(self.key("data"), detail=False, refresh=True)
        except FileNotFoundError:
            return
        for entry in entries:
            version = entry.rstrip("/").rsplit("/", 1)[-1]
            match = _VERSION.match(version)
            if match and match["name"] == name and version not in keep:
                self.fs.rm(self.key(f"data/{version}"), recursive=True)

    def push_tree(self, local: Path) -> None:
        """Upload a directory of the working copy as it is (a run's notebooks and manifest)."""
        local = Path(local)
        self._put([(p, p.relative_to(self.mirror).as_posix()) for p in sorted(local.rglob("*")) if p.is_file()])

    # -- down -------------------------------------------------------------------------------------

    def _get_tree(self, rel: str, target: Path) -> None:
        """Download everything under ``rel`` into ``target`` (created through a temporary sibling)."""
        self.fs.invalidate_cache(self.key(rel))  # a listing cached by an earlier poll may be stale
        files = [f for f in self.fs.find(self.key(rel)) if not f.endswith("/")]
        tmp = target.parent / f".{target.name}.pull-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            prefix = self.key(rel).rstrip("/") + "/"
            locals_ = [tmp / f[len(prefix) :] for f in files]
            for path in locals_:
                path.parent.mkdir(parents=True, exist_ok=True)
            if files:
                self.fs.get(files, [str(p) for p in locals_])
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # another process brought the same version down first: fine
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def pull(self, outputs: Iterable[str] = (*DATASETS, "models_dir")) -> list[str]:
        """Make the working copy's current versions those the store's pointers name. Returns what changed."""
        changed = []
        for attr in outputs:
            if attr == "models_dir":
                before = self._local_model_id()
                if self.pull_model() is not None and self._local_model_id() != before:
                    changed.append("models/LATEST")
                continue
            name = DATASETS[attr]
            version = self.dataset_version(name)
            final = getattr(self.layout, attr)
            current = storage.current_version(final)
            if version is None or (current is not None and current.name == version):
                continue
            target = final.parent / version
            if not target.is_dir():
                self._get_tree(f"data/{version}", target)
            _point_link(final, version)
            changed.append(f"data/{name}")
        return changed

    def _local_model_id(self) -> str | None:
        latest = self.layout.latest_file
        return latest.read_text(encoding="utf-8").strip() if latest.is_file() else None

    def pull_model(self) -> Path | None:
        """The store's current model, in the working copy (downloaded once); None when there is none."""
        model_id = self.model_id()
        if model_id is None:
            return None
        local = self.layout.models_dir / model_id
        if not (local / "card.json").is_file():
            self._get_tree(f"models/{model_id}", local)
        if self._local_model_id() != model_id:
            storage.atomic_write_text(self.layout.latest_file, model_id + "\n")
        return local


def _point_link(final: Path, version: str) -> None:
    """Point the working copy's ``data/<name>`` link at ``version`` atomically; keep the one it replaced."""
    previous = storage.current_version(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    link_tmp = final.parent / f".{final.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(version, link_tmp)
    os.replace(link_tmp, final)
    storage.atomic_write_text(storage.pointer_file(final), version + "\n")
    for old in final.parent.glob(f".{final.name}.v*"):
        if old.name != version and (previous is None or old != previous):
            shutil.rmtree(old, ignore_errors=True)


def model_locator(remote: Remote) -> Callable[[Path], Path | None]:
    """A ``ModelHolder`` locator that follows ``models/LATEST`` on the store: a new model is downloaded
    in the holder's polling thread (requests keep the model they have), and a store that cannot be
    reached is a ``ValueError`` the holder reports on /health while the loaded model keeps serving."""

    def locate(_output_dir) -> Path | None:
        try:
            return remote.pull_model()
        except UserError as exc:
            raise ValueError(str(exc)) from None
        except Exception as exc:  # network, DNS, permissions, throttling: all "storage unavailable"
            text = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise ValueError(f"model storage {remote.url} unavailable: {type(exc).__name__}: {text}") from None

    return locate


def model_holder(output_dir, check_interval: float = 1.0, mirror: str | os.PathLike | None = None):
    """The API's ``ModelHolder`` for ``output_dir``: local as before, or following a store's ``models/LATEST``
    (downloaded into the working copy ``mirror``, default ``default_mirror(url)``)."""
    from .serve.model import ModelHolder

    if not is_remote(output_dir):
        return ModelHolder(output_dir, check_interval=check_interval)
    remote = Remote(output_dir, mirror)
    return ModelHolder(remote.mirror, latest_model_dir=model_locator(remote), check_interval=check_interval)


class Sync:
    """Keeps a working copy in step with the store from a daemon thread (the dashboard's features and
    model): ``pull`` every ``interval`` seconds; ``error`` holds the last failure (None once it works)."""

    def __init__(self, remote: Remote, interval: float = 10.0, outputs: Iterable[str] = ("features_dir", "models_dir")):
        import threading

        self.remote, self.interval, self.outputs = remote, interval, tuple(outputs)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="volcast-remote-sync", daemon=True)

    def once(self) -> list[str]:
        try:
            changed = self.remote.pull(self.outputs)
        except Exception as exc:
            text = str(exc).splitlines()[0][:200] if str(exc) else ""
            self.error = f"{self.remote.url} unavailable: {type(exc).__name__}: {text}"
            return []
        self.error = None
        return changed

    def start(self) -> Sync:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.once()

    def stop(self) -> None:
        self._stop.set()


# The pipeline's side (kept importable from here).
from .remote_run import RunTarget  # noqa: E402, F401
