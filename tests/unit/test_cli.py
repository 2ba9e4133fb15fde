"""The funnel command line: `up` places the services by CPU layout, and refuses a layout the machine can't hold."""

from __future__ import annotations

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
    monkeypatch.setattr(cli, "_train", lambda *a, **k: pytest.fail("trained a release"))
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


def test_up_refuses_a_running_stack_before_training(cli_run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_train", lambda *a, **k: pytest.fail("trained a release"))
    monkeypatch.setattr(stack, "runs_module", lambda pid, module: True)
    (cli_run_dir / "gateway.pid").write_text("12345\n")
    assert cli.main(["up", "--artifact-root", str(cli_run_dir / "empty-root")]) == 1
