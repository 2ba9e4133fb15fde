"""Retrieval and ranking servicers in-process on port 0, over a real trained release.

The module's servers share one artifact root, prepared before they start and never changed after; the tests that
publish releases of their own take an artifact root of their own."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from funnel.tf import tf

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from funnel.errors import ReleaseError
from funnel.release.files import read_seen
from funnel.release.ranking import RankingRelease, RankQuery
from funnel.release.retrieval import RetrievalRelease
from funnel.release.store import INDEX_DIR, ArtifactStore
from funnel.serving.service import release_manager
from funnel.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from ranking_service.server import RankingServiceConfig
from ranking_service.server import create_server as create_ranking_server
from retrieval_service.server import RetrievalServiceConfig
from retrieval_service.server import create_server as create_retrieval_server
from tests.helpers import RELEASE, clone_release
from trainer.export import save_module


def start(create, config_class, load, root: Path):
    config = config_class(artifact_root=str(root), address="127.0.0.1:0")
    releases = release_manager(config, "test", load)
    releases.sync()
    service = create(config, releases)
    service.start()
    return service, grpc.insecure_channel(f"127.0.0.1:{service.port}"), releases


pytestmark = pytest.mark.slow  # TensorFlow models, loaded here
UNLOADED = "test-unloaded"  # published in the servers' root, on no channel


@pytest.fixture(scope="module")
def served_root(module_artifact_root: Path) -> Path:
    """The servers' root: test-r1 stable, and a copy of it that no channel names."""
    clone_release(ArtifactStore(module_artifact_root), RELEASE, UNLOADED)
    return module_artifact_root


@pytest.fixture(scope="module")
def retrieval(served_root):
    service, channel, releases = start(create_retrieval_server, RetrievalServiceConfig, RetrievalRelease, served_root)
    yield retrieval_pb2_grpc.RetrievalServiceStub(channel), channel, releases
    service.stop()


@pytest.fixture(scope="module")
def ranking(served_root):
    service, channel, releases = start(create_ranking_server, RankingServiceConfig, RankingRelease, served_root)
    yield ranking_pb2_grpc.RankingServiceStub(channel), channel, releases
    service.stop()


def retrieve(stub, user_id="1", n=50, exclude_seen=True, release_id=RELEASE):
    return stub.Retrieve(
        retrieval_pb2.RetrieveRequest(
            release_id=release_id,
            user=common_pb2.UserContext(user_id=user_id),
            num_candidates=n,
            exclude_seen=exclude_seen,
        ),
        timeout=10,
    )


def test_retrieve_excludes_seen_items(retrieval, served_root) -> None:
    stub = retrieval[0]
    seen = set(read_seen(ArtifactStore(served_root).release_dir(RELEASE)).get("1").tolist())
    assert seen, "user 1 should have training ratings"
    with_seen = retrieve(stub, exclude_seen=False, n=200)
    without = retrieve(stub, n=50)
    assert without.release_id == RELEASE and not without.cold_start
    assert len(without.item_ids) == 50 and not seen & set(without.item_ids)
    assert seen & set(with_seen.item_ids), "the model should rank some of the user's own items highly"
    assert list(without.scores) == sorted(without.scores, reverse=True)
    assert list(without.item_ids) == [i for i in with_seen.item_ids if i not in seen][:50]  # same order, seen dropped


def test_retrieve_unknown_user_is_cold_start(retrieval) -> None:
    response = retrieve(retrieval[0], user_id="no-such-user", n=10)
    assert response.cold_start and len(response.item_ids) == 10


