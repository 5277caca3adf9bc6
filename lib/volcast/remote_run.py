"""A pipeline run whose output directory is on object storage: the run lock, pulls at start, pushes as
each stage ends, the run's record and retention at the end (``RunTarget``; ``volcast.remote`` moves the
files, ``volcast.remote_lock`` holds the lock, ``volcast.retention.prune_store`` prunes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from . import storage
from .errors import UserError
from .remote import Remote, endpoint, is_remote, shown_endpoint


class RunTarget:
    """Where a pipeline run writes: a local directory (nothing to do), or a store through its working copy.

    ``local`` is the directory the stages use. On a store, ``start`` takes the store's run lock
    (``volcast.remote_lock``), pulls the current versions (a no-op when the working copy is in step) and the
    store's ``runs/state.json``; ``stage_done`` pushes a finished stage's outputs (files, then pointers),
    then the state; ``run_done`` uploads the run's notebooks and manifest (a failed run's too) and, after a
    successful run, applies ``--keep`` to the store's models and run records; ``close`` releases the lock.
    A run killed before a stage's push leaves the store on the previous versions.
    """

    def __init__(self, output_dir, say: Callable[[str], None] = print):
        self.remote = Remote(output_dir) if is_remote(output_dir) else None
        self.local = self.remote.mirror if self.remote else output_dir
        self.say = say
        self.lock = None
        self.served: str | None = None  # the store's model at start: a server may still serve it

    @property
    def label(self) -> str | None:
        return self.remote.url if self.remote else None

    def start(self) -> None:
        if self.remote is None:
            return
        from .remote_lock import StoreLock

        via = f" at {shown_endpoint(endpoint())}" if endpoint() else ""
        self.say(f"output on {self.remote.url}{via} (working copy {self.remote.mirror})")
        try:
            self.lock = StoreLock.for_remote(self.remote, self.say)
            if self.lock is not None:
                self.lock.acquire()
            changed = self.remote.pull()
            state = self.remote.read_text("runs/state.json")
            self.served = self.remote.model_id()
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot read {self.remote.url}: {type(exc).__name__}: {exc}") from None
        if state is not None:  # the store's lineage is the truth: another machine may have run since
            storage.atomic_write_text(self.remote.layout.runs_dir / "state.json", state + "\n")
        if changed:
            self.say(f"  brought down from the store: {', '.join(changed)}")

    def _push_state(self) -> None:
        state = self.remote.layout.runs_dir / "state.json"
        if state.is_file():
            self.remote._put([(state, "runs/state.json")])

    def stage_done(self, outputs: Iterable[str]) -> None:
        if self.remote is None:
            return
        if self.lock is not None:
            self.lock.check()
        moved = self.remote.push(outputs)
        self._push_state()
        if moved:
            self.say(f"  published to {self.remote.url}: {', '.join(moved)}")

    def run_done(self, run_dir: Path, keep: int | None = None) -> None:
        """Upload the run's record; with ``keep`` (a successful run), prune the store's models and runs.
        A failed run's record is uploaded as far as the store allows: its failure is what matters."""
        if self.remote is None:
            return
        from . import retention

        try:
            self.remote.push_tree(run_dir)
            if self.lock is not None:
                self.lock.check()
            self._push_state()
        except Exception as exc:
            if keep is not None:
                raise
            self.say(f"  the run record was not uploaded to {self.remote.url}: {type(exc).__name__}: {exc}")
            return
        if keep is not None:
            removed = retention.prune_store(self.remote, keep, current_run=Path(run_dir).name, protect=(self.served,))
            gone = len(removed["models_removed"]) + len(removed["runs_removed"])
            if gone:
                self.say(
                    f"  pruned on {self.remote.url}: {len(removed['models_removed'])} models, "
                    f"{len(removed['runs_removed'])} run records (--keep {keep})"
                )

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
