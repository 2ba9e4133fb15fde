"""Run a Python module confined to some CPUs: python -m funnel.cli.pinned CPUS -m MODULE [ARGS...].

The process pins itself while it is still single-threaded, so every thread the module starts inherits the mask;
this replaces a ``preexec_fn`` (unsafe in a parent that runs threads).
"""

from __future__ import annotations

import os
import runpy
import sys


def parse_cpus(text: str) -> set[int]:
    """'1,3-5' → {1, 3, 4, 5}."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            cpus.update(range(int(low), int(high or low) + 1))
        except ValueError:
            raise SystemExit(f"expected CPUs like '1,3-5', got {text!r}") from None
    return cpus


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        raise SystemExit("usage: python -m funnel.cli.pinned CPUS -m MODULE [ARGS...]")
    os.sched_setaffinity(0, parse_cpus(argv[0]))
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
