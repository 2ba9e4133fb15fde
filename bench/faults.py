"""Fault injection under load: stage kills, a kill mid-rollout, corrupt releases, SIGTERM and trainer promotions."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.hardening_common import (
    ADMIN_TOKEN,
    add_common_arguments,
    clip,
    copy_root,
    known_users,
    markdown_table,
    release_root,
    running_stack,
    stable_id,
    tracebacks,
    write_report,
)
from funnel.cli.stack import ServiceProcess, start_service, wait_serving
from funnel.client import AdminClient, state_label
from funnel.paths import PROJECT_ROOT
from funnel.release.store import ArtifactStore
from tests.helpers import Load, Sample, clone_release, wait_for

CLIENTS = 4
JOB_ARGS = ["--max-users", "50", "--epochs", "1", "--no-gate", "--no-refit"]  # (f): a small job, beside the load
Stack = dict[str, ServiceProcess]
Figures = dict[str, Any]


class Scenario:
    """One scenario's stack and load: what it needs to kill, restart and watch services."""

    def __init__(self, store: ArtifactStore, services: Stack, log_dir: Path, outage: float) -> None:
        self.store, self.services, self.log_dir, self.outage = store, services, log_dir, outage
        self.stable = stable_id(store)
        self.users = known_users(store)
        self.loads: list[Load] = []

    def load(self) -> Load:
        """The scenario's load (kept, so that its samples count even when the scenario fails)."""
        self.loads.append(Load(self.services["gateway"].address, self.users, clients=CLIENTS))
        return self.loads[-1]

    def admin(self) -> AdminClient:
        return AdminClient(self.services["gateway"].admin_address, ADMIN_TOKEN)

    def kill(self, name: str) -> float:
        """kill -9 the service; when it happened."""
        process = self.services[name].process
        process.send_signal(signal.SIGKILL)
        process.wait()
        return time.monotonic()

    def restart(self, name: str) -> float:
        """Start the service again on its address and wait until it is SERVING; when it was."""
        old = self.services[name]
        env = {"FUNNEL_ADMIN_TOKEN": ADMIN_TOKEN}
        self.services[name] = start_service(name, old.address, self.store.root, self.log_dir, env)
        wait_serving(self.services[name], 180)
        return time.monotonic()


def full(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if s.code == "OK" and not s.degraded]


def wait_full_answers(load: Load, since: float, count: int = 50) -> float:
    """Until ``count`` full answers were sent after ``since``; the seconds from ``since`` to the first of them."""
    wait_for(lambda: len(full(load.between(since, float("inf")))) >= count, 120, f"{count} full answers")
    return round(min(s.started for s in full(load.between(since, float("inf")))) - since, 2)


def mixed(samples: Sequence[Sample]) -> list[Sample]:
    """Full answers that a stage answered under another release than the answer's. Load.mixed() also counts the
    cold-start answers, where the gateway skips ranking and ranking_release_id stays empty: those are counted
    apart here."""
    return [s for s in full(samples) if any(stage and stage != s.release for stage in s.stages)]


def reasons(samples: Sequence[Sample]) -> list[str]:
    """The distinct degraded reasons, shortened."""
    return sorted({clip(reason, 80) for s in samples for reason in s.degraded})


def kill_stage(stage: str) -> Callable[[Scenario], Figures]:
    """(a), (b): kill -9 a stage under load, keep it down for the outage, start it again on the same address."""

    def scenario(sc: Scenario) -> Figures:
        with sc.load() as load:
            load.wait_for_requests(50, 0.0, "before the kill")
            killed = sc.kill(stage)
            time.sleep(sc.outage)
            restarted = time.monotonic()
            serving = sc.restart(stage)
            first_full = wait_full_answers(load, serving)
        outage = load.between(killed, serving)
        return {
            "down before restart s": round(restarted - killed, 1),
            "restart to SERVING s": round(serving - restarted, 1),
            "SERVING to first full answer s": first_full,
            "requests during outage": len(outage),
            "failed during outage": sum(s.code != "OK" for s in outage),
            "degraded during outage": sum(bool(s.degraded) for s in outage),
            "max latency during outage ms": round(max((s.latency_ms for s in outage), default=0.0), 1),
            "degraded reasons": reasons(outage),
        }

    return scenario