@pytest.mark.parametrize(
    "kwargs, code, message",
    [
        ({"release_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "release_id is required"),
        ({"release_id": "missing-release"}, grpc.StatusCode.NOT_FOUND, "does not exist"),
        ({"release_id": "../etc"}, grpc.StatusCode.INVALID_ARGUMENT, "release id must match"),
        ({"n": 0}, grpc.StatusCode.INVALID_ARGUMENT, "num_candidates must be between 1 and 1000, got 0"),
        ({"n": 1001}, grpc.StatusCode.INVALID_ARGUMENT, "got 1001"),
        ({"user_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "user_id is required"),
    ],
)
def test_retrieve_bad_input(retrieval, kwargs, code, message) -> None:
    with pytest.raises(grpc.RpcError) as info:
        retrieve(retrieval[0], **kwargs)
    assert info.value.code() == code and message in info.value.details()


def rank(stub, user_id: str, items: list[int], history: list[int] = ()) -> ranking_pb2.RankResponse:
    return stub.Rank(
        ranking_pb2.RankRequest(
            release_id=RELEASE, item_ids=items, user=common_pb2.UserContext(user_id=user_id, history_item_ids=history)
        ),
        timeout=10,
    )


def test_rank_scores_match_the_saved_model_with_the_stored_history(ranking, served_root) -> None:
    items = [50, 181, 1, 100]
    response = rank(ranking[0], "1", items)
    path = ArtifactStore(served_root).release_dir(RELEASE)
    scorer = tf.saved_model.load(str(path / "ranker")).signatures["serving_default"]
    history = read_seen(path).get("1")
    expected = scorer(
        user_id=tf.constant(["1"]), history=tf.constant(history[None, :]), item_id=tf.constant([items], tf.int64)
    )["score"].numpy()
    assert response.release_id == RELEASE
    np.testing.assert_allclose(response.scores, expected.reshape(-1), rtol=1e-5)


def test_a_history_personalises_ranking_for_a_user_the_release_does_not_know(ranking, served_root) -> None:
    seen = read_seen(ArtifactStore(served_root).release_dir(RELEASE))
    items = list(range(1, 201))
    known = np.array(rank(ranking[0], "1", items).scores)
    stranger = np.array(rank(ranking[0], "no-such-user", items, seen.get("1").tolist()).scores)
    generic = np.array(rank(ranking[0], "no-such-user", items).scores)
    # The stranger sending user 1's history is ranked much more like user 1 than the history-less stranger is
    # (not identically: user 1's own id and features are not theirs).
    assert np.corrcoef(stranger, known)[0, 1] > np.corrcoef(generic, known)[0, 1] + 0.05
    assert not np.allclose(stranger, generic)
    replaced = rank(ranking[0], "1", items, seen.get("2").tolist())  # a request's history replaces the stored one
    assert not np.allclose(replaced.scores, known)


def test_retrieve_with_a_history_of_only_unknown_items_is_cold_start(retrieval) -> None:
    request = retrieval_pb2.RetrieveRequest(
        release_id=RELEASE,
        num_candidates=10,
        exclude_seen=True,
        user=common_pb2.UserContext(user_id="no-such-user", history_item_ids=[999991, 999992]),
    )
    response = retrieval[0].Retrieve(request, timeout=10)
    assert response.cold_start and len(response.item_ids) == 10
    request.user.history_item_ids.append(50)  # one known item makes it personal
    assert not retrieval[0].Retrieve(request, timeout=10).cold_start


@pytest.mark.parametrize(
    "items, message",
    [
        ([], "item_ids length must be between 1 and 1000, got 0"),
        ([1, 999999], "unknown: [999999]"),
        (list(range(1, 1002)), "got 1001"),
    ],
)
def test_rank_bad_items(ranking, items, message) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ranking[0].Rank(
            ranking_pb2.RankRequest(release_id=RELEASE, user=common_pb2.UserContext(user_id="1"), item_ids=items),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()


def test_release_not_held_is_failed_precondition(ranking) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ranking[0].Rank(
            ranking_pb2.RankRequest(release_id=UNLOADED, user=common_pb2.UserContext(user_id="1"), item_ids=[1]),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not loaded" in info.value.details()


def test_tower_and_index_from_different_runs_refuse_to_load(artifact_root) -> None:
    store = ArtifactStore(artifact_root)

    def other_run_index(directory: Path) -> None:
        meta_path = directory / INDEX_DIR / "index.json"
        meta = json.loads(meta_path.read_text())
        meta["candidate_tower_fingerprint"] = "0" * 64
        meta_path.write_text(json.dumps(meta))

    clone_release(store, RELEASE, "test-mixed", other_run_index)
    path, manifest = store.verify("test-mixed")  # checksums are fine: the refusal must come from the fingerprint
    with pytest.raises(ReleaseError, match="different runs"):
        RetrievalRelease(path, manifest)


def test_health_reflection_and_status(retrieval) -> None:
    _, channel, _ = retrieval
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"funnel.v1.RetrievalService", "grpc.health.v1.Health"} <= names
    status = retrieval_pb2_grpc.RetrievalServiceStub(channel).GetStatus(common_pb2.GetStatusRequest(), timeout=5)
    assert [(r.release_id, r.state, r.state_name, list(r.channels)) for r in status.releases] == [
        (RELEASE, common_pb2.RELEASE_STATE_READY, "ready", ["stable"])
    ]


def test_batches_answer_like_single_calls(retrieval, ranking) -> None:
    users = ["1", "2", "no-such-user", "3"]
    batch = retrieval[0].RetrieveBatch(
        retrieval_pb2.RetrieveBatchRequest(
            release_id=RELEASE,
            queries=[
                retrieval_pb2.RetrieveQuery(
                    user=common_pb2.UserContext(user_id=u), num_candidates=20 + i, exclude_seen=i % 2 == 0
                )
                for i, u in enumerate(users)
            ],
        ),
        timeout=10,
    )
    assert batch.release_id == RELEASE and len(batch.results) == len(users)
    for i, (user, result) in enumerate(zip(users, batch.results)):
        single = retrieve(retrieval[0], user_id=user, n=20 + i, exclude_seen=i % 2 == 0)
        assert list(result.item_ids) == list(single.item_ids) and result.cold_start == single.cold_start
        np.testing.assert_allclose(result.scores, single.scores, rtol=1e-5)
    ranked = ranking[0].RankBatch(
        ranking_pb2.RankBatchRequest(
            release_id=RELEASE,
            queries=[
                ranking_pb2.RankQuery(user=common_pb2.UserContext(user_id=u), item_ids=list(r.item_ids)[:10])
                for u, r in zip(users, batch.results)
            ],
        ),
        timeout=10,
    )
    for user, r, result in zip(users, batch.results, ranked.results):
        single = ranking[0].Rank(
            ranking_pb2.RankRequest(
                release_id=RELEASE, user=common_pb2.UserContext(user_id=user), item_ids=list(r.item_ids)[:10]
            ),
            timeout=10,
        )
        np.testing.assert_allclose(result.scores, single.scores, rtol=1e-5)


def test_batch_limits(retrieval, ranking) -> None:
    with pytest.raises(grpc.RpcError) as info:
        retrieval[0].RetrieveBatch(retrieval_pb2.RetrieveBatchRequest(release_id=RELEASE), timeout=10)
    assert (
        info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "queries length must be between 1 and 128" in info.value.details()
    )
    query = ranking_pb2.RankQuery(user=common_pb2.UserContext(user_id="1"), item_ids=[1])
    with pytest.raises(grpc.RpcError) as info:
        ranking[0].RankBatch(ranking_pb2.RankBatchRequest(release_id=RELEASE, queries=[query] * 129), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "got 129" in info.value.details()


class _V1Ranker(tf.Module):
    """The ranker signature before rankers read history: (user_id [N], item_id [N]) pairs -> score, rating [N]."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([None], tf.int64, name="item_id"),
        ]
    )
    def serve(self, user_id: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        score = tf.cast(item_id, tf.float32) + tf.cast(tf.strings.length(user_id), tf.float32)
        return {"score": score, "rating": tf.fill(tf.shape(score), 3.0)}


def test_releases_with_the_old_pairwise_ranker_still_serve(artifact_root) -> None:
    store = ArtifactStore(artifact_root)

    def old_ranker(path: Path) -> None:
        shutil.rmtree(path / "ranker")
        save_module(_V1Ranker(), path / "ranker", {"training_run": "v1"})

    clone_release(store, RELEASE, "test-v1-ranker", old_ranker)
    release = RankingRelease(*store.verify("test-v1-ranker"))
    assert not release.reads_history
    release.warmup()
    scores = release.score_batch([RankQuery("1", np.array([5, 7])), RankQuery("user-22", np.array([9]), np.array([1]))])
    assert [s.scores.tolist() for s in scores] == [[6.0, 8.0], [16.0]]
    assert [s.ratings.tolist() for s in scores] == [[3.0, 3.0], [3.0]]


def executed_ops(run: Callable[[], object], trace_dir: Path) -> set[str]:
    """The names of the TensorFlow ops ``run()`` executed, from a profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(str(trace_dir))
    try:
        run()
    finally:
        tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(next(trace_dir.rglob("*.xplane.pb")).read_bytes())
    return {m.name for plane in space.planes for m in plane.event_metadata.values()}


def test_the_served_towers_never_read_a_whole_embedding_table(retrieval, tmp_path: Path) -> None:
    """Grappler's SimplifyEmbeddingLookup rewrite made the query tower read, and copy, its whole item table on
    every call (240 ms a call at 1M items); funnel.tf.load_serving_signature turns it off as it loads a model."""
    _, _, releases = retrieval
    ops = executed_ops(lambda: releases.get(RELEASE).retrieve("1", 10, exclude_seen=True), tmp_path)
    assert any("query_tower" in name for name in ops)  # the trace holds the tower's ops
    assert not [name for name in ops if "SimplifyEmbeddingLookup" in name]
