"""The funnel command line: `up` places the services by CPU layout, and refuses a layout the machine can't hold."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from funnel.cli import main as cli
from funnel.cli import stack
from funnel.cli.stack import CpuLayout


def test_the_pinned_layout_gives_the_gateway_the_front_cpu_and_the_stages_the_rest() -> None:
    assert CpuLayout.of("pinned", {3, 1, 2}).services == {"gateway": {1}, "retrieval": {2, 3}, "ranking": {2, 3}}
    assert CpuLayout.of("shared", {0, 1}).services is None
    with pytest.raises(ValueError, match="expected a layout in"):
        CpuLayout.of("tight", {0, 1})


def test_up_refuses_the_pinned_layout_on_one_cpu_before_training_or_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(stack, "start_stack", lambda *a, **k: pytest.fail("started services"))
    monkeypatch.setattr(cli, "_train_stable", lambda *a, **k: pytest.fail("trained a release"))
    assert cli.main(["up", "--layout", "pinned", "--artifact-root", "/nonexistent"]) == 2
    assert "--layout pinned: the pinned layout needs at least 2 allowed CPUs, got [0]" in capsys.readouterr().err


def test_up_starts_the_stack_in_the_chosen_layout(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    started: dict = {}
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cli, "VAR", tmp_path)
    monkeypatch.setattr(cli, "ArtifactStore", lambda root: type("Store", (), {"get_channel": lambda self, c: "r1"})())
    monkeypatch.setattr(stack, "start_stack", lambda *a, **k: started.update(k) or {})
    assert cli.main(["up", "--layout", "pinned", "--artifact-root", str(tmp_path)]) == 0
    assert started["cpus"] == {"gateway": {0}, "retrieval": {1}, "ranking": {1}}


@pytest.fixture()
def run_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The CLI's var/ in a temporary directory, with 'gateway' standing for a harmless python -m http.server."""
    monkeypatch.setattr(cli, "VAR", tmp_path)
    monkeypatch.setitem(stack.MODULES, "gateway", "http.server")
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_down_leaves_alone_a_process_that_reused_a_stale_pid(run_dir: Path) -> None:
    other = _spawn("-c", "import time; time.sleep(60)")  # some other program now holds the recorded pid
    try:
        (run_dir / "gateway.pid").write_text(f"{other.pid}\n")
        assert cli.main(["down"]) == 0
        assert other.poll() is None and not (run_dir / "gateway.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_down_stops_the_service_its_pid_file_names(run_dir: Path) -> None:
    service = _spawn("-m", "http.server", "0", "--bind", "127.0.0.1")
    try:
        (run_dir / "gateway.pid").write_text(f"{service.pid}\n")
        deadline = time.monotonic() + 10
        while not stack.runs_module(service.pid, "http.server") and time.monotonic() < deadline:
            time.sleep(0.05)  # until the interpreter has exec'd
        assert cli.main(["down"]) == 0
        assert service.wait(10) is not None and not (run_dir / "gateway.pid").exists()
    finally:
        service.kill()
        service.wait()


def test_up_refuses_a_running_stack_before_training(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_train_stable", lambda *a, **k: pytest.fail("trained a release"))
    monkeypatch.setattr(stack, "runs_module", lambda pid, module: True)
    (run_dir / "gateway.pid").write_text("12345\n")
    assert cli.main(["up", "--artifact-root", str(run_dir / "empty-root")]) == 1


def test_pinned_confines_the_module_and_its_threads_to_the_cpus() -> None:
    cpu = max(os.sched_getaffinity(0))
    server = _spawn(*stack.python_module("http.server", ["0", "--bind", "127.0.0.1"], {cpu})[1:])
    try:
        deadline = time.monotonic() + 10
        while not stack.runs_module(server.pid, "http.server") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # into the module's own code
        threads = os.listdir(f"/proc/{server.pid}/task")
        assert [os.sched_getaffinity(int(t)) for t in threads] == [{cpu}] * len(threads)
    finally:
        server.kill()
        server.wait()