def kill_during_rollout(sc: Scenario) -> Figures:
    """(c): a 50% rollout; kill -9 ranking, restart it; did candidate users stay on the candidate?"""
    candidate = clone_release(sc.store, sc.stable, "cand")
    with sc.load() as load, sc.admin() as admin:
        admin.start_rollout(candidate, 0.5)
        wait_for(lambda: len({s.user for s in load.samples if s.release == candidate}) >= 40, 120, "candidate users")
        on_candidate = {s.user for s in load.samples if s.release == candidate}
        routable = min(s.at for s in load.samples if s.release == candidate)  # from then on, users stick
        on_stable = {s.user for s in load.between(routable, float("inf")) if s.release == sc.stable}
        killed = sc.kill("ranking")
        time.sleep(sc.outage)
        serving = sc.restart("ranking")
        back = wait_full_answers(load, serving)
        wait_for(
            lambda: any(s.release == candidate for s in full(load.between(serving, float("inf")))),
            60,
            "a full answer from the candidate after the restart",
        )
        state = admin.status().rollout
    after = [s for s in load.between(killed, float("inf")) if s.code == "OK"]
    moved = sorted({s.user for s in after if s.user in on_candidate and s.release != candidate})
    moved_in = sorted({s.user for s in after if s.user in on_stable and s.release == candidate})
    return {
        "candidate users before the kill": len(on_candidate),
        "their answers during and after": sum(s.user in on_candidate for s in after),
        "candidate users answered by stable": len(moved),
        "stable users (once routable) answered by candidate": len(moved_in),
        "degraded during outage": sum(bool(s.degraded) for s in load.between(killed, serving)),
        "ranking restart to SERVING s": round(serving - killed - sc.outage, 1),
        "SERVING to first full answer s": back,
        "rollout after": f"{state.candidate_release_id} at {state.candidate_fraction:g}",
        "moved users (first 5)": moved[:5],
    }


