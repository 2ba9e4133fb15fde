"""The funnel command line with real processes: `down` signals only the services its pid files name, and the
pinned launcher confines a module and every thread it starts to the CPUs it is given."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from funnel.cli import main as cli
from funnel.cli import stack
from tests.helpers import wait_for


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_down_leaves_alone_a_process_that_reused_a_stale_pid(cli_run_dir: Path) -> None:
    other = _spawn("-c", "import time; time.sleep(600)")  # some other program now holds the recorded pid
    try:
        (cli_run_dir / "gateway.pid").write_text(f"{other.pid}\n")
        assert cli.main(["down"]) == 0
        assert other.poll() is None and not (cli_run_dir / "gateway.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_down_stops_the_service_its_pid_file_names(cli_run_dir: Path) -> None:
    service = _spawn("-m", "http.server", "0", "--bind", "127.0.0.1")
    try:
        (cli_run_dir / "gateway.pid").write_text(f"{service.pid}\n")
        wait_for(lambda: stack.runs_module(service.pid, "http.server"), 30, "the interpreter to exec the module")
        assert cli.main(["down"]) == 0
        assert service.wait(30) is not None and not (cli_run_dir / "gateway.pid").exists()
    finally:
        service.kill()
        service.wait()


PROBE = """
    import sys, threading
    started = threading.Barrier(4)
    for _ in range(3):
        threading.Thread(target=lambda: (started.wait(), threading.Event().wait()), daemon=True).start()
    started.wait()  # all three threads run
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def test_pinned_confines_the_module_and_its_threads_to_the_cpus(tmp_path: Path) -> None:
    (tmp_path / "threaded_probe.py").write_text(textwrap.dedent(PROBE))
    cpu = max(os.sched_getaffinity(0))
    probe = subprocess.Popen(
        stack.python_module("threaded_probe", cpus={cpu}),
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert probe.stdout is not None and probe.stdout.readline() == b"ready\n"  # its threads have started
        assert stack.runs_module(probe.pid, "threaded_probe")
        threads = os.listdir(f"/proc/{probe.pid}/task")
        assert len(threads) == 4 and [os.sched_getaffinity(int(t)) for t in threads] == [{cpu}] * 4
    finally:
        probe.kill()
        probe.wait()
