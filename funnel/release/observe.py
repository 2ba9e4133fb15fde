"""How a release reports what its calls took: ``observe(name, value)``, recorded as metrics by the serving layer."""

from __future__ import annotations

from collections.abc import Callable

Observe = Callable[[str, float], None]


def ignore(name: str, value: float) -> None:
    """The default observer: nothing is recorded."""
