"""The whole path with real processes: retrieval, ranking and gateway servers on loopback, called over gRPC.

The module's stack serves an artifact root of the module's own, prepared before the services start and never
changed after; a test that changes what is served starts a stack on an artifact root of its own.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from funnel.cli import stack
from funnel.data.loaders import load_dataset
from funnel.release.files import Histories, read_catalog, read_seen, write_seen
from funnel.release.store import ArtifactStore
from funnel.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    ranking_pb2_grpc,
    retrieval_pb2_grpc,
)
from tests.helpers import CACHE_DIR, RELEASE, ROOT, TEST_USERS, clone_release, wait_for

FAST_POLL = {"FUNNEL_POLL_INTERVAL": "0.5"}
PINNED = "test-r2"  # a second release every service holds, for requests that pin it; it gets no traffic otherwise


def _user_1_rated_everything_else(directory: Path) -> None:
    """Rewrite a release's seen items so that user 1 has rated every catalog item they had not, and none they had:
    excluding what they rated, this release can only offer user 1 what the original can never offer them."""
    seen = read_seen(directory)
    rated = set(seen.get("1").tolist())
    users: list[str] = []
    items: list[int] = []
    for user in seen.users.tolist():
        theirs = [i for i in sorted(read_catalog(directory)) if i not in rated] if user == "1" else seen.get(user)
        users += [user] * len(theirs)
        items += list(theirs)
    write_seen(directory, Histories(np.array(users), np.array(items, dtype=np.int64)))


@pytest.fixture(scope="module")
def served_root(module_artifact_root: Path) -> Path:
    """The module stack's root: test-r1 stable, and test-r2 (test-r1 with user 1's seen items inverted) as a candidate
    at fraction 0, so every service loads it but only requests pinning it reach it."""
    store = ArtifactStore(module_artifact_root)
    clone_release(store, RELEASE, PINNED, _user_1_rated_everything_else)
    store.set_candidate(PINNED, 0.0)
    return module_artifact_root


@contextlib.contextmanager
def running_stack(root: Path, log_dir: Path) -> Iterator[dict[str, stack.ServiceProcess]]:
    running = stack.start_stack(root, log_dir, extra_env=FAST_POLL)
    try:
        yield running
    finally:
        codes = stack.stop_stack(running)
    assert codes == {"gateway": 0, "ranking": 0, "retrieval": 0}, "every service drains and exits 0 on SIGTERM"


@pytest.fixture(scope="module")
def services(served_root: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_stack(served_root, tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(services):
    with grpc.insecure_channel(services["gateway"].address) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def recommend(
    stub, user_id: str = "1", k: int = 10, history: list[int] = (), **kwargs
) -> gateway_pb2.RecommendResponse:
    request = gateway_pb2.RecommendRequest(
        user=common_pb2.UserContext(user_id=user_id, history_item_ids=history), k=k, **kwargs
    )
    return stub.Recommend(request, timeout=15)


def _in_state_everywhere(services, release_id: str, state: int) -> bool:
    stubs = {
        "retrieval": retrieval_pb2_grpc.RetrievalServiceStub,
        "ranking": ranking_pb2_grpc.RankingServiceStub,
        "gateway": gateway_pb2_grpc.GatewayServiceStub,
    }
    for name, stub_class in stubs.items():
        with grpc.insecure_channel(services[name].address) as channel:
            status = stub_class(channel).GetStatus(common_pb2.GetStatusRequest(), timeout=5)
        if not any(r.release_id == release_id and r.state == state for r in status.releases):
            return False
    return True


def test_recommendations_are_ranked_unseen_titled_and_from_one_release(gateway, served_root) -> None:
    response = recommend(gateway, "1", 10)
    seen = set(read_seen(ArtifactStore(served_root).release_dir(RELEASE)).get("1").tolist())
    ids = [item.item_id for item in response.items]
    scores = [item.score for item in response.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert scores == sorted(scores, reverse=True)
    assert not seen & set(ids)
    assert all(item.title for item in response.items)
    assert response.release_id == response.retrieval_release_id == response.ranking_release_id == RELEASE
    assert not response.degraded and not response.cold_start
    assert response.timings.total_ms >= response.timings.retrieval_ms > 0 and response.timings.ranking_ms > 0
    again = recommend(gateway, "1", 10)
    assert [(i.item_id, i.score) for i in again.items] == [(i.item_id, i.score) for i in response.items]


def test_no_user_is_recommended_an_item_they_rated_anywhere_in_the_data(gateway) -> None:
    """Every user the trainer was given (the MovieLens 100K users of the test release), every rating of theirs,
    read from the dataset itself: none comes back, though the trainer held some out to evaluate."""
    data = load_dataset("movielens-100k", CACHE_DIR).subset_users(TEST_USERS).interactions
    rated: dict[str, set[int]] = {}
    for user, item in zip(data.user_ids.tolist(), data.item_ids.tolist()):
        rated.setdefault(user, set()).add(item)
    assert len(rated) == TEST_USERS
    for user, items in rated.items():
        response = recommend(gateway, user, 20)
        assert len(response.items) == 20 and not response.cold_start and not response.degraded
        assert not items & {i.item_id for i in response.items}, user


def test_an_unknown_id_with_a_history_gets_that_users_personal_ranking(gateway, served_root) -> None:
    history = read_seen(ArtifactStore(served_root).release_dir(RELEASE)).get("1").tolist()
    known = recommend(gateway, "1", 10)
    stranger = recommend(gateway, "somebody-new", 10, history)
    assert not stranger.cold_start and stranger.ranking_release_id == RELEASE
    assert not set(history) & {i.item_id for i in stranger.items}
    # The same history gives the same candidates; the ranker reads it too, so most of the top 10 agree.
    assert len({i.item_id for i in known.items} & {i.item_id for i in stranger.items}) >= 6
    unknown_items = recommend(gateway, "somebody-new", 5, [999991, 999992])
    assert unknown_items.cold_start and len(unknown_items.items) == 5


def test_include_seen_offers_the_users_own_items(gateway, served_root) -> None:
    seen = set(read_seen(ArtifactStore(served_root).release_dir(RELEASE)).get("1").tolist())
    response = recommend(gateway, "1", 50, exclude_seen=False, num_candidates=200)
    assert response.release_id == RELEASE and seen & {i.item_id for i in response.items}


def test_a_pinned_release_answers_in_every_stage(services, gateway, served_root) -> None:
    wait_for(
        lambda: _in_state_everywhere(services, PINNED, common_pb2.RELEASE_STATE_READY),
        what=f"{PINNED} ready on every service",
    )
    rated_in_r1 = set(read_seen(ArtifactStore(served_root).release_dir(RELEASE)).get("1").tolist())
    default = recommend(gateway, "1", 10)
    pinned = recommend(gateway, "1", 10, release_id=PINNED)
    assert default.release_id == default.retrieval_release_id == default.ranking_release_id == RELEASE
    assert pinned.release_id == pinned.retrieval_release_id == pinned.ranking_release_id == PINNED
    assert not default.degraded and not pinned.degraded and not pinned.cold_start
    default_ids, pinned_ids = {i.item_id for i in default.items}, {i.item_id for i in pinned.items}
    # test-r2's user 1 has rated exactly what test-r1's has not: each release offers only what the other excludes.
    assert len(pinned_ids) == 10 and pinned_ids <= rated_in_r1 and not default_ids & rated_in_r1
    pinned_stable = recommend(gateway, "1", 10, release_id=RELEASE)  # pinning the stable one changes nothing
    assert [(i.item_id, i.score) for i in pinned_stable.items] == [(i.item_id, i.score) for i in default.items]


def test_unknown_user_gets_a_cold_start_answer(gateway) -> None:
    response = recommend(gateway, "somebody-new", 5)
    assert response.cold_start and len(response.items) == 5 and not response.degraded
    assert all(item.title for item in response.items)


@pytest.mark.parametrize(
    "kwargs, code, message",
    [
        ({"k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 100, got 0"),
        ({"k": 101}, grpc.StatusCode.INVALID_ARGUMENT, "got 101"),
        ({"user_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "user_id is required"),
        ({"user_id": "x" * 1000}, grpc.StatusCode.INVALID_ARGUMENT, "at most 256 characters"),
        ({"release_id": "no-such-release"}, grpc.StatusCode.NOT_FOUND, "does not exist"),
        ({"release_id": "../../etc"}, grpc.StatusCode.INVALID_ARGUMENT, "release id must match"),
        ({"user_id": "x" * (5 * 1024 * 1024)}, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ],
)
def test_bad_input_gets_a_clear_status(gateway, kwargs, code, message) -> None:
    with pytest.raises(grpc.RpcError) as info:
        recommend(gateway, **{"user_id": "1", "k": 10, **kwargs})
    assert info.value.code() == code
    assert message in info.value.details()


@pytest.mark.parametrize("breakage", ["checksum", "no-manifest"])
def test_corrupt_or_partial_release_is_refused_while_current_keeps_serving(
    artifact_root: Path, tmp_path: Path, breakage: str
) -> None:
    store = ArtifactStore(artifact_root)
    bad = f"test-bad-{breakage}"
    clone_release(store, RELEASE, bad)
    if breakage == "checksum":
        weights = next((store.releases_dir / bad / "ranker" / "variables").glob("*.data-*"))
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (store.releases_dir / bad / "manifest.json").unlink()  # as if a copy stopped half way
    with running_stack(artifact_root, tmp_path / "logs") as services:
        (store.channels_dir / "stable").write_text(bad + "\n")  # an operator points stable at it
        wait_for(
            lambda: _in_state_everywhere(services, bad, common_pb2.RELEASE_STATE_FAILED),
            what=f"{bad} reported failed by every service",
        )
        with grpc.insecure_channel(services["gateway"].address) as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            for _ in range(5):
                response = recommend(gateway, "1", 10)
                assert response.release_id == response.retrieval_release_id == response.ranking_release_id == RELEASE
                assert not response.degraded
            with pytest.raises(grpc.RpcError) as info:
                recommend(gateway, "1", 10, release_id=bad)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_cli_prints_a_table(services) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "funnel.cli", "recommend", "1", "-k", "3", "--gateway", services["gateway"].address],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    lines = out.splitlines()
    assert lines[0] == f"Top 3 for user 1 — release {RELEASE}"
    assert lines[1].split() == ["rank", "item", "title", "year", "score", "rating", "retrieval"]
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"]


def test_a_service_is_not_serving_until_a_release_is_loaded(trained_root: Path, tmp_path: Path) -> None:
    empty_root = tmp_path / "empty-root"
    service = stack.start_service("retrieval", f"127.0.0.1:{stack.free_port()}", empty_root, tmp_path, FAST_POLL)
    try:
        wait_for(lambda: stack.health_status(service.address) != "UNREACHABLE", what="retrieval to listen")
        assert stack.health_status(service.address) == "NOT_SERVING"
        store = ArtifactStore(empty_root)
        shutil.copytree(ArtifactStore(trained_root).release_dir(RELEASE), store.releases_dir / RELEASE)
        store.set_stable(RELEASE)
        wait_for(lambda: stack.health_status(service.address) == "SERVING", what="retrieval to serve")
    finally:
        assert stack.stop_process(service.process) == 0