def damage(release_dir: Path) -> str:
    """Flip the case of one letter of a title in the middle of catalog.jsonl: the file still reads as a catalog,
    only its checksum tells."""
    path = release_dir / "catalog.jsonl"
    data = bytearray(path.read_bytes())
    title = data.index(b'"title": "', len(data) // 2) + len(b'"title": "')
    at = next(i for i in range(title, len(data)) if chr(data[i]).isalpha())
    data[at] = ord(chr(data[at]).swapcase())
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return f"catalog.jsonl byte {at}"


def rollout_states(admin: AdminClient, release_id: str) -> dict[str, str]:
    """How each service holds ``release_id``: loading, ready, failed (with its error) or absent."""
    states = {}
    for service in admin.status().services:
        held = [r for r in service.releases if r.release_id == release_id]
        label = f"{service.service}" + (f" {service.target}" if service.target else "")
        states[label] = clip(f"{state_label(held[0])} {held[0].error}", 90) if held else "absent"
    return states


def settled(states: dict[str, str]) -> bool:
    return all(not state.startswith("loading") for state in states.values())


def refusal(call: Callable[[], object]) -> str:
    """'OK', or the status and message an admin call was refused with."""
    try:
        call()
        return "OK"
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {clip(exc.details() or '', 90)}"


def verifies(store: ArtifactStore, release_id: str) -> str:
    try:
        store.verify(release_id)
        return "yes"
    except Exception as exc:
        return f"no: {clip(str(exc), 90)}"


def corrupt_rollout(sc: Scenario) -> Figures:
    """(d): StartRollout of a release whose checksum fails must be refused. Then two releases corrupted after their
    rollout started: one at once (while the services load it), one once every service serves it; what the services
    hold, whether Promote lets it through, and what a stage restarted after that serves."""
    corrupt, early, late = (clone_release(sc.store, sc.stable, name) for name in ("corrupt", "early", "late"))
    figures: Figures = {"damaged": damage(sc.store.release_dir(corrupt))}
    with sc.load() as load, sc.admin() as admin:
        load.wait_for_requests(50, 0.0, "before the rollout")
        figures["StartRollout corrupt"] = refusal(lambda: admin.start_rollout(corrupt, 0.5))
        state = admin.status().rollout
        figures["rollout after"] = f"stable {state.stable_release_id}, candidate {state.candidate_release_id!r}"

        admin.start_rollout(early, 0.5)
        damage(sc.store.release_dir(early))
        wait_for(lambda: settled(rollout_states(admin, early)), 60, "the early-damaged candidate to settle")
        figures["damaged at once: held as"] = rollout_states(admin, early)
        figures["damaged at once: Promote"] = refusal(lambda: admin.promote(early))
        if admin.status().rollout.candidate_release_id:
            admin.rollback()

        admin.start_rollout(late, 0.5)
        wait_for(lambda: any(s.release == late for s in load.samples[-20:]), 120, "traffic on the late candidate")
        damage(sc.store.release_dir(late))
        damaged_at = time.monotonic()
        load.wait_for_requests(100, damaged_at, "after the damage")
        figures["damaged once served: answers by it after"] = sum(
            s.release == late for s in load.between(damaged_at, float("inf"))
        )
        figures["damaged once served: Promote"] = refusal(lambda: admin.promote(late))
        stable = admin.status().rollout.stable_release_id
        figures["stable now"] = stable
        figures["stable verifies"] = verifies(sc.store, stable)
        if stable == late:  # what a ranking replica started now makes of that stable release
            sc.kill("ranking")
            restarted = time.monotonic()
            ranking = start_service("ranking", sc.services["ranking"].address, sc.store.root, sc.log_dir)
            sc.services["ranking"] = ranking
            try:
                wait_serving(ranking, 60)
                figures["restarted ranking"] = f"SERVING after {time.monotonic() - restarted:.1f} s"
            except (TimeoutError, RuntimeError) as exc:
                figures["restarted ranking"] = f"not SERVING after 60 s: {clip(str(exc).splitlines()[0], 90)}"
                figures["restarted ranking: its state"] = rollout_states(admin, late)
            after = load.between(restarted, float("inf"))
            figures["answers since restart"] = len(after)
            figures["degraded of those"] = sum(bool(s.degraded) for s in after)
        elif admin.status().rollout.candidate_release_id:
            admin.rollback()
        load.wait_for_requests(50, time.monotonic(), "at the end")
    return figures


def sigterm_gateway(sc: Scenario) -> Figures:
    """(e): SIGTERM the gateway under load: calls sent before the signal must all be answered."""
    gateway = sc.services["gateway"].process
    with sc.load() as load:
        load.wait_for_requests(100, 0.0, "before the signal")
        signalled = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        exited = time.monotonic() - signalled
    before = [s for s in load.samples if s.started < signalled]
    after = [s for s in load.samples if s.started >= signalled]
    refused = [s.started - signalled for s in after if s.code != "OK"]
    return {
        "sent before SIGTERM": len(before),
        "failed of those": sum(s.code != "OK" for s in before),
        "sent after SIGTERM": len(after),
        "answered after SIGTERM": sum(s.code == "OK" for s in after),
        "first refused after s": round(min(refused), 2) if refused else None,
        "failed after SIGTERM": dict(Counter(s.code for s in after if s.code != "OK")),
        "exit s": round(exited, 2),
        "exit status": gateway.returncode,
    }


def trainer(sc: Scenario, *args: str) -> tuple[int, float, str]:
    """The trainer job on the scenario's store: exit status, seconds, the end of its output."""
    command = [sys.executable, "-m", "trainer", "--artifact-root", str(sc.store.root), *JOB_ARGS, *args]
    started = time.monotonic()
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("trainer", "[trainer]"))]
    return done.returncode, round(time.monotonic() - started, 1), clip(" ".join(lines[-2:]), 200)


def trainer_set_stable(sc: Scenario) -> Figures:
    """(f): `trainer --set-stable` on the live store: refused without --admin-target; promoted through the admin
    API with it."""
    figures: Figures = {}
    with sc.load() as load:
        load.wait_for_requests(50, 0.0, "before the trainer")
        releases, state = sc.store.list_releases(), sc.store.rollout()
        refused_at = time.monotonic()
        code, seconds, said = trainer(sc, "--set-stable")
        figures["no admin target: exit"] = code
        figures["no admin target: s"] = seconds
        figures["no admin target: said"] = said
        figures["no admin target: store unchanged"] = (
            sc.store.list_releases() == releases and sc.store.rollout() == state
        )
        figures["no admin target: failed"] = sum(s.code != "OK" for s in load.between(refused_at, time.monotonic()))
        admin = sc.services["gateway"].admin_address
        started = time.monotonic()
        code, seconds, said = trainer(sc, "--set-stable", "--admin-target", admin, "--admin-token", ADMIN_TOKEN)
        new = sc.store.rollout().stable
        figures["admin target: exit"] = code
        figures["admin target: s"] = seconds
        figures["admin target: said"] = said
        figures["admin target: stable"] = f"{new} (was {state.stable})"
        if new != state.stable:
            wait_for(lambda: any(s.release == new for s in load.samples[-20:]), 60, "answers from the new release")
        ended = time.monotonic()
    during = load.between(started, ended)
    figures["admin target: answers during the job"] = len(during)
    figures["admin target: failed during the job"] = dict(Counter(s.code for s in during if s.code != "OK"))
    figures["admin target: of them by the new release"] = sum(s.release == new for s in during)
    first_new = min((s.started for s in during if s.release == new), default=None)
    figures["admin target: first answer by it, s into the job"] = first_new and round(first_new - started, 1)
    return figures


