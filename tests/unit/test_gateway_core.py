"""Gateway core with fake stages: one release per request, ordering, degradation, cold start, validation."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import pytest

from funnel.errors import FailedPrecondition, FunnelError, InvalidArgument, NotFound, ReleaseError, Unavailable
from funnel.release.scoring import blend, retrieval_weight
from funnel.release.store import ArtifactStore, RolloutState
from funnel.serving.manager import ReleaseManager
from gateway.admin import Admin
from gateway.clients import _call, resolve_target
from gateway.core import (
    Gateway,
    GatewayRelease,
    Router,
    StageCandidates,
    StageReadiness,
    StageScores,
    StageUnavailable,
)
from tests.helpers import publish_release


class FakeRetrieval:
    def __init__(
        self, fail: bool = False, release_override: str = "", cold: bool = False, not_held: tuple[str, ...] = ()
    ) -> None:
        self.fail, self.release_override, self.cold, self.not_held = fail, release_override, cold, not_held
        self.calls: list[tuple] = []

    def retrieve(self, release_id, user_id, num_candidates, exclude_seen, timeout, history) -> StageCandidates:
        self.calls.append((release_id, user_id, num_candidates, exclude_seen, timeout, tuple(history)))
        if release_id in self.not_held:
            raise FailedPrecondition(f"retrieval: release {release_id} is not loaded")
        if self.fail:
            raise StageUnavailable("retrieval", "DEADLINE_EXCEEDED")
        ids = np.array([2, 3, 4, 5], dtype=np.int64)
        return StageCandidates(
            self.release_override or release_id, ids, np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32), self.cold
        )


class FakeRanking:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple] = []

    def rank(self, release_id, user_id, item_ids, timeout, history):
        self.calls.append((release_id, user_id, tuple(item_ids), timeout, tuple(history)))
        if self.fail:
            raise StageUnavailable("ranking", "UNAVAILABLE")
        # score = item id (reverses retrieval order); predicted rating = item id / 2
        return StageScores(release_id, item_ids.astype(np.float32), item_ids.astype(np.float32) / 2)


@pytest.fixture()
def releases(tmp_path: Path) -> ReleaseManager[GatewayRelease]:
    store = ArtifactStore(tmp_path)
    publish_release(store, "r1")
    publish_release(store, "r2")
    store.set_stable("r1")
    manager = ReleaseManager(store, GatewayRelease, name="gateway")
    manager.sync()
    return manager


def gateway(releases, retrieval=None, ranking=None) -> Gateway:
    return Gateway(Router(releases), retrieval or FakeRetrieval(), ranking or FakeRanking())


def test_ranks_retrieved_items_and_attaches_titles(releases) -> None:
    retrieval, ranking = FakeRetrieval(), FakeRanking()
    result = gateway(releases, retrieval, ranking).recommend("u1", 3)
    assert [i.item_id for i in result.items] == [5, 4, 3]
    assert [i.title for i in result.items] == ["Film 5", "Film 4", "Film 3"]
    assert [i.retrieval_score for i in result.items] == pytest.approx([0.6, 0.7, 0.8])
    assert [i.predicted_rating for i in result.items] == [2.5, 2.0, 1.5]
    assert result.release_id == result.retrieval_release_id == result.ranking_release_id == "r1"
    assert not result.degraded_reasons and not result.cold_start
    assert retrieval.calls[0][:4] == ("r1", "u1", 100, True)
    assert ranking.calls[0][:3] == ("r1", "u1", (2, 3, 4, 5))


def test_a_release_with_a_retrieval_weight_orders_by_the_blend_of_both_scores(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    publish_release(store, "blend", {"retrieval_weight": 2.0})
    store.set_stable("blend")
    manager = ReleaseManager(store, GatewayRelease, name="gateway")
    manager.sync()
    # Retrieval scores 0.9 .. 0.6 for items 2 .. 5, ranker scores 2 .. 5: standardized, the retrieval order counts
    # twice as much, so it wins; the score is the blend, the predicted rating still the ranker's.
    result = gateway(manager).recommend("u1", 4)
    assert [i.item_id for i in result.items] == [2, 3, 4, 5]
    z = (np.arange(2, 6) - 3.5) / np.std(np.arange(2, 6))
    assert [i.score for i in result.items] == pytest.approx(list(z + 2 * -z), abs=1e-5)  # ranker z, retrieval -z
    assert [i.predicted_rating for i in result.items] == [1.0, 1.5, 2.0, 2.5]


def test_blend_standardizes_both_scores_and_weight_zero_keeps_the_rankers() -> None:
    ranker, retrieval = np.array([1.0, 3.0, 2.0]), np.array([10.0, 0.0, 5.0])
    np.testing.assert_array_equal(blend(ranker, retrieval, 0.0), ranker.astype(np.float32))
    z = np.array([-1.0, 1.0, 0.0]) * np.sqrt(1.5)
    np.testing.assert_allclose(blend(ranker, retrieval, 0.5), z + 0.5 * -z, rtol=1e-6)
    np.testing.assert_array_equal(blend(np.array([4.0]), np.array([1.0]), 1.0), [0.0])  # one candidate: no spread
    np.testing.assert_array_equal(blend(np.full(5, 2.0), np.full(5, 7.0), 1.0), np.zeros(5))  # all equal: zeros
    scores = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 100))
    by_numpy = [(s - s.mean()) / s.std() for s in scores]
    np.testing.assert_allclose(blend(scores[0], scores[1], 0.3), by_numpy[0] + 0.3 * by_numpy[1], rtol=1e-5)
    assert retrieval_weight({"retrieval_weight": 1.5}) == 1.5
    assert (
        retrieval_weight({})
        == retrieval_weight({"retrieval_weight": "x"})
        == retrieval_weight({"retrieval_weight": -1})
        == 0.0
    )


def test_ranking_down_serves_retrieval_order_marked_degraded(releases) -> None:
    result = gateway(releases, ranking=FakeRanking(fail=True)).recommend("u1", 3)
    assert [i.item_id for i in result.items] == [2, 3, 4]
    assert result.ranking_release_id == "" and result.degraded_reasons == ["ranking unavailable: UNAVAILABLE"]


def test_retrieval_down_serves_popularity_without_seen_items(releases) -> None:
    ranking = FakeRanking()
    result = gateway(releases, FakeRetrieval(fail=True), ranking).recommend("u1", 3)
    assert [i.item_id for i in result.items] == [2, 3, 4]  # item 1 is most popular but u1 has seen it
    assert result.degraded_reasons and ranking.calls == []
    assert gateway(releases, FakeRetrieval(fail=True)).recommend("u1", 1, exclude_seen=False).items[0].item_id == 1


def test_request_history_reaches_both_stages_and_the_popularity_fallback(releases) -> None:
    retrieval, ranking = FakeRetrieval(), FakeRanking()
    gateway(releases, retrieval, ranking).recommend("stranger", 2, history=[2, 3])
    assert retrieval.calls[0][5] == (2, 3) and ranking.calls[0][4] == (2, 3)
    gateway(releases, retrieval, ranking).recommend("u1", 2)
    assert retrieval.calls[1][5] == ranking.calls[1][4] == ()  # the stages read the stored history
    fallback = gateway(releases, FakeRetrieval(fail=True)).recommend("stranger", 2, history=[1, 2])
    assert [i.item_id for i in fallback.items] == [3, 4] and not fallback.cold_start
    unknown = gateway(releases, FakeRetrieval(fail=True)).recommend("stranger", 2, history=[98, 99])
    assert [i.item_id for i in unknown.items] == [1, 2] and unknown.cold_start  # no item of the catalog
    with pytest.raises(InvalidArgument, match="at most 1000 items, got 1001"):
        gateway(releases).recommend("u1", 2, history=list(range(1001)))


def test_cold_start_skips_ranking(releases) -> None:
    ranking = FakeRanking()
    result = gateway(releases, FakeRetrieval(cold=True), ranking).recommend("stranger", 2)
    assert result.cold_start and not result.degraded_reasons and ranking.calls == []
    assert [i.item_id for i in result.items] == [2, 3]


def test_pinned_release_is_used_on_every_stage(releases) -> None:
    releases.store.set_candidate("r2", 0.5)
    releases.sync()
    retrieval, ranking = FakeRetrieval(), FakeRanking()
    result = gateway(releases, retrieval, ranking).recommend("u1", 2, release_id="r2")
    assert result.release_id == "r2" and retrieval.calls[0][0] == "r2" and ranking.calls[0][0] == "r2"


def test_pinned_release_errors(releases) -> None:
    with pytest.raises(NotFound):
        gateway(releases).recommend("u1", 2, release_id="nope")
    with pytest.raises(FailedPrecondition):
        gateway(releases).recommend("u1", 2, release_id="r2")  # exists, not loaded by the gateway


def test_a_stage_answering_for_another_release_is_an_error(releases) -> None:
    with pytest.raises(FunnelError, match="answered for release 'r2'"):
        gateway(releases, FakeRetrieval(release_override="r2")).recommend("u1", 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"user_id": "", "k": 3}, "user_id is required"),
        ({"user_id": "u1", "k": 0}, "k must be between 1 and 100, got 0"),
        ({"user_id": "u1", "k": 101}, "k must be between 1 and 100, got 101"),
        ({"user_id": "u1", "k": 3, "num_candidates": 5000}, "num_candidates must be between 1 and 1000"),
        ({"user_id": "u1", "k": 30, "num_candidates": 20}, "at least k"),
    ],
)
def test_bad_input_is_invalid_argument(releases, kwargs, message) -> None:
    user_id, k = kwargs.pop("user_id"), kwargs.pop("k")
    with pytest.raises(InvalidArgument, match=message):
        gateway(releases).recommend(user_id, k, **kwargs)


def test_deadline_is_capped_per_stage(releases) -> None:
    retrieval = FakeRetrieval()
    gateway(releases, retrieval).recommend("u1", 2, time_remaining=0.3)
    assert 0 < retrieval.calls[0][4] <= 0.3
    gateway(releases, retrieval).recommend("u1", 2, time_remaining=30)
    assert retrieval.calls[1][4] == 1.0


def test_no_stable_release_is_unavailable(tmp_path: Path) -> None:
    manager = ReleaseManager(ArtifactStore(tmp_path), GatewayRelease, name="gateway")
    manager.sync()
    with pytest.raises(Unavailable):
        gateway(manager).recommend("u1", 2)


@pytest.fixture()
def rollout(releases):
    """Stable r1 and candidate r2 loaded; both replicas of both stages report both ready."""
    releases.store.set_candidate("r2", 0.3)
    releases.sync()
    readiness = StageReadiness(["retrieval", "ranking"])
    for stage in ("retrieval", "ranking"):
        readiness.update(stage, {f"{stage}-a:1": ["r1", "r2"], f"{stage}-b:1": ["r1", "r2"]})
    return releases, readiness


def served_by(router: Router, users) -> dict[str, str]:
    return {u: router.choose("", u)[0].release_id for u in users}


def test_candidate_gets_a_sticky_fraction_of_users(rollout) -> None:
    releases, readiness = rollout
    router = Router(releases, readiness)
    users = [f"user-{i}" for i in range(4000)]
    first = served_by(router, users)
    share = sum(r == "r2" for r in first.values()) / len(users)
    assert abs(share - 0.3) < 0.03
    assert served_by(router, users) == first  # sticky
    releases.store.set_candidate("r2", 0.6)
    releases.refresh()
    widened = served_by(router, users)
    assert all(widened[u] == "r2" for u, r in first.items() if r == "r2")  # nobody flips back while widening
    assert abs(sum(r == "r2" for r in widened.values()) / len(users) - 0.6) < 0.03
    assert all(len(router.choose("", u)) == 2 for u in users[:50])  # the other release follows as fallback


def test_candidate_gets_no_traffic_until_every_known_replica_of_every_stage_has_it(rollout) -> None:
    releases, readiness = rollout
    users = [f"u{i}" for i in range(500)]
    readiness.update("ranking", {"ranking-a:1": ["r1", "r2"], "ranking-b:1": ["r1"]})  # one replica still loading
    assert set(served_by(Router(releases, readiness), users).values()) == {"r1"}
    assert readiness.missing("r2") == ["ranking replica ranking-b:1"]
    readiness.update("ranking", {"ranking-a:1": ["r1", "r2"], "ranking-b:1": None})  # silent: keeps its last word
    assert readiness.missing("r2") == ["ranking replica ranking-b:1"]
    readiness.update("ranking", {"ranking-a:1": ["r1", "r2"]})  # scaled down: its address no longer resolves
    assert readiness.missing("r2") == [] and "r2" in served_by(Router(releases, readiness), users).values()
    readiness.update("ranking", {"ranking-a:1": ["r1", "r2"], "ranking-c:1": None})  # a new one, not serving yet
    assert readiness.missing("r2") == []
    readiness.update("ranking", {})
    assert readiness.missing("r2") == ["ranking (no replica answers)"]


def test_candidate_users_stay_on_the_candidate_while_a_stage_is_down(rollout) -> None:
    releases, readiness = rollout
    users = [f"u{i}" for i in range(500)]
    readiness.update("ranking", {"ranking-a:1": ["r1", "r2"]})
    before = served_by(Router(releases, readiness), users)
    assert "r2" in before.values()
    readiness.update("ranking", {"ranking-a:1": None})  # killed: no answer
    assert served_by(Router(releases, readiness), users) == before
    readiness.update("ranking", {"ranking-a:1": None})  # restarted, loading (not serving yet)
    assert served_by(Router(releases, readiness), users) == before
    readiness.update("ranking", {"ranking-a:1": ["r1"]})  # serving again without the candidate: it pauses
    assert set(served_by(Router(releases, readiness), users).values()) == {"r1"}


def test_a_stage_missing_the_chosen_release_reruns_the_whole_request_on_the_other(rollout) -> None:
    releases, readiness = rollout
    releases.store.set_candidate("r2", 1.0)
    releases.refresh()
    retrieval, ranking = FakeRetrieval(not_held=("r2",)), FakeRanking()
    result = Gateway(Router(releases, readiness), retrieval, ranking).recommend("u1", 2)
    assert result.release_id == result.retrieval_release_id == result.ranking_release_id == "r1"
    assert [c[0] for c in retrieval.calls] == ["r2", "r1"] and [c[0] for c in ranking.calls] == ["r1"]
    with pytest.raises(FailedPrecondition):  # a pinned release never falls back
        Gateway(Router(releases, readiness), retrieval, ranking).recommend("u1", 2, release_id="r2")


class FakeReplicas:
    def __init__(self) -> None:
        self.reloads = 0

    def reload(self) -> dict:
        self.reloads += 1
        return {}


class FakeStage:
    def __init__(self, stage: str) -> None:
        self.stage, self.target, self.replicas = stage, "", FakeReplicas()


def test_admin_rollout_lifecycle(rollout) -> None:
    releases, readiness = rollout
    store = releases.store
    store.clear_candidate()
    stages = [FakeStage("retrieval"), FakeStage("ranking")]
    admin = Admin(store, releases, readiness, stages)
    with pytest.raises(FailedPrecondition, match="already stable"):
        admin.start_rollout("r1", 0.5)
    with pytest.raises(NotFound):
        admin.start_rollout("r9", 0.5)
    with pytest.raises(InvalidArgument, match="between 0 and 1"):
        admin.start_rollout("r2", 2.0)
    with pytest.raises(FailedPrecondition, match="no rollout"):
        admin.promote()
    assert admin.start_rollout("r2", 0.5) == RolloutState("r1", "r2", 0.5)
    assert [s.replicas.reloads for s in stages] == [1, 1] and releases.channel("candidate") == "r2"
    assert admin.set_fraction(0.25) == RolloutState("r1", "r2", 0.25)
    readiness.update("ranking", {"ranking-a:1": ["r1", "r2"], "ranking-b:1": ["r1"]})
    with pytest.raises(FailedPrecondition, match="not ready on ranking replica ranking-b:1"):
        admin.promote()
    readiness.update("ranking", {"ranking-a:1": ["r1", "r2"], "ranking-b:1": ["r1", "r2"]})
    with pytest.raises(FailedPrecondition, match="the candidate is r2, not r1"):
        admin.promote("r1")
    assert admin.promote("r2") == RolloutState("r2", None, 0.0)
    assert releases.channel("stable") == "r2" and releases.loaded_ids() == ["r2"]
    assert admin.start_rollout("r1", 0.1).candidate == "r1"
    assert admin.rollback() == RolloutState("r2", None, 0.0)
    with pytest.raises(FailedPrecondition, match="no rollout"):
        admin.rollback()


def test_admin_refuses_to_promote_a_candidate_damaged_after_it_loaded(rollout) -> None:
    releases, readiness = rollout
    readiness.update("retrieval", {"a:1": ["r1", "r2"]})
    readiness.update("ranking", {"b:1": ["r1", "r2"]})
    (releases.store.releases_dir / "r2" / "catalog.jsonl").write_text("tampered\n")
    admin = Admin(releases.store, releases, readiness, [])
    with pytest.raises(ReleaseError, match="checksum mismatch"):
        admin.promote("r2")  # every replica holds it, but a replica that restarts could never load it again
    assert releases.store.rollout().stable == "r1"


def test_admin_refuses_a_corrupt_release(rollout) -> None:
    releases, readiness = rollout
    publish_release(releases.store, "r3")
    (releases.store.releases_dir / "r3" / "catalog.jsonl").write_text("tampered\n")
    admin = Admin(releases.store, releases, readiness, [])
    with pytest.raises(ReleaseError, match="checksum mismatch"):
        admin.start_rollout("r3", 0.5)
    assert releases.store.rollout().candidate == "r2"  # unchanged


def test_gateway_is_warm_once_every_stage_answered() -> None:
    readiness = StageReadiness(["retrieval", "ranking"])
    readiness.update("retrieval", {"a:1": []})
    readiness.update("ranking", {"b:1": None})
    assert not readiness.all_answered_once()
    readiness.update("ranking", {"b:1": ["r1"]})
    readiness.update("ranking", {"b:1": None})  # a later outage does not undo the start-up gate
    assert readiness.all_answered_once()
    assert readiness.missing("r1") == ["retrieval replica a:1"]


def test_a_target_resolves_to_one_address_per_replica() -> None:
    assert resolve_target("ipv4:127.0.0.1:5001,127.0.0.1:5002") == ["127.0.0.1:5001", "127.0.0.1:5002"]
    assert resolve_target("127.0.0.1:5001") == ["127.0.0.1:5001"]
    assert resolve_target("dns:///127.0.0.1:5001") == ["127.0.0.1:5001"]
    assert "127.0.0.1:5001" in resolve_target("dns:///localhost:5001")


class RefusedConnection(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "ipv4:10.0.3.7:44843: Connection refused"


def test_a_failed_stage_is_told_in_words_and_its_address_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    def refused(request: object, timeout: float, metadata: object = ()) -> None:
        raise RefusedConnection()

    with caplog.at_level(logging.WARNING), pytest.raises(StageUnavailable) as failed:
        _call("ranking", refused, object(), 1.0)
    assert str(failed.value) == "ranking unavailable: no replica reachable"
    assert "10.0.3.7:44843: Connection refused" in caplog.text  # the details, for the operator
