"""The run lock of an output directory on object storage, for writers on different machines.

A local run lock (a file lock in the working copy) only keeps out runs on the same machine. On a store the
lock is one object, ``<prefix>/.volcast.lock``, created with a conditional PUT (``If-None-Match: *``): of
two machines creating it at once, the store accepts exactly one. The object says who holds it (host, pid,
a random owner token, the time it was taken) and for how long (``ttl`` seconds); the holder renews it from
a thread every ``ttl / 4`` seconds with ``If-Match`` its own ETag. A lock whose holder died expires ``ttl``
seconds after its last renewal (the object's Last-Modified on the store, against this machine's clock) and
is then taken over with ``If-Match`` the stale ETag, so of two machines taking over, one wins (a holder
on this machine whose process is gone, a run killed, is taken over at once). A holder
whose renewal is refused (the object changed: it was taken over while this run stalled) has lost the
lock; ``check`` then raises before anything more is published. Release is a conditional DELETE of its own
ETag, so it never removes a lock another run has taken since.

This needs a store with conditional writes (AWS S3, MinIO, Cloudflare R2 and others do); on one that
refuses the headers the run stops with one line saying so, and ``VOLCAST_S3_LOCK=off`` runs without the
cross-machine lock (one writer at a time is then up to the user).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".volcast.lock"
DEFAULT_TTL = 300.0
OFF_ENV = "VOLCAST_S3_LOCK"
_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


def _codes(exc: BaseException) -> set:
    """The S3 error codes behind an exception (s3fs keeps botocore's error as the cause)."""
    codes = set()
    for err in (exc, exc.__cause__, exc.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            codes.add(response.get("Error", {}).get("Code"))
    return codes


def _conflict(exc: BaseException) -> bool:
    """True when the store refused a conditional write (412, or 409 for two at once)."""
    return isinstance(exc, FileExistsError) or bool(_codes(exc) & set(_CONFLICT_CODES))


def _unsupported(exc: BaseException) -> bool:
    return bool(_codes(exc) & {"NotImplemented", "InvalidArgument"})


def _process_space() -> str:
    """Where a pid means the same process: this host, this boot, this pid namespace (two containers on
    one host may share a host name, never a pid namespace)."""
    parts = [platform.node()]
    for path, how in (("/proc/sys/kernel/random/boot_id", "read"), ("/proc/self/ns/pid", "stat")):
        try:
            parts.append(Path(path).read_text().strip() if how == "read" else str(os.stat(path).st_ino))
        except OSError:
            parts.append("")
    return "|".join(parts)


def _dead_here(record: dict) -> bool:
    """The holder ran in this process space and its process is gone (killed): no need to wait for the expiry."""
    pid = record.get("pid")
    if record.get("space") != _process_space() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


class StoreLock:
    """The lock object of one store URL. ``acquire`` (or raise ``UserError``), ``check``, ``release``."""

    def __init__(
        self,
        fs,
        key: str,
        url: str,
        ttl: float = DEFAULT_TTL,
        renew_every: float | None = None,
        say: Callable[[str], None] = print,
    ):
        self.fs, self.key, self.url, self.ttl = fs, key, url, float(ttl)
        self.renew_every = self.ttl / 4 if renew_every is None else float(renew_every)
        self.say = say
        self.owner = uuid.uuid4().hex
        self.acquired_at: str | None = None
        self.lost: str | None = None
        self._etag: str | None = None
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    @classmethod
    def for_remote(cls, remote, say: Callable[[str], None] = print, **kwargs) -> StoreLock | None:
        """The lock of a ``Remote``'s URL; None when switched off or the protocol has no conditional PUT."""
        if os.environ.get(OFF_ENV, "").strip().lower() in ("off", "0", "no", "false"):
            say(f"  {OFF_ENV}=off: no lock on {remote.url}; make sure one run at a time writes there")
            return None
        protocols = remote.fs.protocol
        if "s3" not in ((protocols,) if isinstance(protocols, str) else protocols):
            say(f"  no cross-machine lock on {remote.url.split('://', 1)[0]}:// stores; one run at a time is up to you")
            return None
        return cls(remote.fs, remote.key(LOCK_NAME), f"{remote.url}/{LOCK_NAME}", say=say, **kwargs)

    # -- the object ---------------------------------------------------------------------------------

    def _body(self) -> bytes:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record = {
            "owner": self.owner,
            "host": platform.node(),
            "pid": os.getpid(),
            "space": _process_space(),
            "acquired": self.acquired_at or now,
            "renewed": now,
            "ttl_seconds": self.ttl,
        }
        return json.dumps(record).encode("utf-8")

    def _put(self, **condition) -> None:
        response = self.fs.pipe_file(self.key, self._body(), **condition)
        etag = response.get("ETag") if isinstance(response, dict) else None
        if etag is None:  # an fsspec version that returns nothing: ask the store
            etag = self.fs.info(self.key, refresh=True)["ETag"]
        self._etag, self._renewed = etag, time.monotonic()

    def holder(self) -> tuple[dict, dict] | None:
        """(object info, its record) of the lock as it is on the store now; None when there is none."""
        try:
            info = self.fs.info(self.key, refresh=True)
            record = json.loads(self.fs.cat_file(self.key))
        except FileNotFoundError:
            return None
        except ValueError:
            record = {}
        return info, record if isinstance(record, dict) else {}

    # -- taking and giving back ---------------------------------------------------------------------

    def acquire(self) -> StoreLock:
        self.acquired_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for _attempt in range(3):  # the holder may release between our create and our look
            try:
                self._put(mode="create")
                break
            except Exception as exc:
                if _unsupported(exc):
                    raise UserError(
                        f"{self.url}: this store refuses conditional writes (If-None-Match), which the run lock "
                        f"needs ({_short(exc)}); set {OFF_ENV}=off to run without the cross-machine lock"
                    ) from None
                if not _conflict(exc):
                    raise
            current = self.holder()
            if current is None:
                continue
            info, record = current
            age = time.time() - info["LastModified"].timestamp()
            ttl = float(record.get("ttl_seconds") or self.ttl)
            who = f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, since {record.get('acquired', '?')}"
            if age < ttl and not _dead_here(record):
                raise UserError(
                    f"another volcast run holds {self.url} ({who}; renewed {age:.0f} s ago); wait for it to "
                    f"finish, or if it died, its lock expires in {ttl - age:.0f} s"
                )
            try:
                self._put(IfMatch=info["ETag"])
            except Exception as exc:
                if _conflict(exc):
                    raise UserError(f"another volcast run took over the expired lock {self.url} first") from None
                raise
            why = "has exited" if age < ttl else f"stopped renewing it {age:.0f} s ago"
            self.say(f"  took over the lock {self.url}: its holder ({who}) {why}")
            break
        else:
            raise UserError(f"{self.url}: the lock keeps changing hands; try again")
        self._thread = threading.Thread(target=self._heartbeat, name="volcast-store-lock", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Extend the lock (``If-Match`` our ETag); False, with ``lost`` set, when it is no longer ours."""
        with self._mutex:
            if self.lost or self._etag is None:
                return False
            try:
                self._put(IfMatch=self._etag)
                return True
            except Exception as exc:
                if _conflict(exc) or isinstance(exc, FileNotFoundError):
                    self.lost = "another run took it over (this run stopped renewing it for longer than its expiry)"
                elif time.monotonic() - self._renewed > self.ttl:
                    self.lost = f"not renewed for {self.ttl:.0f} s, so another run may have taken it ({_short(exc)})"
                return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every):
            if not self.renew() and self.lost:
                return

    def check(self) -> None:
        """Raise ``UserError`` if the lock was lost: nothing more may be published."""
        if self.lost:
            raise UserError(f"lost the lock {self.url}: {self.lost}; this run publishes nothing more")

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours (a conditional DELETE)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._mutex:
            etag, self._etag = self._etag, None
            if etag is None or self.lost:
                return
            bucket, key, _ = self.fs.split_path(self.key)
            try:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
            except Exception as exc:
                if not _conflict(exc):
                    self.say(f"  could not remove the lock {self.url} ({_short(exc)}); it expires in {self.ttl:.0f} s")
            finally:
                self.fs.invalidate_cache(self.key)