SCENARIOS: dict[str, tuple[str, Callable[[Scenario], Figures]]] = {
    "a": ("kill -9 ranking, restart", kill_stage("ranking")),
    "b": ("kill -9 retrieval, restart", kill_stage("retrieval")),
    "c": ("kill -9 ranking during a 50% rollout", kill_during_rollout),
    "d": ("corrupt release rollouts", corrupt_rollout),
    "e": ("SIGTERM the gateway", sigterm_gateway),
    "f": ("trainer --set-stable on a live store", trainer_set_stable),
}


def run_scenario(key: str, source: Path, work: Path, outage: float) -> dict[str, Any]:
    title, body = SCENARIOS[key]
    print(f"[bench] scenario {key}: {title}", file=sys.stderr, flush=True)
    store = copy_root(source, work / key / "root")
    logs = work / key / "logs"
    started = time.monotonic()
    with running_stack(store.root, logs) as services:
        scenario = Scenario(store, services, logs, outage)
        try:
            figures = body(scenario)
        except Exception as exc:  # a hang guard fired or a call failed: report it, go on with the next scenario
            figures = {"error": f"{type(exc).__name__}: {clip(str(exc), 300)}"}
    count, first = tracebacks(sorted(logs.glob("*.log")))
    samples = [s for load in scenario.loads for s in load.samples]
    failures = [s for s in samples if s.code != "OK"]
    mixes = sorted(mixed(samples), key=lambda s: s.started)
    return {
        "scenario": f"({key}) {title}",
        "sent": len(samples),
        "failed": len(failures),
        "failed by status": dict(Counter(s.code for s in failures)),
        "degraded": sum(bool(s.degraded) for s in samples if s.code == "OK"),
        "mixed": len(mixes),
        "mixed examples": [(s.release, s.stages, round(s.started - started, 2)) for s in mixes[:5]],
        "full answers without ranking (cold start)": sum(not s.stages[1] for s in full(samples)),
        "Load.mixed()": sum(len(load.mixed()) for load in scenario.loads),
        "tracebacks": count,
        "first traceback": first,
        "figures": figures,
        "seconds": round(time.monotonic() - started, 1),
    }


def figures_text(figures: Figures) -> str:
    return "; ".join(f"{name}: {value}" for name, value in figures.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument(
        "--scenarios",
        default="".join(SCENARIOS),
        help="which scenarios to run, in order: letters of "
        + ", ".join(f"{k} ({t})" for k, (t, _) in SCENARIOS.items()).replace("%", "%%")
        + " (default: all)",
    )
    parser.add_argument("--outage", type=float, default=3.0, help="seconds a killed stage stays down (default 3)")
    parser.add_argument(
        "--keep", type=Path, help="keep each scenario's artifact root and service logs under this new directory"
    )
    args = parser.parse_args(argv)
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; expected letters of {''.join(SCENARIOS)}")
    started = time.monotonic()
    with release_root(args.artifact_root) as source, tempfile.TemporaryDirectory(prefix="funnel-faults-") as tmp:
        work = args.keep or Path(tmp)
        results = [run_scenario(key, source, work, args.outage) for key in args.scenarios]
    write_report(args.out / "faults.json", {"scenarios": results, "seconds": round(time.monotonic() - started, 1)})
    headers = ["scenario", "sent", "failed", "degraded", "mixed", "cold start", "tracebacks", "s", "figures"]
    columns = ["scenario", "sent", "failed", "degraded", "mixed", "full answers without ranking (cold start)"]
    rows = [[r[c] for c in columns] + [r["tracebacks"], r["seconds"], figures_text(r["figures"])] for r in results]
    print(markdown_table(headers, rows))
    for r in results:
        if r["first traceback"]:
            print(f"\n({r['scenario']}) first traceback:\n{r['first traceback']}")
    print(f"\n{len(results)} scenarios in {time.monotonic() - started:.0f} s")
    return 1 if any("error" in r["figures"] or r["tracebacks"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
