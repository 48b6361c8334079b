"""May a test store be scored against a train store? (same model, parameters, projection)"""

from __future__ import annotations

from gradsift.errors import StoreError
from gradsift.store.gradient_store import GradientStore
from gradsift.store.verify import short_json

COMPATIBLE_KEYS = ("fingerprint", "tracked", "dim", "projection")
"""Settings a test store must share with the train store it is scored against."""


def compatibility_problems(train: GradientStore, test: GradientStore) -> list[str]:
    """Why ``test`` cannot be scored against ``train`` (empty when it can)."""
    a, b = train.settings.to_dict(), test.settings.to_dict()
    problems = [
        f"{key}: train {short_json(a[key])} vs test {short_json(b[key])}"
        for key in COMPATIBLE_KEYS
        if a[key] != b[key]
    ]
    if a["extra"].get("measurement"):
        problems.append(
            "the train store holds measurement (test-side) gradients: extract it without "
            "--measurement"
        )
    return problems


def check_compatible(train: GradientStore, test: GradientStore) -> None:
    """Refuse to score ``test`` against ``train`` unless both were extracted from the same
    model (fingerprint), with the same tracked parameters, dimension and projection
    (kind, dimension, seed): rows made otherwise live in other coordinates, and their dot
    products are meaningless. Row counts, shard sizes, dtypes and ``measurement`` on the
    test side may differ.

    Raises:
        StoreError: listing every difference.
    """
    problems = compatibility_problems(train, test)
    if problems:
        raise StoreError(
            f"the test store {test.path} does not match the train store {train.path} "
            f"({'; '.join(problems)}). Extract both from the same model checkpoint with the "
            "same --tracked and --project-dim/--projection-kind/--projection-seed."
        )
