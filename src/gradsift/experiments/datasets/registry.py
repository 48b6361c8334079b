"""The built-in data sets by name: :data:`DATASETS`, :func:`load_dataset`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from gradsift.errors import GradsiftError
from gradsift.experiments.datasets.mnist import load_mnist
from gradsift.experiments.datasets.sklearn_data import load_digits, load_half_moons
from gradsift.experiments.datasets.splits import LabeledData

__all__ = ["DATASETS", "dataset_key", "load_dataset", "load_with_noise"]

#: Registry of built-in loaders by name.
DATASETS: dict[str, Callable[..., LabeledData]] = {
    "digits": load_digits,
    "half_moons": load_half_moons,
    "mnist": load_mnist,
}


def load_dataset(name: str, **kwargs: Any) -> LabeledData:
    """Load a built-in data set by registry name (``"digits"``, ``"half_moons"``, ``"mnist"``).

    Keyword arguments are passed to the loader; unknown ones raise a ``ValueError``
    listing the accepted ones.
    """
    key = dataset_key(name)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    loader = DATASETS[key]
    accepted = set(inspect.signature(loader).parameters)
    unknown = set(kwargs) - accepted
    if unknown:
        raise ValueError(
            f"load_dataset({name!r}): unknown argument(s) {sorted(unknown)}; "
            f"accepted: {sorted(accepted)}"
        )
    return loader(**kwargs)


def dataset_key(name: str) -> str:
    """The registry key of ``name`` (case-insensitive, ``-`` read as ``_``)."""
    return name.strip().lower().replace("-", "_")


def load_with_noise(
    name: str,
    noise: float = 0.0,
    noise_kind: Literal["symmetric", "asymmetric"] = "symmetric",
    seed: int = 0,
    **kwargs: Any,
) -> LabeledData:
    """Load a built-in data set with ``noise`` of its training labels flipped.

    Loaders with a ``noise`` argument get ``noise`` and ``noise_kind``; a data set with its
    own fixed flips (``half_moons``) accepts only ``noise=0``. ``seed`` seeds the split and
    the noise; ``kwargs`` go to the loader (e.g. ``n_train`` for MNIST).

    Raises:
        GradsiftError: unknown data set, or ``noise`` for a data set with fixed flips.
    """
    key = dataset_key(name)
    if key not in DATASETS:
        raise GradsiftError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    accepted = inspect.signature(DATASETS[key]).parameters
    if "noise" in accepted:
        kwargs.update(noise=noise, noise_kind=noise_kind)
    elif noise:
        raise GradsiftError(f"data set {name!r} has its own fixed label noise; drop --noise")
    return load_dataset(key, **kwargs, seed=seed)
