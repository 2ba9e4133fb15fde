"""Helpers shared by the test tiers; the shared fixtures are in tests/conftest.py.

Importing this module never imports TensorFlow (the unit tier must stay TF-free): the trainer's configs, which do,
are built on request by `small_retrieval_config` and `small_ranking_config`.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from funnel.client import PLAINTEXT, ClientTls
from funnel.data.loaders import Dataset, Interactions, Items
from funnel.paths import default_cache_dir
from funnel.release.files import Histories, write_catalog, write_popularity, write_seen
from funnel.release.store import MANIFEST, ArtifactStore
from funnel.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

if TYPE_CHECKING:
    from trainer.models import RetrievalConfig
    from trainer.ranking import RankingConfig

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = default_cache_dir()
RELEASE = "test-r1"  # the release the session trains on real data (tests/conftest.py: trained_root)
TEST_USERS = 200  # the 200 lowest user ids of MovieLens 100K: ~20k ratings, trains in seconds
JOB_STABLE = "stable-1"  # the release the session's trainer job bootstraps (tests/conftest.py: job_root)


# ------------------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Sample:
    started: float  # time.monotonic() when the request was sent
    at: float  # and when its answer came
    user: str
    code: str
    release: str
    stages: tuple[str, str]
    degraded: tuple[str, ...]
    latency_ms: float
    cold_start: bool = False


class Load:
    """Closed-loop clients calling a gateway's Recommend for random ``users`` until stopped; every answer and every
    failure is kept as a Sample."""

    def __init__(self, address: str, users: Sequence[str], clients: int = 4, tls: ClientTls = PLAINTEXT) -> None:
        self.users = list(users)
        self.channel = tls.connect(address)
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(seed,)) for seed in range(clients)]

    def _client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            user = self.users[rng.integers(len(self.users))]
            request = gateway_pb2.RecommendRequest(user=common_pb2.UserContext(user_id=user), k=10)
            sent, started = time.monotonic(), time.perf_counter()
            try:
                r = self.stub.Recommend(request, timeout=10)
                sample = Sample(
                    sent,
                    time.monotonic(),
                    user,
                    "OK",
                    r.release_id,
                    (r.retrieval_release_id, r.ranking_release_id),
                    tuple(r.degraded_reasons),
                    (time.perf_counter() - started) * 1000,
                    r.cold_start,
                )
            except grpc.RpcError as exc:
                latency_ms = (time.perf_counter() - started) * 1000
                sample = Sample(sent, time.monotonic(), user, exc.code().name, "", ("", ""), (), latency_ms)
            self.samples.append(sample)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.channel.close()

    def between(self, start: float, end: float) -> list[Sample]:
        """The requests sent after ``start`` and answered before ``end``."""
        return [s for s in self.samples if start <= s.started and s.at < end]

    def wait_for_requests(self, count: int, since: float, what: str) -> None:
        """Until ``count`` requests sent after ``since`` have been answered."""
        wait_for(lambda: len(self.between(since, float("inf"))) >= count, 120, f"{count} requests {what}")

    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.code != "OK"]

    def mixed(self) -> list[Sample]:
        """Full answers whose stages were not all served by the answer's release (a cold start's ranking stage is
        skipped: its ranking release is empty)."""
        full = [s for s in self.samples if s.code == "OK" and not s.degraded]
        return [s for s in full if s.stages != (s.release, "" if s.cold_start else s.release)]


# ------------------------------------------------------------------------------------------------- artifact roots


def trainer_command(root: Path, *args: str) -> list[str]:
    """The trainer CLI on real MovieLens 100K, publishing into ``root``, with ``args`` after."""
    return [
        sys.executable,
        "-m",
        "trainer",
        "--artifact-root",
        str(root),
        "--data",
        "movielens-100k",
        "--cache-dir",
        str(CACHE_DIR),
        *args,
    ]


def copy_release_root(source: Path, root: Path, release_id: str = RELEASE) -> Path:
    """A new artifact root at ``root`` holding a copy of ``source``'s release ``release_id``, with stable → it."""
    store = ArtifactStore(root)
    shutil.copytree(ArtifactStore(source).release_dir(release_id), store.releases_dir / release_id)
    store.set_stable(release_id)
    return root


def clone_release(
    store: ArtifactStore, source: str, target: str, mutate: Callable[[Path], None] = lambda directory: None
) -> str:
    """Publish a copy of ``source`` as ``target`` after ``mutate`` edits its files (checksums recomputed)."""
    manifest = store.read_manifest(source)
    with store.new_release(target) as writer:
        shutil.copytree(
            store.release_dir(source), writer.dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST)
        )
        mutate(writer.dir)
        return writer.publish(
            training_runs=manifest.training_runs,
            data_fingerprint=manifest.data_fingerprint,
            metrics=manifest.metrics,
            config=manifest.config,
        )


