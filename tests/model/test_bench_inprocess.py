"""The benchmark's in-process worker (it imports TensorFlow: the TFRS layers it measures run in this process)."""

from __future__ import annotations

import io
import json

import pytest

from bench import loadgen
from bench.inprocess import serve_rounds
from tests.helpers import ThreadClock


def test_the_in_process_worker_measures_every_layer_again_for_each_line_until_its_input_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ThreadClock()  # each recommendation takes exactly 1/64 s of its thread's clock: the counts are exact
    monkeypatch.setattr(loadgen, "time", clock)

    class Server:
        def __init__(self) -> None:
            self.users: list[str] = []

        def recommend(self, user_id: str) -> None:
            self.users.append(user_id)
            clock.advance(1 / 64)

    servers = {"bruteforce": Server(), "scann": Server()}
    out = io.StringIO()
    serve_rounds(servers, ["u1", "u2"], 2, io.StringIO("0.2\n0.1\n"), out)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [sorted(found) for found in lines] == [["bruteforce@2", "scann@2"]] * 2
    assert all(found[key]["concurrency"] == 2 for found in lines for key in found)
    # Two threads, each finishing the calls that fit in the window: 12 of 1/64 s in 0.2 s, 6 in 0.1 s.
    assert [found[key]["requests"] for found in lines for key in sorted(found)] == [24, 24, 12, 12]
    assert [found["scann@2"]["duration_s"] for found in lines] == [0.2, 0.1]
    assert set(servers["scann"].users) == {"u1", "u2"}
