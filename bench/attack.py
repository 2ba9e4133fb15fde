"""The bad-input battery: malformed, hostile and oversized calls to every server of a real stack, and their statuses."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from bench.hardening_common import (
    ADMIN_TOKEN,
    add_common_arguments,
    clip,
    copy_root,
    markdown_table,
    release_root,
    running_stack,
    stable_id,
    tracebacks,
    write_report,
)
from funnel.cli.stack import ServiceProcess, health_status
from funnel.limits import MAX_BATCH, MAX_CANDIDATES, MAX_HISTORY, MAX_USER_ID_CHARS
from funnel.release.store import ArtifactStore
from funnel.v1 import admin_pb2, common_pb2, gateway_pb2, ranking_pb2, retrieval_pb2
from tests.helpers import clone_release

GATEWAY, ADMIN = "/funnel.v1.GatewayService/", "/funnel.v1.AdminService/"
RETRIEVAL, RANKING = "/funnel.v1.RetrievalService/", "/funnel.v1.RankingService/"
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
DEFECTS = ("INTERNAL", "UNKNOWN")
OVER_LIMIT = 5 << 20  # bytes: past gRPC's 4 MiB receive limit
GARBAGE = b"\xff\xff\xff"
CANDIDATE = "attack-candidate"  # a clone of stable, made the candidate by the admin cases that must succeed
IA, OK, NF, FP = "INVALID_ARGUMENT", "OK", "NOT_FOUND", "FAILED_PRECONDITION"
UNAUTH, DEADLINE, UNIMPL, TOO_BIG = "UNAUTHENTICATED", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "RESOURCE_EXHAUSTED"
LATE = (DEADLINE, OK)  # a 1 µs deadline: gRPC may still deliver an answer that beats its timer


@dataclass(frozen=True)
class Case:
    """One call: ``send`` returns a summary of the answer, or raises grpc.RpcError; ``expect`` lists the statuses
    the docs and protos promise (empty when they promise none)."""

    service: str
    method: str
    what: str
    send: Callable[[], str]
    expect: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    service: str
    method: str
    input: str
    status: str
    details: str
    expected: list[str]
    seconds: float

    @property
    def defect(self) -> bool:
        return self.status in DEFECTS

    @property
    def unexpected(self) -> bool:
        return bool(self.expected) and self.status not in self.expected


# ------------------------------------------------------------------------------------------- wire helpers


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer (any size: longer than 10 bytes is malformed)."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, embedded messages)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def recommend_with_history_varint(raw: bytes) -> bytes:
    """A RecommendRequest (user "1", k 10) whose one history item is the varint bytes ``raw``, written by hand."""
    user = field(1, b"1") + varint(2 << 3) + raw  # history_item_ids, unpacked
    return field(1, user) + varint(2 << 3) + varint(10)


def response_class(path: str) -> type[Message] | None:
    """The response message of a method path, from the protos this process imported."""
    name = path.strip("/").replace("/", ".").replace("grpc.reflection.v1.", "grpc.reflection.v1alpha.")
    try:
        method = descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        return None
    return message_factory.GetMessageClass(method.output_type)


def summarize(path: str, raw: bytes) -> str:
    cls = response_class(path)
    if cls is None:
        return f"{len(raw)} bytes"
    message = cls.FromString(raw)
    if isinstance(message, gateway_pb2.RecommendResponse):
        return (
            f"{len(message.items)} items, release {message.release_id}, cold_start={message.cold_start}, "
            f"degraded={message.degraded} {list(message.degraded_reasons)}"
        )
    if isinstance(message, retrieval_pb2.RetrieveResponse | ranking_pb2.RankResponse):
        count = len(message.item_ids) if isinstance(message, retrieval_pb2.RetrieveResponse) else len(message.scores)
        return f"{count} results, release {message.release_id}"
    if isinstance(message, retrieval_pb2.RetrieveBatchResponse | ranking_pb2.RankBatchResponse):
        return f"{len(message.results)} results, release {message.release_id}"
    if isinstance(message, health_pb2.HealthCheckResponse):
        return health_pb2.HealthCheckResponse.ServingStatus.Name(message.status)
    if isinstance(message, reflection_pb2.ServerReflectionResponse):
        if message.HasField("error_response"):
            return f"error_response {message.error_response.error_code}: {message.error_response.error_message}"
        if message.HasField("list_services_response"):
            return "services " + ", ".join(s.name for s in message.list_services_response.service)
        return f"{len(message.file_descriptor_response.file_descriptor_proto)} file descriptors"
    return text_format.MessageToString(message, as_one_line=True) or "(empty message)"


class Server:
    """One listening server, called with raw bytes so that any payload can be sent."""

    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address
        self.channel = grpc.insecure_channel(address)

    def close(self) -> None:
        self.channel.close()

    def unary(self, path: str, request: Message | bytes, timeout: float = 10.0, token: str | None = None) -> str:
        data = request if isinstance(request, bytes) else request.SerializeToString()
        metadata = (("authorization", token),) if token is not None else None
        call = self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return summarize(path, call(data, timeout=timeout, metadata=metadata))

    def first_streamed(self, path: str, request: Message | bytes, timeout: float = 5.0, bidi: bool = False) -> str:
        """The first message a server-streaming (or, ``bidi``, a one-request bidirectional) call answers; the
        call is cancelled after it."""
        data = request if isinstance(request, bytes) else request.SerializeToString()
        if bidi:
            stream = self.channel.stream_stream(path, request_serializer=None, response_deserializer=None)
            responses = stream(iter([data]), timeout=timeout)
        else:
            responses = self.channel.unary_stream(path, request_serializer=None, response_deserializer=None)(
                data, timeout=timeout
            )
        try:
            first = next(iter(responses), None)
        finally:
            responses.cancel()
        return "the stream ended without a message" if first is None else "first message: " + summarize(path, first)


class Outcome(Exception):
    """How a case that makes many calls ended: its worst status and a tally."""

    def __init__(self, status: str, details: str) -> None:
        super().__init__(details)
        self.status, self.details = status, details


def burst(server: Server, path: str, request: Message, calls: int = 64) -> str:
    """``calls`` concurrent calls of one request; raises Outcome with the worst status seen (a defect, else
    RESOURCE_EXHAUSTED, else any failure) and the tally of statuses."""

    def one(_: int) -> str:
        try:
            server.unary(path, request, timeout=60)
            return OK
        except grpc.RpcError as exc:
            return str(exc.code().name)

    with ThreadPoolExecutor(calls) as pool:
        tally = Counter(pool.map(one, range(calls)))
    worst = next((c for c in (*DEFECTS, TOO_BIG, *sorted(tally)) if tally.get(c) and c != OK), OK)
    raise Outcome(worst, ", ".join(f"{code} {n}" for code, n in tally.most_common()))


def run_case(case: Case) -> Result:
    started = time.monotonic()
    try:
        status, details = OK, case.send()
    except grpc.RpcError as exc:
        status, details = exc.code().name, exc.details() or ""
    except Outcome as outcome:
        status, details = outcome.status, outcome.details
    except Exception as exc:  # the client refused to send it: the case is wrong, not the server
        status, details = "CLIENT_ERROR", f"{type(exc).__name__}: {exc}"
    seconds = round(time.monotonic() - started, 3)
    return Result(case.service, case.method, case.what, status, clip(details), list(case.expect), seconds)


# ------------------------------------------------------------------------------------------------- the cases


def user(user_id: str = "1", history: Sequence[int] = ()) -> common_pb2.UserContext:
    return common_pb2.UserContext(user_id=user_id, history_item_ids=list(history))


def common_cases(server: Server, api: str, label: str) -> list[Case]:
    """What every server takes: health, reflection, unknown methods and services."""

    def case(method: str, what: str, send: Callable[[], str], *expect: str) -> Case:
        return Case(server.name, method, what, send, expect)

    def check(name: str = "", raw: bytes | None = None, timeout: float = 10.0) -> Callable[[], str]:
        request = health_pb2.HealthCheckRequest(service=name) if raw is None else raw
        return lambda: server.unary(HEALTH + "Check", request, timeout)

    def watch(request: Message | bytes) -> Callable[[], str]:
        return lambda: server.first_streamed(HEALTH + "Watch", request)

    def reflect(request: Message | bytes, path: str = REFLECTION) -> Callable[[], str]:
        return lambda: server.first_streamed(path, request, bidi=True)

    refl = reflection_pb2.ServerReflectionRequest
    health_list = health_pb2.HealthListRequest()
    return [
        case("health.Check", "overall status", check(), OK),
        case("health.Check", f"the API service {label}", check(label), OK),
        case("health.Check", "'liveness'", check("liveness"), OK),
        case("health.Check", "unknown service", check("no.such.Service"), NF),
        case("health.Check", "unicode + NUL service name", check("ß\x00✓"), NF),
        case("health.Check", "undecodable bytes ff ff ff", check(raw=GARBAGE), IA),
        case("health.Check", "deadline 1 µs", check(timeout=1e-6), *LATE),
        case("health.List", "all statuses", lambda: server.unary(HEALTH + "List", health_list), OK),
        case("health.Watch", "unknown service", watch(health_pb2.HealthCheckRequest(service="no.such.Service")), OK),
        case("health.Watch", "undecodable bytes ff ff ff", watch(GARBAGE), IA),
        case("reflection", "list_services (v1alpha)", reflect(refl(list_services="")), OK),
        case("reflection", "list_services (v1)", reflect(refl(list_services=""), REFLECTION_V1), OK),
        case("reflection", "unknown symbol", reflect(refl(file_containing_symbol="no.such.Symbol")), OK),
        case("reflection", "file '../../etc/passwd'", reflect(refl(file_by_filename="../../etc/passwd")), OK),
        case("reflection", "undecodable bytes ff ff ff", reflect(GARBAGE), IA),
        case("unknown", f"method {api}Nope", lambda: server.unary(api + "Nope", b""), UNIMPL),
        case(
            "unknown",
            "service /funnel.v1.Nope/Recommend",
            lambda: server.unary("/funnel.v1.Nope/Recommend", b""),
            UNIMPL,
        ),
    ]


def gateway_cases(server: Server, stable: str, known: Sequence[int]) -> list[Case]:
    path = GATEWAY + "Recommend"

    def rec(what: str, request: Message | bytes, *expect: str, timeout: float = 10.0) -> Case:
        return Case(server.name, "Recommend", what, lambda: server.unary(path, request, timeout), expect)

    def other(method: str, method_path: str, what: str, request: Message | bytes, *expect: str) -> Case:
        return Case(server.name, method, what, lambda: server.unary(method_path, request), expect)

    def burst_of(request: Message) -> Callable[[], str]:
        return lambda: burst(server, path, request)

    def req(**fields: Any) -> gateway_pb2.RecommendRequest:
        return gateway_pb2.RecommendRequest(**{"user": user(), "k": 10, **fields})

    valid = gateway_pb2.RecommendRequest(user=user("1", known[:5]), k=10).SerializeToString()
    wrong_type = ranking_pb2.RankBatchRequest(release_id=stable, queries=[ranking_pb2.RankQuery(user=user())])
    bad_utf8 = field(1, field(1, b"\xc3\x28")) + varint(2 << 3) + varint(10)
    huge_ids = [2**62 + i for i in range(OVER_LIMIT // 9)]
    heavy = gateway_pb2.RecommendRequest(user=user("new", known[:MAX_HISTORY]), k=100, num_candidates=MAX_CANDIDATES)
    return [
        rec("control: user '1', k 10", req(), OK),
        rec("no user field", gateway_pb2.RecommendRequest(k=10), IA),
        rec("user_id ''", req(user=user("")), IA),
        rec("user_id of spaces", req(user=user("   ")), IA),
        rec(f"user_id of {MAX_USER_ID_CHARS} chars", req(user=user("u" * MAX_USER_ID_CHARS)), OK),
        rec(f"user_id of {MAX_USER_ID_CHARS} emoji (1 KiB)", req(user=user("🙂" * MAX_USER_ID_CHARS)), OK),
        rec(f"user_id of {MAX_USER_ID_CHARS + 1} chars", req(user=user("u" * (MAX_USER_ID_CHARS + 1))), IA),
        rec("user_id of 1 MiB", req(user=user("u" * (1 << 20))), IA),
        rec("user_id unicode 'ユーザー🙂'", req(user=user("ユーザー🙂")), OK),
        rec("user_id with RTL override", req(user=user("\u202e1")), OK),
        rec("user_id 'a\\x00b'", req(user=user("a\x00b")), OK),
        rec("user_id '\\x00'", req(user=user("\x00")), OK),
        rec("user_id invalid UTF-8 (raw bytes)", bad_utf8, IA),
        rec("k 0", req(k=0), IA),
        rec("k -1", req(k=-1), IA),
        rec("k 101", req(k=101), IA),
        rec("k 2**31-1", req(k=2**31 - 1), IA),
        rec("k -2**31", req(k=-(2**31)), IA),
        rec("k 100, num_candidates 1000", req(k=100, num_candidates=MAX_CANDIDATES), OK),
        rec("num_candidates -1", req(num_candidates=-1), IA),
        rec("num_candidates 5 < k 10", req(num_candidates=5), IA),
        rec("num_candidates 1001", req(num_candidates=MAX_CANDIDATES + 1), IA),
        rec("num_candidates 2**31-1", req(num_candidates=2**31 - 1), IA),
        rec("release_id '..'", req(release_id=".."), IA),
        rec("release_id '../channels'", req(release_id="../channels"), IA),
        rec("release_id 'a/b'", req(release_id="a/b"), IA),
        rec("release_id 'r\\x00'", req(release_id="r\x00"), IA),
        rec("release_id 'r1\\n'", req(release_id="r1\n"), IA),
        rec("release_id of 200 chars", req(release_id="r" * 200), IA),
        rec("release_id unknown", req(release_id="no-such-release"), NF),
        rec("release_id stable (pinned)", req(release_id=stable), OK),
        rec(f"history of {MAX_HISTORY} known items", req(user=user("new", known[:MAX_HISTORY])), OK),
        rec(f"history of {MAX_HISTORY + 1} items", req(user=user("new", range(1, MAX_HISTORY + 2))), IA),
        rec("history of 100,000 items", req(user=user("new", range(1, 100_001))), IA),
        rec("history of unknown ids only", req(user=user("new", [10**12, 10**15])), OK),
        rec("history ids -1, -2**63", req(user=user("new", [-1, -(2**63)])), OK),
        rec("history id 2**63-1", req(user=user("new", [2**63 - 1])), OK),
        rec("history id 2**64-1 on the wire (reads -1)", recommend_with_history_varint(varint(2**64 - 1)), OK),
        rec("history id 2**70 (11-byte varint)", recommend_with_history_varint(varint(2**70)), IA),
        rec("exclude_seen false", req(exclude_seen=False), OK),
        rec("user_id of 5 MiB (> 4 MiB)", req(user=user("u" * OVER_LIMIT)), TOO_BIG),
        rec(f"history of {len(huge_ids):,} ids (> 4 MiB)", req(user=user("new", huge_ids)), TOO_BIG),
        rec("deadline 1 µs", req(), *LATE, timeout=1e-6),
        rec("deadline 5 ms", req(), OK, DEADLINE, timeout=0.005),
        rec("deadline 30 ms", req(), OK, DEADLINE, timeout=0.03),
        Case(server.name, "Recommend", "64 concurrent calls, k 100, 1000 candidates", burst_of(heavy), (OK, TOO_BIG)),
        rec("undecodable bytes ff ff ff", GARBAGE, IA),
        rec("empty message (no bytes)", b"", IA),
        rec("first half of a valid request", valid[: len(valid) // 2], IA),
        rec("a RankBatchRequest's bytes", wrong_type, IA),
        other("GetStatus", GATEWAY + "GetStatus", "undecodable bytes ff ff ff", GARBAGE, IA),
        other("GetStatus", GATEWAY + "GetStatus", "unknown field 15", varint(15 << 3) + varint(1), OK),
        other("AdminService", ADMIN + "GetRolloutStatus", "GetRolloutStatus on the public address", b"", UNIMPL),
        other("RetrievalService", RETRIEVAL + "Retrieve", "Retrieve on the gateway", b"", UNIMPL),
    ]


def admin_cases(server: Server, stable: str) -> list[Case]:
    bearer = f"Bearer {ADMIN_TOKEN}"

    def call(
        method: str, what: str, request: Message | bytes, token: str | None, *expect: str, timeout: float = 30.0
    ) -> Case:
        return Case(server.name, method, what, lambda: server.unary(ADMIN + method, request, timeout, token), expect)

    status = admin_pb2.GetRolloutStatusRequest()
    start = admin_pb2.StartRolloutRequest

    def fraction(value: float) -> admin_pb2.SetCandidateFractionRequest:
        return admin_pb2.SetCandidateFractionRequest(fraction=value)

    valid_start = start(release_id=CANDIDATE, fraction=0.0).SerializeToString()
    nan, inf = math.nan, math.inf
    return [
        call("GetRolloutStatus", "no token", status, None, UNAUTH),
        call("GetRolloutStatus", "wrong token", status, "Bearer wrong", UNAUTH),
        call("GetRolloutStatus", "token without 'Bearer '", status, ADMIN_TOKEN, UNAUTH),
        call("GetRolloutStatus", "'bearer' in lower case", status, f"bearer {ADMIN_TOKEN}", UNAUTH),
        call("GetRolloutStatus", "token with a trailing space", status, bearer + " ", UNAUTH),
        call("GetRolloutStatus", "right token", status, bearer, OK),
        call("StartRollout", "valid candidate, no token", start(release_id=CANDIDATE, fraction=0.5), None, UNAUTH),
        call("Promote", "no token", admin_pb2.PromoteRequest(), None, UNAUTH),
        call("Rollback", "wrong token", admin_pb2.RollbackRequest(), "Bearer wrong", UNAUTH),
        call("SetCandidateFraction", "no token", fraction(1.0), None, UNAUTH),
        call("StartRollout", "undecodable bytes, no token", GARBAGE, None, UNAUTH, IA),
        call("StartRollout", "5 MiB release id, no token", start(release_id="r" * OVER_LIMIT), None, TOO_BIG, UNAUTH),
        call("StartRollout", "release_id ''", start(release_id="", fraction=0.1), bearer, IA),
        call("StartRollout", "release_id '..'", start(release_id="..", fraction=0.1), bearer, IA),
        call("StartRollout", "release_id '../../etc'", start(release_id="../../etc", fraction=0.1), bearer, IA),
        call("StartRollout", "release_id 'a/b'", start(release_id="a/b", fraction=0.1), bearer, IA),
        call("StartRollout", "release_id 'r\\x00'", start(release_id="r\x00", fraction=0.1), bearer, IA),
        call("StartRollout", "release_id unknown", start(release_id="no-such-release", fraction=0.1), bearer, NF),
        call("StartRollout", "the stable release", start(release_id=stable, fraction=0.1), bearer, FP),
        *[
            call("StartRollout", f"fraction {value}", start(release_id=CANDIDATE, fraction=value), bearer, IA)
            for value in (nan, inf, -inf, 2.0, -1.0, 1.0000001)
        ],
        call("StartRollout", "5 MiB release id", start(release_id="r" * OVER_LIMIT), bearer, TOO_BIG),
        call("StartRollout", "undecodable bytes", GARBAGE, bearer, IA),
        call("StartRollout", "first half of a valid request", valid_start[: len(valid_start) // 2], bearer, IA),
        call("StartRollout", "a RecommendRequest's bytes", gateway_pb2.RecommendRequest(user=user(), k=10), bearer, IA),
        # A change whose caller timed out may still have been made: look, and undo it before the next cases.
        call("StartRollout", "deadline 1 µs", start(release_id=CANDIDATE, fraction=0.0), bearer, *LATE, timeout=1e-6),
        Case(server.name, "GetRolloutStatus", "after the 1 µs StartRollout", lambda: rollout_now(server), (OK,)),
        Case(server.name, "Rollback", "whatever the 1 µs StartRollout left", lambda: rollback(server), (OK, FP)),
        call("SetCandidateFraction", "0.5 with no rollout", fraction(0.5), bearer, FP),
        call("SetCandidateFraction", "nan with no rollout", fraction(nan), bearer, IA),
        call("Promote", "no rollout", admin_pb2.PromoteRequest(), bearer, FP),
        call("Promote", "guard '../x', no rollout", admin_pb2.PromoteRequest(release_id="../x"), bearer, FP, IA),
        call("Rollback", "no rollout", admin_pb2.RollbackRequest(), bearer, FP),
        # A real rollout at fraction 0, then bad changes to it, then its rollback.
        call("StartRollout", f"valid: {CANDIDATE} at 0", start(release_id=CANDIDATE, fraction=0.0), bearer, OK),
        call("StartRollout", f"{CANDIDATE} again at 0.1", start(release_id=CANDIDATE, fraction=0.1), bearer, OK),
        *[
            call("SetCandidateFraction", f"{value} during a rollout", fraction(value), bearer, IA)
            for value in (nan, inf, -inf, 2.0, -1.0)
        ],
        call("Promote", "guard naming another release", admin_pb2.PromoteRequest(release_id=stable), bearer, FP),
        call("Promote", "guard '..'", admin_pb2.PromoteRequest(release_id=".."), bearer, FP, IA),
        call("Rollback", "during a rollout", admin_pb2.RollbackRequest(), bearer, OK),
        call("Rollback", "again, no rollout left", admin_pb2.RollbackRequest(), bearer, FP),
        call("GetRolloutStatus", "after the battery", status, bearer, OK),
    ]


def rollout_now(server: Server) -> str:
    """The rollout the admin API reports now, in words."""
    call = server.channel.unary_unary(ADMIN + "GetRolloutStatus", request_serializer=None, response_deserializer=None)
    raw = call(b"", timeout=10, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
    rollout = admin_pb2.GetRolloutStatusResponse.FromString(raw).rollout
    if not rollout.candidate_release_id:
        return "no candidate"
    return f"candidate {rollout.candidate_release_id} at {rollout.candidate_fraction:g}: the call took effect"


def rollback(server: Server) -> str:
    return server.unary(ADMIN + "Rollback", admin_pb2.RollbackRequest(), token=f"Bearer {ADMIN_TOKEN}")


def stage_cases(server: Server, stable: str, known: Sequence[int]) -> list[Case]:
    """Retrieve/RetrieveBatch or Rank/RankBatch, and GetStatus/Reload, of one stage."""
    s, retrieval = server.name, server.name == "retrieval"
    api = RETRIEVAL if retrieval else RANKING
    one, batch = ("Retrieve", "RetrieveBatch") if retrieval else ("Rank", "RankBatch")

    def case(method: str, what: str, request: Message | bytes, *expect: str, timeout: float = 10.0) -> Case:
        return Case(s, method, what, lambda: server.unary(api + method, request, timeout), expect)

    def single(release_id: str = stable, u: common_pb2.UserContext | None = None, **fields: Any) -> Message:
        if retrieval:
            fields.setdefault("num_candidates", 100)
            return retrieval_pb2.RetrieveRequest(release_id=release_id, user=u or user(), **fields)
        fields.setdefault("item_ids", list(known[:20]))
        return ranking_pb2.RankRequest(release_id=release_id, user=u or user(), **fields)

    def query(u: common_pb2.UserContext | None = None, **fields: Any) -> Message:
        if retrieval:
            return retrieval_pb2.RetrieveQuery(user=u or user(), num_candidates=fields.get("num_candidates", 100))
        return ranking_pb2.RankQuery(user=u or user(), item_ids=fields.get("item_ids", list(known[:20])))

    def batched(queries: Sequence[Any], release_id: str = stable) -> Message:
        make = retrieval_pb2.RetrieveBatchRequest if retrieval else ranking_pb2.RankBatchRequest
        return make(release_id=release_id, queries=queries)

    valid = single(u=user("1", known[:5])).SerializeToString()
    heavy = (
        single(u=user("new", known[:MAX_HISTORY]), num_candidates=MAX_CANDIDATES)
        if retrieval
        else single(u=user("new", known[:MAX_HISTORY]), item_ids=list(known[:MAX_CANDIDATES]))
    )
    other_type = (
        ranking_pb2.RankRequest(release_id=stable, user=user(), item_ids=[1, 2])
        if retrieval
        else retrieval_pb2.RetrieveRequest(release_id=stable, user=user(), num_candidates=10)
    )
    cases = [
        case(one, "control", single(), OK),
        case(one, "release_id ''", single(""), IA),
        case(one, "release_id '..'", single(".."), IA),
        case(one, "release_id 'a/b'", single("a/b"), IA),
        case(one, "release_id 'r\\x00'", single("r\x00"), IA),
        case(one, "release_id unknown", single("no-such-release"), FP, NF),
        case(one, "user_id ''", single(u=user("")), IA),
        case(one, f"user_id of {MAX_USER_ID_CHARS + 1} chars", single(u=user("u" * (MAX_USER_ID_CHARS + 1))), IA),
        case(one, "user_id unicode + NUL", single(u=user("ユ\x00🙂")), OK),
        case(one, f"history of {MAX_HISTORY + 1} items", single(u=user("new", range(1, MAX_HISTORY + 2))), IA),
        case(one, "history of unknown and negative ids", single(u=user("new", [-1, 10**15, 2**63 - 1])), OK),
        case(one, "history id 2**70 (11-byte varint)", field(2, field(1, b"1") + varint(2 << 3) + varint(2**70)), IA),
        case(one, "user of 5 MiB (> 4 MiB)", single(u=user("u" * OVER_LIMIT)), TOO_BIG),
        case(one, "deadline 1 µs", single(), *LATE, timeout=1e-6),
        case(one, "undecodable bytes ff ff ff", GARBAGE, IA),
        case(one, "empty message (no bytes)", b"", IA),
        case(one, "first half of a valid request", valid[: len(valid) // 2], IA),
        case(one, f"a {type(other_type).__name__}'s bytes", other_type, IA, OK),
        Case(s, one, "64 concurrent calls", lambda: burst(server, api + one, heavy), (OK, TOO_BIG)),
        case(batch, "control: 2 queries", batched([query(), query(user("2"))]), OK),
        case(batch, "no queries", batched([]), IA),
        case(batch, f"{MAX_BATCH} queries", batched([query(user(str(i))) for i in range(MAX_BATCH)]), OK),
        case(batch, f"{MAX_BATCH + 1} queries", batched([query(user(str(i))) for i in range(MAX_BATCH + 1)]), IA),
        case(batch, "10,000 queries", batched([query(user(str(i))) for i in range(10_000)]), IA),
        case(batch, "one query with user_id ''", batched([query(), query(user(""))]), IA),
        case(batch, "release_id ''", batched([query()], ""), IA),
        case(batch, "release_id '../x'", batched([query()], "../x"), IA),
        case(batch, "release_id unknown", batched([query()], "no-such-release"), FP, NF),
        case(batch, "undecodable bytes ff ff ff", GARBAGE, IA),
        case("GetStatus", "undecodable bytes ff ff ff", GARBAGE, IA),
        case("GetStatus", "deadline 1 µs", common_pb2.GetStatusRequest(), *LATE, timeout=1e-6),
        case("Reload", "undecodable bytes ff ff ff", GARBAGE, IA),
        case("Reload", "unknown field 15", varint(15 << 3) + varint(1), OK),
        case("Reload", "a 2 MiB unknown field", field(15, b"x" * (2 << 20)), OK),
    ]
    if retrieval:
        cases += [
            case(one, "num_candidates 0", single(num_candidates=0), IA),
            case(one, "num_candidates -1", single(num_candidates=-1), IA),
            case(one, f"num_candidates {MAX_CANDIDATES}", single(num_candidates=MAX_CANDIDATES), OK),
            case(one, f"num_candidates {MAX_CANDIDATES + 1}", single(num_candidates=MAX_CANDIDATES + 1), IA),
            case(one, "num_candidates 2**31-1", single(num_candidates=2**31 - 1), IA),
            case(one, "num_candidates -2**31", single(num_candidates=-(2**31)), IA),
            case(batch, "one query with num_candidates 0", batched([query(), query(num_candidates=0)]), IA),
        ]
    else:
        unknown = [10**12, 1, 2]
        cases += [
            case(one, "no item_ids", single(item_ids=[]), IA),
            case(one, f"{MAX_CANDIDATES + 1} item_ids", single(item_ids=[int(known[0])] * (MAX_CANDIDATES + 1)), IA),
            case(one, "item_ids with an unknown id", single(item_ids=unknown), IA),
            case(one, "item_ids -1 and -2**63", single(item_ids=[-1, -(2**63)]), IA),
            case(one, "item_id 2**63-1", single(item_ids=[2**63 - 1]), IA),
            case(one, "item_ids repeated", single(item_ids=[int(known[0])] * 5), OK),
            case(
                one,
                "item_ids 2**64-1 on the wire (reads -1)",
                field(1, stable.encode()) + field(2, field(1, b"1")) + varint(3 << 3) + varint(2**64 - 1),
                IA,
            ),
            case(batch, "one query without item_ids", batched([query(), query(item_ids=[])]), IA),
            case(batch, "one query with an unknown item", batched([query(), query(item_ids=unknown)]), IA),
        ]
    return cases


# ------------------------------------------------------------------------------------------------------- run


def run_battery(services: dict[str, ServiceProcess], store: ArtifactStore) -> list[Result]:
    stable = stable_id(store)
    known = np.load(store.release_dir(stable) / "index" / "item_ids.npy").astype(int).tolist()[:MAX_HISTORY]
    servers = {
        "gateway": Server("gateway", services["gateway"].address),
        "admin": Server("admin", services["gateway"].admin_address),
        "retrieval": Server("retrieval", services["retrieval"].address),
        "ranking": Server("ranking", services["ranking"].address),
    }
    labels = {
        "gateway": (GATEWAY, "funnel.v1.GatewayService"),
        "admin": (ADMIN, "funnel.v1.AdminService"),
        "retrieval": (RETRIEVAL, "funnel.v1.RetrievalService"),
        "ranking": (RANKING, "funnel.v1.RankingService"),
    }
    cases = [
        *gateway_cases(servers["gateway"], stable, known),
        *stage_cases(servers["retrieval"], stable, known),
        *stage_cases(servers["ranking"], stable, known),
        *admin_cases(servers["admin"], stable),
    ]
    for name, server in servers.items():
        cases += common_cases(server, *labels[name])
    try:
        return [run_case(case) for case in cases]
    finally:
        for server in servers.values():
            server.close()


def after_check(services: dict[str, ServiceProcess]) -> dict[str, Any]:
    """Whether every process is still up and SERVING, and whether a plain Recommend is still answered in full."""
    alive = {name: s.process.poll() is None for name, s in services.items()}
    health = {name: health_status(s.address) for name, s in services.items()}
    gateway = Server("gateway", services["gateway"].address)
    try:
        control = gateway.unary(GATEWAY + "Recommend", gateway_pb2.RecommendRequest(user=user(), k=10))
    except grpc.RpcError as exc:
        control = f"{exc.code().name}: {exc.details()}"
    finally:
        gateway.close()
    return {"alive": alive, "health": health, "control_recommend": control}


def print_tables(results: Sequence[Result]) -> None:
    for service in ("gateway", "admin", "retrieval", "ranking"):
        rows = [
            (f"{r.method}: {r.input}", f"**{r.status}**" if r.defect or r.unexpected else r.status, r.details)
            for r in results
            if r.service == service
        ]
        title = "gateway AdminService (admin address)" if service == "admin" else service
        print(f"\n### {title} ({len(rows)} cases)\n")
        print(markdown_table(["case", "status", "message"], rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    started = time.monotonic()
    with release_root(args.artifact_root) as source, tempfile.TemporaryDirectory(prefix="funnel-attack-") as tmp:
        store = copy_root(source, Path(tmp) / "root")
        clone_release(store, stable_id(store), CANDIDATE)
        with running_stack(store.root, Path(tmp) / "logs") as services:
            logs = [s.log_path for s in services.values()]
            battery_started = time.monotonic()
            results = run_battery(services, store)
            battery_seconds = time.monotonic() - battery_started
            after = after_check(services)
        count, first = tracebacks(logs)
        undecodable = sum(p.read_text(errors="replace").count("refused undecodable request") for p in logs)
    defects = [asdict(r) for r in results if r.defect]
    unexpected = [asdict(r) for r in results if r.unexpected and not r.defect]  # worth a look, not failures
    crashed = [name for name, up in after["alive"].items() if not up]
    report = {
        "cases": [asdict(r) for r in results],
        "defects": defects,
        "unexpected": unexpected,
        "tracebacks": count,
        "first_traceback": first,
        "undecodable_warnings_logged": undecodable,
        "after": after,
        "battery_seconds": round(battery_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    write_report(args.out / "attack.json", report)
    print_tables(results)
    print(
        f"\n{len(results)} cases in {battery_seconds:.1f} s; {len(defects)} INTERNAL/UNKNOWN; "
        f"{len(unexpected)} other statuses than expected; {count} tracebacks in the logs; "
        f"{undecodable} 'refused undecodable request' warnings; after the battery: {after}"
    )
    for r in [*defects, *unexpected]:
        print(
            f"- {r['service']} {r['method']} [{r['input']}]: {r['status']} (expected {r['expected']}): {r['details']}"
        )
    if first:
        print(f"\nfirst traceback:\n{first}")
    return 1 if defects or count or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
