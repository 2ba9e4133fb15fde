"""The unit tier stays TensorFlow-free: a unit test that imports TensorFlow (or runs code that does) fails.

The check sees an import only when TensorFlow was not loaded before the test, as in ``make test-fast`` or
``pytest tests/unit``; in a full run the model tier has loaded it already, and test_tf_free.py's fresh interpreter
covers what importing the unit modules pulls in.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

HEAVY = ("tensorflow", "tf_keras", "tensorflow_recommenders", "scann")


def loaded_heavy() -> set[str]:
    return {name for name in HEAVY if name in sys.modules}


@pytest.fixture(autouse=True)
def _no_tensorflow() -> Iterator[None]:
    before = loaded_heavy()
    yield
    if new := loaded_heavy() - before:
        pytest.fail(f"a unit test imported {sorted(new)}: the unit tier must stay TF-free (move it to tests/model)")
