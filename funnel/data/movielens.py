"""Fetches MovieLens 100K (RecBole atomic files) from the recbole wheel on PyPI, verified by sha256."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from funnel.errors import DataError
from funnel.fsutil import atomic_write_bytes, sha256_file
from funnel.paths import default_cache_dir

RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
EXPECTED_SHA256: dict[str, str] = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}


def _is_complete(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and sha256_file(directory / name) == expected
        for name, expected in EXPECTED_SHA256.items()
    )


def _download_wheel(wheels: Path) -> Path:
    """Download the recbole wheel with pip into ``wheels`` and return its path."""
    print(f"funnel: downloading {RECBOLE_REQUIREMENT} (MovieLens 100K) into {wheels}", file=sys.stderr)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += [RECBOLE_REQUIREMENT, "-d", str(wheels)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or "").strip()[-2000:]
        problem = f"expected pip download {RECBOLE_REQUIREMENT} to succeed, got exit code {error.returncode}"
        raise RuntimeError(f"{problem}: {detail}") from None
    version = RECBOLE_REQUIREMENT.split("==")[1]
    found = sorted(wheels.glob(f"recbole-{version}-*.whl"))
    if not found:
        present = sorted(p.name for p in wheels.iterdir()) if wheels.is_dir() else []
        raise RuntimeError(f"expected pip to save recbole-{version}-*.whl in {wheels}, found {present}")
    return found[0]


def _install(wheel: Path, target: Path) -> None:
    """Copy the three atomic files out of ``wheel`` into ``target``, each verified then atomically replaced."""
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name, expected in EXPECTED_SHA256.items():
            member = WHEEL_MEMBER_DIR + name
            try:
                data = archive.read(member)
            except KeyError:
                raise DataError(str(wheel), None, f"expected member {member}, not found in the wheel") from None
            received = hashlib.sha256(data).hexdigest()
            if received != expected:
                problem = f"sha256 mismatch for {name} from {wheel}: expected {expected}, received {received}"
                raise DataError(str(target / name), None, problem)
            atomic_write_bytes(target / name, data)


def fetch_movielens_100k(cache_dir: str | Path) -> Path:
    """Return ``<cache_dir>/ml-100k`` holding verified ml-100k.{inter,item,user}, downloading only when needed."""
    cache_dir = Path(cache_dir)
    target = cache_dir / "ml-100k"
    if not _is_complete(target):
        _install(_download_wheel(cache_dir / "wheels"), target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m funnel.data.movielens", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="default: %(default)s")
    print(fetch_movielens_100k(parser.parse_args(argv).cache_dir))


if __name__ == "__main__":
    main()
