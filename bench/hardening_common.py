"""What bench.attack and bench.faults share: a release to serve, a stack on a copy of it, log checks, tables."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from funnel.cli.stack import ServiceProcess, start_stack, stop_stack
from funnel.paths import PROJECT_ROOT, VAR
from funnel.release.files import read_seen
from funnel.release.store import ArtifactStore

OUT_DIR = VAR / "bench"
ADMIN_TOKEN = "bench-hardening-token"
TRAIN_ARGS = ["--max-users", "200", "--epochs", "1", "--no-gate", "--no-refit"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifact-root",
        type=Path,
        help="artifact root with a stable release (only copies of it are served); default: train a small release "
        f"into a temporary directory (python -m trainer {' '.join(TRAIN_ARGS)}, a minute or two)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the JSON report goes (default %(default)s)")


@contextmanager
def release_root(artifact_root: Path | None) -> Iterator[Path]:
    """``artifact_root`` as given, or a temporary one holding a small freshly trained release (deleted after)."""
    if artifact_root is not None:
        if ArtifactStore(artifact_root).get_channel("stable") is None:
            raise SystemExit(f"expected a stable release in {artifact_root}, found none")
        yield artifact_root
        return
    with tempfile.TemporaryDirectory(prefix="funnel-hardening-") as tmp:
        root = Path(tmp) / "trained"
        command = [sys.executable, "-m", "trainer", "--artifact-root", str(root), *TRAIN_ARGS]
        print(f"[bench] training a small release: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        started = time.monotonic()
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SystemExit(f"the trainer exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        print(f"[bench] trained in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        yield root


def copy_root(source: Path, target: Path) -> ArtifactStore:
    """A fresh copy of an artifact root (releases and channels, no staging leftovers) to serve and damage."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".staging"))
    return ArtifactStore(target)


def stable_id(store: ArtifactStore) -> str:
    stable = store.get_channel("stable")
    if stable is None:
        raise SystemExit(f"expected a stable release in {store.root}, found none")
    return stable


def known_users(store: ArtifactStore, n: int = 200) -> list[str]:
    """The first ``n`` users the stable release holds a history for."""
    return [str(u) for u in read_seen(store.release_dir(stable_id(store))).users.tolist()[:n]]


@contextmanager
def running_stack(
    root: Path, log_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[dict[str, ServiceProcess]]:
    """The three services on ``root`` (free loopback ports, the admin token set), stopped at the end; the
    services a scenario restarts must be put back into the dict to be stopped."""
    env = {"FUNNEL_ADMIN_TOKEN": ADMIN_TOKEN, **(extra_env or {})}
    started = time.monotonic()
    services = start_stack(root, log_dir, extra_env=env)
    print(f"[bench] stack SERVING after {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    try:
        yield services
    finally:
        stop_stack(services)


def tracebacks(log_paths: Sequence[Path]) -> tuple[int, str]:
    """How many tracebacks the logs hold, and the first one (up to 25 lines, with the log's name)."""
    count, first = 0, ""
    for path in log_paths:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for i, line in enumerate(lines):
            if "Traceback" in line:
                count += 1
                if not first:
                    first = f"{path.name}:\n" + "\n".join(lines[max(i - 2, 0) : i + 23])
    return count, first


def clip(text: str, limit: int = 100) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"[bench] wrote {path}", file=sys.stderr, flush=True)
