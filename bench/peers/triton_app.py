"""The Triton peer's server: a release's models served by NVIDIA Triton through PyTriton, with dynamic batching."""

# Runs in the peer's own venv (scripts/peer-venv-triton.sh), started by bench/peers/triton.py. Three Triton models:
#
#   retrieval  user_id BYTES [1] -> item_ids INT64 [C], scores FP32 [C], cold_start BOOL [1]
#              (C = --candidates; rows with fewer candidates are padded with item id -1)
#   ranking    user_id BYTES [1], item_ids INT64 [-1] (padded with -1) -> scores FP32 [-1]
#   recommend  user_id BYTES [1], k INT32 [1] -> item_ids INT64 [-1], scores FP32 [-1] (padded to the batch's
#              largest k with -1), cold_start BOOL [1]
#
# recommend is the pipeline, BLS style: its inference function sends its whole batch to retrieval, then the warm
# users' candidates to ranking, through PyTriton's ModelClient over Triton's gRPC endpoint, and blends and cuts to
# top k in numpy. A Triton ensemble cannot run that Python glue, and keeping it in the server keeps one request
# per recommendation from the client, as Funnel's gateway does. Every model batches dynamically; each stage's
# inference function runs Funnel's own release classes on the whole batch (one query-tower call and one ScaNN
# search, one ranker call), with TensorFlow capped at one thread as Funnel's services are.
#
# PyTriton is installed in the peer's venv only: under Funnel's venv (make lint's mypy) its imports are unresolved.

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from funnel.tf import set_threads  # first: selects Keras 2 (TF_USE_LEGACY_KERAS=1) before TensorFlow loads

import numpy as np
from pytriton.client import ModelClient
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.models.model import Model
from pytriton.server import triton_server
from pytriton.triton import Triton, TritonConfig

from funnel.limits import DEFAULT_CANDIDATES, MAX_K
from funnel.release.ranking import RankingRelease, RankQuery
from funnel.release.retrieval import Query, RetrievalRelease
from funnel.release.scoring import blend
from funnel.release.store import ArtifactStore
from gateway.core import GatewayRelease

log = logging.getLogger("triton_app")

InferFn = Callable[..., dict[str, np.ndarray]]


def user_ids(column: np.ndarray) -> list[str]:
    """A batch's user_id input ([B, 1] bytes) as Python strings."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in column.reshape(-1)]


def retrieval_fn(release: RetrievalRelease, candidates: int) -> InferFn:
    @batch
    def infer(user_id: np.ndarray) -> dict[str, np.ndarray]:
        found = release.retrieve_batch([Query(u, candidates, exclude_seen=True) for u in user_ids(user_id)])
        ids = np.full((len(found), candidates), -1, dtype=np.int64)
        scores = np.zeros((len(found), candidates), dtype=np.float32)
        for row, c in enumerate(found):
            ids[row, : len(c.item_ids)] = c.item_ids
            scores[row, : len(c.scores)] = c.scores
        cold = np.array([[c.cold_start] for c in found], dtype=np.bool_)
        return {"item_ids": ids, "scores": scores, "cold_start": cold}

    return infer


def ranking_fn(release: RankingRelease) -> InferFn:
    @batch
    def infer(user_id: np.ndarray, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        counts = (item_ids >= 0).sum(axis=1)  # catalog ids are >= 0; -1 pads each row's tail
        queries = [RankQuery(u, row[:n]) for u, row, n in zip(user_ids(user_id), item_ids, counts)]
        scored = release.score_batch(queries)
        out = np.zeros(item_ids.shape, dtype=np.float32)
        for row, (s, n) in enumerate(zip(scored, counts)):
            out[row, :n] = s.scores
        return {"scores": out}

    return infer


def recommend_fn(url: str, weight: float, timeout: float) -> InferFn:
    """One recommend instance: its own clients of the two stage models (a ModelClient is not thread-safe)."""
    retrieval = ModelClient(url, "retrieval", inference_timeout_s=timeout)
    ranking = ModelClient(url, "ranking", inference_timeout_s=timeout)

    @batch
    def infer(user_id: np.ndarray, k: np.ndarray) -> dict[str, np.ndarray]:
        ks = k.reshape(-1).astype(np.int64)
        if ks.min() < 1 or ks.max() > MAX_K:
            raise ValueError(f"expected 1 <= k <= {MAX_K}, got k = {sorted(set(ks.tolist()))}")
        found = retrieval.infer_batch(user_id=user_id)
        ids, retrieval_scores = found["item_ids"], found["scores"]
        cold = found["cold_start"].reshape(-1)
        counts = (ids >= 0).sum(axis=1)
        order_scores = retrieval_scores.copy()  # cold start: the popularity order retrieval answered
        warm = np.flatnonzero(~cold & (counts > 0))
        if len(warm):
            ranked = ranking.infer_batch(user_id=user_id[warm], item_ids=ids[warm])["scores"]
            for j, row in enumerate(warm.tolist()):
                m = int(counts[row])
                order_scores[row, :m] = blend(ranked[j, :m], retrieval_scores[row, :m], weight)
        out_ids = np.full((len(ks), int(ks.max())), -1, dtype=np.int64)
        out_scores = np.zeros(out_ids.shape, dtype=np.float32)
        for row, (n, top) in enumerate(zip(counts.tolist(), ks.tolist())):
            order = np.argsort(-order_scores[row, :n], kind="stable")[:top]
            out_ids[row, : len(order)] = ids[row, order]
            out_scores[row, : len(order)] = order_scores[row, order]
        return {"item_ids": out_ids, "scores": out_scores, "cold_start": cold.reshape(-1, 1)}

    return infer


# PyTriton 0.7.0 races when a model has several instances: Triton starts them in parallel, instance 0's stub binds
# a Unix socket to hand out the model's config and the others connect as soon as the socket file exists: between
# bind and listen that connect is refused (and they wait at most 1 s for instance 0), and the model fails to load.
# The stub's code is sent to Triton with the load request, so the copy sent retries the connect instead.
_HANDSHAKE_CONNECT = b"""        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.0, should_stop_before_s - time.time()))
        sock.connect(socket_path.as_posix())
