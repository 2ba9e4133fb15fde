"""Background work with an owner: a thread that runs a function periodically from start() until stop()."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Worker(Protocol):
    """Something a service starts after its server and stops before its server drains."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Periodic:
    """Calls ``function`` every ``interval`` seconds on a thread of its own, from ``start()`` until ``stop()``.

    An exception is logged and the next round runs as planned; ``stop()`` wakes the thread and joins it.
    """

    def __init__(self, name: str, interval: float, function: Callable[[], None], join_timeout: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: expected an interval > 0 seconds, got {interval}")
        self.name, self.interval, self._function, self._join_timeout = name, interval, function, join_timeout
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was started already")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self._join_timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._function()
            except Exception:
                log.exception("%s: a round failed", self.name)
            self._stopping.wait(self.interval)
