"""gRPC clients for the retrieval and ranking stages, turning transport failures into StageUnavailable."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np

from funnel.errors import FailedPrecondition, FunnelError, InvalidArgument, NotFound
from funnel.serving.metrics import Metrics
from funnel.serving.server import ready_release_ids
from funnel.serving.tracing import client_span
from funnel.tls import open_channel, target_host
from funnel.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from gateway.core import StageCandidates, StageReadiness, StageScores, StageUnavailable

log = logging.getLogger(__name__)

# Errors that mean "this request cannot be served as asked": passed to the caller, never papered over.
_PASS_THROUGH: dict[grpc.StatusCode, type[FunnelError]] = {
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
}


STAGE_SERVICES = ("funnel.v1.RetrievalService", "funnel.v1.RankingService")
STAGE_CHANNEL_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    # Only replicas whose grpc.health.v1 status is SERVING get calls: one still loading its first release, or
    # draining after SIGTERM, gets none.
    "healthCheckConfig": {"serviceName": ""},
    # A call a replica refuses as UNAVAILABLE (gone, or not loaded yet) is tried again, on the next replica.
    "methodConfig": [
        {
            "name": [{"service": service} for service in STAGE_SERVICES],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.01s",
                "maxBackoff": "0.05s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


FAST_RECONNECT = [  # a replica that (re)starts is reached again within about a second, not gRPC's minutes
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.dns_min_time_between_resolutions_ms", 1000),
]


def stage_channel(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel that balances round-robin over every serving address the target resolves to (one per replica).

    Reconnect backoff is capped at one second, so a stage that (re)starts is used again within about a second;
    gRPC's default grows to minutes, and calls fail fast (degrading the answer) for all of that time. DNS is
    re-resolved at most every second when a connection drops (servers cap connection age), so new replicas are
    found within seconds. With ``credentials`` every connection is TLS.
    """
    options = [("grpc.service_config", json.dumps(STAGE_CHANNEL_CONFIG)), ("grpc.enable_retries", 1), *FAST_RECONNECT]
    return open_channel(target, credentials, options)


# What the caller is told when a stage fails: words, never the addresses and transport details (those are logged).
_FAILURE_WORDS = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "no answer within the deadline",
    grpc.StatusCode.UNAVAILABLE: "no replica reachable",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.CANCELLED: "call cancelled",
}


