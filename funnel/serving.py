"""Keeps the releases that channels point at loaded, verified and warm, and hands them to request handlers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from funnel.errors import FailedPrecondition, FunnelError, NotFound, Unavailable
from funnel.release import CHANNELS, MANIFEST, ArtifactStore, Manifest, validate_release_id

log = logging.getLogger(__name__)
T = TypeVar("T")

LOADING, READY, FAILED = "loading", "ready", "failed"


@dataclass(frozen=True)
class ReleaseState:
    release_id: str
    state: str
    error: str = ""
    channels: tuple[str, ...] = ()


class ReleaseManager(Generic[T]):
    """Loads what ``channels/`` names, in the background, and serves only releases that verified and warmed.

    ``load(path, manifest)`` builds the stage's in-memory release (it may raise to refuse it) and ``warmup``
    runs real queries through it before it becomes routable. When a channel points at a release that fails,
    the release the channel pointed at before keeps serving and the failure is reported in ``status()``.
    Releases no channel needs are dropped; in-flight requests hold their own reference until they finish.
    """

    def __init__(
        self,
        store: ArtifactStore,
        load: Callable[[Path, Manifest], T],
        warmup: Callable[[T], None] = lambda release: None,
        *,
        name: str,
    ) -> None:
        self.store = store
        self.name = name
        self._load, self._warmup = load, warmup
        self._listeners: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._loaded: dict[str, T] = {}
        self._effective: dict[str, str] = {}  # channel -> release id serving it
        self._failed: dict[str, tuple[tuple[int, int] | None, str]] = {}  # id -> (manifest stat, error)
        self._loading: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(ready)`` now and after every sync (health status follows readiness this way)."""
        self._listeners.append(listener)
        listener(self.ready())

    # --- background sync -------------------------------------------------------------------------------

    def start(self, poll_interval: float) -> None:
        """Sync now in a background thread, then every ``poll_interval`` seconds."""
        self._thread = threading.Thread(target=self._run, args=(poll_interval,), name=f"{self.name}-releases",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, poll_interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:
                log.exception("%s: release sync failed", self.name)
            self._stop.wait(poll_interval)

    def sync(self) -> None:
        """Read the channels once and load, switch or drop releases to match them."""
        with self._sync_lock:
            wanted = {name: self.store.get_channel(name) for name in CHANNELS}
            for channel, release_id in wanted.items():
                if release_id is not None and self._ensure_loaded(release_id):
                    self._set_effective(channel, release_id)
            with self._lock:
                if wanted["candidate"] is None:
                    self._effective.pop("candidate", None)
                needed = set(self._effective.values())
                for release_id in [r for r in self._loaded if r not in needed]:
                    del self._loaded[release_id]
                    log.info("%s: unloaded release %s (no channel needs it)", self.name, release_id)
            ready = self.ready()
            for listener in list(self._listeners):
                listener(ready)

    def _set_effective(self, channel: str, release_id: str) -> None:
        with self._lock:
            if self._effective.get(channel) != release_id:
                log.info("%s: channel %s now served by release %s", self.name, channel, release_id)
                self._effective[channel] = release_id

    def _manifest_stat(self, release_id: str) -> tuple[int, int] | None:
        try:
            st = (self.store.releases_dir / release_id / MANIFEST).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _ensure_loaded(self, release_id: str) -> bool:
        """Load, verify and warm ``release_id`` unless it is loaded; False when it cannot serve."""
        with self._lock:
            if release_id in self._loaded:
                return True
        stat = self._manifest_stat(release_id)
        failed = self._failed.get(release_id)
        if failed is not None and failed[0] == stat:
            return False  # same bytes as the last failed attempt; retried once the release changes
        self._loading = release_id
        started = time.monotonic()
        try:
            path, manifest = self.store.verify(release_id)
            release = self._load(path, manifest)
            self._warmup(release)
        except Exception as exc:  # any failure means this release never serves
            message = str(exc) if isinstance(exc, FunnelError) else f"{type(exc).__name__}: {exc}"
            self._failed[release_id] = (stat, message)
            log.error("%s: refused release %s: %s", self.name, release_id, message)
            return False
        finally:
            self._loading = None
        with self._lock:
            self._loaded[release_id] = release
            self._failed.pop(release_id, None)
        log.info("%s: loaded, verified and warmed release %s in %.1fs", self.name, release_id,
                 time.monotonic() - started)
        return True

    # --- request path ------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True once the stable channel is served by a loaded, warm release."""
        with self._lock:
            return "stable" in self._effective

    def channel(self, name: str) -> str | None:
        """The release currently serving ``name`` here (may lag the channel file while a load is running)."""
        with self._lock:
            return self._effective.get(name)

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

    def status(self) -> list[ReleaseState]:
        with self._lock:
            by_release: dict[str, list[str]] = {}
            for channel, release_id in self._effective.items():
                by_release.setdefault(release_id, []).append(channel)
            states = [ReleaseState(r, READY, "", tuple(sorted(by_release.get(r, [])))) for r in self._loaded]
        states += [ReleaseState(r, FAILED, err) for r, (_, err) in sorted(self._failed.items())]
        if self._loading is not None:
            states.append(ReleaseState(self._loading, LOADING))
        return states