"""
_HANDSHAKE_RETRY = b"""        while True:  # patched by triton_app.py: instance 0 may be bound, not listening yet
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(0.0, should_stop_before_s - time.time()))
            try:
                sock.connect(socket_path.as_posix())
                break
            except ConnectionRefusedError:
                sock.close()
                sock = None
                if time.time() >= should_stop_before_s:
                    raise
                time.sleep(0.01)
"""
_HANDSHAKE_TIMEOUT = (
    b"socket_path: pathlib.Path, timeout_s: float = 1.0)",
    b"socket_path: pathlib.Path, timeout_s: float = 60.0)",
)


def patch_instance_handshake() -> None:
    """Make the stub code PyTriton sends to Triton retry its handshake (see above); fails loudly if PyTriton's
    code is not the code this patch was written for."""
    original = Model.get_proxy_model_files

    def files(self: Model) -> dict[str, bytes]:
        out: dict[str, bytes] = original(self)
        key = f"file:{self.model_version}/communication.py"
        code = out[key]
        if code.count(_HANDSHAKE_CONNECT) != 1 or code.count(_HANDSHAKE_TIMEOUT[0]) != 1:
            raise RuntimeError(
                f"expected PyTriton 0.7.0's handshake code in {key} to patch, got code without it: PyTriton changed"
            )
        out[key] = code.replace(_HANDSHAKE_CONNECT, _HANDSHAKE_RETRY).replace(*_HANDSHAKE_TIMEOUT)
        return out

    Model.get_proxy_model_files = files


def use_stub_env(env: Path) -> None:
    """Run Triton's Python-backend stubs on ``env``'s Python (numpy 1, which the stub is built for) instead of this
    process's (numpy 2, which ScaNN needs): PyTriton puts the environment's bin/ first on tritonserver's PATH."""
    if not (env / "bin" / "python3").exists():
        raise SystemExit(f"expected the stubs' Python environment at {env}, found no bin/python3 there")
    triton_server.get_triton_python_backend_python_env = lambda: env


def load_stable(artifact_root: Path) -> tuple[RetrievalRelease, RankingRelease, GatewayRelease]:
    """The stable channel's release, verified, loaded and warmed as Funnel's services load it."""
    store = ArtifactStore(artifact_root)
    stable = store.rollout().stable
    if stable is None:
        raise SystemExit(f"expected a stable release in {store.channels_dir}, found the channel unset")
    path, manifest = store.verify(stable)
    retrieval, ranking = RetrievalRelease(path, manifest), RankingRelease(path, manifest)
    retrieval.warmup()
    ranking.warmup()
    return retrieval, ranking, GatewayRelease(path, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact-root", type=Path, required=True)
    parser.add_argument("--workspace", type=Path, required=True, help="PyTriton's workspace (must not exist)")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--stub-env", type=Path, required=True, help="Python env of the backend stubs (numpy 1)")
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES, help="retrieval candidates per user")
    parser.add_argument("--max-batch", type=int, default=64, help="max_batch_size of every model")
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batcher max_queue_delay")
    parser.add_argument("--recommend-instances", type=int, default=2, help="pipeline instances (stages: 1 each)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a stage call may take")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C: Triton shuts down

    set_threads(1)
    patch_instance_handshake()
    use_stub_env(args.stub_env)
    started = time.monotonic()
    retrieval, ranking, gateway = load_stable(args.artifact_root)
    log.info("loaded and warmed release %s in %.1fs", gateway.release_id, time.monotonic() - started)

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
    )
    model_config = ModelConfig(
        max_batch_size=args.max_batch,
        batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
    )
    user = Tensor(name="user_id", dtype=bytes, shape=(1,))
    c = args.candidates
    url = f"grpc://127.0.0.1:{args.grpc_port}"
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            "retrieval",
            retrieval_fn(retrieval, c),
            inputs=[user],
            outputs=[
                Tensor(name="item_ids", dtype=np.int64, shape=(c,)),
                Tensor(name="scores", dtype=np.float32, shape=(c,)),
                Tensor(name="cold_start", dtype=np.bool_, shape=(1,)),
            ],
            config=model_config,
        )
        triton.bind(
            "ranking",
            ranking_fn(ranking),
            inputs=[user, Tensor(name="item_ids", dtype=np.int64, shape=(-1,))],
            outputs=[Tensor(name="scores", dtype=np.float32, shape=(-1,))],
            config=model_config,
        )
        recommenders: list[Any] = [
            recommend_fn(url, gateway.retrieval_weight, args.timeout) for _ in range(args.recommend_instances)
        ]
        triton.bind(
            "recommend",
            recommenders,
            inputs=[user, Tensor(name="k", dtype=np.int32, shape=(1,))],
            outputs=[
                Tensor(name="item_ids", dtype=np.int64, shape=(-1,)),
                Tensor(name="scores", dtype=np.float32, shape=(-1,)),
                Tensor(name="cold_start", dtype=np.bool_, shape=(1,)),
            ],
            config=model_config,
        )
        log.info(
            "serving release %s: gRPC 127.0.0.1:%d, HTTP 127.0.0.1:%d",
            gateway.release_id,
            args.grpc_port,
            args.http_port,
        )
        triton.serve()  # returns on SIGINT/SIGTERM (KeyboardInterrupt) or when Triton dies, after stopping it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