def publish(store: ArtifactStore, release_id: str = "r1", files: dict[str, bytes] | None = None) -> str:
    """Publish a release of arbitrary files (default: two small ones) for store and manager tests."""
    with store.new_release(release_id) as writer:
        for rel, data in (files or {"a.bin": b"alpha", "model/weights": b"w" * 100}).items():
            (writer.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (writer.dir / rel).write_bytes(data)
        return writer.publish(training_runs={"retrieval": "run-1"}, data_fingerprint="fp", metrics={"m": 1.0})


FILMS = Items(
    item_ids=np.arange(1, 7, dtype=np.int64),
    titles=tuple(f"Film {i}" for i in range(1, 7)),
    years=np.full(6, 1999, dtype=np.int32),
    genres=tuple(("Drama",) for _ in range(6)),
)


def publish_release(store: ArtifactStore, release_id: str, config: dict | None = None) -> None:
    """Publish what the gateway reads of a release (no models): six films, user "u1" has seen film 1, and
    popularity order 1 (3x), 2 (2x), then 3..6 once each."""
    with store.new_release(release_id) as writer:
        write_catalog(writer.dir, FILMS)
        write_seen(writer.dir, Histories(np.array(["u1"]), np.array([1])))
        write_popularity(writer.dir, np.array([1, 1, 1, 2, 2, 3, 4, 5, 6]))
        writer.publish(training_runs={}, data_fingerprint="fp", metrics={}, config=config)


# ---------------------------------------------------------------------------------------------------- waiting


def wait_for(
    condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition", interval: float = 0.05
) -> None:
    """Poll ``condition`` every ``interval`` seconds until it holds; fail after ``timeout`` seconds (a hang guard,
    not a speed bound)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ThreadClock:
    """Stands in for a module's ``time`` (monotonic and sleep) so that loops timed by it run the same however
    fast the machine is: each thread's clock starts at 0 and moves only by its own ``sleep`` and ``advance``."""

    def __init__(self) -> None:
        self._local = threading.local()

    def monotonic(self) -> float:
        return float(getattr(self._local, "now", 0.0))

    def advance(self, seconds: float) -> None:
        self._local.now = self.monotonic() + seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))


# -------------------------------------------------------------------------------------------- synthetic data


NUM_USERS, NUM_ITEMS, GROUPS = 60, 80, 4


def synthetic_dataset(later: int = 0) -> Dataset:
    """60 users in 4 taste groups; each rates 24 items of its group's 20 highly and 6 other items low. ``later``: as
    many more ratings per user, drawn the same way, come after all of those (the data a retrained release adds)."""
    rng = np.random.default_rng(7)
    item_ids = 1000 + 3 * np.arange(NUM_ITEMS, dtype=np.int64)  # not contiguous, so the lookup must map them
    per_group = NUM_ITEMS // GROUPS
    users, items, ratings = [], [], []
    for u in range(NUM_USERS):
        group = u % GROUPS
        liked = group * per_group + rng.integers(0, per_group, 24)
        other = rng.integers(0, NUM_ITEMS, 6)
        users += [f"user{u}"] * 30
        items += [*item_ids[liked], *item_ids[other]]
        ratings += [*rng.choice([4.0, 5.0], 24), *np.where(other // per_group == group, 4.0, 1.0)]
    for u in range(NUM_USERS if later else 0):
        liked = (u % GROUPS) * per_group + rng.integers(0, per_group, later)
        users += [f"user{u}"] * later
        items += [*item_ids[liked]]
        ratings += [*rng.choice([4.0, 5.0], later)]
    n = len(users)
    interactions = Interactions(
        np.array(users, dtype=np.str_),
        np.array(items, dtype=np.int64),
        np.array(ratings, dtype=np.float32),
        np.arange(n, dtype=np.int64),
    )
    catalog = Items(
        item_ids,
        tuple(f"Item {i}" for i in item_ids),
        np.full(NUM_ITEMS, 1999, dtype=np.int32),
        tuple(("Drama",) for _ in item_ids),
    )
    return Dataset("synthetic", interactions, catalog, None)


def csv_spec(data: Dataset, directory: Path) -> str:
    """``data`` written as a csv: data spec (file order is time order), so the trainer CLI can load it."""
    interactions, items = directory / "interactions.csv", directory / "items.csv"
    with open(interactions, "w", newline="") as f:
        rows = zip(data.interactions.user_ids, data.interactions.item_ids, data.interactions.ratings)
        csv.writer(f).writerows([("user_id", "item_id", "rating"), *rows])
    with open(items, "w", newline="") as f:
        csv.writer(f).writerows([("item_id", "title"), *zip(data.items.item_ids, data.items.titles)])
    return f"csv:{interactions},{items}"


def small_retrieval_config() -> RetrievalConfig:
    """Retrieval settings that learn `synthetic_dataset`'s groups in seconds (imports the trainer, so TensorFlow)."""
    from trainer.models import RetrievalConfig

    return RetrievalConfig(embedding_dim=16, batch_size=128, epochs=8, learning_rate=0.01)


def small_ranking_config() -> RankingConfig:
    """Ranking settings that learn `synthetic_dataset`'s ratings in seconds (imports the trainer, so TensorFlow)."""
    from trainer.ranking import RankingConfig

    return RankingConfig(embedding_dim=8, batch_size=64, epochs=30, learning_rate=0.01)


# ------------------------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Certificates:
    """A test CA and what it signed: a server certificate for localhost and 127.0.0.1, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must fail


def make_certificates(directory: Path) -> Certificates:
    """Generate the certificates with the openssl command (2048-bit RSA, one day)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, stdin=subprocess.DEVNULL)

    for ca in ("ca", "other-ca"):
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN=funnel test {ca}",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
        )
    (directory / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN=funnel test {name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
        )
    d = directory
    return Certificates(
        d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key", d / "other-ca.pem"
    )