class _ThrottledLog:
    """Logs a stage failure's details at most once a second per (stage, status), counting the ones it skipped."""

    def __init__(self, interval: float = 1.0) -> None:
        self._interval, self._lock = interval, threading.Lock()
        self._last: dict[tuple[str, grpc.StatusCode], tuple[float, int]] = {}

    def warning(self, stage: str, code: grpc.StatusCode, details: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, skipped = self._last.get((stage, code), (float("-inf"), 0))
            if now - last < self._interval:
                self._last[(stage, code)] = (last, skipped + 1)
                return
            self._last[(stage, code)] = (now, 0)
        more = f" (and {skipped} more like it since)" if skipped else ""
        log.warning("%s call failed, answering degraded: %s: %s%s", stage, code.name, details, more)


_failures = _ThrottledLog()


def _call(
    stage: str,
    method: Callable[..., Any],
    request: Any,
    timeout: float,
    record: Callable[[str, float], None] = lambda status, seconds: None,
    metadata: Sequence[tuple[str, str]] = (),
) -> Any:
    """``method(request)``, its status and duration passed to ``record``; a refusal that says the request cannot be
    served as asked passes through as its FunnelError, anything else degrades (StageUnavailable)."""
    if timeout <= 0:
        raise StageUnavailable(stage, "the request's deadline left no time for this stage")
    started = time.perf_counter()
    try:
        response = method(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        record(code.name, time.perf_counter() - started)
        if code in _PASS_THROUGH:
            raise _PASS_THROUGH[code](f"{stage}: {details}") from None
        _failures.warning(stage, code, details)
        raise StageUnavailable(stage, _FAILURE_WORDS.get(code, f"failed ({code.name})")) from None
    record("OK", time.perf_counter() - started)
    return response


def resolve_target(target: str) -> list[str]:
    """The addresses a gRPC target names now, one per replica: ``dns:///host:port`` (or a plain ``host:port``)
    through the resolver, ``ipv4:a:p,b:p`` and ``ipv6:[a]:p,...`` as listed; others (``unix:``) as given."""
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return [address for address in target[len(scheme) :].split(",") if address]
    if target.startswith("unix:"):
        return [target]
    name = target
    if name.startswith("dns:"):
        name = name[len("dns:") :]
        if name.startswith("//"):
            name = name[2:].split("/", 1)[1]  # dns://authority/host:port: the authority is the DNS server
    host, _, port = name.rpartition(":")
    if not host or not port.isdigit():
        return [target]
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    found = []
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        found.append(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(set(found))


class StageReplicas:
    """A channel to each replica a stage's target resolves to, for what must reach every replica rather than any
    one: status (rollout readiness) and reload. Requests use the stage's balanced channel instead."""

    def __init__(
        self,
        target: str,
        stub_class: Callable[[grpc.Channel], Any],
        resolve: Callable[[str], list[str]] = resolve_target,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """With ``credentials``, each replica is reached over TLS and must show a certificate for the target's
        host name (not its own address)."""
        self.target, self._stub_class, self._resolve = target, stub_class, resolve
        self._credentials = credentials
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, Any]] = {}

    def _stubs(self) -> dict[str, Any]:
        """Stubs for the addresses the target resolves to now; channels to addresses gone are closed."""
        addresses = self._resolve(self.target)
        with self._lock:
            for address in set(self._channels) - set(addresses):
                self._channels.pop(address)[0].close()
            for address in addresses:
                if address not in self._channels:
                    channel = open_channel(address, self._credentials, FAST_RECONNECT, target_host(self.target))
                    self._channels[address] = (channel, self._stub_class(channel))
            return {address: self._channels[address][1] for address in addresses}

    def statuses(self, timeout: float = 1.0) -> dict[str, common_pb2.GetStatusResponse | grpc.RpcError]:
        """Each replica's GetStatus answer, or the error it gave (one call per replica)."""
        return self._each("GetStatus", common_pb2.GetStatusRequest(), timeout)

    def reload(self, timeout: float = 2.0) -> dict[str, common_pb2.ReloadResponse | grpc.RpcError]:
        """Ask every replica to re-read channels/ now."""
        return self._each("Reload", common_pb2.ReloadRequest(), timeout)

    def _each(self, method: str, request: Any, timeout: float) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        for address, stub in self._stubs().items():
            try:
                answers[address] = getattr(stub, method)(request, timeout=timeout)
            except grpc.RpcError as exc:
                answers[address] = exc
        return answers


class StageClient:
    """A stage as the gateway sees it: the balanced channel its requests use, and each of its replicas."""

    stage = ""
    service = ""
    stub_class: Callable[[grpc.Channel], Any]

    def __init__(
        self,
        channel: grpc.Channel,
        target: str = "",
        credentials: grpc.ChannelCredentials | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.target = target
        self._stub = self.stub_class(channel)
        self.replicas = StageReplicas(target, self.stub_class, credentials=credentials)
        metrics = metrics or Metrics("gateway", enabled=False)
        self._batch_size, self._call_duration = metrics.batch_size.labels(self.stage), metrics.client_call_duration

    def _batch(self, method: str, request: Any, timeout: float) -> Any:
        """One batched call, with its size, duration and status recorded."""
        self._batch_size.observe(len(request.queries))

        def record(status: str, seconds: float) -> None:
            self._call_duration.labels(f"{self.service}/{method}", self.target, status).observe(seconds)

        with client_span(f"{self.service}/{method}", self.target) as metadata:
            return _call(self.stage, getattr(self._stub, method), request, timeout, record, metadata)


class GrpcRetrieval(StageClient):
    stage = "retrieval"
    service = "funnel.v1.RetrievalService"
    stub_class = retrieval_pb2_grpc.RetrievalServiceStub

    def retrieve_batch(self, release_id: str, queries: list[Any], timeout: float) -> list[StageCandidates]:
        """One RetrieveBatch for queries with user_id, num_candidates, exclude_seen and history attributes."""
        request = retrieval_pb2.RetrieveBatchRequest(
            release_id=release_id,
            queries=[
                retrieval_pb2.RetrieveQuery(
                    user=common_pb2.UserContext(user_id=q.user_id, history_item_ids=q.history.tolist()),
                    num_candidates=q.num_candidates,
                    exclude_seen=q.exclude_seen,
                )
                for q in queries
            ],
        )
        response = self._batch("RetrieveBatch", request, timeout)
        if len(response.results) != len(queries):
            raise StageUnavailable("retrieval", f"expected {len(queries)} results, got {len(response.results)}")
        return [
            StageCandidates(
                response.release_id,
                np.asarray(r.item_ids, dtype=np.int64),
                np.asarray(r.scores, dtype=np.float32),
                r.cold_start,
            )
            for r in response.results
        ]


class GrpcRanking(StageClient):
    stage = "ranking"
    service = "funnel.v1.RankingService"
    stub_class = ranking_pb2_grpc.RankingServiceStub

    def rank_batch(
        self, release_id: str, queries: list[tuple[str, np.ndarray, np.ndarray]], timeout: float
    ) -> list[StageScores]:
        """One RankBatch for (user_id, item_ids, history) queries; an empty history means the stored one."""
        request = ranking_pb2.RankBatchRequest(
            release_id=release_id,
            queries=[
                ranking_pb2.RankQuery(
                    user=common_pb2.UserContext(user_id=user_id, history_item_ids=history.tolist()),
                    item_ids=items.tolist(),
                )
                for user_id, items, history in queries
            ],
        )
        response = self._batch("RankBatch", request, timeout)
        if [len(r.scores) for r in response.results] != [len(items) for _, items, _ in queries]:
            raise StageUnavailable("ranking", "the batch's scores do not match its queries")
        return [
            StageScores(
                response.release_id,
                np.asarray(r.scores, dtype=np.float32),
                np.asarray(r.ratings, dtype=np.float32) if len(r.ratings) else None,
            )
            for r in response.results
        ]


def probe_readiness(stages: list[StageClient], readiness: StageReadiness) -> None:
    """Record which releases every replica of every stage reports ready; a replica that does not answer, or is not
    serving yet, reports None (StageReadiness keeps what it last knew of it)."""
    for client in stages:
        readiness.update(
            client.stage,
            {
                address: None if isinstance(answer, grpc.RpcError) or not answer.serving else ready_release_ids(answer)
                for address, answer in client.replicas.statuses().items()
            },
        )
