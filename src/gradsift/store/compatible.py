"""May a test store be scored against a train store? (same model, parameters, projection)"""

from __future__ import annotations

from typing import Any

from gradsift.errors import StoreError
from gradsift.store.gradient_store import GradientStore
from gradsift.store.verify import short_json

COMPATIBLE_KEYS = ("fingerprint", "tracked", "dim", "projection")
"""Settings a test store must share with the train store it is scored against."""

FACTOR_KEYS = ("module", "k_out", "k_in", "offset", "seed_out", "seed_in", "factors_sha256")
"""Per-layer entries of a kronecker store's ``extra["kronecker"]["layers"]`` that must match."""


def kronecker_problems(train: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """Differences between the per-layer kronecker factors recorded in two stores' settings
    (``to_dict()`` form); empty when neither or both record the same factors."""
    a, b = train["extra"].get("kronecker"), test["extra"].get("kronecker")
    if a is None and b is None:
        return []
    if a is None or b is None:
        side = "train" if a is None else "test"
        return [f"kronecker factors: the {side} store records none"]
    la, lb = a.get("layers", []), b.get("layers", [])
    if len(la) != len(lb):
        return [f"kronecker factors: train has {len(la)} layers vs test {len(lb)}"]
    differ = [
        x.get("module", "?")
        for x, y in zip(la, lb, strict=True)
        if any(x.get(k) != y.get(k) for k in FACTOR_KEYS)
    ]
    if not differ:
        return []
    shown = ", ".join(repr(m) for m in differ[:5]) + (" ..." if len(differ) > 5 else "")
    return [f"kronecker factors (seeds or matrices) differ in {len(differ)} layer(s): {shown}"]


def compatibility_problems(train: GradientStore, test: GradientStore) -> list[str]:
    """Why ``test`` cannot be scored against ``train`` (empty when it can)."""
    a, b = train.settings.to_dict(), test.settings.to_dict()
    problems = [
        f"{key}: train {short_json(a[key])} vs test {short_json(b[key])}"
        for key in COMPATIBLE_KEYS
        if a[key] != b[key]
    ]
    problems += kronecker_problems(a, b)
    if a["extra"].get("measurement"):
        problems.append(
            "the train store holds measurement (test-side) gradients: extract it without "
            "--measurement"
        )
    return problems


def check_compatible(train: GradientStore, test: GradientStore) -> None:
    """Refuse to score ``test`` against ``train`` unless both were extracted from the same
    model (fingerprint), with the same tracked parameters, dimension and projection
    (kind, dimensions, seed; for a kronecker projection also the per-layer factor seeds
    and the sha256 of the factor matrices): rows made otherwise live in other
    coordinates, and their dot products are meaningless. Row counts, shard sizes, dtypes
    and ``measurement`` on the test side may differ.

    Raises:
        StoreError: listing every difference.
    """
    problems = compatibility_problems(train, test)
    if problems:
        raise StoreError(
            f"the test store {test.path} does not match the train store {train.path} "
            f"({'; '.join(problems)}). Extract both from the same model checkpoint with the "
            "same --tracked and --project-dim/--projection-kind/--projection-seed "
            "(and --proj-dim-out for kronecker)."
        )
