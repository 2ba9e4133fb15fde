"""Keeps the releases that channels point at loaded, verified and warm, and hands them to request handlers."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from funnel.errors import FailedPrecondition, FunnelError, NotFound, Unavailable
from funnel.release.store import MANIFEST, ArtifactStore, Manifest, RolloutState, validate_release_id

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_LOADED = 2  # stable and candidate; a third is never resident, not even while loading


class LoadState(enum.Enum):
    """Where a release stands in this process (funnel.v1.ReleaseState on the wire)."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class ReleaseStatus:
    release_id: str
    state: LoadState
    error: str = ""
    channels: tuple[str, ...] = ()
    load_seconds: float | None = None  # loading, verifying and warming it took (ready releases)


class ReleaseManager(Generic[T]):
    """Serves the releases ``channels/`` names, loading new ones in the background, verified and warmed.

    ``load(path, manifest)`` builds the stage's in-memory release (it may raise to refuse it) and ``warmup``
    runs real queries through it before it becomes routable. Pointer flips between loaded releases (promote,
    rollback, a fraction change) apply at the next ``refresh`` and never wait for a load. When ``stable`` points
    at a release that fails, the release that served stable before keeps serving; a candidate serves only once
    loaded. Failures are reported in ``status()``. Releases no channel needs are dropped; in-flight requests
    keep their own reference until they finish, so dropping never cuts a request short.
    """

    def __init__(
        self,
        store: ArtifactStore,
        load: Callable[[Path, Manifest], T],
        warmup: Callable[[T], None] = lambda release: None,
        *,
        name: str,
        poll_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.name = name
        self.poll_interval = poll_interval
        self._load, self._warmup = load, warmup
        self._listeners: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()  # guards the fields below; never held during I/O or loading
        self._load_lock = threading.Lock()  # one load at a time
        self._rollout = RolloutState()
        self._loaded: dict[str, T] = {}
        self._load_seconds: dict[str, float] = {}
        self._effective: dict[str, str] = {}  # channel -> release id serving it here
        self._failed: dict[str, tuple[tuple[int, int] | None, str]] = {}  # id -> (manifest stat, error)
        self._loading: str | None = None  # the release being loaded now, if any
        self._settled = False  # every release the channels named at start-up is loaded or refused
        self._stop = threading.Event()
        self._wake_loader = threading.Event()
        self._threads: list[threading.Thread] = []

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(ready)`` now and after every refresh (health status follows readiness this way)."""
        self._listeners.append(listener)
        listener(self.ready())

    # --- background operation ------------------------------------------------------------------------------

    def start(self) -> None:
        """Poll the channels every ``poll_interval`` seconds; load what they name on a separate thread."""
        for target, suffix in ((self._poll, "poll"), (self._load_loop, "load")):
            thread = threading.Thread(target=target, name=f"{self.name}-{suffix}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake_loader.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def reload(self) -> list[ReleaseStatus]:
        """Read the channels now and start any load they need; returns the status at this moment."""
        self.refresh()
        self._wake_loader.set()
        return self.status()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                if self.refresh():
                    self._wake_loader.set()
            except Exception:
                log.exception("%s: reading channels failed", self.name)
            self._stop.wait(self.poll_interval)

    def _load_loop(self) -> None:
        while not self._stop.is_set():
            self._wake_loader.wait(self.poll_interval)
            self._wake_loader.clear()
            if self._stop.is_set():
                return
            try:
                self.load_pending()
                self.refresh()
            except Exception:
                log.exception("%s: loading releases failed", self.name)

    def sync(self) -> None:
        """Read channels and load everything they name, blocking (start-up, tests, reload-and-wait)."""
        self.refresh()
        self.load_pending()
        self.refresh()

    # --- the two halves of a sync ---------------------------------------------------------------------------

    def refresh(self) -> list[str]:
        """Apply the channel files to what is loaded (no loading); return the release ids still to load."""
        try:
            rollout = self.store.rollout()
        except FunnelError as exc:
            log.error("%s: keeping the current rollout state: %s", self.name, exc)
            rollout = self._rollout
        with self._lock:
            self._rollout = rollout
            self._apply()
            pending = [r for r in self._named() if r not in self._loaded and not self._failed_unchanged(r)]
            ready = self._ready()
        for listener in list(self._listeners):
            listener(ready)
        return pending

    def load_pending(self) -> None:
        """Load, verify and warm every release the channels name that is not loaded yet."""
        with self._load_lock:
            while True:
                with self._lock:
                    todo = next(
                        (r for r in self._named() if r not in self._loaded and not self._failed_unchanged(r)), None
                    )
                    self._settled = self._settled or todo is None
                if todo is None:
                    return
                self._load_one(todo)

    def _named(self) -> list[str]:
        return [r for r in dict.fromkeys([self._rollout.stable, self._rollout.candidate]) if r is not None]

    def _apply(self) -> None:
        """Point each channel at its release if loaded (stable otherwise keeps its last good one); drop the rest."""
        for channel in ("stable", "candidate"):
            wanted = getattr(self._rollout, channel)
            if wanted is not None and wanted in self._loaded:
                if self._effective.get(channel) != wanted:
                    log.info("%s: channel %s now served by release %s", self.name, channel, wanted)
                self._effective[channel] = wanted
            elif channel == "candidate" and "candidate" in self._effective:
                del self._effective["candidate"]
                log.info("%s: no candidate served (channel names %s)", self.name, wanted)
        needed = set(self._effective.values()) | set(self._named())
        for release_id in [r for r in self._loaded if r not in needed]:
            del self._loaded[release_id]
            self._load_seconds.pop(release_id, None)
            log.info("%s: unloaded release %s (no channel needs it)", self.name, release_id)

    def _make_room(self) -> None:
        """Keep resident releases below MAX_LOADED before a load: the candidate goes first if one must."""
        with self._lock:
            self._apply()
            if len(self._loaded) >= MAX_LOADED:
                stable = self._effective.get("stable")
                dropped = next((r for r in self._loaded if r != stable and r != self._rollout.stable), None)
                dropped = dropped or next(r for r in self._loaded if r != stable)
                self._loaded.pop(dropped)
                self._load_seconds.pop(dropped, None)
                self._effective = {c: r for c, r in self._effective.items() if r != dropped}
                log.info("%s: unloaded %s to stay within %d releases", self.name, dropped, MAX_LOADED)

    def _manifest_stat(self, release_id: str) -> tuple[int, int] | None:
        try:
            st = (self.store.releases_dir / release_id / MANIFEST).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _failed_unchanged(self, release_id: str) -> bool:
        """True when the release failed before and its manifest has not changed since (no point retrying)."""
        failed = self._failed.get(release_id)
        return failed is not None and failed[0] == self._manifest_stat(release_id)

    def _load_one(self, release_id: str) -> None:
        self._make_room()
        stat = self._manifest_stat(release_id)
        with self._lock:
            self._loading = release_id
        started = time.monotonic()
        try:
            path, manifest = self.store.verify(release_id)
            release = self._load(path, manifest)
            self._warmup(release)
        except Exception as exc:  # any failure means this release never serves
            message = str(exc) if isinstance(exc, FunnelError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._loading = None
                self._failed[release_id] = (stat, message)
            log.error("%s: refused release %s: %s", self.name, release_id, message)
            return
        took = time.monotonic() - started
        with self._lock:
            self._loading = None
            self._loaded[release_id] = release
            self._load_seconds[release_id] = took
            self._failed.pop(release_id, None)
            self._apply()
        log.info("%s: loaded, verified and warmed release %s in %.1fs", self.name, release_id, took)

    # --- request path ------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True once the stable channel is served by a loaded, warm release and the first loads have settled: a
        replica that starts during a rollout serves only once it holds the candidate too, so candidate users are
        never sent back to stable by a replica that joins late. Later loads never make it unready."""
        with self._lock:
            return self._ready()

    def _ready(self) -> bool:
        return self._settled and "stable" in self._effective

    def channel(self, name: str) -> str | None:
        """The release serving ``name`` here (it lags the channel file while a load is running)."""
        with self._lock:
            return self._effective.get(name)

    def candidate_fraction(self) -> float:
        """The traffic fraction of the candidate served here (0 when none is)."""
        with self._lock:
            served = self._effective.get("candidate")
            return self._rollout.fraction if served is not None and served == self._rollout.candidate else 0.0

    def get(self, release_id: str) -> T:
        """The loaded release, or the status error that says why it cannot serve here."""
        validate_release_id(release_id)
        with self._lock:
            release = self._loaded.get(release_id)
            if release is not None:
                return release
            if not self._effective:
                raise Unavailable(f"{self.name} has no release loaded yet")
            failed = self._failed.get(release_id)
        if failed is not None:
            raise FailedPrecondition(f"release {release_id} failed to load on {self.name}: {failed[1]}")
        if not self.store.exists(release_id):
            raise NotFound(f"release {release_id!r} does not exist")
        raise FailedPrecondition(
            f"release {release_id} is not loaded on {self.name}; loaded: {sorted(self.loaded_ids())}"
        )

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def status(self) -> list[ReleaseStatus]:
        with self._lock:
            by_release: dict[str, list[str]] = {}
            for channel, release_id in self._effective.items():
                by_release.setdefault(release_id, []).append(channel)
            states = [
                ReleaseStatus(r, LoadState.READY, "", tuple(sorted(by_release.get(r, []))), self._load_seconds.get(r))
                for r in self._loaded
            ]
            states += [ReleaseStatus(r, LoadState.FAILED, err) for r, (_, err) in sorted(self._failed.items())]
            if self._loading is not None:
                states.append(ReleaseStatus(self._loading, LoadState.LOADING))
        return states
