"""A real Prometheus server scrapes the three services under load, across a rollout: the request rate and a
latency quantile by release, the stages' own metrics and every panel of the Grafana dashboard, read back through
Prometheus's HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from funnel.cli import stack
from funnel.client import AdminClient
from funnel.release.store import ArtifactStore
from tests.helpers import RELEASE, ROOT, Load, clone_release, wait_for

DASHBOARD = ROOT / "deploy" / "grafana" / "funnel-dashboard.json"
USERS = [str(u) for u in range(1, 201)]


class Prometheus:
    """A prometheus process of the test's own, scraping ``targets`` (job → host:port) every second."""

    def __init__(self, directory: Path, targets: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: `make test` installs it (scripts/ensure-prometheus.sh)")
        directory.mkdir(parents=True)
        jobs = [{"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()]
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs}
        (directory / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.address = f"127.0.0.1:{stack.free_port()}"
        self.log = open(directory / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={self.address}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> dict[str, float]:
        """An instant query's result: each series' labels (as text) → value."""
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in body["data"]["result"]}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@pytest.fixture()
def served(artifact_root: Path, tmp_path: Path) -> Iterator[tuple[dict[str, stack.ServiceProcess], Prometheus]]:
    services = stack.start_stack(artifact_root, tmp_path / "logs", metrics_ports=dict.fromkeys(stack.SERVICES, 0))
    prometheus = Prometheus(tmp_path / "prometheus", {n: s.metrics_address for n, s in services.items()})
    try:
        wait_for(prometheus.ready, 60, "prometheus to be ready")
        yield services, prometheus
    finally:
        prometheus.stop()
        stack.stop_stack(services)


def test_prometheus_reads_request_rate_and_latency_by_release(
    served: tuple[dict[str, stack.ServiceProcess], Prometheus], artifact_root: Path
) -> None:
    services, prometheus = served
    candidate = clone_release(ArtifactStore(artifact_root), RELEASE, "test-r2")
    with AdminClient(services["gateway"].admin_address) as admin:
        admin.start_rollout(candidate, 0.5)
    up = 'sum(up{job=~"gateway|retrieval|ranking"})'
    wait_for(lambda: prometheus.query(up).get("{}") == 3, 60, "all three targets up")
    rate = 'sum by (release) (rate(funnel_requests_total{outcome="ok"}[20s]))'
    latency = "histogram_quantile(0.99, sum by (release, le) (rate(funnel_request_duration_seconds_bucket[20s])))"
    with Load(services["gateway"].address, USERS, clients=4) as load:  # queried while the load runs
        wait_for(lambda: {s.release for s in load.samples} == {RELEASE, candidate}, 120, "both releases served")
        wait_for(lambda: len(prometheus.query(rate)) == 2, 60, "a rate for each release", interval=1)
        by_release = {json.loads(k)["release"]: v for k, v in prometheus.query(rate).items()}
        p99_by_release = {json.loads(k)["release"]: v for k, v in prometheus.query(latency).items()}
        panels = {
            panel["title"]: [prometheus.query(target["expr"]) for target in panel["targets"]]  # fails on bad PromQL
            for panel in json.loads(DASHBOARD.read_text())["panels"]
        }
    time.sleep(2)  # one more scrape after the last answer
    ann = prometheus.query('sum(funnel_model_phase_duration_seconds_count{job="retrieval",phase="ann_search"})')
    ranker = prometheus.query('sum(funnel_model_phase_duration_seconds_count{job="ranking",phase="ranker"})')
    calls = prometheus.query('sum(grpc_server_call_duration_seconds_count{grpc_method=~".*/Recommend"})')
    total = prometheus.query("sum(funnel_requests_total)")
    print(f"req/s by release {by_release}; p99 s by release {p99_by_release}; {len(load.samples)} answers")
    assert set(by_release) == {RELEASE, candidate} and all(v > 0 for v in by_release.values())
    assert set(p99_by_release) == {RELEASE, candidate} and all(0 < v < 10 for v in p99_by_release.values())
    assert ann["{}"] > 0 and ranker["{}"] > 0  # the stages' own metrics, scraped from their processes
    empty = sorted(title for title, results in panels.items() if not any(results))
    assert empty == ["Degraded share"], empty  # the dashboard shows data in every panel (nothing was degraded)
    assert calls["{}"] == total["{}"] == len(load.samples)  # the gRPC view, Funnel's and the client's agree
